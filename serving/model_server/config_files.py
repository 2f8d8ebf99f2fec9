"""TF Serving's text config files, read by the embedded server and written by the runners for
every backend, so all three start from the same files: ModelServerConfig
(`--model_config_file`), BatchingParameters (`--batching_parameters_file`), SSLConfig
(`--ssl_config_file`), MonitoringConfig (`--monitoring_config_file`) and a session ConfigProto
(`--tensorflow_session_config_file`). A file that does not parse fails as the binary fails:
the protobuf parser's `Error parsing text-format <type>: <line>:<column>: <message>` on the log,
and INVALID_ARGUMENT `Invalid protobuf file: '<path>'`.
"""

import posixpath
from typing import Dict, Mapping, Optional, Sequence, Tuple

import grpc
import tensorflow as tf
from absl import logging
from google.protobuf import descriptor_pb2
from google.protobuf import descriptor_pool
from google.protobuf import message_factory
from google.protobuf import text_format
from google.protobuf import wrappers_pb2
from tensorflow.core.protobuf import config_pb2
from tensorflow_serving.config import model_server_config_pb2

from serving.model_server.status import ServingError, invalid_argument

PLATFORM = "tensorflow"  # the only platform TF Serving's model config knows

_INT64 = ".google.protobuf.Int64Value"
# The messages tensorflow-serving-api does not ship, with their field numbers as in
# session_bundle_config.proto, ssl_config.proto and monitoring_config.proto: (name, number,
# type, repeated), the type a scalar type name or a message's full name.
_SCHEMAS: Dict[str, Sequence[Tuple[str, int, str, bool]]] = {
    "BatchingParameters": (
        ("max_batch_size", 1, _INT64, False),
        ("batch_timeout_micros", 2, _INT64, False),
        ("max_enqueued_batches", 3, _INT64, False),
        ("num_batch_threads", 4, _INT64, False),
        ("thread_pool_name", 5, ".google.protobuf.StringValue", False),
        ("allowed_batch_sizes", 6, "int64", True),
        ("pad_variable_length_inputs", 7, "bool", False),
        ("enable_large_batch_splitting", 8, ".google.protobuf.BoolValue", False),
        ("max_execution_batch_size", 9, _INT64, False),
    ),
    "SSLConfig": (
        ("server_key", 1, "string", False),
        ("server_cert", 2, "string", False),
        ("custom_ca", 3, "string", False),
        ("client_verify", 4, "bool", False),
    ),
    "PrometheusConfig": (
        ("enable", 1, "bool", False),
        ("path", 2, "string", False),
    ),
    "MonitoringConfig": (
        ("prometheus_config", 1, ".tensorflow.serving.PrometheusConfig", False),
    ),
}
_SCALARS = {"int64": descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
            "bool": descriptor_pb2.FieldDescriptorProto.TYPE_BOOL,
            "string": descriptor_pb2.FieldDescriptorProto.TYPE_STRING}


def _message_classes() -> Dict[str, type]:
  """The messages of `_SCHEMAS` as Python classes, built from their schemas."""
  pool = descriptor_pool.DescriptorPool()
  pool.Add(descriptor_pb2.FileDescriptorProto.FromString(wrappers_pb2.DESCRIPTOR.serialized_pb))
  file_proto = descriptor_pb2.FileDescriptorProto(
      name="serving/model_server/config_files.proto", package="tensorflow.serving",
      dependency=["google/protobuf/wrappers.proto"], syntax="proto3")
  field_type = descriptor_pb2.FieldDescriptorProto
  for message_name, fields in _SCHEMAS.items():
    message = file_proto.message_type.add(name=message_name)
    for name, number, type_name, repeated in fields:
      field = message.field.add(name=name, number=number, json_name=name,
                                label=field_type.LABEL_REPEATED if repeated
                                else field_type.LABEL_OPTIONAL)
      if type_name in _SCALARS:
        field.type = _SCALARS[type_name]
      else:
        field.type, field.type_name = field_type.TYPE_MESSAGE, type_name
  pool.Add(file_proto)
  return {name: message_factory.GetMessageClass(
      pool.FindMessageTypeByName(f"tensorflow.serving.{name}")) for name in _SCHEMAS}


