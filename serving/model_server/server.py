"""An embedded model server with TF Serving's contract: gRPC and REST, same flags.

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

import os

# TensorFlow's C++ start-up chatter buries the server's own log; users can still raise it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import dataclasses  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import logging as std_logging  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from concurrent import futures  # noqa: E402
from http import HTTPStatus  # noqa: E402
from typing import List, Optional, Tuple  # noqa: E402
from urllib.parse import unquote_to_bytes  # noqa: E402

import grpc  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
from google.protobuf import json_format  # noqa: E402
from tensorflow_serving.apis import classification_pb2  # noqa: E402
from tensorflow_serving.apis import get_model_metadata_pb2  # noqa: E402
from tensorflow_serving.apis import get_model_status_pb2  # noqa: E402
from tensorflow_serving.apis import model_pb2  # noqa: E402
from tensorflow_serving.apis import model_service_pb2_grpc  # noqa: E402
from tensorflow_serving.apis import predict_pb2  # noqa: E402
from tensorflow_serving.apis import prediction_service_pb2_grpc  # noqa: E402
from tensorflow_serving.apis import regression_pb2  # noqa: E402
from tensorflow_serving.config import model_server_config_pb2  # noqa: E402
from waitress.server import create_server  # noqa: E402

from serving import json_tensor  # noqa: E402
from serving import server_config  # noqa: E402
from serving.errors import ServingError, invalid_argument  # noqa: E402
from serving.server_core import (SIGNATURE_DEF_FIELD, CoreOptions, ServerCore,  # noqa: E402
                                 array_to_tensor_proto, serialized_input,
                                 tensor_protos_to_arrays)

DEFAULT_BIND_ADDRESS = "127.0.0.1"
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
_DEFAULT_THREADS = 4 * (os.cpu_count() or 1)  # TF Serving's default for gRPC and REST

# TF Serving's http_rest_api_util.h patterns, matched against the raw (undecoded) path.
_REST_PATH = re.compile(r"/v1/.*", re.IGNORECASE)
_PREDICTION_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
    r":(classify|regress|predict)", re.IGNORECASE)
_STATUS_PATH = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
    r"(?:/(metadata))?", re.IGNORECASE)
_MAX_VERSION = 2**63 - 1
_CORS_HEADERS = [("Access-Control-Allow-Origin", "*"),
                 ("Access-Control-Allow-Methods", "POST, GET"),
                 ("Access-Control-Allow-Headers", "Content-Type")]


@dataclasses.dataclass(frozen=True)
class ServerOptions:
  grpc_port: int = 8500
  rest_api_port: Optional[int] = None  # None: no REST API; 0: a free port
  bind_address: str = DEFAULT_BIND_ADDRESS
  grpc_max_threads: int = _DEFAULT_THREADS
  rest_api_num_threads: int = _DEFAULT_THREADS
  max_request_body_bytes: int = DEFAULT_MAX_BODY_BYTES
  enable_cors_support: bool = False


# ---------------------------------------------------------------------------------------------
# gRPC


def _grpc_errors(method):
  """Answers a ServingError with its status code and message, as TF Serving does."""

  @functools.wraps(method)
  def wrapper(self, request, context):
    try:
      return method(self, request, context)
    except ServingError as e:
      context.abort(e.code, e.message)

  return wrapper


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):

  def __init__(self, core: ServerCore):
    self._core = core

  @_grpc_errors
  def Predict(self, request, context):
    inputs = tensor_protos_to_arrays(request.inputs)
    spec, outputs = self._core.predict(request.model_spec, inputs, request.output_filter)
    response = predict_pb2.PredictResponse(model_spec=spec)
    for alias, array in outputs.items():
      response.outputs[alias].CopyFrom(array_to_tensor_proto(array))
    return response

  @_grpc_errors
  def Classify(self, request, context):
    spec, result = self._core.classify(request.model_spec, serialized_input(request.input))
    return classification_pb2.ClassificationResponse(model_spec=spec, result=result)

  @_grpc_errors
  def Regress(self, request, context):
    spec, result = self._core.regress(request.model_spec, serialized_input(request.input))
    return regression_pb2.RegressionResponse(model_spec=spec, result=result)

  @_grpc_errors
  def MultiInference(self, request, context):
    return self._core.multi_inference(request)

  @_grpc_errors
  def GetModelMetadata(self, request, context):
    return self._core.model_metadata(request)


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
  """GetModelStatus; HandleReloadConfigRequest stays UNIMPLEMENTED (no reloading here)."""

  def __init__(self, core: ServerCore):
    self._core = core

  @_grpc_errors
  def GetModelStatus(self, request, context):
    return self._core.model_status(request)


# ---------------------------------------------------------------------------------------------
# REST


def _model_spec(name: str, version: Optional[str], label: Optional[str]) -> model_pb2.ModelSpec:
  """ParseModelInfo + FillModelSpecWithNameVersionAndLabel on the URL's parts."""
  spec = model_pb2.ModelSpec()
  try:
    spec.name = unquote_to_bytes(name).decode("utf-8") if name else ""
  except UnicodeDecodeError:
    raise invalid_argument(f"Failed to decode model name:{name}") from None
  if version:
    if int(version) > _MAX_VERSION:
      raise invalid_argument(f"Failed to convert version: {version} to numeric.")
    spec.version.value = int(version)
  if label:
    try:
      spec.version_label = unquote_to_bytes(label).decode("utf-8")
    except UnicodeDecodeError:
      raise invalid_argument(f"Failed to decode model version label:{label}") from None
  return spec


