"""The embedded model server: a ServerCore answering gRPC (grpcio) and REST (uvicorn, see
http_server.py). Start-up follows the binary: every model loads first (a failure raises), then
the ports open, then the base paths and the config file are polled.

gRPC listens on the TCP port (unless it is None, as --port=0 turns it off), on a Unix socket
when one is given, with TLS when an SSLConfig is given (on both, as the binary does; REST
stays plain HTTP), with the binary's channel arguments, and optionally with grpc.health.v1
reporting SERVING for "", "ModelService" and "PredictionService".
"""

import dataclasses
from concurrent import futures
from typing import Any, List, Optional, Tuple

import grpc
from absl import logging
from grpc_health.v1 import health
from grpc_health.v1 import health_pb2
from grpc_health.v1 import health_pb2_grpc
from tensorflow_serving.apis import model_service_pb2_grpc
from tensorflow_serving.apis import prediction_service_pb2_grpc
from tensorflow_serving.config import model_server_config_pb2

from serving.model_server.core import CoreOptions, ServerCore
from serving.model_server.flags import DEFAULT_BIND_ADDRESS, DEFAULT_MAX_BODY_BYTES
from serving.model_server.flags import DEFAULT_THREADS
from serving.model_server.grpc_api import ModelService, PredictionService
from serving.model_server import memory
from serving.model_server.http_server import HttpServer
from serving.model_server.rest import RestApi
from serving.model_server.status import ServingError, invalid_argument

HEALTH_SERVICES = ("", "ModelService", "PredictionService")  # the names the binary sets


@dataclasses.dataclass(frozen=True)
class ServerOptions:
  """Ports: None turns a listener off, 0 takes a free port (`grpc_port` / `rest_api_port`
  on the server tell which)."""
  grpc_port: Optional[int] = 8500
  rest_api_port: Optional[int] = None
  grpc_socket_path: str = ""
  bind_address: str = DEFAULT_BIND_ADDRESS
  grpc_max_threads: int = DEFAULT_THREADS
  rest_api_num_threads: int = DEFAULT_THREADS
  rest_api_timeout_in_ms: int = 30000
  max_request_body_bytes: int = DEFAULT_MAX_BODY_BYTES
  enable_cors_support: bool = False
  grpc_channel_arguments: Tuple[Tuple[str, Any], ...] = ()
  ssl_config: Any = None  # an SSLConfig (config_files.SSLConfig), PEM contents
  enable_grpc_healthcheck_service: bool = False
  prometheus_path: Optional[str] = None  # serve metrics on the REST port at this path


def parse_channel_arguments(text: str) -> Tuple[Tuple[str, Any], ...]:
  """--grpc_channel_arguments: `key=value,...`, a value that parses as int32 passed as int."""
  arguments = []
  for item in filter(None, text.split(",")):
    key, separator, value = item.partition("=")
    if not separator or not key:
      raise invalid_argument(f"--grpc_channel_arguments: {item!r} is not key=value")
    try:
      number = int(value)
      arguments.append((key, number if -2**31 <= number < 2**31 else value))
    except ValueError:
      arguments.append((key, value))
  return tuple(arguments)


class ModelServer:
  """Loads the models, then serves gRPC and (optionally) REST until `stop()`."""

  def __init__(self, config: model_server_config_pb2.ModelServerConfig,
               options: ServerOptions = ServerOptions(),
               core_options: CoreOptions = CoreOptions()):
    if (options.grpc_port or 0) < 0 or (options.rest_api_port or 0) < 0:
      raise ValueError("ports must be >= 0")
    if options.grpc_port is None and not options.grpc_socket_path:
      raise invalid_argument("At least one of server_options.grpc_port or "
                             "server_options.grpc_socket_path must be set.")
    self.options = options
    self.core = ServerCore(config, core_options)
    self.grpc_port: Optional[int] = None
    self.rest_api_port: Optional[int] = None
    self._grpc_server = None
    self._http_server: Optional[HttpServer] = None

  def start(self) -> "ModelServer":
    """Loads every model first (a failure raises), then opens the ports, as TF Serving does."""
    memory.configure()
    try:
      self.core.load()
      self._start_grpc()
      rest_port = self.options.rest_api_port
      if rest_port is not None and rest_port and rest_port == self.options.grpc_port:
        logging.error("server_options.http_port cannot be same as grpc_port. Please use a "
                      "different port for HTTP/REST API. Skipped exporting HTTP/REST API.")
      elif rest_port is not None:
        self._start_rest()
      self.core.start_polling()
    except BaseException:
      self.stop()
      raise
    return self

  def _credentials(self) -> Optional[grpc.ServerCredentials]:
    ssl = self.options.ssl_config
    if ssl is None:
      logging.info("Using InsecureServerCredentials")
      return None
    logging.info("Using SSL credentials")
    return grpc.ssl_server_credentials(
        [(ssl.server_key.encode(), ssl.server_cert.encode())],
        root_certificates=ssl.custom_ca.encode() if ssl.custom_ca else None,
        require_client_auth=ssl.client_verify)

  def _listen(self, server: grpc.Server, address: str) -> int:
    credentials = self._credentials()
    try:
      if credentials is None:
        return server.add_insecure_port(address)
      return server.add_secure_port(address, credentials)
    except RuntimeError as e:  # grpcio's way of saying the address is taken
      raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                         f"Failed to BuildAndStart gRPC server ({address}: {e})") from None

  def _start_grpc(self) -> None:
    limit = self.options.max_request_body_bytes
    options: List[Tuple[str, Any]] = [
        ("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", -1),
        # Without it a second server on a taken port would share it silently.
        ("grpc.so_reuseport", 0)]
    options.extend(self.options.grpc_channel_arguments)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=self.options.grpc_max_threads,
                                   thread_name_prefix="grpc"), options=options)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(self.core), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(self.core), server)
    if self.options.enable_grpc_healthcheck_service:
      health_servicer = health.HealthServicer()
      for service in HEALTH_SERVICES:
        health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
      health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if self.options.grpc_port is not None:
      address = f"{_host_for_uri(self.options.bind_address)}:{self.options.grpc_port}"
      self.grpc_port = self._listen(server, address)
      logging.info("Running gRPC ModelServer at %s:%d ...", self.options.bind_address,
                   self.grpc_port)
    if self.options.grpc_socket_path:
      self._listen(server, f"unix:{self.options.grpc_socket_path}")
      logging.info("Running gRPC ModelServer at UNIX socket %s ...",
                   self.options.grpc_socket_path)
    server.start()
    self._grpc_server = server

  def _start_rest(self) -> None:
    api = RestApi(self.core, self.options.enable_cors_support,
                  self.options.rest_api_timeout_in_ms, self.options.prometheus_path)
    server = HttpServer(api, self.options.bind_address, self.options.rest_api_port,
                        self.options.rest_api_num_threads, self.options.max_request_body_bytes)
    server.start()
    self._http_server, self.rest_api_port = server, server.port
    logging.info("Exporting HTTP/REST API at:%s:%d ...", self.options.bind_address,
                 self.rest_api_port)

  def stop(self) -> None:
    if self._http_server is not None:
      self._http_server.stop()
      self._http_server = None
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
