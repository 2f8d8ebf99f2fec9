"""Tensors as TF Serving reads and writes them: TensorProtos <-> numpy arrays (Predict's inputs
and outputs), dtype and shape names in messages, the integer dtypes of its JSON, and the
limits on what one request may decode to."""

import dataclasses
from typing import Dict, Mapping, Sequence

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2

from serving.model_server.flags import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_ELEMENTS
from serving.model_server.status import invalid_argument

# The integer dtypes TF Serving's JSON reads and writes, and the values it takes for each
# (json_tensor.cc reads the narrow ones as int32).
INT_RANGES = {
    tf.int8: (-2**31, 2**31 - 1), tf.int16: (-2**31, 2**31 - 1), tf.uint8: (-2**31, 2**31 - 1),
    tf.int32: (-2**31, 2**31 - 1), tf.int64: (-2**63, 2**63 - 1),
    tf.uint32: (0, 2**32 - 1), tf.uint64: (0, 2**64 - 1),
}
# Numeric tensors may decode to this many times the largest body (--max_request_body_bytes).
_NUMERIC_BYTES_PER_BODY_BYTE = 4

# DataTypeString() names where they differ from tf.DType.name.
_TF_TYPE_NAMES = {tf.float32: "float", tf.float64: "double", tf.float16: "half"}


def type_name(dtype: tf.DType) -> str:
  """A dtype as TensorFlow's C++ runtime names it in its messages."""
  return _TF_TYPE_NAMES.get(dtype, dtype.name)


def shape_text(dims: Sequence[int]) -> str:
  """A shape as TensorShape::DebugString writes it in messages: `[2,3]`."""
  return "[" + ",".join(str(d) for d in dims) + "]"


@dataclasses.dataclass(frozen=True)
class Limits:
  """The most one request may decode to: tensor elements, and bytes of numeric tensors (a
  small TensorProto can claim any shape; TF Serving's FromProto fills it from one value)."""
  max_elements: int = DEFAULT_MAX_ELEMENTS
  max_bytes: int = _NUMERIC_BYTES_PER_BODY_BYTE * DEFAULT_MAX_BODY_BYTES

  @classmethod
  def from_flags(cls, max_request_elements: int, max_request_body_bytes: int) -> "Limits":
    return cls(max_request_elements, _NUMERIC_BYTES_PER_BODY_BYTE * max_request_body_bytes)


def input_dtype(value) -> tf.DType:
  """The dtype of a request's input, a numpy array or a TensorProto not yet decoded."""
  if isinstance(value, tensor_pb2.TensorProto):
    try:
      return tf.as_dtype(value.dtype)
    except TypeError:
      raise invalid_argument(f"tensor parsing error: unknown dtype {value.dtype}") from None
  return tf.as_dtype(value.dtype)


def _shape_and_count(alias: str, value):
  if isinstance(value, tensor_pb2.TensorProto):
    dims = [d.size for d in value.tensor_shape.dim]
    for size in dims:
      if size < 0:
        raise invalid_argument(f"tensor parsing error: {alias}: Dimension {size} must be >= 0")
  else:
    dims = list(value.shape)
  count = 1
  for size in dims:
    count *= size
  return dims, count


def _decodable(dtype: tf.DType) -> bool:
  if dtype in (tf.resource, tf.variant):
    return False
  try:
    return dtype.as_numpy_dtype is not None
  except (KeyError, TypeError):
    return False


def decode_inputs(inputs: Mapping[str, object], limits: Limits) -> Dict[str, np.ndarray]:
  """Every input as a numpy array, once each is known to fit the limits: a TensorProto is
  decoded (tf.make_ndarray) only after its shape and dtype were checked."""
  elements = numeric_bytes = 0
  for alias, value in inputs.items():
    dtype = input_dtype(value)
    if not _decodable(dtype):
      raise invalid_argument(f"tensor parsing error: {alias}: a request cannot carry "
                             f"{type_name(dtype)} tensors")
    dims, count = _shape_and_count(alias, value)
    elements += count
    if dtype != tf.string:
      numeric_bytes += count * dtype.size
    if elements > limits.max_elements or numeric_bytes > limits.max_bytes:
      raise invalid_argument(
          f"tensor parsing error: {alias}: shape {shape_text(dims)} makes the request "
          f"{elements} elements, {numeric_bytes} bytes; the server's limit is "
          f"{limits.max_elements} elements, {limits.max_bytes} bytes (--max_request_elements)")
  arrays = {}
  for alias, value in inputs.items():
    if not isinstance(value, tensor_pb2.TensorProto):
      arrays[alias] = value
      continue
    try:
      arrays[alias] = tf.make_ndarray(value)
    except (TypeError, ValueError) as e:
      raise invalid_argument(f"tensor parsing error: {alias}: {str(e)[:200]}") from None
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
