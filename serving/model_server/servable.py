"""A loaded version as TF Serving's APIs see it (a servable handle): its model name, version and
signatures, and `run`, one session run of a signature.

Whether a version batches is settled when it loads: its `Session` is a `DirectSession` over
its SavedModel session, or a `batching.BatchingSession` wrapped around one, as TF Serving wraps
a version's session in a BatchingSession. The APIs, warmup and the transports call `run` (or
`run_async` from an event loop) and never ask which it is. `run` also counts TF Serving's
runtime latency of the runs the APIs make (batched: from queuing to the batch's answer).
"""

import dataclasses
import math
import time
from typing import Awaitable, Callable, Dict, Mapping, Optional, Protocol, Sequence

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2

from export.servable import ServableError, SessionServable, runs_on_caller_thread
from serving.model_server.monitoring import Metrics
from serving.model_server.status import from_tf_error, invalid_argument

Outputs = Dict[str, np.ndarray]
# How an event loop has a blocking call made, `await offload(function, *args)`: on the loop's
# thread or on a worker, as the transport judges.
Offload = Callable[..., Awaitable]


@dataclasses.dataclass(frozen=True)
class SessionRun:
  """One run an API needs: a signature of a loaded version, on these inputs, these outputs;
  `api` is what the run's latency is counted under (None: not counted)."""
  servable: "Servable"
  signature: str
  inputs: Mapping[str, np.ndarray]
  output_keys: Sequence[str]
  api: Optional[str] = None


class Session(Protocol):
  """What runs a version's signatures: `run` on this thread, `run_async` from an event loop."""

  def run(self, run: SessionRun, timeout_ms: Optional[int]) -> Outputs:
    ...

  async def run_async(self, run: SessionRun, timeout_ms: Optional[int],
                      offload: Offload) -> Outputs:
    ...


def session_timeout_ms(remaining_ms: float) -> int:
  """A deadline as a session's timeout, rounded up to a power of two milliseconds: each
  distinct timeout is a session callable of its own (export/servable.py), and the deadline
  itself still ends the call on time."""
  return 1 << max(math.ceil(math.log2(max(remaining_ms, 1.0))), 0)


class DirectSession:
  """Runs a signature on the version's own session, with the runtime's errors as TF Serving's
  statuses."""

  def __init__(self, loaded: SessionServable):
    self._loaded = loaded

  def run(self, run: SessionRun, timeout_ms: Optional[int]) -> Outputs:
    input_keys = sorted(run.inputs)
    fed = [run.inputs[k] for k in input_keys]
    try:
      call = self._loaded.callable(run.signature, input_keys, run.output_keys, timeout_ms,
                                   caller_thread=runs_on_caller_thread(fed))
      return dict(zip(run.output_keys, call(*fed)))
    except (tf.errors.OpError, ServableError) as e:
      raise from_tf_error(e) from None
    except (TypeError, ValueError) as e:  # a feed that numpy/TensorFlow cannot convert
      raise invalid_argument(f"signature {run.signature}: {e}") from None

  async def run_async(self, run: SessionRun, timeout_ms: Optional[int],
                      offload: Offload) -> Outputs:
    return await offload(self.run, run, timeout_ms)


class Servable:
  """One loaded version of a model, held by the requests using it (`ServerCore.servable`)."""

  def __init__(self, name: str, version: int, loaded: SessionServable, session: Session,
               metrics: Metrics):
    self.name = name
    self.version = version
    self._loaded = loaded
    self._session = session
    self._metrics = metrics

  @property
  def version_dir(self) -> str:
    return self._loaded.version_dir

  @property
  def signatures(self) -> Mapping[str, meta_graph_pb2.SignatureDef]:
    return self._loaded.signatures

  def run(self, run: SessionRun, timeout_ms: Optional[int] = None) -> Outputs:
    """Runs on this thread (in a batch, when the version batches)."""
    started = time.perf_counter()
    outputs = self._session.run(run, timeout_ms)
    self._count_runtime(run, started)
    return outputs

  async def run_async(self, run: SessionRun, timeout_ms: Optional[int],
                      offload: Offload) -> Outputs:
    """`run` from an event loop: a batched run is awaited without holding a thread; an
    unbatched one is made through `offload`."""
    started = time.perf_counter()
    outputs = await self._session.run_async(run, timeout_ms, offload)
    self._count_runtime(run, started)
    return outputs

  def _count_runtime(self, run: SessionRun, started: float) -> None:
    if run.api:
      self._metrics.runtime(self.name, run.api, (time.perf_counter() - started) * 1e6)

  def close(self) -> None:
    self._loaded.close()
