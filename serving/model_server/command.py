"""The command line of the embedded model server: tensorflow_model_server's flags.

    python -m serving.model_server --port=8500 --rest_api_port=8501 \\
        --model_name=intent --model_base_path=/models/intent
    python -m serving.model_server --port=8500 --model_config_file=models.config

gRPC: the tensorflow-serving-api generated services, PredictionService (Predict, Classify,
Regress, MultiInference, GetModelMetadata) and ModelService (GetModelStatus), served by grpcio.
REST: TF Serving's api_rest.md (`/v1/models/NAME[/versions/N | /labels/L][/metadata]` and
`:predict`, `:classify`, `:regress`), served by waitress, a pure-Python production WSGI server
whose keep-alive handling keeps a batch-1 round trip near a third of a millisecond on loopback.
Errors are TF Serving's: `{"error": message}` with its status-to-HTTP mapping, and the same
gRPC status codes.

Differences from the real binary, on purpose: it binds 127.0.0.1 unless `--bind_address`
says otherwise; it refuses REST bodies larger than `--max_request_body_bytes` (413) and gRPC
messages larger than that (RESOURCE_EXHAUSTED); with `--enable_batching` it enforces the
batching parameters' max_batch_size but runs each request on its own instead of merging them.
"""

import logging as std_logging
import signal
import sys
import threading
from typing import List, Tuple

from absl import app
from absl import flags
from tensorflow_serving.config import model_server_config_pb2

from serving.model_server import config_files
from serving.model_server.core import CoreOptions
from serving.model_server.server import (DEFAULT_BIND_ADDRESS, DEFAULT_MAX_BODY_BYTES,
                                         DEFAULT_THREADS, ModelServer, ServerOptions)
from serving.model_server.status import ServingError


def define_flags(flag_values=flags.FLAGS) -> None:
  """tensorflow_model_server's flags (those the embedded server implements), and two more."""
  integer, string, boolean = flags.DEFINE_integer, flags.DEFINE_string, flags.DEFINE_boolean
  into = {"flag_values": flag_values}
  integer("port", 8500, "TCP port for the gRPC API.", **into)
  integer("rest_api_port", 0, "Port for the HTTP/REST API; 0 turns it off. Must differ from "
          "--port.", **into)
  integer("rest_api_num_threads", DEFAULT_THREADS, "Threads for HTTP/REST API processing.",
          **into)
  boolean("rest_api_enable_cors_support", False, "Add CORS headers to answers.", **into)
  integer("grpc_max_threads", DEFAULT_THREADS, "Threads for gRPC processing.", **into)
  string("model_name", "default", "Name of the model (with --model_base_path).", **into)
  string("model_base_path", "", "Base path of the model: numeric version dirs.", **into)
  string("model_config_file", "", "A text ModelServerConfig listing the models to serve; "
         "overrides --model_name and --model_base_path.", **into)
  boolean("enable_batching", False, "Enforce the batching parameters (the embedded server "
          "checks max_batch_size; it does not merge requests).", **into)
  string("batching_parameters_file", "", "A text BatchingParameters proto.", **into)
  boolean("enable_model_warmup", True, "Replay assets.extra/tf_serving_warmup_requests when a "
          "version loads.", **into)
  integer("max_num_load_retries", 5, "Retries of a failed load.", **into)
  integer("load_retry_interval_micros", 60 * 1000 * 1000, "Wait between load retries.", **into)
  string("bind_address", DEFAULT_BIND_ADDRESS, "Address to listen on (not a "
         "tensorflow_model_server flag: the binary listens on every address).", **into)
  integer("max_request_body_bytes", DEFAULT_MAX_BODY_BYTES, "Largest REST body / gRPC message "
          "accepted (not a tensorflow_model_server flag).", **into)


def options_from_flags(values) -> Tuple[model_server_config_pb2.ModelServerConfig,
                                        ServerOptions, CoreOptions]:
  """The flags as a config and options; a flag error raises ValueError / ServingError."""
  if not values.model_config_file and not values.model_base_path:
    raise ValueError("Both server_options.model_base_path and "
                     "server_options.model_config_file are empty!")
  if values.model_config_file:
    config = config_files.read_model_config_file(values.model_config_file)
  else:
    config = config_files.single_model_config(values.model_name, values.model_base_path)
  max_batch_size = None
  if values.enable_batching:
    params = (config_files.read_batching_parameters(values.batching_parameters_file)
              if values.batching_parameters_file else config_files.BatchingParameters())
    max_batch_size = config_files.max_batch_size(params)
  elif values.batching_parameters_file:
    raise ValueError("server_options.batching_parameters_file is set without setting "
                     "server_options.enable_batching to true.")
  options = ServerOptions(
      grpc_port=values.port, rest_api_port=values.rest_api_port or None,
      bind_address=values.bind_address, grpc_max_threads=values.grpc_max_threads,
      rest_api_num_threads=values.rest_api_num_threads,
      max_request_body_bytes=values.max_request_body_bytes,
      enable_cors_support=values.rest_api_enable_cors_support)
  core_options = CoreOptions(
      max_batch_size=max_batch_size, enable_model_warmup=values.enable_model_warmup,
      max_num_load_retries=values.max_num_load_retries,
      load_retry_interval_secs=values.load_retry_interval_micros / 1e6)
  return config, options, core_options


def main(argv: List[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unknown argument: {argv[1]}")
  # waitress logs every dropped connection at INFO; only its warnings matter here.
  std_logging.getLogger("waitress").setLevel(std_logging.WARNING)
  stopped = threading.Event()
  for signum in (signal.SIGINT, signal.SIGTERM):
    signal.signal(signum, lambda *_: stopped.set())
  try:
    config, options, core_options = options_from_flags(flags.FLAGS)
    server = ModelServer(config, options, core_options).start()
  except (ValueError, OSError, ServingError) as e:
    # The binary's own words, which the runners look for in a failed start's log.
    print(f"Failed to start server. Error: {e}", flush=True)
    return 1
  print(f"serving.model_server: gRPC on {options.bind_address}:{server.grpc_port}"
        + (f", REST on {options.bind_address}:{server.rest_api_port}"
           if server.rest_api_port else "") + f"; models: {', '.join(server.core.model_names)}",
        flush=True)
  stopped.wait()
  server.stop()
  return 0


def run() -> None:
  define_flags()
  app.run(lambda argv: sys.exit(main(argv)))
