"""The REST API's HTTP server: uvicorn (uvloop and httptools) running an ASGI application
around `rest.RestApi`, in a thread of its own.

An asyncio server holds thousands of connections without a thread each, so a slow client
(slowloris, a body trickling in) costs a socket, not a worker. A request's body is refused with
413 as soon as its Content-Length (or the bytes received so far) passes the limit, before it is
read or buffered. Where a request is answered (chosen by measuring on two cores;
benchmarks/serving_latency.py reports the figures, `server_busiest_thread_core_share` among
them):

- A small request (the usual one: a few examples) is answered in the event loop, its JSON in
  microseconds. A session run that batches is awaited there without holding a thread, so a
  batch fills from every connection, not only from as many as there are threads.
- A run that does not batch is made on the loop's thread when its request is the only one in
  flight: handing it to a thread and back costs about as much as the run of a small model.
  Under load from many connections that is almost always so, since the others wait in their
  sockets until it is answered. Sending such runs to the pool of `--rest_api_num_threads`
  threads answered fewer requests a second for more CPU each on two cores: the hand-overs and
  the contention for Python's lock cost more than overlapping the runs gains. The pool takes
  the runs of requests that arrive while another is being answered.
- A large body is always answered on the pool, so it never stops the loop from taking and
  answering the others. After it the process gives the memory it used back to the system
  (`memory.release`).
"""

import asyncio
import functools
import socket
import threading
from concurrent import futures
from typing import Optional

import grpc
import uvicorn

from serving.model_server import memory
from serving.model_server.rest import RestApi
from serving.model_server.status import ServingError, invalid_argument

# Bodies up to this are parsed and answered in the event loop (at most ~0.1 ms of JSON).
_INLINE_BODY_BYTES = 16 << 10


class AsgiApp:
  """The ASGI side: limits, body, and the hand-over of the work to the thread pool."""

  def __init__(self, api: RestApi, max_body_bytes: int, threads: int):
    self._api = api
    self._max_body_bytes = max_body_bytes
    self._pool = futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="rest")
    self._in_flight = 0  # requests being answered; only the event loop's thread changes it

  async def __call__(self, scope, receive, send):
    if scope["type"] != "http":
      return
    method = scope["method"]
    path = scope["raw_path"].decode("latin-1").split("?", 1)[0] if scope.get("raw_path") \
        else scope["path"]
    headers = dict(scope["headers"])
    announced = headers.get(b"content-length")
    if announced is not None:
      try:
        length = int(announced)
      except ValueError:
        return await self._refuse(send, method, path, 400, invalid_argument(
            f"Content-Length {announced.decode('latin-1')[:40]!r} is not a number"))
      if length > self._max_body_bytes:
        return await self._too_large(send, method, path, length)
    body = bytearray()
    more = True
    while more:
      message = await receive()
      if message["type"] == "http.disconnect":
        return
      body += message.get("body", b"")
      more = message.get("more_body", False)
      if len(body) > self._max_body_bytes:
        return await self._too_large(send, method, path, len(body))
    origin = headers.get(b"origin", b"").decode("latin-1")
    loop = asyncio.get_running_loop()
    body = bytes(body)
    self._in_flight += 1
    try:
      if len(body) > _INLINE_BODY_BYTES:
        answer = await loop.run_in_executor(self._pool, self._handle, method, path, body,
                                            origin)
      else:
        answer = await self._api.handle_async(method, path, body, origin,
                                              functools.partial(self._offload, loop))
    finally:
      self._in_flight -= 1
    await self._send(send, *answer)

  async def _offload(self, loop, function, *args):
    """A blocking call of a small request: made here when the request is the only one in
    flight (a hand-over to a thread would cost more than the run), else on the pool."""
    if self._in_flight == 1:
      return function(*args)
    return await loop.run_in_executor(self._pool, function, *args)

  def _handle(self, method, path, body, origin):
    try:
      return self._api.handle(method, path, body, origin)
    finally:
      memory.release_after(len(body))

  async def _too_large(self, send, method, path, length):
    return await self._refuse(send, method, path, 413, ServingError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"Request body of {length} bytes is larger than the server's limit of "
        f"{self._max_body_bytes} bytes (--max_request_body_bytes)"))

  async def _refuse(self, send, method, path, status, error):
    await self._send(send, status, "application/json", self._api.refuse(method, path, error,
                                                                        status))

  async def _send(self, send, status, content_type, output):
    await send({"type": "http.response.start", "status": status,
                "headers": self._api.headers(content_type, output)})
    await send({"type": "http.response.body", "body": output})

  def close(self):
    self._pool.shutdown(wait=False, cancel_futures=True)


class HttpServer:
  """uvicorn on a socket bound here (so port 0 takes a free port and a taken one fails at
  once), serving in a thread until `stop()`."""

  def __init__(self, api: RestApi, host: str, port: int, threads: int, max_body_bytes: int):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    self._socket = socket.socket(family, socket.SOCK_STREAM)
    self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
      self._socket.bind((host, port))
    except OSError:
      self._socket.close()
      raise
    self._socket.listen(2048)
    self.port = self._socket.getsockname()[1]
    self._app = AsgiApp(api, max_body_bytes, threads)
    # No proxy-headers middleware: the API never reads the client's address.
    config = uvicorn.Config(self._app, loop="uvloop", http="httptools", ws="none",
                            lifespan="off", access_log=False, log_level="warning",
                            server_header=False, date_header=False, proxy_headers=False)
    self._server = uvicorn.Server(config)
    self._thread: Optional[threading.Thread] = None

  def start(self) -> None:
    self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]},
                                    name="rest", daemon=True)
    self._thread.start()
    while not self._server.started and self._thread.is_alive():
      self._thread.join(0.01)
    if not self._server.started:
      raise OSError(f"the HTTP/REST server did not start on port {self.port}")

  def stop(self) -> None:
    self._server.should_exit = True
    if self._thread is not None:
      self._thread.join(timeout=30)
    self._app.close()
    self._socket.close()
