"""How a model's versions are found and loaded, as TF Serving does it.

`aspired_versions`: the version dirs under a base path that its version policy asks for
(latest N, all, specific), with TF Serving's warnings and errors. `VersionLoader`: one
version loaded with the SavedModel loader (tags and session config as the flags say),
retried as --max_num_load_retries and --load_retry_interval_micros say, its session batched
when batching is on (batching.py), and warmed up by replaying its warmup records through the
APIs (--num_request_iterations_for_warmup times each), the load counted in the metrics. A
warmup record that fails fails the load.
"""

import dataclasses
import time
from typing import Dict, Optional, Sequence, Tuple

import grpc
import tenacity
import tensorflow as tf
from absl import logging
from tensorflow.core.protobuf import config_pb2
from tensorflow_serving.apis import prediction_log_pb2
from tensorflow_serving.config import model_server_config_pb2

from export import versions as versions_lib
from export import warmup
from export.servable import SERVE_TAG, ServableError, SessionServable
from serving.model_server import inference
from serving.model_server.batching import Batching
from serving.model_server.classify import classify
from serving.model_server.multi_inference import multi_inference
from serving.model_server.predict import predict
from serving.model_server.regress import regress
from serving.model_server.monitoring import Metrics
from serving.model_server.servable import DirectSession, Servable
from serving.model_server.status import ServingError, from_tf_error, invalid_argument


class NoVersions(ServingError):
  """A base path that is missing or holds no version the policy asks for."""


def aspired_versions(config: model_server_config_pb2.ModelConfig) -> Dict[int, str]:
  """Version -> dir for the versions under the base path that the version policy asks for;
  NoVersions, in TF Serving's words, when the base path is missing or none is there."""
  base = config.base_path
  if not tf.io.gfile.isdir(base):
    raise NoVersions(grpc.StatusCode.INVALID_ARGUMENT,
                     f"Could not find base path {base} for servable {config.name} with error "
                     f"NOT_FOUND: {base} not found")
  found = versions_lib.version_dirs(base)
  policy = config.model_version_policy
  choice = policy.WhichOneof("policy_choice")
  if choice == "all":
    chosen = sorted(found)
  elif choice == "specific":
    chosen = []
    for version in sorted(set(policy.specific.versions)):
      if version in found:
        chosen.append(version)
      else:
        logging.warning("Version %d of servable %s, which was requested to be served as a "
                        "'specific' version in the servable's version policy, was not found "
                        "in the file system", version, config.name)
  else:
    count = policy.latest.num_versions if choice == "latest" else 1
    chosen = sorted(found)[-max(count, 1):]
  if not chosen:
    raise NoVersions(grpc.StatusCode.NOT_FOUND,
                     f"No versions of servable {config.name} found under base path {base}. "
                     f"Did you forget to name your leaf directory as a number (eg. '/1/')?")
  return {version: found[version] for version in chosen}


@dataclasses.dataclass(frozen=True)
class LoadOptions:
  tags: Sequence[str] = (SERVE_TAG,)
  session_config: Optional[config_pb2.ConfigProto] = None
  enable_model_warmup: bool = True
  warmup_iterations: int = 1
  # A session callable is made per timeout (export/servable.py), and making one runs
  # Grappler, which costs more than a request: warmup makes those of every timeout the APIs
  # use (none, and the REST API's), so no first request pays for it.
  warmup_timeouts_ms: Tuple[Optional[int], ...] = (None,)
  max_num_load_retries: int = 5
  load_retry_interval_secs: float = 60.0


