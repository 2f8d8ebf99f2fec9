"""The last gate before deployment: serve the model, query every signature over REST and gRPC,
compare with in-process answers, and bless it or not.

    python -m serving.smoke_test --model_base_path DIR --model_name NAME \\
        [--backend auto|binary|docker|embedded] [--target host:8500 [--rest_target host:8501]] \\
        [--examples_file F] [--output_dir D]

Like TFX's InfraValidator, but stricter: the server (the real TF Serving when it can run,
else the embedded one; or a running server at `--target`) must report the model AVAILABLE
within a deadline (a slow start is retried, a failed load is not), then answer requests built
from evaluation examples for every signature, over both protocols, with the classes and (within
tolerance) the scores that the same version gives in-process. Batch-1 and batch-N latencies are
measured. The verdict is written as `verdict.json` plus a `BLESSED` or `NOT_BLESSED` marker;
the command exits 0 only when blessed.

`run_smoke_test` is the plain function under `python -m serving.smoke_test`; it returns the
Verdict.
"""

import dataclasses
import itertools
import json
import os
import time
from typing import Dict, List, Optional

import tenacity
import tensorflow as tf

from export import artifact_io
from export import out_of_scope
from export import versions as versions_lib
from export.servable import ServableError, SessionServable
from export.warmup import DEFAULT_SIGNATURE
from serving import probes as probes_lib
from serving import runners
from serving.clients import REQUEST_ERRORS, GrpcClient, ModelClient, RestClient, error_text
from serving.errors import ServerStartError, SmokeTestError
from serving.model_server import config_files
from serving.smoke_test import checks as checks_lib
from serving.smoke_test.checks import Check

VERDICT_FILE = "verdict.json"
BLESSED, NOT_BLESSED = "BLESSED", "NOT_BLESSED"
TARGET_BACKEND = "target"


@dataclasses.dataclass
class Verdict:
  blessed: bool
  model_name: str
  model_base_path: str
  backend: str
  reason: str = ""
  grpc_target: str = ""
  rest_target: str = ""
  version: Optional[int] = None
  probe_source: str = ""
  checks: List[Check] = dataclasses.field(default_factory=list)
  latency_ms: Dict = dataclasses.field(default_factory=dict)
  server_log_tail: str = ""
  out_of_scope: Optional[Dict] = None  # the version's threshold file, when it has one
  elapsed_secs: float = 0.0
  output_dir: str = ""

  @property
  def verdict_path(self) -> str:
    return artifact_io.join(self.output_dir, VERDICT_FILE)

  @property
  def marker_path(self) -> str:
    return artifact_io.join(self.output_dir, BLESSED if self.blessed else NOT_BLESSED)

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"


def default_output_dir(model_base_path: str) -> str:
  """Beside the base path, not in it: a server would take any folder in it for a model."""
  return f"{model_base_path.rstrip('/')}_smoke_test"


def _start(backend: str, model_name: str, model_base_path: str, output_dir: str,
           batching_parameters, deadline_secs: float, num_tries: int, log):
  """A started runner and the model's AVAILABLE versions; retries a server that does not come
  up (a port taken meanwhile, a slow machine), never a model that fails to load."""
  numbers = itertools.count(1)

  def attempt():
    runner = runners.make_runner(
        backend, [runners.ServedModel(model_name, model_base_path)],
        os.path.join(output_dir, f"server-{next(numbers)}"),
        batching_parameters=batching_parameters)
    try:
      runner.start()
      versions = runners.wait_until_available(runner.grpc_target, runner.model_names,
                                              deadline_secs, runner.check_alive)
      return runner, versions[model_name]
    except BaseException as e:
      runner.stop()
      if isinstance(e, SmokeTestError):
        e.server_log_tail = runner.log_tail()
      raise

  def log_retry(state: tenacity.RetryCallState) -> None:
    log(f"attempt {state.attempt_number} of {num_tries} failed, retrying: "
        f"{state.outcome.exception()}")

  return tenacity.Retrying(retry=tenacity.retry_if_exception_type(ServerStartError),
                           stop=tenacity.stop_after_attempt(num_tries), reraise=True,
                           before_sleep=log_retry)(attempt)


