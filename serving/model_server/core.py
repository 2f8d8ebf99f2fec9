"""The models a server serves, and TF Serving's Predict / Classify / Regress / MultiInference /
GetModelMetadata / GetModelStatus over them, with TF Serving's checks, statuses and messages.

Models come from a ModelServerConfig: each a base path of numeric version directories, of
which the version policy picks the ones to load (by default the highest). Each version is
loaded with the SessionServable (TensorFlow's SavedModel loader, tag `serve`, main op and table
initializers run) and warmed up by replaying `assets.extra/tf_serving_warmup_requests` as TF
Serving does: at most 1000 records, and a record that fails fails the load.

As the real server does at start-up, `load()` fails when any version fails to load. Unlike the
real server, a base path with no version to load fails at once instead of waiting for one to
appear, so a bad model dir gives an error, never a hang.
"""

import dataclasses
import re
import threading
import time
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import grpc
import numpy as np
import tensorflow as tf
from absl import logging
from tensorflow.core.framework import tensor_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import classification_pb2
from tensorflow_serving.apis import get_model_metadata_pb2
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.apis import inference_pb2
from tensorflow_serving.apis import model_pb2
from tensorflow_serving.apis import prediction_log_pb2
from tensorflow_serving.apis import regression_pb2
from tensorflow_serving.config import model_server_config_pb2

from serving.errors import ServingError, invalid_argument, not_found
from serving.servables import ServableError, SessionServable

DEFAULT_SIGNATURE = "serving_default"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000
SIGNATURE_DEF_FIELD = "signature_def"
_VERSION_DIR = re.compile(r"\d+")
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


@dataclasses.dataclass(frozen=True)
class Handle:
  """A resolved request: which version of which model answers it."""
  name: str
  version: int
  servable: SessionServable

  def model_spec(self, signature_name: str) -> model_pb2.ModelSpec:
    """The answer's ModelSpec (MakeModelSpec): the version that answered, and the
    signature, `serving_default` when the request left it empty."""
    spec = model_pb2.ModelSpec(name=self.name, signature_name=signature_name or DEFAULT_SIGNATURE)
    spec.version.value = self.version
    return spec


def _tf_error(error: Exception) -> ServingError:
  if isinstance(error, ServingError):
    return error
  if isinstance(error, tf.errors.OpError):
    # The Python session re-raises the runtime's error with a traceback-style preamble; the
    # error it handled carries the message TF Serving would give.
    original = error.__context__
    if isinstance(original, tf.errors.OpError) and original.error_code == error.error_code:
      error = original
    return ServingError.from_code_number(error.error_code, error.message)
  cause = error.__cause__
  if isinstance(cause, tf.errors.OpError):
    return ServingError.from_code_number(cause.error_code, str(error))
  return ServingError(grpc.StatusCode.UNKNOWN, str(error))


