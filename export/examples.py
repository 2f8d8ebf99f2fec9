"""The one reader of evaluation examples: TFRecord, CSV or JSON Lines files as `tf.train.Example`s.

The optimizer's guard and the smoke test both build their requests from these, so both judge
the same inputs. Files are read through `tf.io.gfile`; each problem names the file and the
line (or record) and the feature at fault.

Formats, by extension:
- `.tfrecord`, anything else: a TFRecord of serialized `tf.Example` (`.gz`: GZIP-compressed).
- `.jsonl` / `.ndjson`: one JSON object per line, feature name -> value or list of values, as
  TF Serving's REST `examples` take them: strings become bytes, `{"b64": ...}` binary bytes,
  integers int64, other numbers floats.
- `.csv`: a header naming the features, then one example per row. CSV has no types, so a column
  is int64 when every cell in it is an integer, float when every cell is a number, else bytes.
  An empty cell leaves the feature out of that example.

Given `feature_types` (what the model parses, see `parse_spec`), values are converted to the
type the model expects instead: an integer for a float feature becomes a float, a CSV cell
becomes the feature's type or an error naming it. Features the model does not parse keep the
rules above.
"""

import base64
import binascii
import csv
import dataclasses
import io
import json
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

import tensorflow as tf

from export import artifact_io

PARSE_OPS = ("ParseExample", "ParseExampleV2")
_FLOAT, _INT64, _BYTES = "float_list", "int64_list", "bytes_list"
_KIND_OF_DTYPE = {tf.float32: _FLOAT, tf.int64: _INT64, tf.string: _BYTES}


class ExamplesError(ValueError):
  """An examples file that cannot be read as it is; the message names file, line and feature."""


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
  """One feature a model's tf.Example parser reads."""
  dtype: tf.DType  # float32, int64 or string
  shape: Optional[List[int]]  # dense features: the fixed shape; sparse / ragged: None


# ------------------------------------------------------------------------------ the model side


def _const_strings(node) -> List[str]:
  return [v.decode("utf-8") for v in tf.make_ndarray(node.attr["value"].tensor).reshape(-1)]


def parse_spec(graph_def) -> Dict[str, FeatureSpec]:
  """The features every tf.Example parser in the graph reads, with their types and shapes."""
  by_name = {n.name: n for n in graph_def.node}

  def keys(inputs: Sequence[str]) -> List[str]:
    names = []
    for tensor in inputs:
      node = by_name.get(tensor.lstrip("^").split(":")[0])
      if node is None or node.op != "Const":
        return []  # keys computed at run time: nothing can be said about them
      names.extend(_const_strings(node))
    return names

  spec: Dict[str, FeatureSpec] = {}
  for node in graph_def.node:
    if node.op == "ParseExampleV2":
      num_sparse = node.attr["num_sparse"].i
      sparse = keys(node.input[2:3])
      dense = keys(node.input[3:4])
      ragged = keys(node.input[4:5])
      sparse_types = list(node.attr["sparse_types"].list.type)[:num_sparse]
      ragged_types = list(node.attr["ragged_value_types"].list.type)
    elif node.op == "ParseExample":
      num_sparse, num_dense = node.attr["Nsparse"].i, node.attr["Ndense"].i
      sparse = keys(node.input[2:2 + num_sparse])
      dense = keys(node.input[2 + num_sparse:2 + num_sparse + num_dense])
      ragged, ragged_types = [], []
      sparse_types = list(node.attr["sparse_types"].list.type)
    else:
      continue
    dense_types = list(node.attr["Tdense"].list.type)
    dense_shapes = [[d.size for d in shape.dim] for shape in node.attr["dense_shapes"].list.shape]
    for name, dtype, shape in zip(dense, dense_types, dense_shapes):
      spec[name] = FeatureSpec(tf.as_dtype(dtype), shape)
    for name, dtype in list(zip(sparse, sparse_types)) + list(zip(ragged, ragged_types)):
      spec[name] = FeatureSpec(tf.as_dtype(dtype), None)
  return spec


