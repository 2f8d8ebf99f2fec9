"""TF Serving's Predict / Classify / Regress / MultiInference on one loaded version: the
checks each API makes, in the binary's order and words, and the results it builds.

Each API is a generator: it makes its checks, yields the `SessionRun` it needs, receives the
run's outputs and returns its answer. Whoever drives it decides where the session runs:
`run_steps` on the calling thread (gRPC handlers, warmup replay), `run_steps_async` from an
event loop that must not block while a batch forms (REST). So one copy of TF Serving's rules
serves every caller. `Checks` are the settings they obey: whether signatures' method names
are checked (--enable_signature_method_name_check) and the request size limits.
"""

import dataclasses
import threading
from typing import (Awaitable, Callable, Dict, Generator, Generic, List, Mapping, Optional,
                    Sequence, Tuple, TypeVar)

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import classification_pb2
from tensorflow_serving.apis import inference_pb2
from tensorflow_serving.apis import model_pb2
from tensorflow_serving.apis import regression_pb2

from export.warmup import DEFAULT_SIGNATURE, serialized_input
from serving.model_server.servable import Outputs, Servable as Handle, SessionRun
from serving.model_server.status import ServingError, invalid_argument
from serving.model_server import tensors
from serving.model_server.tensors import type_name

CLASSIFY_METHOD = tf.saved_model.CLASSIFY_METHOD_NAME
REGRESS_METHOD = tf.saved_model.REGRESS_METHOD_NAME
PREDICT_METHOD = tf.saved_model.PREDICT_METHOD_NAME

Answer = TypeVar("Answer")
Template = TypeVar("Template")


Steps = Generator[SessionRun, Outputs, Answer]


@dataclasses.dataclass(frozen=True)
class Checks:
  check_method_name: bool = False
  limits: tensors.Limits = tensors.Limits()


def run_steps(steps: Steps, run: Callable[[SessionRun], Outputs]) -> Answer:
  """Drives an API on this thread, running each session run it asks for with `run`."""
  try:
    needed = next(steps)
    while True:
      try:
        outputs = run(needed)
      except BaseException as error:  # raised where the API asked, so its `with` blocks unwind
        needed = steps.throw(error)
      else:
        needed = steps.send(outputs)
  except StopIteration as done:
    return done.value


async def run_steps_async(steps: Steps, run: Callable[[SessionRun], Awaitable[Outputs]]
                          ) -> Answer:
  """`run_steps` from an event loop: `run` is awaited."""
  try:
    needed = next(steps)
    while True:
      try:
        outputs = await run(needed)
      except BaseException as error:
        needed = steps.throw(error)
      else:
        needed = steps.send(outputs)
  except StopIteration as done:
    return done.value


@dataclasses.dataclass(frozen=True)
class Classifications:
  """A Classify answer, checked as TF Serving checks it, as arrays [batch, classes]: the gRPC
  answer is built from them as a proto (`to_proto`), the REST one straight as JSON."""
  classes: Optional[np.ndarray]
  scores: Optional[np.ndarray]

  def to_proto(self) -> classification_pb2.ClassificationResult:
    if self.classes is not None and self.scores is not None and self.classes.shape[1]:
      try:
        rows = [_WIRE_TEMPLATES.get(tuple(labels)) for labels in self.classes]
        if all(rows):
          return classification_pb2.ClassificationResult.FromString(b"".join(
              row.filled(scores) for row, scores in zip(rows, self.scores)))
      except UnicodeDecodeError:
        pass  # `labels()` names the example
    result = classification_pb2.ClassificationResult()
    size, count = (self.classes if self.classes is not None else self.scores).shape
    labels = self.labels()
    scores = self.scores.tolist() if self.scores is not None else None
    for i in range(size):
      classes = result.classifications.add().classes
      for c in range(count):
        entry = classes.add()
        if labels is not None:
          entry.label = labels[i][c]
        if scores is not None:
          entry.score = scores[i][c]
    return result

  def labels(self) -> Optional[List[List[str]]]:
    """The class labels as text, which the ClassificationResult proto requires."""
    if self.classes is None:
      return None
    rows = []
    for i, row in enumerate(self.classes):
      try:
        rows.append([label.decode("utf-8") for label in row])
      except UnicodeDecodeError:
        raise ServingError(grpc.StatusCode.INTERNAL,
                           f"a class label of example {i} is not UTF-8, which the "
                           f"ClassificationResult proto requires") from None
    return rows


def _varint(value: int) -> bytes:
  out = bytearray()
  while value > 0x7F:
    out.append(value & 0x7F | 0x80)
    value >>= 7
  out.append(value)
  return bytes(out)


