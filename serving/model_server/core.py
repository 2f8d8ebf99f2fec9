"""The models a server serves, and TF Serving's APIs over them, with its statuses and messages.

Models come from a ModelServerConfig: each a base path of numeric version directories
(`export.versions`), of which the version policy picks the ones to load (by default the
highest). Each version is loaded with the SessionServable (TensorFlow's SavedModel loader, tag
`serve`, main op and table initializers run) and warmed up by replaying its warmup records as
TF Serving does: at most 1000 records, and a record that fails fails the load. The APIs
themselves are in `inference.py`; this module resolves which loaded version answers.

As the real server does at start-up, `load()` fails when any version fails to load. Unlike the
real server, a base path with no version to load fails at once instead of waiting for one to
appear, so a bad model dir gives an error, never a hang.
"""

import dataclasses
import threading
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import grpc
import numpy as np
import tenacity
import tensorflow as tf
from absl import logging
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import classification_pb2
from tensorflow_serving.apis import get_model_metadata_pb2
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.apis import inference_pb2
from tensorflow_serving.apis import model_pb2
from tensorflow_serving.apis import prediction_log_pb2
from tensorflow_serving.apis import regression_pb2
from tensorflow_serving.config import model_server_config_pb2

from export import versions as versions_lib
from export import warmup
from export.servable import ServableError, SessionServable
from export.warmup import DEFAULT_SIGNATURE
from serving.model_server import inference
from serving.model_server.inference import Handle
from serving.model_server.status import ServingError, from_tf_error, invalid_argument, not_found
from serving.model_server.tensors import tensor_protos_to_arrays

SIGNATURE_DEF_FIELD = "signature_def"
_State = get_model_status_pb2.ModelVersionStatus.State


@dataclasses.dataclass(frozen=True)
class CoreOptions:
  """`max_batch_size` is set when batching is on (TF Serving's --enable_batching)."""
  max_batch_size: Optional[int] = None
  enable_model_warmup: bool = True
  max_num_load_retries: int = 5
  load_retry_interval_secs: float = 60.0


@dataclasses.dataclass
class _Version:
  version: int
  path: str
  state: int = _State.START
  error: Optional[ServingError] = None
  servable: Optional[SessionServable] = None


@dataclasses.dataclass
class _Model:
  name: str
  base_path: str
  labels: Mapping[str, int]
  versions: Dict[int, _Version]


def aspired_versions(config: model_server_config_pb2.ModelConfig) -> List[int]:
  """The versions under the base path that the model's version policy asks for."""
  base = config.base_path
  if not tf.io.gfile.isdir(base):
    raise not_found(f"Could not find base path {base} for servable {config.name}")
  found = sorted(versions_lib.version_dirs(base))
  policy = config.model_version_policy
  choice = policy.WhichOneof("policy_choice")
  if choice == "all":
    chosen = found
  elif choice == "specific":
    wanted = sorted(set(policy.specific.versions))
    missing = [v for v in wanted if v not in found]
    if missing:
      raise not_found(f"Versions {missing} of servable {config.name} asked for by its "
                      f"version policy are not under base path {base} (found {found})")
    chosen = wanted
  else:
    count = policy.latest.num_versions if choice == "latest" else 1
    chosen = found[-max(count, 1):]
  if not chosen:
    raise not_found(f"No versions of servable {config.name} found under base path {base}. "
                    f"Did you forget to name your leaf directory as a number (eg. '/1/')?")
  return chosen


def _check_config(config: model_server_config_pb2.ModelServerConfig) -> None:
  if config.WhichOneof("config") != "model_config_list":
    raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                       "only model_config_list configs are served (no custom_model_config)")
  names = [m.name for m in config.model_config_list.config]
  if not names:
    raise invalid_argument("the model config lists no model")
  for model in config.model_config_list.config:
    if not model.name or not model.base_path:
      raise invalid_argument(f"every model config needs a name and a base_path, got: "
                             f"{model}".strip())
    if model.model_platform not in ("", "tensorflow"):
      raise invalid_argument(f"model {model.name}: platform {model.model_platform!r} is not "
                             f"served here, only 'tensorflow'")
  duplicates = sorted({n for n in names if names.count(n) > 1})
  if duplicates:
    raise invalid_argument(f"model names must be unique, repeated: {duplicates}")