_CLASSES = _message_classes()
BatchingParameters = _CLASSES["BatchingParameters"]
SSLConfig = _CLASSES["SSLConfig"]
MonitoringConfig = _CLASSES["MonitoringConfig"]


# ------------------------------------------------------------------------------ model configs


def single_model_config(name: str, base_path: str) -> model_server_config_pb2.ModelServerConfig:
  """What TF Serving builds from --model_name and --model_base_path."""
  config = model_server_config_pb2.ModelServerConfig()
  config.model_config_list.config.add(name=name, base_path=base_path, model_platform=PLATFORM)
  return config


def model_config(models: Sequence[Tuple[str, str]],
                 versions: Optional[Mapping[str, Sequence[int]]] = None,
                 labels: Optional[Mapping[str, Mapping[str, int]]] = None
                 ) -> model_server_config_pb2.ModelServerConfig:
  """Several (name, base_path) models; `versions` pins specific versions per model."""
  config = model_server_config_pb2.ModelServerConfig()
  for name, base_path in models:
    entry = config.model_config_list.config.add(name=name, base_path=base_path,
                                                model_platform=PLATFORM)
    if versions and name in versions:
      entry.model_version_policy.specific.versions.extend(versions[name])
    for label, version in ((labels or {}).get(name) or {}).items():
      entry.version_labels[label] = version
  return config


def _is_absolute(path: str) -> bool:
  return "://" in path or posixpath.isabs(path)


def check_model_config(config: model_server_config_pb2.ModelServerConfig) -> None:
  """The checks TF Serving's ServerCore makes of a config, in its order and words."""
  if config.WhichOneof("config") == "custom_model_config":
    raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                       "ModelServer does not yet support custom model config.")
  seen = set()
  for model in config.model_config_list.config:
    if model.name in seen:
      raise invalid_argument(f"Illegal to list model {model.name} multiple times in config list")
    seen.add(model.name)
  for model in config.model_config_list.config:
    if not _is_absolute(model.base_path):
      raise invalid_argument(f"Expected model {model.name} to have an absolute path or URI; "
                             f"got base_path()={model.base_path}")
  for model in config.model_config_list.config:
    if not model.model_platform:
      raise invalid_argument(f"Illegal setting neither ModelServerConfig::model_type "
                             f"(deprecated) nor ModelServerConfig::model_platform, model name "
                             f"is {model.name}")
    if model.model_platform != PLATFORM:
      raise invalid_argument(f"Model {model.name} requests unsupported platform "
                             f"{model.model_platform}")


# ------------------------------------------------------------------------------ reading


def read_text_proto(path: str, message):
  """`message` filled from the text proto at `path`; the binary's errors when it cannot be."""
  try:
    with tf.io.gfile.GFile(path, "r") as f:
      text = f.read()
  except tf.errors.OpError as e:
    raise ServingError.from_code_number(e.error_code, e.message) from None
  try:
    return text_format.Parse(text, message)
  except text_format.ParseError as e:
    # The protobuf library's own log line, which scripts and TF Serving's tests look for.
    logging.error("Error parsing text-format %s: %s:%s: %s", message.DESCRIPTOR.full_name,
                  e.GetLine(), e.GetColumn(), str(e).split(" : ", 1)[-1])
    raise invalid_argument(f"Invalid protobuf file: '{path}'") from None


def read_model_config_file(path: str) -> model_server_config_pb2.ModelServerConfig:
  return read_text_proto(path, model_server_config_pb2.ModelServerConfig())


def read_batching_parameters(path: str):
  return read_text_proto(path, BatchingParameters())


def read_ssl_config(path: str):
  return read_text_proto(path, SSLConfig())


def read_monitoring_config(path: str):
  return read_text_proto(path, MonitoringConfig())


def read_session_config(path: str) -> config_pb2.ConfigProto:
  return read_text_proto(path, config_pb2.ConfigProto())


# ------------------------------------------------------------------------------ batching


def batching_parameters(max_batch_size: int, batch_timeout_micros: int = 1000,
                        num_batch_threads: int = 4, max_enqueued_batches: int = 100):
  params = BatchingParameters()
  params.max_batch_size.value = max_batch_size
  params.batch_timeout_micros.value = batch_timeout_micros
  params.num_batch_threads.value = num_batch_threads
  params.max_enqueued_batches.value = max_enqueued_batches
  return params


def to_text(message) -> str:
  return text_format.MessageToString(message)