def aspired_versions(config: model_server_config_pb2.ModelConfig) -> List[int]:
  """The versions under the base path that the model's version policy asks for."""
  base = config.base_path
  if not tf.io.gfile.isdir(base):
    raise not_found(f"Could not find base path {base} for servable {config.name}")
  found = sorted(int(n.rstrip("/")) for n in tf.io.gfile.listdir(base)
                 if _VERSION_DIR.fullmatch(n.rstrip("/")))
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
      versions = aspired_versions(config)
      model = _Model(config.name, config.base_path, dict(config.version_labels),
                     {v: _Version(v, f"{config.base_path.rstrip('/')}/{v}") for v in versions})
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
    for attempt in range(1, attempts + 1):
      self._set_state(version, _State.LOADING)
      try:
        servable = SessionServable(version.path)
      except ServableError as e:
        error = _tf_error(e)
      else:
        try:
          if self.options.enable_model_warmup:
            self._warm_up(Handle(model.name, version.version, servable))
        except ServingError as e:
          servable.close()
          error = e
        else:
          with self._lock:
            version.servable = servable
            version.state, version.error = _State.AVAILABLE, None
          logging.info("Successfully loaded servable version {name: %s version: %d}",
                       model.name, version.version)
          return
      logging.error("Loading servable {name: %s version: %d} failed (attempt %d of %d): %s",
                    model.name, version.version, attempt, attempts, error)
      if attempt < attempts:
        time.sleep(self.options.load_retry_interval_secs)
    self._set_state(version, _State.END, error)
    raise ServingError(error.code, f"Loading servable: {{name: {model.name} version: "
                                   f"{version.version}}} failed: {error}")

  def _set_state(self, version: _Version, state: int, error: ServingError = None) -> None:
    with self._lock:
      version.state, version.error = state, error

  def _warm_up(self, handle: Handle) -> None:
    path = f"{handle.servable.version_dir.rstrip('/')}/{WARMUP_FILE}"
    if not tf.io.gfile.exists(path):
      logging.info("No warmup data file found at %s", path)
      return
    count = 0
    try:
      for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
        count += 1
        if count > MAX_WARMUP_RECORDS:
          raise invalid_argument(f"Number of warmup records exceeds the maximum "
                                 f"({MAX_WARMUP_RECORDS}) at {path}")
        log = prediction_log_pb2.PredictionLog()
        try:
          log.ParseFromString(record)
        except Exception as e:  # protobuf raises its own DecodeError type
          raise invalid_argument(f"Failed to parse warmup record {count} from {path}: "
                                 f"{e}") from None
        try:
          self._replay(handle, log)
        except ServingError as e:
          raise ServingError(e.code, f"warmup record {count} of {path} failed: "
                                     f"{e.message}") from None
    except tf.errors.DataLossError as e:
      raise ServingError(grpc.StatusCode.DATA_LOSS,
                         f"{e.message}. Please verify your warmup data is in TFRecord "
                         f"format.") from None
    logging.info("Finished reading warmup data for model at %s. Number of warmup records "
                 "read: %d.", path, count)

  def _replay(self, handle: Handle, log: prediction_log_pb2.PredictionLog) -> None:
    kind = log.WhichOneof("log_type")
    if kind == "predict_log":
      request = log.predict_log.request
      self.predict_on(handle, request.model_spec.signature_name,
                      tensor_protos_to_arrays(request.inputs), request.output_filter)
    elif kind == "classify_log":
      request = log.classify_log.request
      self.classify_on(handle, request.model_spec.signature_name,
                       serialized_input(request.input))
    elif kind == "regress_log":
      request = log.regress_log.request
      self.regress_on(handle, request.model_spec.signature_name,
                      serialized_input(request.input))
    elif kind == "multi_inference_log":
      self.multi_inference_on(handle, log.multi_inference_log.request)
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
      raise _tf_error(e) from None
    except (TypeError, ValueError) as e:  # a feed that numpy/TensorFlow cannot convert
      raise invalid_argument(f"signature {signature_name}: {e}") from None

  def predict(self, spec: model_pb2.ModelSpec, inputs: Mapping[str, np.ndarray],
              output_filter: Sequence[str] = ()) -> Tuple[model_pb2.ModelSpec,
                                                          Dict[str, np.ndarray]]:
    return self.predict_on(self.handle(spec), spec.signature_name, inputs, output_filter)

  def predict_on(self, handle: Handle, signature_name: str, inputs: Mapping[str, np.ndarray],
                 output_filter: Sequence[str] = ()):
    name = signature_name or DEFAULT_SIGNATURE
    signatures = handle.servable.signatures
    if name not in signatures:
      raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                         f'Serving signature key "{name}" not found.')
    signature = signatures[name]
    _check_predict_inputs(signature, inputs)
    output_keys = _output_keys(signature, output_filter)
    outputs = self._run(handle, name, inputs, output_keys)
    return handle.model_spec(name), outputs

  def classify(self, spec: model_pb2.ModelSpec, examples: Sequence[bytes]):
    return self.classify_on(self.handle(spec), spec.signature_name, examples)

  def classify_on(self, handle: Handle, signature_name: str, examples: Sequence[bytes]
                  ) -> Tuple[model_pb2.ModelSpec, classification_pb2.ClassificationResult]:
    name = signature_name or DEFAULT_SIGNATURE
    signature = _find_signature(handle, name)
    input_key, classes_key, scores_key = _classification_keys(signature)
    batch = _examples_tensor(examples)
    keys = [k for k in (classes_key, scores_key) if k]
    outputs = self._run(handle, name, {input_key: batch}, keys)
    classes = outputs.get(classes_key) if classes_key else None
    scores = outputs.get(scores_key) if scores_key else None
    return handle.model_spec(name), _classification_result(len(batch), classes, scores)

  def regress(self, spec: model_pb2.ModelSpec, examples: Sequence[bytes]):
    return self.regress_on(self.handle(spec), spec.signature_name, examples)

  def regress_on(self, handle: Handle, signature_name: str, examples: Sequence[bytes]
                 ) -> Tuple[model_pb2.ModelSpec, regression_pb2.RegressionResult]:
    name = signature_name or DEFAULT_SIGNATURE
    signature = _find_signature(handle, name)
    input_key, output_key = _regression_keys(signature)
    batch = _examples_tensor(examples)
    values = self._run(handle, name, {input_key: batch}, [output_key])[output_key]
    return handle.model_spec(name), _regression_result(len(batch), values)

  def multi_inference(self, request: inference_pb2.MultiInferenceRequest):
    if not request.tasks:
      raise invalid_argument("MultiInferenceRequest has no tasks")
    return self.multi_inference_on(self.handle(request.tasks[0].model_spec), request)

  def multi_inference_on(self, handle: Handle, request: inference_pb2.MultiInferenceRequest
                         ) -> inference_pb2.MultiInferenceResponse:
    seen = set()
    for task in request.tasks:
      if not task.model_spec.name:
        raise invalid_argument("Found ModelSpec with an empty model name.")
      if task.model_spec.name != request.tasks[0].model_spec.name:
        raise invalid_argument("All ModelSpecs in a MultiInferenceRequest must access the "
                               "same model name.")
      signature_name = task.model_spec.signature_name or DEFAULT_SIGNATURE
      if signature_name in seen:
        raise invalid_argument(f"Duplicate evaluation of signature: {signature_name}")
      seen.add(signature_name)
      if signature_name not in handle.servable.signatures:
        raise invalid_argument(
            f"Requested signature not found in model graph: {signature_name}")
    examples = serialized_input(request.input)
    response = inference_pb2.MultiInferenceResponse()
    for task in request.tasks:
      result = response.results.add()
      if task.method_name == CLASSIFY_METHOD:
        spec, answer = self.classify_on(handle, task.model_spec.signature_name, examples)
        result.classification_result.CopyFrom(answer)
      elif task.method_name == REGRESS_METHOD:
        spec, answer = self.regress_on(handle, task.model_spec.signature_name, examples)
        result.regression_result.CopyFrom(answer)
      else:
        raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                           f"Unsupported signature method_name: {task.method_name}")
      result.model_spec.CopyFrom(spec)
    return response