def parsed_tensors(graph_def) -> Dict[str, List[str]]:
  """Feature name -> the parser outputs holding its values, for every tf.Example parser."""
  by_name = {n.name: n for n in graph_def.node}

  def keys(tensor: str) -> List[str]:
    node = by_name.get(tensor.lstrip("^").split(":")[0])
    return _const_strings(node) if node is not None and node.op == "Const" else []

  found: Dict[str, List[str]] = {}
  for node in graph_def.node:
    if node.op == "ParseExampleV2":
      sparse, dense, ragged = (keys(t) for t in node.input[2:5])
      first_dense = 3 * len(sparse)
      first_ragged = first_dense + len(dense)
    elif node.op == "ParseExample":
      num_sparse, num_dense = node.attr["Nsparse"].i, node.attr["Ndense"].i
      sparse = [k for t in node.input[2:2 + num_sparse] for k in keys(t)]
      dense = [k for t in node.input[2 + num_sparse:2 + num_sparse + num_dense]
               for k in keys(t)]
      ragged, first_dense, first_ragged = [], 3 * len(sparse), 0
    else:
      continue
    outputs = ([(name, len(sparse) + i) for i, name in enumerate(sparse)]
               + [(name, first_dense + i) for i, name in enumerate(dense)]
               + [(name, first_ragged + i) for i, name in enumerate(ragged)])
    for name, index in outputs:
      found.setdefault(name, []).append(f"{node.name}:{index}")
  return found


def feeds_parser(graph_def, tensor_name: str) -> bool:
  """Whether the tensor reaches a tf.Example parser (possibly through Identity nodes)."""
  users: Dict[str, List] = {}
  for node in graph_def.node:
    for tensor in node.input:
      users.setdefault(tensor.lstrip("^").split(":")[0], []).append(node)
  frontier, seen = [tensor_name.split(":")[0]], set()
  while frontier:
    name = frontier.pop()
    if name in seen:
      continue
    seen.add(name)
    for user in users.get(name, []):
      if user.op in PARSE_OPS + ("ParseSingleExample",):
        return True
      if user.op == "Identity":
        frontier.append(user.name)
  return False


# ------------------------------------------------------------------------------ writing


def write_examples(path: str, examples: Iterable[tf.train.Example],
                   compression: Optional[str] = None) -> int:
  """Writes a TFRecord of the examples all-or-nothing (`artifact_io.staging_file`), GZIP- or
  ZLIB-compressed when `compression` says; returns how many it wrote."""
  count = 0
  with artifact_io.staging_file(path) as staging, \
      tf.io.TFRecordWriter(staging, options=compression) as writer:
    for example in examples:
      writer.write(example.SerializeToString())
      count += 1
  return count


# ------------------------------------------------------------------------------ reading


def read_examples(path: str, feature_types: Optional[Mapping[str, tf.DType]] = None,
                  limit: Optional[int] = None) -> List[tf.train.Example]:
  """The examples in `path` (at most `limit`); see the module docstring for the rules."""
  if not tf.io.gfile.exists(path):
    raise ExamplesError(f"{path}: no such examples file")
  types = dict(feature_types or {})
  lower = path.lower()
  if lower.endswith((".csv", ".jsonl", ".ndjson")):
    text = _read_text(path)
    examples = (_csv_examples(path, text, types, limit) if lower.endswith(".csv")
                else _json_lines_examples(path, text, types, limit))
  else:
    examples = _tfrecord_examples(path, "GZIP" if lower.endswith(".gz") else None, limit)
  if not examples:
    raise ExamplesError(f"{path}: holds no example")
  return examples


def _read_text(path: str) -> str:
  with tf.io.gfile.GFile(path, "rb") as f:
    raw = f.read()
  try:
    return raw.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    line = raw[:e.start].count(b"\n") + 1
    raise ExamplesError(f"{path}:{line}: not valid UTF-8 ({e.reason} at byte {e.start})") \
        from None


def _tfrecord_examples(path: str, compression: Optional[str], limit: Optional[int]):
  examples = []
  try:
    records = tf.data.TFRecordDataset(path, compression_type=compression)
    for number, record in enumerate(records.as_numpy_iterator(), start=1):
      if limit is not None and len(examples) >= limit:
        break
      try:
        examples.append(tf.train.Example.FromString(record))
      except Exception as e:  # protobuf raises its own DecodeError type
        raise ExamplesError(f"{path}: record {number} is not a serialized tf.Example: "
                            f"{e}") from None
  except tf.errors.OpError as e:
    raise ExamplesError(f"{path}: not a TFRecord file of tf.Examples: {e.message}") from None
  return examples


def _json_lines_examples(path, text, types, limit):
  examples = []
  for number, line in enumerate(text.splitlines(), start=1):
    if not line.strip():
      continue
    if limit is not None and len(examples) >= limit:
      break
    where = f"{path}:{number}"
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise ExamplesError(f"{where}: not valid JSON: {e.msg}") from None
    if not isinstance(record, dict):
      raise ExamplesError(f"{where}: expected a JSON object of features, got "
                          f"{type(record).__name__}")
    example = tf.train.Example()
    for name, value in record.items():
      values = value if isinstance(value, list) else [value]
      _set_feature(example, name, [_json_value(v, f"{where}: feature {name!r}") for v in values],
                   types.get(name), f"{where}: feature {name!r}")
    examples.append(example)
  return examples


