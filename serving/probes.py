"""Requests that probe every signature of a version, built from evaluation examples.

By default they come from the version's own warmup records (the requests TF Serving replays
when it loads it); `load_examples` reads a file of tf.Examples instead. A signature the
warmup records do not cover is probed with the tf.Examples they (or the file) hold:
classify/regress signatures get the serialized examples; a predict signature gets, for each
input, the example feature of the same name (how an estimator's raw-feature receivers name
their inputs), or the serialized example when it has one lone string input.
"""

import csv
import dataclasses
import io
import json
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import prediction_log_pb2

from serving import json_tensor
from serving.errors import ProbeError, ServingError
from serving.server_core import CLASSIFY_METHOD, REGRESS_METHOD, WARMUP_FILE, serialized_input
from serving.servables import SessionServable

CLASSIFY, REGRESS, PREDICT = "classify", "regress", "predict"


@dataclasses.dataclass(frozen=True)
class Probe:
  """Rows of inputs for one signature: each row one example's slice of every input."""
  signature: str
  method: str
  rows: List[Dict[str, np.ndarray]]
  source: str

  def batch(self, size: int, offset: int = 0) -> Dict[str, np.ndarray]:
    """`size` rows from `offset`, cycling through the rows, stacked into input tensors."""
    picked = [self.rows[(offset + i) % len(self.rows)] for i in range(size)]
    return {key: np.stack([row[key] for row in picked]) for key in picked[0]}


def method_of(signature: meta_graph_pb2.SignatureDef) -> str:
  return {CLASSIFY_METHOD: CLASSIFY, REGRESS_METHOD: REGRESS}.get(signature.method_name,
                                                                   PREDICT)


def _object_scalar(value: bytes) -> np.ndarray:
  array = np.empty((), dtype=object)
  array[()] = value
  return array


def _example_rows(serialized: Sequence[bytes]) -> List[Dict[str, np.ndarray]]:
  return [{"inputs": _object_scalar(s)} for s in serialized]


def load_examples(path: str) -> List[tf.train.Example]:
  """tf.Examples from a TFRecord file (`.gz` for GZIP), JSON Lines of TF Serving's REST
  `examples` objects (`.jsonl`), or a CSV with a header (every column a bytes feature)."""
  if not tf.io.gfile.exists(path):
    raise ProbeError(f"{path}: no such examples file")
  lower = path.lower()
  if lower.endswith(".jsonl"):
    return _jsonl_examples(path)
  if lower.endswith(".csv"):
    return _csv_examples(path)
  compression = "GZIP" if lower.endswith(".gz") else None
  examples = []
  try:
    for number, record in enumerate(
        tf.data.TFRecordDataset(path, compression_type=compression).as_numpy_iterator(), 1):
      try:
        examples.append(tf.train.Example.FromString(record))
      except Exception as e:  # protobuf raises its own DecodeError type
        raise ProbeError(f"{path}: record {number} is not a tf.Example: {e}") from None
  except tf.errors.OpError as e:
    raise ProbeError(f"{path}: not a TFRecord file of tf.Examples: {e.message}") from None
  if not examples:
    raise ProbeError(f"{path}: holds no tf.Example")
  return examples


def _jsonl_examples(path: str) -> List[tf.train.Example]:
  examples = []
  with tf.io.gfile.GFile(path, "r") as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        examples.append(json_tensor.example_from_json(json.loads(line)))
      except (json.JSONDecodeError, ServingError) as e:
        raise ProbeError(f"{path}:{number}: not a TF Serving JSON example: {e}") from None
  if not examples:
    raise ProbeError(f"{path}: holds no example")
  return examples


def _csv_examples(path: str) -> List[tf.train.Example]:
  with tf.io.gfile.GFile(path, "r") as f:
    rows = list(csv.DictReader(io.StringIO(f.read())))
  if not rows:
    raise ProbeError(f"{path}: needs a header and at least one row")
  examples = []
  for row in rows:
    example = tf.train.Example()
    for name, value in row.items():
      example.features.feature[name].bytes_list.value.append((value or "").encode("utf-8"))
    examples.append(example)
  return examples


def warmup_logs(version_dir: str) -> List[prediction_log_pb2.PredictionLog]:
  path = f"{version_dir.rstrip('/')}/{WARMUP_FILE}"
  if not tf.io.gfile.exists(path):
    return []
  try:
    return [prediction_log_pb2.PredictionLog.FromString(r)
            for r in tf.data.TFRecordDataset(path).as_numpy_iterator()]
  except Exception as e:  # TFRecord and protobuf decoding errors alike
    raise ProbeError(f"{path}: unreadable warmup records: {e}") from None


