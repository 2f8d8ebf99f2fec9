"""TensorProtos <-> numpy arrays, as TF Serving reads Predict inputs and writes its outputs."""

from typing import Dict, Mapping

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2

from serving.model_server.status import invalid_argument

# DataTypeString() names where they differ from tf.DType.name.
_TF_TYPE_NAMES = {tf.float32: "float", tf.float64: "double", tf.float16: "half"}


def type_name(dtype: tf.DType) -> str:
  """A dtype as TensorFlow's C++ runtime names it in its messages."""
  return _TF_TYPE_NAMES.get(dtype, dtype.name)


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