def _length_delimited_field_1(payload: bytes) -> bytes:
  return b"\x0a" + _varint(len(payload)) + payload


class _ClassificationsWire:
  """One row of a ClassificationResult on the wire, its labels written once and its scores
  filled in for each answer, parsed by protobuf's C code in one call.

  A classifier answers the same labels in every row and every request, and adding its
  classes one by one through Python's protobuf API costs several times more than filling
  the row's bytes and parsing them (benchmarks/classify_answers.py). Each class is `label`
  (field 1) and `score` (field 2, a 4-byte little-endian float), so every score sits at a
  fixed offset of the row's bytes."""

  def __init__(self, labels: Sequence[bytes]):
    entries, offsets, size = [], [], 0
    for label in labels:
      label.decode("utf-8")  # a string field must be UTF-8, or protobuf refuses to parse it
      entry = _length_delimited_field_1(
          _length_delimited_field_1(label) + b"\x15" + b"\0\0\0\0")
      offsets.append(size + len(entry) - 4)
      entries.append(entry)
      size += len(entry)
    header = b"\x0a" + _varint(size)
    self._template = header + b"".join(entries)
    self._score_bytes = (np.array(offsets)[:, None] + len(header) + np.arange(4)).reshape(-1)

  def filled(self, scores: np.ndarray) -> bytes:
    row = bytearray(self._template)
    np.frombuffer(row, dtype=np.uint8)[self._score_bytes] = \
        scores.astype("<f4").view(np.uint8)
    return bytes(row)


class LabelTemplates(Generic[Template]):
  """Answer templates for rows of class labels (tuples of bytes), each built the second time
  its row is answered, at most `size` kept. A classifier that answers the same labels every
  time (an estimator's vocabulary) has its template from its second answer on; one whose
  rows keep changing (a top-k classifier's) never pays for templates it would not reuse:
  building one costs up to twice what writing the answer value by value does."""

  def __init__(self, build: Callable[[Tuple[bytes, ...]], Template], size: int = 64):
    self._build = build
    self._size = size
    self._templates: Dict[Tuple[bytes, ...], Template] = {}
    self._seen: Dict[Tuple[bytes, ...], None] = {}
    self._lock = threading.Lock()

  def get(self, labels: Tuple[bytes, ...]) -> Optional[Template]:
    """The row's template, None the first time the row is seen; `build`'s errors (labels
    that are not UTF-8) pass through."""
    template = self._templates.get(labels)
    if template is not None:
      return template
    with self._lock:
      if labels not in self._seen:
        self._keep(self._seen, labels, None)
        return None
    template = self._build(labels)
    with self._lock:
      self._keep(self._templates, labels, template)
    return template

  def _keep(self, entries: dict, labels, value) -> None:
    if len(entries) >= self._size:
      del entries[next(iter(entries))]  # the oldest
    entries[labels] = value


_WIRE_TEMPLATES = LabelTemplates(_ClassificationsWire)


@dataclasses.dataclass(frozen=True)
class Regressions:
  """A Regress answer, checked, as an array [batch]."""
  values: np.ndarray

  def to_proto(self) -> regression_pb2.RegressionResult:
    result = regression_pb2.RegressionResult()
    for value in self.values.tolist():
      result.regressions.add(value=value)
    return result


def model_spec(handle: Handle, signature_name: str) -> model_pb2.ModelSpec:
  """The answer's ModelSpec (MakeModelSpec): the version that answered, and the signature,
  `serving_default` when the request left it empty."""
  spec = model_pb2.ModelSpec(name=handle.name, signature_name=signature_name or DEFAULT_SIGNATURE)
  spec.version.value = handle.version
  return spec


def predict(handle: Handle, signature_name: str, inputs: Mapping[str, np.ndarray],
            output_filter: Sequence[str], checks: Checks
            ) -> Steps[Tuple[model_pb2.ModelSpec, Outputs]]:
  name = signature_name or DEFAULT_SIGNATURE
  signatures = handle.signatures
  if name not in signatures:
    raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                       f'Serving signature key "{name}" not found.')
  signature = signatures[name]
  if checks.check_method_name and signature.method_name not in (
      PREDICT_METHOD, CLASSIFY_METHOD, REGRESS_METHOD):
    raise ServingError(grpc.StatusCode.INTERNAL,
                       f"Expected prediction signature method_name to be one of "
                       f"{{{PREDICT_METHOD}, {CLASSIFY_METHOD}, {REGRESS_METHOD}}}. Was: "
                       f"{signature.method_name}")
  _check_predict_inputs(signature, inputs)
  output_keys = _output_keys(signature, output_filter)
  outputs = yield SessionRun(handle, name, tensors.decode_inputs(inputs, checks.limits),
                             output_keys, "Predict")
  return model_spec(handle, name), outputs