def _json_value(value, where: str):
  if isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str):
    try:
      return base64.b64decode(value["b64"], validate=True)
    except (binascii.Error, ValueError):
      raise ExamplesError(f"{where}: not valid base64") from None
  if isinstance(value, bool):
    return int(value)
  if isinstance(value, (str, int, float)):
    return value
  raise ExamplesError(f"{where}: a value must be a string, a number or {{\"b64\": ...}}, "
                      f"got {json.dumps(value)[:80]}")


def _csv_examples(path, text, types, limit):
  reader = csv.reader(io.StringIO(text, newline=""), strict=True)
  try:
    header = next(reader, None)
    if not header:
      raise ExamplesError(f"{path}: empty file, expected a header naming the features")
    rows = []
    for row in reader:
      if not row or row == [""]:
        continue
      if len(row) != len(header):
        raise ExamplesError(f"{path}:{reader.line_num}: {len(row)} fields, but the header "
                            f"names {len(header)} ({','.join(header)})")
      rows.append((reader.line_num, row))
      if limit is not None and len(rows) >= limit:
        break
  except csv.Error as e:
    raise ExamplesError(f"{path}:{reader.line_num}: unreadable CSV: {e}") from None
  column_types = [types.get(name) or _column_type([row[i] for _, row in rows])
                  for i, name in enumerate(header)]
  examples = []
  for line, row in rows:
    example = tf.train.Example()
    for name, cell, dtype in zip(header, row, column_types):
      if cell != "":
        _set_feature(example, name, [cell], dtype, f"{path}:{line}: feature {name!r}",
                     from_text=True)
    examples.append(example)
  return examples


def _column_type(cells: Iterable[str]) -> tf.DType:
  present = [c for c in cells if c != ""]
  if present and all(_as_int(c) is not None for c in present):
    return tf.int64
  if present and all(_as_float(c) is not None for c in present):
    return tf.float32
  return tf.string


def _as_int(text: str) -> Optional[int]:
  try:
    return int(text.strip(), 10)
  except ValueError:
    return None


def _as_float(text: str) -> Optional[float]:
  try:
    return float(text)
  except ValueError:
    return None


def _set_feature(example: tf.train.Example, name: str, values: list,
                 dtype: Optional[tf.DType], where: str, from_text: bool = False) -> None:
  """Stores `values` as feature `name`, of `dtype` when the model says, else by their own type."""
  kind = _KIND_OF_DTYPE.get(dtype) if dtype is not None else _natural_kind(values, where)
  if kind is None:
    raise ExamplesError(f"{where}: the model parses it as {dtype.name}, which tf.Example "
                        f"cannot hold")
  converted = [_convert(v, kind, where, from_text) for v in values]
  feature = example.features.feature[name]
  getattr(feature, kind).value.extend(converted)


def _natural_kind(values: list, where: str) -> str:
  kinds = {_BYTES if isinstance(v, (str, bytes)) else
           _INT64 if isinstance(v, int) else _FLOAT for v in values}
  if kinds == {_INT64, _FLOAT}:
    return _FLOAT
  if len(kinds) > 1:
    raise ExamplesError(f"{where}: mixes strings and numbers in one feature")
  return kinds.pop() if kinds else _BYTES


def _convert(value, kind: str, where: str, from_text: bool):
  if kind == _BYTES:
    if isinstance(value, bytes):
      return value
    if isinstance(value, str):
      return value.encode("utf-8")
    raise ExamplesError(f"{where}: expected a string, got the number {value!r}")
  if isinstance(value, bytes) or (isinstance(value, str) and not from_text):
    raise ExamplesError(f"{where}: expected a number, got a string")
  if kind == _INT64:
    number = _as_int(value) if isinstance(value, str) else value
    if isinstance(number, float) or number is None:
      raise ExamplesError(f"{where}: expected an integer, got {value!r}")
    if not -2**63 <= number < 2**63:
      raise ExamplesError(f"{where}: {value!r} does not fit in int64")
    return number
  number = _as_float(value) if isinstance(value, str) else float(value)
  if number is None:
    raise ExamplesError(f"{where}: expected a number, got {value!r}")
  return number
