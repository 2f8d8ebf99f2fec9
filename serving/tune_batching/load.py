"""Closed-loop HTTP load on loopback: `concurrency` keep-alive connections, each sending the
next prepared request as soon as the previous answer arrived, for a fixed time.

Written on asyncio with httptools' response parser (the parser uvicorn uses) rather than a
general HTTP client: the load must cost the machine far less than the server it measures
(about 25 µs of CPU a request, against some 200 µs for requests' own connection handling),
or a two-core host measures its client.
"""

import asyncio
import dataclasses
import time
from typing import List, Sequence

import httptools
import numpy as np
import uvloop


@dataclasses.dataclass(frozen=True)
class LoadResult:
  requests: int
  failures: int  # answers other than 200, and connections lost
  seconds: float
  latencies_ms: np.ndarray
  client_cpu_seconds: float
  first_failure: str = ""

  @property
  def requests_per_s(self) -> float:
    return self.requests / self.seconds if self.seconds else 0.0

  def percentile_ms(self, q: float) -> float:
    return float(np.percentile(self.latencies_ms, q)) if len(self.latencies_ms) else float("nan")


def post_request(host: str, port: int, path: str, body: bytes) -> bytes:
  """The bytes of one keep-alive POST of a JSON body."""
  return (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
          f"Content-Length: {len(body)}\r\n\r\n").encode("ascii") + body


class _Answers(asyncio.Protocol):
  """One connection: sends a request, hands each complete answer's status to `answered`."""

  def __init__(self):
    self.transport = None
    self.parser = httptools.HttpResponseParser(self)
    self.waiting = None
    self.lost = None

  def connection_made(self, transport):
    self.transport = transport

  def data_received(self, data):
    try:
      self.parser.feed_data(data)
    except httptools.HttpParserError as e:
      self._finish(f"unparsable answer: {e}")

  def on_message_complete(self):
    self._finish(self.parser.get_status_code())

  def connection_lost(self, exc):
    self.lost = f"connection lost: {exc or 'closed by the server'}"
    self._finish(self.lost)

  def _finish(self, outcome):
    if self.waiting is not None and not self.waiting.done():
      self.waiting.set_result(outcome)

  async def ask(self, request: bytes):
    self.waiting = asyncio.get_running_loop().create_future()
    self.transport.write(request)
    return await self.waiting


async def _run(host: str, port: int, requests: Sequence[bytes], concurrency: int,
               seconds: float, warmup_seconds: float) -> LoadResult:
  loop = asyncio.get_running_loop()
  connections: List[_Answers] = []
  for _ in range(concurrency):
    _, protocol = await loop.create_connection(_Answers, host, port)
    connections.append(protocol)
  latencies: List[float] = []
  failures: List[str] = []
  started = time.perf_counter()
  measure_from = started + warmup_seconds
  stop_at = measure_from + seconds

  async def client(number: int, connection: _Answers):
    sent = number
    while True:
      began = time.perf_counter()
      if began >= stop_at:
        return
      outcome = await connection.ask(requests[sent % len(requests)])
      sent += 1
      if began < measure_from:
        continue
      if outcome == 200:
        latencies.append(time.perf_counter() - began)
      else:
        failures.append(outcome if isinstance(outcome, str) else f"HTTP {outcome}")
        if connection.lost:
          return

  cpu = time.process_time()
  await asyncio.gather(*(client(i, c) for i, c in enumerate(connections)))
  wall = time.perf_counter() - measure_from
  cpu = time.process_time() - cpu
  for connection in connections:
    connection.transport.close()
  return LoadResult(len(latencies), len(failures), wall, np.array(latencies) * 1e3, cpu,
                    failures[0] if failures else "")


def run_load(host: str, port: int, requests: Sequence[bytes], concurrency: int,
             seconds: float, warmup_seconds: float = 1.0) -> LoadResult:
  """Sends `requests` (cycled) from `concurrency` connections for `seconds` after a warm-up;
  a request counts when its answer is 200."""
  if concurrency < 1 or not requests:
    raise ValueError("the load needs at least one connection and one request")
  return uvloop.run(_run(host, port, requests, concurrency, seconds, warmup_seconds))