def classify(handle: Handle, signature_name: str, examples: Sequence[bytes], checks: Checks,
             api: Optional[str] = "Classify"
             ) -> Steps[Tuple[model_pb2.ModelSpec, Classifications]]:
  name = signature_name or DEFAULT_SIGNATURE
  signature = _find_signature(handle, name)
  _check_method_name(checks, signature, CLASSIFY_METHOD, "classification")
  input_key, classes_key, scores_key = _classification_keys(signature)
  batch = _examples_tensor(examples)
  keys = [k for k in (classes_key, scores_key) if k]
  outputs = yield SessionRun(handle, name, {input_key: batch}, keys, api)
  classes = outputs.get(classes_key) if classes_key else None
  scores = outputs.get(scores_key) if scores_key else None
  return model_spec(handle, name), _classification_result(len(batch), classes, scores)


def regress(handle: Handle, signature_name: str, examples: Sequence[bytes], checks: Checks,
            api: Optional[str] = "Regress"
            ) -> Steps[Tuple[model_pb2.ModelSpec, Regressions]]:
  name = signature_name or DEFAULT_SIGNATURE
  signature = _find_signature(handle, name)
  _check_method_name(checks, signature, REGRESS_METHOD, "regression")
  input_key, output_key = _regression_keys(signature)
  batch = _examples_tensor(examples)
  values = (yield SessionRun(handle, name, {input_key: batch}, [output_key], api))[output_key]
  return model_spec(handle, name), _regression_result(len(batch), values)


def multi_inference(handle: Handle, request: inference_pb2.MultiInferenceRequest,
                    checks: Checks) -> Steps[inference_pb2.MultiInferenceResponse]:
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
    if signature_name not in handle.signatures:
      raise invalid_argument(
          f"Requested signature not found in model graph: {signature_name}")
  examples = serialized_input(request.input)
  response = inference_pb2.MultiInferenceResponse()
  for task in request.tasks:
    result = response.results.add()
    # TF Serving counts no runtime latency for MultiInference's runs.
    if task.method_name == CLASSIFY_METHOD:
      spec, answer = yield from classify(handle, task.model_spec.signature_name, examples,
                                         checks, api=None)
      result.classification_result.CopyFrom(answer.to_proto())
    elif task.method_name == REGRESS_METHOD:
      spec, answer = yield from regress(handle, task.model_spec.signature_name, examples,
                                        checks, api=None)
      result.regression_result.CopyFrom(answer.to_proto())
    else:
      raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                         f"Unsupported signature method_name: {task.method_name}")
    result.model_spec.CopyFrom(spec)
  return response


def _check_method_name(checks: Checks, signature: meta_graph_pb2.SignatureDef, expected: str,
                       kind: str) -> None:
  if checks.check_method_name and signature.method_name != expected:
    raise invalid_argument(f"Expected {kind} signature method_name to be {expected}. Was: "
                           f"{signature.method_name}")


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
  for index, alias in enumerate(expected):
    info = signature.inputs[alias]
    if alias not in inputs:
      raise invalid_argument(
          f"Signature input alias: {alias}({info.name}) not found in request and no default "
          f"value provided. Inputs expected to be in the request {{{','.join(expected)}}}")
    want, got = tf.as_dtype(info.dtype), tensors.input_dtype(inputs[alias])
    if want != got:
      raise invalid_argument(f"Expects arg[{index}] to be {type_name(want)} but "
                             f"{type_name(got)} is provided")


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
  signatures = handle.signatures
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
                           scores: Optional[np.ndarray]) -> Classifications:
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
  return Classifications(classes, scores)


def _regression_result(num_examples: int, values: np.ndarray) -> Regressions:
  if not (values.ndim == 1 or (values.ndim == 2 and values.shape[1] == 1)):
    raise invalid_argument(f"Expected output Tensor shape to be either [batch_size] or "
                           f"[batch_size, 1] but got {_shape(values)}")
  if values.shape[0] != num_examples:
    raise invalid_argument(f"Input batch size did not match output batch size: "
                           f"{num_examples} vs. {values.shape[0]}")
  if tf.as_dtype(values.dtype) != tf.float32:
    raise invalid_argument(f"Expected output Tensor of DT_FLOAT.  Got: "
                           f"DT_{tf.as_dtype(values.dtype).name.upper()}")
  return Regressions(values.reshape(-1))
