"""The push gate: a servable reaches a TF Serving model base path only if it was blessed.

Like TFX's Pusher: the store must hold a passing verdict (a COMPLETE SmokeTest execution
whose newest Verdict says blessed) for that exact artifact, meaning that model directory
with the content it had when it was verified (its fingerprint). The copy lands as the next
numeric version under the base path, staged beside it under a dot-name TF Serving ignores
and renamed into place when complete. Every attempt is a Push execution: COMPLETE with a
PushedModel output, or FAILED with the refusal's reason.
"""

import dataclasses
from typing import Tuple, Union

import tenacity
import tensorflow as tf
from absl import logging
from ml_metadata.proto import metadata_store_pb2

from export import artifact_io
from export import versions
from lineage import fingerprint as fingerprint_lib
from lineage import query
from lineage import schema
from lineage.record import Recorder

Artifact = metadata_store_pb2.Artifact
Execution = metadata_store_pb2.Execution

# Another push into the same base path may claim the version we picked while we copy; we
# then pick again. (artifact_io.staging_dir checks the final path when the copy starts;
# we check again just before its rename, which leaves only that instant open.)
_VERSION_ATTEMPTS = 5


class PushRefused(RuntimeError):
  """The model may not be pushed; the message says why."""


class _VersionTaken(RuntimeError):
  """Another push renamed its copy into the version this one had picked."""


@dataclasses.dataclass(frozen=True)
class PushResult:
  version: int
  version_dir: str
  pushed: Artifact  # the PushedModel, with its store id
  source: Artifact  # the ExportedModel or OptimizedModel that was pushed


def _recorded_servable(recorder: Recorder, model: Union[Artifact, str]) -> Tuple[Artifact, str]:
  """The stored servable `model` stands for, and its content fingerprint as it is now."""
  store = recorder.store
  uri = (model if isinstance(model, str) else model.uri).rstrip("/")
  if not tf.io.gfile.isdir(uri):
    raise PushRefused(f"{uri} is not a directory")
  current = fingerprint_lib.fingerprint_dir(uri).fingerprint
  if isinstance(model, str) or not model.id:
    candidates = query.newest(a for a in store.mlmd.get_artifacts_by_uri(uri)
                              if store.type_name(a.type_id) in schema.SERVABLES)
    if not candidates:
      raise PushRefused(f"{uri} is not recorded as an exported or optimized model in "
                        f"{store.describe()}: record its export or optimization, then its "
                        f"smoke test, before pushing it")
    matching = [a for a in candidates if a.properties["fingerprint"].string_value == current]
    if not matching:
      recorded = candidates[0].properties["fingerprint"].string_value
      raise PushRefused(f"{uri} changed since it was recorded (recorded content {recorded}, "
                        f"now {current}); only the content that was verified may be pushed")
    return matching[0], current
  [stored] = store.mlmd.get_artifacts_by_id([model.id]) or [None]
  if stored is None:
    raise PushRefused(f"artifact {model.id} ({uri}) is not in {store.describe()}")
  if store.type_name(stored.type_id) not in schema.SERVABLES:
    raise PushRefused(f"artifact {stored.id} ({uri}) is a {store.type_name(stored.type_id)!r}, "
                      f"not an exported or optimized model")
  recorded = stored.properties["fingerprint"].string_value
  if recorded != current:
    raise PushRefused(f"{uri} changed since it was recorded as artifact {stored.id} (recorded "
                      f"content {recorded}, now {current}); only the content that was "
                      f"verified may be pushed")
  return stored, current


def check_blessed(recorder: Recorder, model: Artifact) -> Artifact:
  """The blessed Verdict of the newest completed smoke test of `model`, else PushRefused."""
  store = recorder.store
  name = f"{store.type_name(model.type_id)} {model.id} ({model.uri})"
  smoke_tests = query.consumers(store, model, schema.SMOKE_TEST)
  if not smoke_tests:
    raise PushRefused(f"no smoke test of {name} is recorded: it has no verdict, so it is not "
                      f"blessed; run the smoke test on it first")
  completed = [e for e in smoke_tests if e.last_known_state == Execution.COMPLETE]
  if not completed:
    reasons = "; ".join(f"execution {e.id} {Execution.State.Name(e.last_known_state)}"
                        + (f": {e.properties[schema.FAILURE_REASON].string_value}"
                           if schema.FAILURE_REASON in e.properties else "")
                        for e in smoke_tests)
    raise PushRefused(f"no smoke test of {name} completed ({reasons})")
  newest = completed[0]
  verdicts = query.linked(store, newest, metadata_store_pb2.Event.OUTPUT, schema.VERDICT)
  if not verdicts:
    raise PushRefused(f"the newest smoke test of {name} (execution {newest.id}) recorded "
                      f"no verdict")
  verdict = verdicts[0]
  if not verdict.properties["blessed"].bool_value:
    reason = verdict.properties["reason"].string_value or "no reason recorded"
    raise PushRefused(f"the newest smoke test of {name} (execution {newest.id}) did not "
                      f"bless it: {reason}")
  return verdict


@tenacity.retry(retry=tenacity.retry_if_exception_type(_VersionTaken),
                stop=tenacity.stop_after_attempt(_VERSION_ATTEMPTS), reraise=True)
def _copy_as_next_version(source_dir: str, base_path: str, content: str) -> Tuple[int, str]:
  version = versions.next_version(base_path)
  final = artifact_io.join(base_path, str(version))
  taken = _VersionTaken(f"could not claim a new version under {base_path} in "
                        f"{_VERSION_ATTEMPTS} attempts: other pushes kept taking them")
  try:
    with artifact_io.staging_dir(final) as staging:
      artifact_io.copy_tree(source_dir, staging)
      copied = fingerprint_lib.fingerprint_dir(staging).fingerprint
      if copied != content:
        raise PushRefused(f"{source_dir} changed while it was being copied (verified "
                          f"content {content}, copied {copied}); nothing was pushed")
      if tf.io.gfile.exists(final):
        raise taken
  except FileExistsError:
    raise taken from None
  return version, final


def push(recorder: Recorder, model: Union[Artifact, str], push_to: str) -> PushResult:
  """Pushes `model` (a servable artifact, or its version dir) to the base path `push_to`.

  Raises PushRefused, with the reason, when the model is not recorded, changed since it was
  recorded, or has no passing verdict; the Push execution then ends FAILED with that reason.
  """
  push_to = push_to.rstrip("/")
  uri = (model if isinstance(model, str) else model.uri).rstrip("/")
  params = {"push_to": push_to, "model_uri": uri}
  try:
    source, content = _recorded_servable(recorder, model)
  except PushRefused as refusal:
    # Recorded too, without an input: there is no recorded model to link.
    with recorder.execution(schema.PUSH, params=params):
      raise refusal
  with recorder.execution(schema.PUSH, inputs={"model": source}, params=params) as run:
    check_blessed(recorder, source)
    version, version_dir = _copy_as_next_version(source.uri, push_to, content)
    pushed = run.output("pushed", schema.pushed_model(version_dir, push_to, version, content))
    run.results(version=version, pushed_uri=version_dir)
  logging.info("Pushed %s as version %d: %s", source.uri, version, version_dir)
  return PushResult(version, version_dir, pushed, source)
