"""The embedded model server: a ServerCore answering gRPC (grpcio) and REST (waitress, a
pure-Python production WSGI server whose keep-alive handling keeps a batch-1 round trip near a
third of a millisecond on loopback). Start-up follows the binary: every model loads first (a
failure raises), then the ports open."""

import dataclasses
import os
import threading
from concurrent import futures
from typing import Optional

import grpc
from absl import logging
from tensorflow_serving.apis import model_service_pb2_grpc
from tensorflow_serving.apis import prediction_service_pb2_grpc
from tensorflow_serving.config import model_server_config_pb2
from waitress.server import create_server

from serving.model_server.core import CoreOptions, ServerCore
from serving.model_server.grpc_api import ModelService, PredictionService
from serving.model_server.rest import RestApi

DEFAULT_BIND_ADDRESS = "127.0.0.1"
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
DEFAULT_THREADS = 4 * (os.cpu_count() or 1)  # TF Serving's default for gRPC and REST


@dataclasses.dataclass(frozen=True)
class ServerOptions:
  grpc_port: int = 8500
  rest_api_port: Optional[int] = None  # None: no REST API; 0: a free port
  bind_address: str = DEFAULT_BIND_ADDRESS
  grpc_max_threads: int = DEFAULT_THREADS
  rest_api_num_threads: int = DEFAULT_THREADS
  max_request_body_bytes: int = DEFAULT_MAX_BODY_BYTES
  enable_cors_support: bool = False



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
