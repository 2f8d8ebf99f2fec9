"""Requests as TF Serving's REST API reads them (util/json_tensor.cc), with its error messages:
`instances` (row) or `inputs` (columnar) tensors for predict, `examples` (+ optional `context`)
as JSON features for classify and regress, `{"b64": ...}` for binary strings. The answers are
json_answers.py.

Parsing has rapidjson's semantics as TF Serving configures it: the first of duplicate keys
wins, NaN and Infinity are accepted, a number too big for a double and an invalid surrogate
escape are parse errors. Tensors are built by numpy from the parsed lists in one call where the
values allow it, and element by element (with TF Serving's exact error for the first bad one)
only when they do not, so a large valid request costs little more than its parse.
"""

import base64
import binascii
import json
import re
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2

from serving.model_server.status import ServingError, invalid_argument
from serving.model_server.tensors import INT_RANGES, shape_text, type_name

_B64 = "b64"
MAX_RANK = 32  # numpy's limit on dimensions
_DUMP_CHARS = 256
# A \uD800-\uDFFF escape: the only way a JSON text can ask for an unpaired surrogate.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_LITERAL = re.compile(rb"true|false")


def _dump(value) -> str:
  """rapidjson's PrettyWriter rendering of a JSON value, for error messages; a long one is cut,
  so an error never grows past the request that caused it."""
  compact = json.dumps(value, ensure_ascii=False)
  if len(compact) > _DUMP_CHARS:
    return compact[:_DUMP_CHARS] + "..."
  pretty = json.dumps(value, indent=4, ensure_ascii=False)
  return pretty if len(pretty) <= 4 * _DUMP_CHARS else compact


class _NumberTooBig(ValueError):
  pass


def _first_key_wins(pairs):
  document = {}
  for key, value in pairs:
    document.setdefault(key, value)
  return document


def _double(text: str) -> float:
  value = float(text)
  if value in (float("inf"), float("-inf")):
    raise _NumberTooBig(text)
  return value


def _integer(text: str):
  """An integer literal as rapidjson stores it: int64 or uint64, else a double."""
  if len(text) <= 20:
    value = int(text)
    if -2**63 <= value < 2**64:
      return value
  return _double(text)


def may_hold_booleans(body: bytes) -> bool:
  """Whether a body might hold true or false, which numpy would quietly take for 1 and 0."""
  return _LITERAL.search(body) is not None


def _json_type(value) -> str:
  if value is None:
    return "Null"
  if value is True:
    return "True"
  if value is False:
    return "False"
  if isinstance(value, dict):
    return "Object"
  if isinstance(value, list):
    return "Array"
  if isinstance(value, str):
    return "String"
  return "Number"


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_b64(value) -> bool:
  return isinstance(value, dict) and len(value) == 1 and isinstance(value.get(_B64), str)


def _b64_decode(value) -> bytes:
  if not _is_b64(value):
    raise invalid_argument(f"JSON Value: {_dump(value)} not formatted correctly for base64 data")
  text = value[_B64]
  try:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
  except (binascii.Error, ValueError):
    raise invalid_argument("Unable to base64 decode") from None


# Made once: json.loads with hooks builds a decoder per call, a fifth of a small body's parse.
_DECODER = json.JSONDecoder(object_pairs_hook=_first_key_wins, parse_float=_double,
                            parse_int=_integer)