class ServerCore:
  """Loads the configured models and answers TF Serving's APIs on them (thread-safe)."""

  def __init__(self, config: model_server_config_pb2.ModelServerConfig,
               options: CoreOptions = CoreOptions()):
    _check_config(config)
    self.options = options
    self._config = config
    self._lock = threading.Lock()
    self._models: Dict[str, _Model] = {}

  @property
  def model_names(self) -> List[str]:
    return [m.name for m in self._config.model_config_list.config]

  # -- loading ---------------------------------------------------------------------------------

  def load(self) -> None:
    """Loads every aspired version; raises the first failure, as TF Serving fails to start."""
    for config in self._config.model_config_list.config:
      dirs = versions_lib.version_dirs(config.base_path)
      model = _Model(config.name, config.base_path, dict(config.version_labels),
                     {v: _Version(v, dirs[v]) for v in aspired_versions(config)})
      with self._lock:
        self._models[config.name] = model
    for model in self._models.values():
      for version in model.versions.values():
        self._load_version(model, version)
      for label, number in model.labels.items():
        if number not in model.versions or model.versions[number].state != _State.AVAILABLE:
          raise ServingError(
              grpc.StatusCode.FAILED_PRECONDITION,
              f"Request to assign label to version {number} of model {model.name}, which is "
              f"not currently available for inference (label {label!r})")

  def _load_version(self, model: _Model, version: _Version) -> None:
    attempts = self.options.max_num_load_retries + 1

    def log_failure(state: tenacity.RetryCallState) -> None:
      logging.error("Loading servable {name: %s version: %d} failed (attempt %d of %d): %s",
                    model.name, version.version, state.attempt_number, attempts,
                    state.outcome.exception())

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(ServingError),
        stop=tenacity.stop_after_attempt(attempts),
        wait=tenacity.wait_fixed(self.options.load_retry_interval_secs),
        after=log_failure, reraise=True)
    try:
      servable = retrying(self._load_once, model, version)
    except ServingError as error:
      self._set_state(version, _State.END, error)
      raise ServingError(error.code, f"Loading servable: {{name: {model.name} version: "
                                     f"{version.version}}} failed: {error}") from None
    with self._lock:
      version.servable = servable
      version.state, version.error = _State.AVAILABLE, None
    logging.info("Successfully loaded servable version {name: %s version: %d}",
                 model.name, version.version)

  def _load_once(self, model: _Model, version: _Version) -> SessionServable:
    self._set_state(version, _State.LOADING)
    try:
      servable = SessionServable(version.path)
    except ServableError as e:
      raise from_tf_error(e) from None
    try:
      if self.options.enable_model_warmup:
        self._warm_up(Handle(model.name, version.version, servable))
    except ServingError:
      servable.close()
      raise
    return servable

  def _set_state(self, version: _Version, state: int, error: ServingError = None) -> None:
    with self._lock:
      version.state, version.error = state, error

  def _warm_up(self, handle: Handle) -> None:
    path = warmup.warmup_file(handle.servable.version_dir)
    if not tf.io.gfile.exists(path):
      logging.info("No warmup data file found at %s", path)
      return
    count = 0
    try:
      for count, log in warmup.iter_records(path):
        try:
          self._replay(handle, log)
        except ServingError as e:
          raise ServingError(e.code, f"warmup record {count} of {path} failed: "
                                     f"{e.message}") from None
    except warmup.CorruptWarmupFile as e:
      raise ServingError(grpc.StatusCode.DATA_LOSS, str(e)) from None
    except warmup.WarmupError as e:
      raise invalid_argument(str(e)) from None
    logging.info("Finished reading warmup data for model at %s. Number of warmup records "
                 "read: %d.", path, count)

  def _replay(self, handle: Handle, log: prediction_log_pb2.PredictionLog) -> None:
    kind = log.WhichOneof("log_type")
    if kind == "predict_log":
      request = log.predict_log.request
      inference.predict(handle, request.model_spec.signature_name,
                        tensor_protos_to_arrays(request.inputs), request.output_filter,
                        self._run)
    elif kind == "classify_log":
      request = log.classify_log.request
      inference.classify(handle, request.model_spec.signature_name,
                         warmup.serialized_input(request.input), self._run)
    elif kind == "regress_log":
      request = log.regress_log.request
      inference.regress(handle, request.model_spec.signature_name,
                        warmup.serialized_input(request.input), self._run)
    elif kind == "multi_inference_log":
      inference.multi_inference(handle, log.multi_inference_log.request, self._run)
    elif kind is not None:
      raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                         f"Unsupported log_type for warmup: {kind}")

  def close(self) -> None:
    with self._lock:
      for model in self._models.values():
        for version in model.versions.values():
          if version.servable is not None:
            version.servable.close()
            version.servable = None
            version.state = _State.END

  # -- lookup ----------------------------------------------------------------------------------

  def handle(self, spec: model_pb2.ModelSpec) -> Handle:
    """The loaded version a ModelSpec asks for (ServerCore::GetServableHandle)."""
    if not spec.name:
      raise invalid_argument("ModelSpec has no name specified.")
    choice = spec.WhichOneof("version_choice")
    with self._lock:
      model = self._models.get(spec.name)
      if choice == "version_label":
        number = model.labels.get(spec.version_label) if model else None
        if number is None:
          raise invalid_argument(
              f"Unrecognized servable version label: {spec.version_label}")
        described = f"Specific({spec.name}, {number})"
      elif choice == "version":
        number, described = spec.version.value, f"Specific({spec.name}, {spec.version.value})"
      else:
        number, described = None, f"Latest({spec.name})"
      available = {v.version: v for v in (model.versions.values() if model else ())
                   if v.state == _State.AVAILABLE}
      if number is None and available:
        number = max(available)
      if number not in available:
        raise not_found(f"Servable not found for request: {described}")
      return Handle(spec.name, number, available[number].servable)

  def signature_inputs(self, spec: model_pb2.ModelSpec, signature_name: str
                       ) -> Mapping[str, meta_graph_pb2.TensorInfo]:
    """The REST handler's GetInfoMap: the inputs of a signature, for decoding JSON."""
    signatures = self.handle(spec).servable.signatures
    name = signature_name or DEFAULT_SIGNATURE
    if name not in signatures:
      raise invalid_argument(f'Serving signature name: "{name}" not found in signature def')
    return signatures[name].inputs

  # -- status and metadata ---------------------------------------------------------------------

  def model_status(self, request: get_model_status_pb2.GetModelStatusRequest
                   ) -> get_model_status_pb2.GetModelStatusResponse:
    if not request.HasField("model_spec"):
      raise invalid_argument("Missing ModelSpec")
    spec = request.model_spec
    with self._lock:
      model = self._models.get(spec.name)
      versions = dict(model.versions) if model else {}
      if spec.HasField("version"):
        wanted = spec.version.value
        if wanted not in versions:
          raise not_found(f"Could not find version {wanted} of model {spec.name}")
        versions = {wanted: versions[wanted]}
      elif not versions:
        raise not_found(f"Could not find any versions of model {spec.name}")
      response = get_model_status_pb2.GetModelStatusResponse()
      for number in sorted(versions):
        version = versions[number]
        status = response.model_version_status.add(version=number, state=version.state)
        status.status.SetInParent()  # TF Serving always sends the status, OK included
        if version.error is not None:
          status.status.error_code = version.error.code.value[0]
          status.status.error_message = version.error.message
    return response

  def model_metadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest
                     ) -> get_model_metadata_pb2.GetModelMetadataResponse:
    if not request.HasField("model_spec"):
      raise invalid_argument("Missing ModelSpec")
    if not request.metadata_field:
      raise invalid_argument("GetModelMetadataRequest must specify at least one "
                             "metadata_field")
    for field in request.metadata_field:
      if field != SIGNATURE_DEF_FIELD:
        raise invalid_argument(f"Metadata field {field} is not supported")
    handle = self.handle(request.model_spec)
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = handle.name
    response.model_spec.version.value = handle.version
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for name, signature in handle.servable.signatures.items():
      signature_map.signature_def[name].CopyFrom(signature)
    response.metadata[SIGNATURE_DEF_FIELD].Pack(signature_map)
    return response

  # -- inference -------------------------------------------------------------------------------

  def _run(self, handle: Handle, signature_name: str, inputs: Mapping[str, np.ndarray],
           output_keys: Sequence[str]) -> Dict[str, np.ndarray]:
    if self.options.max_batch_size is not None:
      for array in inputs.values():
        if array.ndim and array.shape[0] > self.options.max_batch_size:
          raise invalid_argument(f"Task size {array.shape[0]} is larger than maximum input "
                                 f"batch size {self.options.max_batch_size}")
    input_keys = sorted(inputs)
    try:
      run = handle.servable.callable(signature_name, input_keys, output_keys)
      return dict(zip(output_keys, run(*[inputs[k] for k in input_keys])))
    except (tf.errors.OpError, ServableError) as e:
      raise from_tf_error(e) from None
    except (TypeError, ValueError) as e:  # a feed that numpy/TensorFlow cannot convert
      raise invalid_argument(f"signature {signature_name}: {e}") from None

  def predict(self, spec: model_pb2.ModelSpec, inputs: Mapping[str, np.ndarray],
              output_filter: Sequence[str] = ()
              ) -> Tuple[model_pb2.ModelSpec, Dict[str, np.ndarray]]:
    return inference.predict(self.handle(spec), spec.signature_name, inputs, output_filter,
                             self._run)

  def classify(self, spec: model_pb2.ModelSpec, examples: Sequence[bytes]
               ) -> Tuple[model_pb2.ModelSpec, classification_pb2.ClassificationResult]:
    return inference.classify(self.handle(spec), spec.signature_name, examples, self._run)

  def regress(self, spec: model_pb2.ModelSpec, examples: Sequence[bytes]
              ) -> Tuple[model_pb2.ModelSpec, regression_pb2.RegressionResult]:
    return inference.regress(self.handle(spec), spec.signature_name, examples, self._run)

  def multi_inference(self, request: inference_pb2.MultiInferenceRequest
                      ) -> inference_pb2.MultiInferenceResponse:
    if not request.tasks:
      raise invalid_argument("MultiInferenceRequest has no tasks")
    return inference.multi_inference(self.handle(request.tasks[0].model_spec), request,
                                     self._run)
