"""TF Serving's text config files: ModelServerConfig (`--model_config_file`) and
BatchingParameters (`--batching_parameters_file`), read by the embedded server and written by
the runners for every backend, so all three start from the same files."""

from typing import Mapping, Optional, Sequence, Tuple

import tensorflow as tf
from google.protobuf import descriptor_pb2
from google.protobuf import descriptor_pool
from google.protobuf import message_factory
from google.protobuf import text_format
from google.protobuf import wrappers_pb2
from tensorflow_serving.config import model_server_config_pb2

from serving.model_server.status import invalid_argument

# TF Serving's default when batching is on and the parameters leave max_batch_size unset
# (BatchScheduler QueueOptions.input_batch_size_limit).
DEFAULT_MAX_BATCH_SIZE = 1000

_INT64 = ".google.protobuf.Int64Value"
_BATCHING_FIELDS = (  # session_bundle_config.proto, with its field numbers
    ("max_batch_size", 1, _INT64, False),
    ("batch_timeout_micros", 2, _INT64, False),
    ("max_enqueued_batches", 3, _INT64, False),
    ("num_batch_threads", 4, _INT64, False),
    ("thread_pool_name", 5, ".google.protobuf.StringValue", False),
    ("allowed_batch_sizes", 6, None, True),
    ("pad_variable_length_inputs", 7, "bool", False),
    ("enable_large_batch_splitting", 8, ".google.protobuf.BoolValue", False),
    ("max_execution_batch_size", 9, _INT64, False),
)


def _batching_parameters_class():
  """BatchingParameters, which tensorflow-serving-api does not ship, built from its schema."""
  pool = descriptor_pool.DescriptorPool()
  pool.Add(descriptor_pb2.FileDescriptorProto.FromString(wrappers_pb2.DESCRIPTOR.serialized_pb))
  file_proto = descriptor_pb2.FileDescriptorProto(
      name="serving/batching_parameters.proto", package="tensorflow.serving",
      dependency=["google/protobuf/wrappers.proto"], syntax="proto3")
  message = file_proto.message_type.add(name="BatchingParameters")
  field_type = descriptor_pb2.FieldDescriptorProto
  for name, number, type_name, repeated in _BATCHING_FIELDS:
    field = message.field.add(name=name, number=number, json_name=name,
                              label=field_type.LABEL_REPEATED if repeated
                              else field_type.LABEL_OPTIONAL)
    if type_name is None:
      field.type = field_type.TYPE_INT64
    elif type_name == "bool":
      field.type = field_type.TYPE_BOOL
    else:
      field.type, field.type_name = field_type.TYPE_MESSAGE, type_name
  pool.Add(file_proto)
  return message_factory.GetMessageClass(
      pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))


BatchingParameters = _batching_parameters_class()


def single_model_config(name: str, base_path: str) -> model_server_config_pb2.ModelServerConfig:
  """What TF Serving builds from --model_name and --model_base_path."""
  config = model_server_config_pb2.ModelServerConfig()
  config.model_config_list.config.add(name=name, base_path=base_path,
                                      model_platform="tensorflow")
  return config


def model_config(models: Sequence[Tuple[str, str]],
                 versions: Optional[Mapping[str, Sequence[int]]] = None,
                 labels: Optional[Mapping[str, Mapping[str, int]]] = None
                 ) -> model_server_config_pb2.ModelServerConfig:
  """Several (name, base_path) models; `versions` pins specific versions per model."""
  config = model_server_config_pb2.ModelServerConfig()
  for name, base_path in models:
    entry = config.model_config_list.config.add(name=name, base_path=base_path,
                                                model_platform="tensorflow")
    if versions and name in versions:
      entry.model_version_policy.specific.versions.extend(versions[name])
    for label, version in ((labels or {}).get(name) or {}).items():
      entry.version_labels[label] = version
  return config


def read_text_proto(path: str, message):
  try:
    with tf.io.gfile.GFile(path, "r") as f:
      text = f.read()
  except tf.errors.OpError as e:
    raise invalid_argument(f"{path}: cannot read the config file: {e.message}") from None
  try:
    return text_format.Parse(text, message)
  except text_format.ParseError as e:
    raise invalid_argument(
        f"{path}: not a text {message.DESCRIPTOR.name} proto: {e}") from None


def read_model_config_file(path: str) -> model_server_config_pb2.ModelServerConfig:
  return read_text_proto(path, model_server_config_pb2.ModelServerConfig())


def read_batching_parameters(path: str):
  return read_text_proto(path, BatchingParameters())


def batching_parameters(max_batch_size: int, batch_timeout_micros: int = 1000,
                        num_batch_threads: int = 4, max_enqueued_batches: int = 100):
  params = BatchingParameters()
  params.max_batch_size.value = max_batch_size
  params.batch_timeout_micros.value = batch_timeout_micros
  params.num_batch_threads.value = num_batch_threads
  params.max_enqueued_batches.value = max_enqueued_batches
  return params


def max_batch_size(params) -> int:
  """The largest request TF Serving's batching session accepts under these parameters."""
  limit = params.max_batch_size.value if params.HasField("max_batch_size") \
      else DEFAULT_MAX_BATCH_SIZE
  if params.allowed_batch_sizes and params.allowed_batch_sizes[-1] != limit:
    raise invalid_argument(
        f"Last entry in allowed_batch_sizes must match max_batch_size; last entry was "
        f"{params.allowed_batch_sizes[-1]}; expected {limit}")
  return limit


def to_text(message) -> str:
  return text_format.MessageToString(message)