def _rows_from_log(log: prediction_log_pb2.PredictionLog):
  """(signature, rows) pairs for the requests a warmup record holds, and its examples."""
  kind = log.WhichOneof("log_type")
  if kind == "predict_log":
    request = log.predict_log.request
    arrays = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
    sizes = {a.shape[0] if a.ndim else 0 for a in arrays.values()}
    if len(sizes) != 1 or 0 in sizes:
      return [], []
    # Slices, not items: an item of a string tensor is a bare bytes object, not an array.
    rows = [{k: a[i:i + 1].reshape(a.shape[1:]) for k, a in arrays.items()}
            for i in range(sizes.pop())]
    return [(request.model_spec.signature_name, rows)], []
  if kind in ("classify_log", "regress_log"):
    request = getattr(log, kind).request
    serialized = serialized_input(request.input)
    return [(request.model_spec.signature_name, _example_rows(serialized))], serialized
  if kind == "multi_inference_log":
    request = log.multi_inference_log.request
    serialized = serialized_input(request.input)
    return [(t.model_spec.signature_name, _example_rows(serialized)) for t in request.tasks], \
        serialized
  return [], []


def _feature_values(example: tf.train.Example, name: str, dtype: tf.DType, index: int,
                    signature: str) -> np.ndarray:
  feature = example.features.feature[name]
  kind = feature.WhichOneof("kind")
  values = list(getattr(feature, kind).value) if kind else []
  if dtype == tf.string:
    if kind not in ("bytes_list", None):
      raise ProbeError(f"signature {signature}: input {name!r} takes strings, but example "
                       f"{index} has a {kind} feature {name!r}")
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array
  if kind == "bytes_list":
    raise ProbeError(f"signature {signature}: input {name!r} takes {dtype.name}, but example "
                     f"{index} has a bytes feature {name!r}")
  return np.array(values, dtype=dtype.as_numpy_dtype)


def _rows_from_examples(name: str, signature: meta_graph_pb2.SignatureDef,
                        examples: Sequence[tf.train.Example]) -> List[Dict[str, np.ndarray]]:
  if method_of(signature) != PREDICT:
    return _example_rows([e.SerializeToString() for e in examples])
  features = sorted({f for e in examples for f in e.features.feature})
  rows = []
  for index, example in enumerate(examples):
    row = {}
    for alias, info in signature.inputs.items():
      dtype = tf.as_dtype(info.dtype)
      if alias in example.features.feature:
        values = _feature_values(example, alias, dtype, index, name)
        dims = [d.size for d in info.tensor_shape.dim]
        if len(dims) <= 1:
          if values.size != 1:
            raise ProbeError(f"signature {name}: input {alias!r} takes one value per example, "
                             f"but example {index} has {values.size}")
          values = values.reshape(())
        else:
          try:
            values = values.reshape(dims[1:])
          except ValueError:
            raise ProbeError(f"signature {name}: input {alias!r} takes rows shaped "
                             f"{dims[1:]}, but example {index} has {values.size} "
                             f"values") from None
        row[alias] = values
      elif len(signature.inputs) == 1 and dtype == tf.string:
        row[alias] = _object_scalar(example.SerializeToString())
      else:
        raise ProbeError(f"signature {name}: input {alias!r} is not a feature of the examples "
                         f"(they have {features}) and is not a lone tf.Example input")
    rows.append(row)
  return rows


def build_probes(servable: SessionServable,
                 examples: Optional[Sequence[tf.train.Example]] = None,
                 max_rows: int = 32) -> Dict[str, Probe]:
  """One probe per signature of the loaded version."""
  signatures: Mapping[str, meta_graph_pb2.SignatureDef] = servable.signatures
  probes: Dict[str, Probe] = {}
  pool = list(examples or [])
  if examples is None:
    logs = warmup_logs(servable.version_dir)
    found: Dict[str, List[Dict[str, np.ndarray]]] = {}
    for log in logs:
      pairs, serialized = _rows_from_log(log)
      pool.extend(tf.train.Example.FromString(s) for s in serialized)
      for signature, rows in pairs:
        found.setdefault(signature or "serving_default", []).extend(rows)
    for name, rows in found.items():
      if name in signatures and rows:
        probes[name] = Probe(name, method_of(signatures[name]), rows[:max_rows], "warmup")
  source = "examples file" if examples is not None else "warmup examples"
  for name in sorted(set(signatures) - set(probes)):
    if not pool:
      raise ProbeError(
          f"no request can be built for signature {name}: the version's warmup records do "
          f"not use it and hold no tf.Example; pass an examples file")
    rows = _rows_from_examples(name, signatures[name], pool[:max_rows])
    probes[name] = Probe(name, method_of(signatures[name]), rows, source)
  return probes
