"""The accuracy guard: original and optimized must answer the same on evaluation inputs.

Inputs come from a file the user passes (a TFRecord of serialized `tf.Example`, or a
CSV / JSON Lines file whose columns become `tf.Example` features) or, by default, from
the export's own warmup records. Every signature is compared, output by output.
"""

import csv
import dataclasses
import io
import json
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from export import warmup
from serving.servables import SessionServable

PARSE_OPS = ("ParseExample", "ParseExampleV2", "ParseSingleExample")
DEFAULT_MIN_AGREEMENT = 0.995
_BATCH = 64
_REGRESSION_RTOL, _REGRESSION_ATOL = 1e-2, 1e-3


class GuardError(ValueError):
  """The guard could not compare the models, or they disagree."""


@dataclasses.dataclass
class SignatureInputs:
  batches: List[Dict[str, object]]

  @property
  def examples(self) -> int:
    return sum(len(next(iter(b.values()))) for b in self.batches)


@dataclasses.dataclass
class OutputAgreement:
  agreement: float
  max_abs_diff: Optional[float] = None
  mean_abs_diff: Optional[float] = None


@dataclasses.dataclass
class SignatureAgreement:
  name: str
  examples: int
  agreement: float
  outputs: Dict[str, OutputAgreement]


@dataclasses.dataclass
class GuardResult:
  signatures: List[SignatureAgreement]
  min_agreement: float

  @property
  def agreement(self) -> float:
    return min(s.agreement for s in self.signatures)

  @property
  def passed(self) -> bool:
    return self.agreement >= self.min_agreement

  def failures(self) -> List[str]:
    return [f"{s.name}: {s.agreement:.4f} < {self.min_agreement}" for s in self.signatures
            if s.agreement < self.min_agreement]

  def to_dict(self) -> Dict:
    return dataclasses.asdict(self) | {"agreement": self.agreement, "passed": self.passed}


# ------------------------------------------------------------------------------ inputs


def read_examples(path: str, limit: int = 2048) -> List[bytes]:
  """Serialized tf.Examples from a TFRecord, CSV (header) or JSON Lines file."""
  lower = path.lower()
  if lower.endswith((".csv", ".jsonl", ".ndjson")):
    with tf.io.gfile.GFile(path, "rb") as f:
      raw = f.read()
    try:
      text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
      line = raw[:e.start].count(b"\n") + 1
      raise GuardError(f"{path}:{line}: not valid UTF-8") from e
    rows = (csv.DictReader(io.StringIO(text, newline="")) if lower.endswith(".csv")
            else _json_lines(path, text))
    examples = [_example(row, f"{path}:{n + 2}").SerializeToString()
                for n, row in zip(range(limit), rows)]
  else:
    examples = []
    try:
      for record in tf.compat.v1.io.tf_record_iterator(path):
        tf.train.Example.FromString(record)
        examples.append(record)
        if len(examples) == limit:
          break
    except Exception as e:
      raise GuardError(f"{path}: record {len(examples) + 1} is not a serialized tf.Example "
                       f"in a TFRecord file: {e}") from e
  if not examples:
    raise GuardError(f"{path}: no evaluation examples")
  return examples


def _json_lines(path, text):
  for number, line in enumerate(text.splitlines(), start=1):
    if line.strip():
      try:
        yield json.loads(line)
      except json.JSONDecodeError as e:
        raise GuardError(f"{path}:{number}: not valid JSON: {e.msg}") from e


def _example(row: Mapping[str, object], where: str) -> tf.train.Example:
  features = {}
  for key, value in row.items():
    if key is None:
      raise GuardError(f"{where}: more fields than the header names")
    values = value if isinstance(value, list) else [value]
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
      features[key] = tf.train.Feature(float_list=tf.train.FloatList(value=values))
    else:
      numbers = _as_numbers(values)
      features[key] = (tf.train.Feature(float_list=tf.train.FloatList(value=numbers))
                       if numbers is not None else
                       tf.train.Feature(bytes_list=tf.train.BytesList(
                           value=[str(v).encode("utf-8") for v in values])))
  return tf.train.Example(features=tf.train.Features(feature=features))


def _as_numbers(values):
  try:
    return [float(v) for v in values]
  except (TypeError, ValueError):
    return None


def warmup_inputs(version_dir: str, signatures) -> Tuple[Dict[str, List[Dict]], List[bytes]]:
  """The export's warmup requests as inputs per signature, and every tf.Example in them."""
  path = f"{version_dir}/assets.extra/{warmup.WARMUP_FILENAME}"
  batches: Dict[str, List[Dict]] = {}
  examples: List[bytes] = []
  if not tf.io.gfile.exists(path):
    return batches, examples
  for log in warmup.read_warmup_file(path):
    kind = log.WhichOneof("log_type")
    if kind in ("classify_log", "regress_log"):
      request = getattr(log, kind).request
      name = request.model_spec.signature_name or "serving_default"
      serialized = [e.SerializeToString() for e in request.input.example_list.examples]
      examples.extend(serialized)
      if name in signatures and len(signatures[name].inputs) == 1:
        batches.setdefault(name, []).append({next(iter(signatures[name].inputs)): serialized})
    elif kind == "predict_log":
      request = log.predict_log.request
      name = request.model_spec.signature_name or "serving_default"
      batches.setdefault(name, []).append(
          {k: tf.make_ndarray(v) for k, v in request.inputs.items()})
  return batches, examples