# ---------------------------------------------------------------------------------------------
# TF Serving's per-API checks


def _check_predict_inputs(signature: meta_graph_pb2.SignatureDef,
                          inputs: Mapping[str, np.ndarray]) -> None:
  expected, sent = sorted(signature.inputs), sorted(inputs)
  if len(sent) != len(expected):
    extra = sorted(set(sent) - set(expected))
    missing = sorted(set(expected) - set(sent))
    raise invalid_argument(
        f"input size does not match signature: {len(sent)}!={len(expected)} "
        f"len({{{','.join(sent)}}}) != len({{{','.join(expected)}}}). Sent extra: "
        f"{{{','.join(extra)}}}. Missing but required: {{{','.join(missing)}}}.")
  for index, alias in enumerate(signature.inputs):
    info = signature.inputs[alias]
    if alias not in inputs:
      raise invalid_argument(
          f"Signature input alias: {alias}({info.name}) not found in request and no default "
          f"value provided. Inputs expected to be in the request {{{','.join(expected)}}}")
    want, got = tf.as_dtype(info.dtype), tf.as_dtype(inputs[alias].dtype)
    if want != got:
      raise invalid_argument(f"Expects arg[{index}] to be {want.name} but {got.name} is "
                             f"provided (input {alias!r})")


def _output_keys(signature: meta_graph_pb2.SignatureDef, output_filter: Sequence[str]):
  keys: List[str] = []
  for alias in output_filter:
    if alias not in signature.outputs:
      raise invalid_argument(
          f"output tensor alias not found in signature: {alias} Outputs expected to be in the "
          f"set {{{','.join(sorted(signature.outputs))}}}.")
    if alias in keys:
      raise invalid_argument(f"duplicate output tensor alias: {alias}")
    keys.append(alias)
  return keys or list(signature.outputs)


