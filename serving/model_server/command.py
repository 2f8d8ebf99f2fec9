"""The command line of the embedded model server: tensorflow_model_server's flags.

    python -m serving.model_server --port=8500 --rest_api_port=8501 \\
        --model_name=intent --model_base_path=/models/intent
    python -m serving.model_server --port=8500 --model_config_file=models.config

gRPC: the tensorflow-serving-api generated services, PredictionService (Predict, Classify,
Regress, MultiInference, GetModelMetadata) and ModelService (GetModelStatus), served by grpcio.
REST: TF Serving's api_rest.md (`/v1/models/NAME[/versions/N | /labels/L][/metadata]` and
`:predict`, `:classify`, `:regress`), served by uvicorn (http_server.py).
Errors are TF Serving's: `{"error": message}` with its status-to-HTTP mapping, and the same
gRPC status codes.

It takes every flag of tensorflow_model_server 2.15.1 (flags.py) with the binary's defaults;
those that configure what a CPU-only Python server has no use for are accepted and reported at
start-up. A start that fails prints the binary's `Failed to start server. Error: <CODE>:
<message>` and exits 255.

Differences from the real binary, on purpose: it binds 127.0.0.1 unless `--bind_address`
says otherwise; it refuses REST bodies larger than `--max_request_body_bytes` (413) and gRPC
messages larger than that (RESOURCE_EXHAUSTED); under `--enable_batching`, requests whose
inputs differ past the batch dimension run apart instead of failing the batch they share
(batching.py); a base path with no version fails the start at once instead of waiting for one.
"""

import signal
import sys
import threading
from typing import List, Tuple

import tensorflow as tf
from absl import app
from absl import flags
from absl import logging
from tensorflow.core.protobuf import config_pb2
from tensorflow_serving.config import model_server_config_pb2

from serving.model_server import config_files
from serving.model_server import flags as server_flags
from serving.model_server import memory
from serving.model_server import monitoring
from serving.model_server import tensors
from serving.model_server.core import CoreOptions
from serving.model_server.server import ModelServer, ServerOptions, parse_channel_arguments
from serving.model_server.status import ServingError, invalid_argument

VERSION = "2.15.1-embedded"
# The binary returns -1 from main when it cannot start.
START_FAILURE_STATUS = 255


def define_flags(flag_values=flags.FLAGS) -> None:
  """Every tensorflow_model_server flag (see flags.py), and the embedded server's two."""
  server_flags.define_flags(flag_values)


def _session_config(values) -> config_pb2.ConfigProto:
  """The session ConfigProto from --tensorflow_session_config_file and the parallelism flags,
  which always win over the file's thread counts, as in the binary."""
  config = (config_files.read_session_config(values.tensorflow_session_config_file)
            if values.tensorflow_session_config_file else config_pb2.ConfigProto())
  intra, inter = values.tensorflow_intra_op_parallelism, values.tensorflow_inter_op_parallelism
  session = values.tensorflow_session_parallelism
  if intra > 0 and inter > 0 and session > 0:
    raise invalid_argument(
        "Either configure server_options.tensorflow_session_parallelism or "
        "(server_options.tensorflow_intra_op_parallelism, "
        "server_options.tensorflow_inter_op_parallelism) separately. You cannot configure all.")
  if intra > 0 or inter > 0:
    config.intra_op_parallelism_threads, config.inter_op_parallelism_threads = intra, inter
  else:
    config.intra_op_parallelism_threads = config.inter_op_parallelism_threads = session
  return config


def _prometheus_path(values):
  if not values.monitoring_config_file:
    return None
  prometheus = config_files.read_monitoring_config(values.monitoring_config_file)
  if not prometheus.prometheus_config.enable:
    return None
  return prometheus.prometheus_config.path or monitoring.DEFAULT_PATH