class RestApi:
  """The WSGI application: TF Serving's HttpRestApiHandler."""

  def __init__(self, core: ServerCore, max_body_bytes: int, enable_cors: bool = False):
    self._core = core
    self._max_body_bytes = max_body_bytes
    self._enable_cors = enable_cors

  def __call__(self, environ, start_response):
    method = environ["REQUEST_METHOD"]
    path = environ.get("REQUEST_URI") or environ.get("PATH_INFO", "")
    path = path.split("?", 1)[0]
    if not _REST_PATH.fullmatch(path):
      return self._reply(start_response, 404, json_tensor.error_body(
          f"No handler for {method} {path}: TF Serving's REST API lives under /v1/"))
    try:
      length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
      return self._reply(start_response, 400, json_tensor.error_body(
          f"Content-Length {environ.get('CONTENT_LENGTH')!r} is not a number"))
    if length > self._max_body_bytes:
      return self._reply(start_response, 413, json_tensor.error_body(
          f"Request body of {length} bytes is larger than the server's limit of "
          f"{self._max_body_bytes} bytes (--max_request_body_bytes)"))
    body = environ["wsgi.input"].read(length) if length else b""
    try:
      output = self._process(method, path, body, environ)
      status = 200
    except ServingError as e:
      logging.vlog(1, "Error processing HTTP/REST request: %s %s Error: %s", method, path, e)
      output, status = json_tensor.error_body(e.message), e.http_status
    except Exception as e:  # a bug must cost one request, in TF Serving's error format
      logging.exception("Internal error on %s %s", method, path)
      output, status = json_tensor.error_body(f"Internal error: {e}"), 500
    return self._reply(start_response, status, output)

  def _reply(self, start_response, status: int, body: bytes):
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    if self._enable_cors:
      headers.extend(_CORS_HEADERS)
    try:
      reason = HTTPStatus(status).phrase
    except ValueError:  # 499, TF Serving's CLIENT_CLOSED_REQUEST
      reason = "Client Closed Request"
    start_response(f"{status} {reason}", headers)
    return [body]

  def _process(self, method: str, path: str, body: bytes, environ) -> bytes:
    if method == "OPTIONS":
      if re.search(r"https?://", environ.get("HTTP_ORIGIN", "")):
        return b""
      raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                         "Origin header is missing in CORS preflight")
    malformed = invalid_argument(f"Malformed request: {method} {path}")
    if method == "POST":
      match = _PREDICTION_PATH.fullmatch(path)
      if not match:
        raise malformed
      name, version, label, verb = match.groups()
      spec = _model_spec(name, version, label)
      if verb == "predict":
        return self._predict(spec, body)
      if verb == "classify":
        return self._classify(spec, body)
      if verb == "regress":
        return self._regress(spec, body)
      raise malformed  # the path matches case-insensitively, the verb does not
    if method == "GET":
      match = _STATUS_PATH.fullmatch(path)
      if not match:
        raise malformed
      name, version, label, metadata = match.groups()
      if not name:
        raise invalid_argument("Missing model name in request.")
      spec = _model_spec(name, version, label)
      if metadata:
        return self._metadata(spec)
      return self._status(spec)
    raise malformed

  def _predict(self, spec: model_pb2.ModelSpec, body: bytes) -> bytes:
    document = json_tensor.parse_request(body)
    spec.signature_name = json_tensor.signature_name(document)
    specs = self._core.signature_inputs(spec, spec.signature_name)
    inputs, row_format = json_tensor.predict_inputs(document, specs, spec.signature_name)
    _, outputs = self._core.predict(spec, inputs)
    return json_tensor.predict_response(outputs, row_format)

  def _classify(self, spec: model_pb2.ModelSpec, body: bytes) -> bytes:
    document = json_tensor.parse_request(body)
    spec.signature_name = json_tensor.signature_name(document)
    examples = json_tensor.serialized_examples(document)
    _, result = self._core.classify(spec, examples)
    return json_tensor.classify_response(result)

  def _regress(self, spec: model_pb2.ModelSpec, body: bytes) -> bytes:
    document = json_tensor.parse_request(body)
    spec.signature_name = json_tensor.signature_name(document)
    examples = json_tensor.serialized_examples(document)
    _, result = self._core.regress(spec, examples)
    return json_tensor.regress_response(result)

  def _status(self, spec: model_pb2.ModelSpec) -> bytes:
    request = get_model_status_pb2.GetModelStatusRequest(model_spec=spec)
    response = self._core.model_status(request)
    return json_format.MessageToJson(response, including_default_value_fields=True,
                                     preserving_proto_field_name=True).encode("utf-8")

  def _metadata(self, spec: model_pb2.ModelSpec) -> bytes:
    request = get_model_metadata_pb2.GetModelMetadataRequest(
        model_spec=spec, metadata_field=[SIGNATURE_DEF_FIELD])
    response = self._core.model_metadata(request)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata[SIGNATURE_DEF_FIELD].Unpack(signature_map)

    def as_dict(message):
      return json_format.MessageToDict(message, including_default_value_fields=True,
                                       preserving_proto_field_name=True)

    document = {"model_spec": as_dict(response.model_spec),
                "metadata": {SIGNATURE_DEF_FIELD: as_dict(signature_map)}}
    return json.dumps(document, indent=1).encode("utf-8")


