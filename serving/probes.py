"""Requests that probe every signature of a version, built from evaluation examples.

By default they come from the version's own warmup records (the requests TF Serving replays
when it loads it, read by `export.warmup`); an examples file (read by `export.examples`, the
reader the optimizer's guard uses, typed by what the model parses) replaces them. A signature
the warmup records do not cover is probed with the tf.Examples they (or the file) hold:
classify/regress signatures get the serialized examples; a predict signature gets, for each
input, the example feature of the same name (how an estimator's raw-feature receivers name
their inputs), or the serialized example when it has one lone string input.
"""

import dataclasses
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2

from export import examples as examples_lib
from export import warmup
from export.servable import SessionServable
from serving.clients import CLASSIFY, PREDICT, REGRESS
from serving.errors import ProbeError


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
  return {tf.saved_model.CLASSIFY_METHOD_NAME: CLASSIFY,
          tf.saved_model.REGRESS_METHOD_NAME: REGRESS}.get(signature.method_name, PREDICT)


def read_examples_for(servable: SessionServable, path: str) -> List[tf.train.Example]:
  """The examples file's examples, typed by what the version's parser reads."""
  types = {name: spec.dtype
           for name, spec in examples_lib.parse_spec(servable.graph_def).items()}
  try:
    return examples_lib.read_examples(path, types)
  except examples_lib.ExamplesError as e:
    raise ProbeError(str(e)) from None


def _object_scalar(value: bytes) -> np.ndarray:
  array = np.empty((), dtype=object)
  array[()] = value
  return array


def _example_rows(serialized: Sequence[bytes]) -> List[Dict[str, np.ndarray]]:
  return [{"inputs": _object_scalar(s)} for s in serialized]


def _rows_of(request: warmup.WarmupRequest):
  """(signature, rows) pairs for the requests a warmup record holds."""
  if request.kind == warmup.PREDICT:
    arrays = request.inputs
    sizes = {a.shape[0] if a.ndim else 0 for a in arrays.values()}
    if len(sizes) != 1 or 0 in sizes:
      return []
    # Slices, not items: an item of a string tensor is a bare bytes object, not an array.
    rows = [{k: a[i:i + 1].reshape(a.shape[1:]) for k, a in arrays.items()}
            for i in range(sizes.pop())]
    return [(request.signatures[0], rows)]
  return [(name, _example_rows(request.examples)) for name in request.signatures]


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
                 max_rows: int = 32,
                 signature_names: Optional[Sequence[str]] = None) -> Dict[str, Probe]:
  """One probe per signature of the loaded version (or of those named)."""
  signatures: Mapping[str, meta_graph_pb2.SignatureDef] = {
      name: signature for name, signature in servable.signatures.items()
      if signature_names is None or name in signature_names}
  probes: Dict[str, Probe] = {}
  pool = list(examples or [])
  if examples is None:
    try:
      requests = warmup.read_requests(servable.version_dir)
    except warmup.WarmupError as e:
      raise ProbeError(f"unreadable warmup records: {e}") from None
    found: Dict[str, List[Dict[str, np.ndarray]]] = {}
    for request in requests:
      pool.extend(tf.train.Example.FromString(s) for s in request.examples)
      for signature, rows in _rows_of(request):
        found.setdefault(signature, []).extend(rows)
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