def parse_request(body: bytes) -> dict:
  """The request body as a JSON object, or TF Serving's parse error."""
  if not body:
    raise invalid_argument("JSON Parse error: The document is empty")
  try:
    text = body.decode("utf-8")
  except UnicodeDecodeError as e:
    # rapidjson's message when it meets bytes that are not UTF-8.
    raise invalid_argument(
        f"JSON Parse error: Invalid encoding in string. at offset: {e.start}") from None
  try:
    document = _DECODER.decode(text)
  except json.JSONDecodeError as e:
    raise invalid_argument(f"JSON Parse error: {e.msg} at offset: {e.pos}") from None
  except _NumberTooBig:
    raise invalid_argument("JSON Parse error: Number too big to be stored in double.") from None
  except RecursionError:
    raise invalid_argument("JSON Parse error: The document is nested too deeply") from None
  if _SURROGATE_ESCAPE.search(text):
    try:
      json.dumps(document, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
      raise invalid_argument(
          "JSON Parse error: The surrogate pair in string is invalid.") from None
  if not isinstance(document, dict):
    raise invalid_argument(f"JSON Value: {_dump(document)} Is not object")
  return document


def signature_name(document: dict) -> str:
  name = document.get("signature_name", "")
  if not isinstance(name, str):
    raise invalid_argument(
        f"JSON Value: {_dump(document)} not formatted correctly. 'signature_name' key must "
        f"be a string value.")
  return name


# ---------------------------------------------------------------------------------------------
# JSON -> tensors (predict)


def _type_error(value, dtype: tf.DType) -> ServingError:
  return invalid_argument(f"JSON Value: {_dump(value)} Type: {_json_type(value)} is not of "
                          f"expected type: {type_name(dtype)}")


def _scalar(value, dtype: tf.DType):
  if dtype in (tf.float32, tf.float64):
    if not _is_number(value):
      raise _type_error(value, dtype)
    return float(value)
  if dtype in INT_RANGES:
    low, high = INT_RANGES[dtype]
    if not (isinstance(value, int) and not isinstance(value, bool) and low <= value <= high):
      raise _type_error(value, dtype)
    return value
  if dtype == tf.string:
    if not isinstance(value, str):
      raise _type_error(value, dtype)
    return value.encode("utf-8")
  if dtype == tf.bool:
    if not isinstance(value, bool):
      raise _type_error(value, dtype)
    return value
  raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                     f"Conversion of JSON Value: {_dump(value)} to type: {type_name(dtype)}")


def dense_shape(value) -> List[int]:
  shape = []
  while isinstance(value, list):
    shape.append(len(value))
    if not value:
      break
    value = value[0]
  return shape


def _tensor_shape(value) -> List[int]:
  """`dense_shape`, refused when it has more dimensions than a tensor can have here."""
  shape = dense_shape(value)
  if len(shape) > MAX_RANK:
    raise invalid_argument(f"JSON Value: {_dump(value)} is nested {len(shape)} deep; a tensor "
                           f"can have at most {MAX_RANK} dimensions here")
  return shape


def _fill(value, level: int, shape: Sequence[int], dtype: tf.DType, flat: list) -> None:
  if not isinstance(value, list):
    if level != len(shape):
      raise invalid_argument(
          f"JSON Value: {_dump(value)} found at incorrect level: {level + 1} in the JSON DOM. "
          f"Expected at level: {len(shape)}")
    if isinstance(value, dict):
      if dtype != tf.string:
        raise _type_error(value, dtype)
      flat.append(_b64_decode(value))
    else:
      flat.append(_scalar(value, dtype))
    return
  if level >= len(shape):
    raise invalid_argument(
        f"Encountered list at unexpected level: {level} expected < {len(shape)}")
  if len(value) != shape[level]:
    raise invalid_argument(
        f"Encountered list at unexpected size: {len(value)} at level: {level} expected size: "
        f"{shape[level]}")
  for item in value:
    _fill(item, level + 1, shape, dtype, flat)


def _to_array(flat: list, shape: Sequence[int], dtype: tf.DType) -> np.ndarray:
  if dtype == tf.string:
    array = np.empty(len(flat), dtype=object)
    array[:] = flat
    return array.reshape(shape)
  return np.array(flat, dtype=dtype.as_numpy_dtype).reshape(shape)


def _encoded(value):
  return value.encode("utf-8") if isinstance(value, str) else None


_encode_all = np.frompyfunc(_encoded, 1, 1)


def _fast_array(value, dtype: tf.DType, shape: Sequence[int]) -> Optional[np.ndarray]:
  """`value` as a tensor in one numpy call, or None when the element-by-element path must
  judge it (ragged lists, a value of the wrong type, an int out of range, base64)."""
  try:
    if dtype == tf.string:
      array = np.array(value, dtype=object)
      if array.shape != tuple(shape):
        return None
      encoded = _encode_all(array) if array.ndim else np.array(_encoded(array.item()), object)
      if array.size and (encoded == None).any():  # noqa: E711 -- elementwise
        return None
      return encoded.astype(object)
    array = np.array(value)
  except (ValueError, TypeError, OverflowError, UnicodeEncodeError):
    return None
  if array.shape != tuple(shape):
    return None
  kind = array.dtype.kind if array.size else ("f" if dtype.is_floating else "i")
  if dtype == tf.bool:
    return array.astype(np.bool_) if kind == "b" else None
  if dtype.is_floating and kind in "iuf":
    return array.astype(dtype.as_numpy_dtype)
  if dtype in INT_RANGES and kind in "iu":
    low, high = INT_RANGES[dtype]
    if array.size and (array.min() < low or array.max() > high):
      return None
    return array.astype(dtype.as_numpy_dtype)
  return None