class VersionLoader:
  """Loads one version (a `manager.Loader`), its session batched when `batching` says so."""

  def __init__(self, options: LoadOptions, checks: inference.Checks, metrics: Metrics,
               batching: Optional[Batching] = None):
    self.options = options
    self._checks = checks
    self._metrics = metrics
    self._batching = batching

  def __call__(self, name: str, version: int, path: str) -> Servable:
    # Read and checked before the first attempt: a bad batching file is not worth a retry.
    batching_options = self._batching.options(path) if self._batching is not None else None
    attempts = self.options.max_num_load_retries + 1

    def log_failure(state: tenacity.RetryCallState) -> None:
      logging.error("Loading servable: {name: %s version: %d} failed: %s", name, version,
                    state.outcome.exception())
      if state.attempt_number < attempts:
        logging.info("Retrying of Loading servable: {name: %s version: %d} retry: %d", name,
                     version, state.attempt_number)

    servable = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(ServingError),
        stop=tenacity.stop_after_attempt(attempts),
        wait=tenacity.wait_fixed(max(self.options.load_retry_interval_secs, 0.0)),
        after=log_failure, reraise=True)(self._load_once, name, version, path,
                                         batching_options)
    logging.info("Successfully loaded servable version {name: %s version: %d}", name, version)
    return servable

  def _load_once(self, name: str, version: int, path: str, batching_options) -> Servable:
    started = time.perf_counter()
    try:
      loaded = SessionServable(path, self.options.tags, self.options.session_config)
    except ServableError as e:
      self._metrics.load(path, False, (time.perf_counter() - started) * 1e6)
      raise self._load_error(e, path) from None
    self._metrics.load(path, True, (time.perf_counter() - started) * 1e6)
    session = DirectSession(loaded)
    if self._batching is not None:
      session = self._batching.session(session, batching_options)
    servable = Servable(name, version, loaded, session, self._metrics)
    try:
      if self.options.enable_model_warmup:
        self._warm_up(servable)
    except ServingError:
      servable.close()
      raise
    return servable

  def _load_error(self, error: ServableError, path: str) -> ServingError:
    """The loader's error in the C++ SavedModel loader's words where Python's differ."""
    text = str(error)
    if "MetaGraphDef associated with tags" in text:
      return ServingError(grpc.StatusCode.NOT_FOUND,
                          f"Could not find meta graph def matching supplied tags: "
                          f"{{ {' '.join(self.options.tags)} }}. To inspect available tag-sets "
                          f"in the SavedModel, please use the SavedModel CLI: `saved_model_cli`")
    if "SavedModel file does not exist" in text:
      return ServingError(grpc.StatusCode.NOT_FOUND,
                          f"Could not find SavedModel .pb or .pbtxt at supplied export directory "
                          f"path: {path}. Check that the directory exists and that you have the "
                          f"right permissions for accessing it.")
    return from_tf_error(error)

  def _warm_up(self, servable: Servable) -> None:
    path = warmup.warmup_file(servable.version_dir)
    if not tf.io.gfile.exists(path):
      logging.info("No warmup data file found at %s", path)
      return
    count = 0
    try:
      for count, log in warmup.iter_records(path):
        for _ in range(self.options.warmup_iterations):
          try:
            for timeout_ms in self.options.warmup_timeouts_ms:
              self._replay(servable, log, timeout_ms)
          except ServingError as e:
            raise ServingError(e.code, f"warmup record {count} of {path} failed: "
                                       f"{e.message}") from None
    except warmup.CorruptWarmupFile as e:
      raise ServingError(grpc.StatusCode.DATA_LOSS, str(e)) from None
    except warmup.WarmupError as e:
      raise invalid_argument(str(e)) from None
    logging.info("Finished reading warmup data for model at %s. Number of warmup records "
                 "read: %d.", path, count)

  def _replay(self, servable: Servable, log: prediction_log_pb2.PredictionLog,
              timeout_ms: Optional[int]) -> None:
    try:
      kind, request = warmup.logged_request(log)
    except warmup.UnsupportedWarmupRecord as e:
      raise ServingError(grpc.StatusCode.UNIMPLEMENTED, str(e)) from None
    if kind == warmup.PREDICT:
      steps = predict(servable, request.model_spec.signature_name, dict(request.inputs),
                      request.output_filter, self._checks)
    elif kind == warmup.CLASSIFY:
      steps = classify(servable, request.model_spec.signature_name,
                       warmup.serialized_input(request.input), self._checks)
    elif kind == warmup.REGRESS:
      steps = regress(servable, request.model_spec.signature_name,
                      warmup.serialized_input(request.input), self._checks)
    elif kind == warmup.MULTI_INFERENCE:
      steps = multi_inference(servable, request, self._checks)
    else:
      return
    inference.answer(steps, timeout_ms)