# ---------------------------------------------------------------------------------------------
# The server


class ModelServer:
  """Loads the models, then serves gRPC and (optionally) REST until `stop()`.

  Ports may be 0 to take free ones; `grpc_port` and `rest_api_port` tell the bound ports.
  """

  def __init__(self, config: model_server_config_pb2.ModelServerConfig,
               options: ServerOptions = ServerOptions(),
               core_options: CoreOptions = CoreOptions()):
    if options.grpc_port < 0 or (options.rest_api_port or 0) < 0:
      raise ValueError("ports must be >= 0")
    if options.rest_api_port and options.rest_api_port == options.grpc_port:
      raise ValueError(f"--rest_api_port ({options.rest_api_port}) must differ from --port")
    self.options = options
    self.core = ServerCore(config, core_options)
    self.grpc_port: Optional[int] = None
    self.rest_api_port: Optional[int] = None
    self._grpc_server = None
    self._http_server = None
    self._http_thread = None

  def start(self) -> "ModelServer":
    """Loads every model first (a failure raises), then opens the ports, as TF Serving does."""
    try:
      self.core.load()
      self._start_grpc()
      if self.options.rest_api_port is not None:
        self._start_rest()
    except BaseException:
      self.stop()
      raise
    return self

  def _start_grpc(self) -> None:
    limit = self.options.max_request_body_bytes
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=self.options.grpc_max_threads,
                                   thread_name_prefix="grpc"),
        options=[("grpc.max_receive_message_length", limit),
                 ("grpc.max_send_message_length", -1),
                 # Without it a second server on a taken port would share it silently.
                 ("grpc.so_reuseport", 0)])
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(self.core), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(self.core), server)
    address = f"{_host_for_uri(self.options.bind_address)}:{self.options.grpc_port}"
    try:
      port = server.add_insecure_port(address)
    except RuntimeError as e:  # grpcio's way of saying the port is taken
      raise OSError(f"cannot listen for gRPC on {address}: {e}") from None
    server.start()
    self._grpc_server, self.grpc_port = server, port
    logging.info("Running gRPC ModelServer at %s:%d ...", self.options.bind_address, port)

  def _start_rest(self) -> None:
    application = RestApi(self.core, self.options.max_request_body_bytes,
                          self.options.enable_cors_support)
    server = create_server(
        application, host=self.options.bind_address, port=self.options.rest_api_port,
        threads=self.options.rest_api_num_threads,
        # Far above ours, so the application answers oversized bodies in TF Serving's format.
        max_request_body_size=max(2 * self.options.max_request_body_bytes, 2**30),
        clear_untrusted_proxy_headers=True)
    self._http_server, self.rest_api_port = server, int(server.effective_port)
    self._http_thread = threading.Thread(target=server.run, name="rest", daemon=True)
    self._http_thread.start()
    logging.info("Exporting HTTP/REST API at:%s:%d ...", self.options.bind_address,
                 self.rest_api_port)

  def stop(self) -> None:
    if self._http_server is not None:
      server, self._http_server = self._http_server, None

      def close_everything():
        # waitress has no public stop. Run in its loop thread (through the trigger), so no
        # socket closes under a select(): the loop ends once its map is empty.
        for channel in list(server._map.values()):  # pylint: disable=protected-access
          if channel is not server and channel is not server.trigger:
            channel.handle_close()
        server.close()

      server.trigger.pull_trigger(close_everything)
      self._http_thread.join(timeout=30)
      server.task_dispatcher.shutdown()
    if self._grpc_server is not None:
      self._grpc_server.stop(grace=1).wait()
      self._grpc_server = None
    self.core.close()

  def __enter__(self):
    return self.start()

  def __exit__(self, *exc):
    self.stop()