def _find_signature(handle: Handle, name: str) -> meta_graph_pb2.SignatureDef:
  signatures = handle.servable.signatures
  if name not in signatures:
    raise invalid_argument(f"No signature was found with the name: {name}")
  return signatures[name]


def _classification_keys(signature: meta_graph_pb2.SignatureDef):
  if len(signature.inputs) != 1:
    raise invalid_argument("Expected one input Tensor.")
  if len(signature.outputs) not in (1, 2):
    raise invalid_argument(
        f"Expected one or two output Tensors, found {len(signature.outputs)}")
  if "inputs" not in signature.inputs:
    raise invalid_argument(f"No classification inputs found in SignatureDef: {signature}")
  classes = "classes" if "classes" in signature.outputs else None
  scores = "scores" if "scores" in signature.outputs else None
  if not classes and not scores:
    raise invalid_argument(
        f'Expected classification signature outputs to contain at least one of "classes" or '
        f'"scores". Signature was: {signature}')
  return "inputs", classes, scores


def _regression_keys(signature: meta_graph_pb2.SignatureDef):
  if len(signature.inputs) != 1:
    raise invalid_argument("Expected one input Tensor.")
  if len(signature.outputs) != 1:
    raise invalid_argument("Expected one output Tensor.")
  if "inputs" not in signature.inputs:
    raise invalid_argument(f"No regression inputs found in SignatureDef: {signature}")
  if "outputs" not in signature.outputs:
    raise invalid_argument(f"No regression outputs found in SignatureDef: {signature}")
  return "inputs", "outputs"


def _examples_tensor(examples: Sequence[bytes]) -> np.ndarray:
  if not examples:
    raise invalid_argument("Input is empty.")
  batch = np.empty(len(examples), dtype=object)
  batch[:] = list(examples)
  return batch


def _shape(array: np.ndarray) -> str:
  return "[" + ",".join(str(d) for d in array.shape) + "]"