def json_to_array(value, dtype: tf.DType, fast: bool = True) -> np.ndarray:
  """A JSON value as a tensor of `dtype`; `fast` tries numpy first (not when the body may
  hold booleans, see `may_hold_booleans`)."""
  shape = _tensor_shape(value)
  if fast:
    array = _fast_array(value, dtype, shape)
    if array is not None:
      return array
  flat: list = []
  _fill(value, 0, shape, dtype, flat)
  return _to_array(flat, shape, dtype)


class _Rows:
  """Accumulates one named input across `instances`, checking every row has one shape."""

  def __init__(self, dtype: tf.DType):
    self.dtype = dtype
    self.shape: Optional[List[int]] = None
    self.flat: list = []

  def add(self, value) -> None:
    shape = _tensor_shape(value)
    flat: list = []
    _fill(value, 0, shape, self.dtype, flat)
    if self.shape is None:
      self.shape = shape
    elif len(flat) != int(np.prod(self.shape, dtype=np.int64)):
      raise invalid_argument(f"Expecting tensor size: {int(np.prod(self.shape))} but got: "
                             f"{len(flat)}")
    elif shape != self.shape:
      raise invalid_argument(f"Expecting shape {shape_text(self.shape)} but got: "
                             f"{shape_text(shape)}")
    self.flat.extend(flat)

  def array(self, rows: int) -> np.ndarray:
    return _to_array(self.flat, [rows] + self.shape, self.dtype)


def _row_inputs(instances: list, specs: Mapping[str, meta_graph_pb2.TensorInfo],
                fast: bool = True):
  if fast and len(specs) == 1 and not isinstance(instances[0], dict):
    # One input, rows of values: the rows stacked are the tensor. Anything numpy cannot
    # stack as it is goes row by row, for TF Serving's message about the row at fault.
    (name, spec), = specs.items()
    array = _fast_array(instances, tf.as_dtype(spec.dtype), _tensor_shape(instances))
    if array is not None:
      return {name: array}
  if not isinstance(instances[0], dict) and len(specs) > 1:
    raise invalid_argument(
        "instances is a plain list, but expecting list of objects as multiple input tensors "
        "required as per tensorinfo_map")
  objects = isinstance(instances[0], dict) and not _is_b64(instances[0])
  names = sorted(specs)
  rows: Dict[str, _Rows] = {}

  def add(name, value):
    if name not in specs:
      raise invalid_argument(f"JSON object: does not have named input: {name}")
    if name not in rows:
      rows[name] = _Rows(tf.as_dtype(specs[name].dtype))
    rows[name].add(value)

  for index, item in enumerate(instances):
    item_is_object = isinstance(item, dict) and not _is_b64(item)
    if objects:
      if not item_is_object:
        raise invalid_argument(f"Expecting object but got list at item {index} of input list")
      for name, value in item.items():
        try:
          add(name, value)
        except ServingError as e:
          raise invalid_argument(f"Failed to process element: {index} key: {name} of "
                                 f"'instances' list. Error: {e}") from None
      if sorted(item) != names:
        raise invalid_argument(
            f"Failed to process element: {index} of 'instances' list. JSON object: "
            f"{_dump(item)} keys must be equal to: {','.join(names)}")
    else:
      if item_is_object:
        raise invalid_argument(
            f"Expecting value/list but got object at item {index} of input list")
      try:
        add(names[0], item)
      except ServingError as e:
        raise invalid_argument(f"Failed to process element: {index} of 'instances' list. "
                               f"Error: {e}") from None
  return {name: accumulated.array(len(instances)) for name, accumulated in rows.items()}


def _columnar_inputs(value, specs: Mapping[str, meta_graph_pb2.TensorInfo], fast: bool = True):
  if not isinstance(value, dict) or _is_b64(value):
    if len(specs) > 1:
      raise invalid_argument(
          "inputs is a plain value/list, but expecting an object as multiple input tensors "
          "required as per tensorinfo_map")
    (name, spec), = specs.items()
    return {name: json_to_array(value, tf.as_dtype(spec.dtype), fast)}
  arrays = {}
  for name in sorted(specs):
    if name not in value:
      raise invalid_argument(f"Missing named input: {name} in 'inputs' object.")
    arrays[name] = json_to_array(value[name], tf.as_dtype(specs[name].dtype), fast)
  return arrays