def _host_for_uri(host: str) -> str:
  return f"[{host}]" if ":" in host and not host.startswith("[") else host


# ---------------------------------------------------------------------------------------------
# Command line, with tensorflow_model_server's flag names


def define_flags(flag_values=flags.FLAGS) -> None:
  """tensorflow_model_server's flags (those the embedded server implements), and two more."""
  integer, string, boolean = flags.DEFINE_integer, flags.DEFINE_string, flags.DEFINE_boolean
  into = {"flag_values": flag_values}
  integer("port", 8500, "TCP port for the gRPC API.", **into)
  integer("rest_api_port", 0, "Port for the HTTP/REST API; 0 turns it off. Must differ from "
          "--port.", **into)
  integer("rest_api_num_threads", _DEFAULT_THREADS, "Threads for HTTP/REST API processing.",
          **into)
  boolean("rest_api_enable_cors_support", False, "Add CORS headers to answers.", **into)
  integer("grpc_max_threads", _DEFAULT_THREADS, "Threads for gRPC processing.", **into)
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
    config = server_config.read_model_config_file(values.model_config_file)
  else:
    config = server_config.single_model_config(values.model_name, values.model_base_path)
  max_batch_size = None
  if values.enable_batching:
    params = (server_config.read_batching_parameters(values.batching_parameters_file)
              if values.batching_parameters_file else server_config.BatchingParameters())
    max_batch_size = server_config.max_batch_size(params)
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


if __name__ == "__main__":
  define_flags()
  app.run(lambda argv: sys.exit(main(argv)))