def _classification_result(num_examples: int, classes: Optional[np.ndarray],
                           scores: Optional[np.ndarray]
                           ) -> classification_pb2.ClassificationResult:
  for name, tensor, dtype in (("classes", classes, tf.string), ("scores", scores, tf.float32)):
    if tensor is None:
      continue
    if tensor.ndim != 2:
      raise invalid_argument(f"Expected Tensor shape: [batch_size num_classes] but got "
                             f"{_shape(tensor)}")
    if tf.as_dtype(tensor.dtype) != dtype:
      raise invalid_argument(f"Expected {name} Tensor of DT_{dtype.name.upper()}. Got: "
                             f"DT_{tf.as_dtype(tensor.dtype).name.upper()}")
    if tensor.shape[0] != num_examples:
      raise invalid_argument(f"Expected {name} output batch size of {num_examples}. Got: "
                             f"{tensor.shape[0]}")
  if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
    raise invalid_argument(f"Tensors class and score should match in dim_size(1). Got "
                           f"{classes.shape[1]} vs. {scores.shape[1]}")
  num_classes = (classes if classes is not None else scores).shape[1]
  result = classification_pb2.ClassificationResult()
  score_rows = scores.tolist() if scores is not None else None
  for i in range(num_examples):
    entries = [{} for _ in range(num_classes)]
    if classes is not None:
      for c, label in enumerate(classes[i]):
        try:
          entries[c]["label"] = label.decode("utf-8")
        except UnicodeDecodeError:
          raise ServingError(grpc.StatusCode.INTERNAL,
                             f"class label {label!r} (example {i}, class {c}) is not UTF-8, "
                             f"which the ClassificationResult proto requires") from None
    if score_rows is not None:
      for c, score in enumerate(score_rows[i]):
        entries[c]["score"] = score
    result.classifications.add().classes.extend(
        classification_pb2.Class(**entry) for entry in entries)
  return result


def _regression_result(num_examples: int, values: np.ndarray
                       ) -> regression_pb2.RegressionResult:
  if not (values.ndim == 1 or (values.ndim == 2 and values.shape[1] == 1)):
    raise invalid_argument(f"Expected output Tensor shape to be either [batch_size] or "
                           f"[batch_size, 1] but got {_shape(values)}")
  if values.shape[0] != num_examples:
    raise invalid_argument(f"Input batch size did not match output batch size: "
                           f"{num_examples} vs. {values.shape[0]}")
  if tf.as_dtype(values.dtype) != tf.float32:
    raise invalid_argument(f"Expected output Tensor of DT_FLOAT.  Got: "
                           f"DT_{tf.as_dtype(values.dtype).name.upper()}")
  result = regression_pb2.RegressionResult()
  for value in values.reshape(-1).tolist():
    result.regressions.add(value=value)
  return result


# ---------------------------------------------------------------------------------------------
# protos <-> numpy


def serialized_input(request_input) -> List[bytes]:
  """An Input proto's examples, serialized, each prefixed with the context (a proto merge)."""
  kind = request_input.WhichOneof("kind")
  if kind == "example_list":
    return [e.SerializeToString() for e in request_input.example_list.examples]
  if kind == "example_list_with_context":
    listed = request_input.example_list_with_context
    context = listed.context.SerializeToString()
    return [context + e.SerializeToString() for e in listed.examples]
  return []


def tensor_protos_to_arrays(protos: Mapping[str, object]) -> Dict[str, np.ndarray]:
  arrays = {}
  for alias, proto in protos.items():
    try:
      arrays[alias] = tf.make_ndarray(proto)
    except (TypeError, ValueError) as e:
      raise invalid_argument(f"tensor parsing error: {alias}: {e}") from None
  return arrays


# Tensor::AsProtoField: values in the typed repeated field, as TF Serving answers Predict.
_PROTO_FIELDS = {
    tf.float32: "float_val", tf.float64: "double_val", tf.int32: "int_val",
    tf.int16: "int_val", tf.int8: "int_val", tf.uint8: "int_val", tf.uint16: "int_val",
    tf.int64: "int64_val", tf.bool: "bool_val", tf.string: "string_val",
    tf.uint32: "uint32_val", tf.uint64: "uint64_val",
}


def array_to_tensor_proto(array: np.ndarray):
  dtype = tf.as_dtype(array.dtype)
  proto = tensor_pb2.TensorProto(dtype=dtype.as_datatype_enum)
  for size in array.shape:
    proto.tensor_shape.dim.add(size=size)
  if dtype == tf.float16:
    proto.half_val.extend(array.view(np.uint16).reshape(-1).tolist())
  elif dtype in _PROTO_FIELDS:
    getattr(proto, _PROTO_FIELDS[dtype]).extend(array.reshape(-1).tolist())
  else:
    proto.tensor_content = np.ascontiguousarray(array).tobytes()
  return proto