def options_from_flags(values) -> Tuple[model_server_config_pb2.ModelServerConfig,
                                        ServerOptions, CoreOptions]:
  """The flags as a config and options, checked in the binary's order and words; a flag error
  raises ServingError (or ValueError)."""
  if values.port == 0 and not values.grpc_socket_path:
    raise invalid_argument("At least one of server_options.grpc_port or "
                           "server_options.grpc_socket_path must be set.")
  if values.use_alts_credentials and values.ssl_config_file:
    raise invalid_argument("Either use_alts_credentials must be false or ssl_config_file must "
                           "be empty.")
  if not values.model_config_file and not values.model_base_path:
    raise invalid_argument("Both server_options.model_base_path and "
                           "server_options.model_config_file are empty!")
  if values.model_config_file:
    config = config_files.read_model_config_file(values.model_config_file)
  else:
    logging.info("Building single TensorFlow model file config:  model_name: %s "
                 "model_base_path: %s", values.model_name, values.model_base_path)
    config = config_files.single_model_config(values.model_name, values.model_base_path)
  batching_parameters = None
  if values.enable_batching:
    batching_parameters = (
        config_files.read_batching_parameters(values.batching_parameters_file)
        if values.batching_parameters_file else config_files.BatchingParameters())
  elif values.batching_parameters_file:
    raise invalid_argument("server_options.batching_parameters_file is set without setting "
                           "server_options.enable_batching to true.")
  tags = tuple(values.saved_model_tags.split(",")) if values.saved_model_tags else ("serve",)
  options = ServerOptions(
      grpc_port=values.port or None, rest_api_port=values.rest_api_port or None,
      grpc_socket_path=values.grpc_socket_path,
      bind_address=values.bind_address, grpc_max_threads=values.grpc_max_threads,
      rest_api_num_threads=values.rest_api_num_threads,
      rest_api_timeout_in_ms=values.rest_api_timeout_in_ms,
      max_request_body_bytes=values.max_request_body_bytes,
      enable_cors_support=values.rest_api_enable_cors_support,
      grpc_channel_arguments=parse_channel_arguments(values.grpc_channel_arguments),
      ssl_config=(config_files.read_ssl_config(values.ssl_config_file)
                  if values.ssl_config_file else None),
      enable_grpc_healthcheck_service=values.enable_grpc_healthcheck_service,
      prometheus_path=_prometheus_path(values))
  core_options = CoreOptions(
      batching_parameters=batching_parameters,
      enable_per_model_batching_parameters=values.enable_per_model_batching_parameters,
      enable_model_warmup=values.enable_model_warmup,
      num_request_iterations_for_warmup=values.num_request_iterations_for_warmup,
      warmup_timeouts_ms=((None, values.rest_api_timeout_in_ms) if values.rest_api_port
                          and values.rest_api_timeout_in_ms > 0 else (None,)),
      max_num_load_retries=values.max_num_load_retries,
      load_retry_interval_secs=values.load_retry_interval_micros / 1e6,
      file_system_poll_wait_seconds=values.file_system_poll_wait_seconds,
      model_config_file=values.model_config_file,
      model_config_file_poll_wait_seconds=values.model_config_file_poll_wait_seconds,
      saved_model_tags=tags, session_config=_session_config(values),
      enable_signature_method_name_check=values.enable_signature_method_name_check,
      allow_version_labels_for_unavailable_models=(
          values.allow_version_labels_for_unavailable_models),
      num_load_threads=values.num_load_threads,
      limits=tensors.Limits.from_flags(values.max_request_elements,
                                       values.max_request_body_bytes))
  return config, options, core_options


def main(argv: List[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unknown argument: {argv[1]}")
  values = flags.FLAGS
  if values.version:
    print(f"TensorFlow ModelServer: {VERSION}\nTensorFlow Library: {tf.__version__}",
          flush=True)
    return 0
  for setting in server_flags.without_effect(values):
    logging.warning("%s has no effect in the embedded server (a CPU-only TensorFlow server "
                    "without TPU, GPU, TF Lite, XLA, profiler or ALTS support)", setting)
  stopped = threading.Event()
  for signum in (signal.SIGINT, signal.SIGTERM):
    signal.signal(signum, lambda *_: stopped.set())
  logging.info("Memory allocator: %s", memory.allocator())
  try:
    config, options, core_options = options_from_flags(values)
    server = ModelServer(config, options, core_options).start()
  except (ValueError, OSError, ServingError) as e:
    # The binary's own words, which the runners look for in a failed start's log.
    print(f"Failed to start server. Error: {e}", flush=True)
    return START_FAILURE_STATUS
  listening = [f"gRPC on {options.bind_address}:{server.grpc_port}" if server.grpc_port
               else "", f"gRPC on unix:{options.grpc_socket_path}"
               if options.grpc_socket_path else "",
               f"REST on {options.bind_address}:{server.rest_api_port}"
               if server.rest_api_port else ""]
  print(f"serving.model_server: {', '.join(l for l in listening if l)}; models: "
        f"{', '.join(server.core.model_names)}", flush=True)
  stopped.wait()
  server.stop()
  return 0


def run() -> None:
  define_flags()
  app.run(lambda argv: sys.exit(main(argv)))