def run_smoke_test(model_base_path: str, model_name: str, output_dir: Optional[str] = None,
                   backend: str = "auto", target: Optional[str] = None,
                   rest_target: Optional[str] = None, examples_file: Optional[str] = None,
                   batch_size: int = 8, latency_requests: int = 50,
                   deadline_secs: float = 300.0, num_tries: int = 5,
                   batching_parameters_file: Optional[str] = None,
                   rtol: float = checks_lib.RTOL, atol: float = checks_lib.ATOL,
                   expected_version: Optional[int] = None,
                   expected_oos_threshold: Optional[float] = None, log=print) -> Verdict:
  """Serves (or reaches) the model, checks every signature, writes and returns the verdict.

  With `expected_version`, a server that serves any other version does not bless it. With
  `batching_parameters_file`, the started server batches requests as that file says. A
  version with an out-of-scope threshold file must hold a valid one (and the expected
  threshold, when `expected_oos_threshold` is given).
  """
  if batch_size < 1 or latency_requests < 1 or num_tries < 1:
    raise ValueError("batch_size, latency_requests and num_tries must be >= 1")
  for name, value in (("target", target), ("rest_target", rest_target)):
    if value and not value.rsplit(":", 1)[-1].isdigit():
      raise ValueError(f"{name} must be host:port, got {value!r}")
  batching = (config_files.read_batching_parameters(batching_parameters_file)
              if batching_parameters_file else None)
  started = time.monotonic()
  output_dir = output_dir or default_output_dir(model_base_path)
  verdict = Verdict(False, model_name, model_base_path, TARGET_BACKEND if target else "",
                    output_dir=output_dir)
  runner = None
  try:
    if target:
      verdict.grpc_target = target
      host, port = target.rsplit(":", 1)
      # The Docker image's convention: REST on the port after gRPC (8500 -> 8501).
      verdict.rest_target = rest_target or f"{host}:{int(port) + 1}"
      versions = runners.wait_until_available(target, [model_name], deadline_secs)[model_name]
    else:
      verdict.backend = runners.choose_backend(backend)
      log(f"backend: {verdict.backend}")
      runner, versions = _start(verdict.backend, model_name, model_base_path, output_dir,
                                batching, deadline_secs, num_tries, log)
      verdict.grpc_target, verdict.rest_target = runner.grpc_target, runner.rest_target
    verdict.version = max(versions)
    if expected_version is not None and verdict.version != expected_version:
      raise SmokeTestError(f"the server serves version {verdict.version} of {model_name}, not "
                           f"the version {expected_version} under test")
    version_dir = versions_lib.version_dirs(model_base_path).get(verdict.version)
    if version_dir is None:
      raise SmokeTestError(f"the server serves version {verdict.version} of {model_name}, but "
                           f"{model_base_path} has no such version to compare with")
    verdict.out_of_scope = _checked_oos_threshold(version_dir, expected_oos_threshold)
    try:
      reference = SessionServable(version_dir)
    except ServableError as e:
      raise SmokeTestError(f"cannot load {version_dir} in-process: {e}") from None
    rest = RestClient(verdict.rest_target)
    grpc_client = GrpcClient(verdict.grpc_target)
    try:
      client = ModelClient(model_name, verdict.version, rest, grpc_client)
      examples = probes_lib.read_examples_for(reference, examples_file) if examples_file \
          else None
      probes = probes_lib.build_probes(reference, examples)
      verdict.probe_source = ", ".join(sorted({p.source for p in probes.values()}))
      verdict.checks = checks_lib.run_checks(client, reference, probes, batch_size, rtol, atol)
      failed = [c for c in verdict.checks if not c.ok]
      if failed:
        verdict.reason = f"{len(failed)} of {len(verdict.checks)} checks failed; first: " \
                         f"{failed[0].signature} over {failed[0].protocol} " \
                         f"({failed[0].api}, batch {failed[0].batch_size}): {failed[0].detail}"
      else:
        probe = probes.get(DEFAULT_SIGNATURE) or probes[sorted(probes)[0]]
        try:
          verdict.latency_ms = checks_lib.measure_latency(client, reference, probe, batch_size,
                                                          latency_requests)
          verdict.blessed = True
        except REQUEST_ERRORS as e:
          verdict.reason = f"a latency request failed: {error_text(e)}"
    finally:
      rest.close()
      grpc_client.close()
      reference.close()
  except SmokeTestError as e:
    verdict.reason = str(e)
    verdict.server_log_tail = e.server_log_tail
  finally:
    if runner is not None:
      if not verdict.blessed and not verdict.server_log_tail:
        verdict.server_log_tail = runner.log_tail()
      runner.stop()
  verdict.elapsed_secs = round(time.monotonic() - started, 3)
  write_verdict(verdict)
  return verdict


def _checked_oos_threshold(version_dir: str, expected: Optional[float]) -> Optional[Dict]:
  try:
    threshold = out_of_scope.read(version_dir)
  except out_of_scope.BadThresholdFile as e:
    raise SmokeTestError(str(e)) from None
  if expected is not None and (threshold is None or threshold.threshold != expected):
    found = f"threshold {threshold.threshold}" if threshold else "no such file"
    raise SmokeTestError(f"{artifact_io.join(version_dir, out_of_scope.PATH)}: expected the "
                         f"out-of-scope threshold {expected}, found {found}")
  return dataclasses.asdict(threshold) if threshold else None


def write_verdict(verdict: Verdict) -> None:
  tf.io.gfile.makedirs(verdict.output_dir)
  for marker in (BLESSED, NOT_BLESSED):
    stale = artifact_io.join(verdict.output_dir, marker)
    if tf.io.gfile.exists(stale):
      tf.io.gfile.remove(stale)
  artifact_io.write_atomic(verdict.verdict_path, verdict.to_json())
  artifact_io.write_atomic(verdict.marker_path, "")