def _feeds_parser(graph_def, tensor_name: str) -> bool:
  """Whether the tensor reaches a tf.Example parser (possibly through Identity nodes)."""
  users: Dict[str, List] = {}
  for node in graph_def.node:
    for tensor in node.input:
      users.setdefault(tensor.split(":")[0], []).append(node)
  frontier, seen = [tensor_name.split(":")[0]], set()
  while frontier:
    name = frontier.pop()
    if name in seen:
      continue
    seen.add(name)
    for user in users.get(name, []):
      if user.op in PARSE_OPS:
        return True
      if user.op == "Identity":
        frontier.append(user.name)
  return False


def signature_inputs(servable: SessionServable, graph_def, examples: Sequence[bytes],
                     warmup_batches: Mapping[str, List[Dict]]) -> Dict[str, SignatureInputs]:
  """Inputs for every signature, from tf.Examples where it can and else from warmup
  requests; raises naming the signature it cannot feed."""
  result = {}
  for name, signature in sorted(servable.signatures.items()):
    keys = list(signature.inputs)
    if examples:
      batch_columns = {}
      for key in keys:
        info = signature.inputs[key]
        if info.dtype == tf.string.as_datatype_enum and _feeds_parser(graph_def, info.name):
          batch_columns[key] = list(examples)
        else:
          column = _feature_column(examples, key, info)
          if column is None:
            break
          batch_columns[key] = column
      if len(batch_columns) == len(keys):
        result[name] = SignatureInputs([
            {k: v[i:i + _BATCH] for k, v in batch_columns.items()}
            for i in range(0, len(examples), _BATCH)])
        continue
    requests = [b for b in warmup_batches.get(name, []) if set(b) == set(keys)]
    if requests:
      result[name] = SignatureInputs(requests)
      continue
    raise GuardError(f"cannot build evaluation inputs for signature {name!r} (inputs {keys}): "
                     f"pass evaluation data with a feature named after each input")
  return result


def _feature_column(examples: Sequence[bytes], key: str, info):
  values = []
  for serialized in examples:
    feature = tf.train.Example.FromString(serialized).features.feature.get(key)
    if feature is None:
      return None
    kind = feature.WhichOneof("kind")
    values.append(list(getattr(feature, kind).value))
  rank = len(info.tensor_shape.dim)
  dtype = tf.as_dtype(info.dtype)
  if dtype == tf.string:
    array = np.array(values, dtype=object)
  else:
    array = np.array(values, dtype=dtype.as_numpy_dtype)
  if rank == 1 and array.ndim == 2 and array.shape[1] == 1:
    array = array[:, 0]
  return array


# --------------------------------------------------------------------------- comparison


def compare_outputs(reference: np.ndarray, candidate: np.ndarray) -> OutputAgreement:
  if reference.shape != candidate.shape:
    return OutputAgreement(0.0)
  if reference.dtype.kind == "f":
    diff = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    if reference.ndim >= 2 and reference.shape[-1] > 1:
      agreement = np.mean(np.argmax(reference, -1) == np.argmax(candidate, -1))
    else:
      agreement = np.mean(diff <= _REGRESSION_ATOL + _REGRESSION_RTOL * np.abs(reference))
    return OutputAgreement(float(agreement), float(diff.max(initial=0.0)),
                           float(diff.mean()) if diff.size else 0.0)
  equal = reference == candidate
  rows = equal.reshape(equal.shape[0], -1).all(axis=1) if equal.ndim > 1 else equal
  return OutputAgreement(float(np.mean(rows)) if rows.size else 1.0)


def compare(reference: SessionServable, candidate: SessionServable,
            inputs: Mapping[str, SignatureInputs],
            min_agreement: float = DEFAULT_MIN_AGREEMENT) -> GuardResult:
  signatures = []
  for name, signature_inputs_ in sorted(inputs.items()):
    per_output: Dict[str, List[OutputAgreement]] = {}
    weights = []
    for batch in signature_inputs_.batches:
      expected = reference.run(name, batch)
      actual = candidate.run(name, batch)
      weights.append(len(next(iter(batch.values()))))
      for key in expected:
        per_output.setdefault(key, []).append(compare_outputs(expected[key], actual[key]))
    outputs = {key: _combine(parts, weights) for key, parts in per_output.items()}
    signatures.append(SignatureAgreement(
        name, signature_inputs_.examples, min(o.agreement for o in outputs.values()), outputs))
  return GuardResult(signatures, min_agreement)


def _combine(parts: Sequence[OutputAgreement], weights: Sequence[int]) -> OutputAgreement:
  total = float(sum(weights))
  agreement = sum(p.agreement * w for p, w in zip(parts, weights)) / total
  if parts[0].max_abs_diff is None:
    return OutputAgreement(agreement)
  return OutputAgreement(agreement, max(p.max_abs_diff for p in parts),
                         sum(p.mean_abs_diff * w for p, w in zip(parts, weights)) / total)