def predict_inputs(document: dict, specs: Mapping[str, meta_graph_pb2.TensorInfo],
                   signature: str, fast: bool = True) -> Tuple[Dict[str, np.ndarray], bool]:
  """The request's input tensors, and whether it used the row (`instances`) format."""
  if not specs:
    raise invalid_argument(f"Failed to get input map for signature: {signature or 'DEFAULT'}")
  if "instances" in document:
    if "inputs" in document:
      raise invalid_argument(
          f"JSON Value: {_dump(document)} Not formatted correctly expecting only one of "
          f"'inputs' or 'instances' keys to exist ")
    instances = document["instances"]
    if not isinstance(instances, list):
      raise invalid_argument(
          f"JSON Value: {_dump(document)} Expecting 'instances' to be an list/array")
    if not instances:
      raise invalid_argument(f"JSON Value: {_dump(document)} No values in 'instances' array")
    return _row_inputs(instances, specs, fast), True
  if "inputs" in document:
    return _columnar_inputs(document["inputs"], specs, fast), False
  raise invalid_argument("Missing 'inputs' or 'instances' key")


# ---------------------------------------------------------------------------------------------
# JSON -> tf.Example (classify, regress)


def _kind_error(name: str, feature: tf.train.Feature) -> ServingError:
  kind = {"bytes_list": "bytes", "float_list": "float", "int64_list": "int64"}.get(
      feature.WhichOneof("kind"), "UNKNOWN")
  return invalid_argument(f"Unexpected element type in feature: {name} expecting type: {kind}")


def _add_feature_value(value, name: str, feature: tf.train.Feature) -> None:
  kind = feature.WhichOneof("kind")

  def check(expected):
    if kind not in (None, expected):
      raise _kind_error(name, feature)

  if value is None or isinstance(value, list) or (isinstance(value, dict)
                                                  and not _is_b64(value)):
    raise invalid_argument(f"Feature: {name} has element with unexpected JSON type: "
                           f"{_json_type(value)}")
  if isinstance(value, bool):
    check("int64_list")
    feature.int64_list.value.append(int(value))
  elif isinstance(value, dict):
    check("bytes_list")
    feature.bytes_list.value.append(_b64_decode(value))
  elif isinstance(value, str):
    check("bytes_list")
    feature.bytes_list.value.append(value.encode("utf-8"))
  elif isinstance(value, float) or value > 2**64 - 1 or value < -2**63:
    # rapidjson reads integers beyond 64 bits as doubles.
    check("float_list")
    feature.float_list.value.append(float(value))
  else:
    check("int64_list")
    if value > 2**63 - 1:
      raise invalid_argument(
          f"Feature: {name} has uint64_t element. Only int64_t is supported.")
    feature.int64_list.value.append(value)


def example_from_json(value) -> tf.train.Example:
  if not isinstance(value, dict):
    raise invalid_argument(f"Example must be JSON object but got JSON {_json_type(value)}")
  example = tf.train.Example()
  for name, content in value.items():
    feature = example.features.feature[name]
    for item in (content if isinstance(content, list) else [content]):
      _add_feature_value(item, name, feature)
  return example


def serialized_examples(document: dict) -> List[bytes]:
  """Serialized examples of a classify/regress request, each prefixed with the context.

  Concatenating two serialized protos merges them, which is how TF Serving feeds
  `example_list_with_context`.
  """
  context = b""
  if "context" in document:
    context = example_from_json(document["context"]).SerializeToString()
  if "examples" not in document:
    # TF Serving says "classify" for regress requests too.
    raise invalid_argument(f"JSON Value: {_dump(document)} When method is classify, key "
                           f"'examples' is expected and was not found")
  examples = document["examples"]
  if not isinstance(examples, list):
    raise invalid_argument(
        f"JSON Value: {_dump(document)} Expecting 'examples' value to be an list/array")
  if not examples:
    raise invalid_argument(f"JSON Value: {_dump(document)} 'examples' value is an empty array")
  return [context + example_from_json(e).SerializeToString() for e in examples]
