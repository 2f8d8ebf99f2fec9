"""Server-side request batching, as TF Serving's batching session and shared batch scheduler do
it under --enable_batching.

Concurrent requests to one loaded version, signature, set of inputs and set of outputs join a
queue; the queue's open batch takes requests until the next one would not fit
(`max_batch_size` examples; `max_execution_batch_size` with large-batch splitting), then
closes. A batch runs as one session run when it is closed, full, or `batch_timeout_micros`
after its first request came, on one of `num_batch_threads` threads shared by every queue of
the server (round robin). Its inputs are concatenated along dimension 0 and padded up to the
next `allowed_batch_sizes` entry with copies of the last request's first row; each request
gets its own rows of the outputs back, padding rows dropped. A failed run fails each request
in the batch with the run's error. Over `max_enqueued_batches` a request is refused with
UNAVAILABLE, as the binary refuses it.

One rule differs from TF Serving, on purpose: requests whose inputs differ past dimension 0
(with pad_variable_length_inputs off) queue apart, so they run alone or with requests of
their own shape. TF Serving puts them in one batch and then fails every request in it
("...have different shapes and padding is turned off"), so one odd request costs its
neighbours their answers.

The choice is made once, when a version loads (`Batching`): its parameters are the server's
--batching_parameters_file, or, with --enable_per_model_batching_parameters, the version dir's
`batching_params.pbtxt`, which replaces them whole (a version without that file runs
unbatched), and a version that batches gets a `BatchingSession` around its session. That
session owns the version's queues, so they go away with it. Batching metrics are TF Serving's
`/tensorflow/serving/batching_session/*`.
"""

import asyncio
import collections
import dataclasses
import functools
import os
import threading
import time
from concurrent import futures
from typing import Callable, Deque, Dict, Hashable, List, Mapping, Optional, Sequence, Tuple

import grpc
import numpy as np
import tensorflow as tf

from serving.model_server import config_files
from serving.model_server import monitoring
from serving.model_server.servable import Offload, Outputs, Session, SessionRun
from serving.model_server.servable import session_timeout_ms
from serving.model_server.status import ServingError, invalid_argument

PER_MODEL_FILE = "batching_params.pbtxt"

# TensorFlow's SharedBatchScheduler defaults, which unset BatchingParameters fields keep.
DEFAULT_MAX_BATCH_SIZE = 1000
DEFAULT_MAX_ENQUEUED_BATCHES = 10
DEFAULT_MAX_EXECUTION_BATCH_SIZE = 1000
_MAX_PADDED_RANK = 6

# (inputs, timeout in ms or None) -> outputs: one session run of a signature.
RunBatch = Callable[[Mapping[str, np.ndarray], Optional[int]], Dict[str, np.ndarray]]


def _value(params, field: str, default):
  return getattr(params, field).value if params.HasField(field) else default


@dataclasses.dataclass(frozen=True)
class QueueOptions:
  """One version's batching parameters, checked as TF Serving checks them at load time."""
  max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
  batch_timeout_micros: int = 0
  max_enqueued_batches: int = DEFAULT_MAX_ENQUEUED_BATCHES
  allowed_batch_sizes: Tuple[int, ...] = ()
  pad_variable_length_inputs: bool = False
  enable_large_batch_splitting: bool = False
  max_execution_batch_size: int = DEFAULT_MAX_EXECUTION_BATCH_SIZE

  @classmethod
  def from_params(cls, params) -> "QueueOptions":
    splitting = _value(params, "enable_large_batch_splitting", False)
    options = cls(
        max_batch_size=_value(params, "max_batch_size", DEFAULT_MAX_BATCH_SIZE),
        batch_timeout_micros=_value(params, "batch_timeout_micros", 0),
        max_enqueued_batches=_value(params, "max_enqueued_batches",
                                    DEFAULT_MAX_ENQUEUED_BATCHES),
        allowed_batch_sizes=tuple(params.allowed_batch_sizes),
        pad_variable_length_inputs=params.pad_variable_length_inputs,
        enable_large_batch_splitting=splitting,
        # Unset with splitting on, TF Serving takes max_batch_size's value.
        max_execution_batch_size=_value(
            params, "max_execution_batch_size",
            params.max_batch_size.value if splitting else DEFAULT_MAX_EXECUTION_BATCH_SIZE))
    options.check()
    if options.max_enqueued_batches == 0 and not splitting:
      options = dataclasses.replace(options, max_enqueued_batches=1)  # as TensorFlow does
    return options

  def check(self) -> None:
    if self.allowed_batch_sizes and self.allowed_batch_sizes[-1] != self.max_batch_size:
      raise invalid_argument(
          f"Last entry in allowed_batch_sizes must match max_batch_size; last entry was "
          f"{self.allowed_batch_sizes[-1]}; expected {self.max_batch_size}")
    if self.max_batch_size <= 0:
      raise invalid_argument(f"input_batch_size_limit must be positive; was "
                             f"{self.max_batch_size}")
    if self.batch_timeout_micros < 0:
      raise invalid_argument(f"batch_timeout_micros must be non-negative; was "
                             f"{self.batch_timeout_micros}")
    if self.max_enqueued_batches < 0 or (self.max_enqueued_batches == 0
                                         and self.enable_large_batch_splitting):
      raise invalid_argument(f"max_enqueued_batches must be positive; was "
                             f"{self.max_enqueued_batches}")
    if self.enable_large_batch_splitting and \
        self.max_batch_size < self.max_execution_batch_size:
      raise invalid_argument("When enable_large_batch_splitting is true, "
                             "input_batch_size_limit must be greater than or equal to "
                             "max_execution_batch_size.")

  @property
  def batch_limit(self) -> int:
    """The most examples one session run takes."""
    return self.max_execution_batch_size if self.enable_large_batch_splitting \
        else self.max_batch_size


def num_batch_threads(params, default: int) -> int:
  """The shared pool's size; TF Serving refuses to start below one."""
  threads = _value(params, "num_batch_threads", default)
  if threads < 1:
    raise invalid_argument(f"num_batch_threads must be positive; was {threads}")
  return threads


class _Task:
  """One request (or, with large-batch splitting, one piece of one) waiting for its rows."""
  __slots__ = ("inputs", "size", "deadline", "enqueued", "future")

  def __init__(self, inputs: Mapping[str, np.ndarray], size: int, deadline: Optional[float]):
    self.inputs = inputs
    self.size = size
    self.deadline = deadline
    self.enqueued = time.monotonic()
    self.future: "futures.Future[Dict[str, np.ndarray]]" = futures.Future()


class _Batch:
  __slots__ = ("tasks", "size", "started", "closed", "run")

  def __init__(self, run: RunBatch):
    self.tasks: List[_Task] = []
    self.size = 0
    self.started = 0.0
    self.closed = False
    self.run = run

  def add(self, task: _Task) -> None:
    if not self.tasks:
      self.started = time.monotonic()
    self.tasks.append(task)
    self.size += task.size


class _Queue:
  __slots__ = ("options", "batches")

  def __init__(self, options: QueueOptions):
    self.options = options
    self.batches: Deque[_Batch] = collections.deque()

  def ready_in(self, now: float, closing: bool) -> float:
    """Seconds until the front batch may run (0: now)."""
    front = self.batches[0]
    if front.closed or closing or front.size >= self.options.batch_limit:
      return 0.0
    return max(front.started + self.options.batch_timeout_micros / 1e6 - now, 0.0)


def batch_key(signature_name: str, inputs: Mapping[str, np.ndarray], output_keys: Sequence[str],
              options: QueueOptions) -> Hashable:
  """What requests must share to run in one batch: signature, input and output names, each
  input's dtype and rank, and, unless variable-length inputs are padded, the dimensions past
  the batch dimension."""
  shapes = tuple(sorted(
      (name, array.dtype.str, array.ndim if options.pad_variable_length_inputs
       else array.shape[1:]) for name, array in inputs.items()))
  return signature_name, shapes, tuple(sorted(output_keys))


def task_size(inputs: Mapping[str, np.ndarray]) -> int:
  """The examples in a request, with the batching session's checks of its inputs."""
  if not inputs:
    raise invalid_argument("Batching Run() must have at least one input tensor")
  sizes = set()
  for array in inputs.values():
    if array.ndim == 0:
      raise invalid_argument("Batching Run() input tensors must have at least one dimension")
    sizes.add(array.shape[0])
  if len(sizes) > 1:
    raise invalid_argument("Batching Run() input tensors must have equal 0th-dimension size")
  return sizes.pop()


class BatchScheduler:
  """The server's batch scheduler: `num_threads` threads that run the batches of every queue,
  round robin; each queue belongs to the `BatchingSession` of one version."""

  def __init__(self, num_threads: int, metrics: monitoring.Metrics):
    self._metrics = metrics
    self._cond = threading.Condition()
    self._closing = False
    self._pending: Deque[_Queue] = collections.deque()  # queues holding batches, round robin
    self._threads = [threading.Thread(target=self._work, name=f"batch_threads_{i}", daemon=True)
                     for i in range(num_threads)]
    for thread in self._threads:
      thread.start()

  def run(self, queues: Dict[Hashable, _Queue], key: Hashable, options: QueueOptions,
          run: RunBatch, inputs: Mapping[str, np.ndarray], timeout_ms: Optional[int]
          ) -> Dict[str, np.ndarray]:
    """`submit`, then wait for the answer on this thread."""
    return self.submit(queues, key, options, run, inputs, timeout_ms).result()

  def submit(self, queues: Dict[Hashable, _Queue], key: Hashable, options: QueueOptions,
             run: RunBatch, inputs: Mapping[str, np.ndarray], timeout_ms: Optional[int]
             ) -> "futures.Future[Dict[str, np.ndarray]]":
    """Queues `inputs` in a batch of the queue `key` of `queues` (one version's, made here
    when missing); the future holds this request's rows of the outputs, or the batch's
    error. Raises the scheduler's refusals at once."""
    size = task_size(inputs)
    deadline = time.monotonic() + timeout_ms / 1e3 if timeout_ms else None
    if size > options.max_batch_size:
      raise invalid_argument(f"Task size {size} is larger than maximum input batch size "
                             f"{options.max_batch_size}")
    with self._cond:
      if self._closing:
        raise ServingError(grpc.StatusCode.UNAVAILABLE, "The batch scheduler is shutting down")
      queue = queues.get(key)
      if queue is None:
        queue = queues[key] = _Queue(options)
      tasks = self._enqueue(queue, run, inputs, size, deadline)
      self._cond.notify_all()
    if len(tasks) == 1:
      return tasks[0].future
    return _joined([t.future for t in tasks])

  def _enqueue(self, queue: _Queue, run: RunBatch, inputs: Mapping[str, np.ndarray],
               size: int, deadline: Optional[float]) -> List[_Task]:
    options = queue.options
    open_batch = queue.batches[-1] if queue.batches and not queue.batches[-1].closed else None
    free = options.batch_limit - open_batch.size if open_batch else 0
    if options.enable_large_batch_splitting:
      first = min(free, size)
      pieces = [first] if first else []
      while sum(pieces) < size:
        pieces.append(min(options.max_execution_batch_size, size - sum(pieces)))
      new_batches = len(pieces) - (1 if first else 0)
      capacity = ((options.max_enqueued_batches - len(queue.batches))
                  * options.max_execution_batch_size + free)
      if size > capacity:
        raise ServingError(
            grpc.StatusCode.UNAVAILABLE,
            f"The batch scheduling queue to which this task was submitted is full; task size "
            f"is {size} but scheduling capacity is only {capacity} (num_enqueued_batches="
            f"{len(queue.batches)}, max_enqueued_batches={options.max_enqueued_batches}, "
            f"open_batch_size={open_batch.size if open_batch else 0}, "
            f"max_execution_batch_size={options.max_execution_batch_size})")
    else:
      pieces, new_batches = [size], (0 if size <= free else 1)
      if new_batches and len(queue.batches) >= options.max_enqueued_batches:
        raise ServingError(
            grpc.StatusCode.UNAVAILABLE,
            f"The batch scheduling queue to which this task was submitted is full; currently "
            f"{len(queue.batches)} batches enqueued and max_enqueued_batches is "
            f"{options.max_enqueued_batches}")
    tasks, start = [], 0
    for piece in pieces:
      part = inputs if len(pieces) == 1 else {n: a[start:start + piece]
                                             for n, a in inputs.items()}
      start += piece
      task = _Task(part, piece, deadline)
      if open_batch is None or open_batch.size + piece > options.batch_limit:
        if open_batch is not None:
          open_batch.closed = True
        open_batch = _Batch(run)
        queue.batches.append(open_batch)
      open_batch.add(task)
      tasks.append(task)
    if queue not in self._pending:
      self._pending.append(queue)
    return tasks

  def _next_batch(self) -> Tuple[Optional[Tuple[_Batch, QueueOptions]], Optional[float]]:
    """The next batch to run, round robin over the queues, or how long to wait for one."""
    now, wait = time.monotonic(), None
    for _ in range(len(self._pending)):
      queue = self._pending[0]
      self._pending.rotate(-1)
      ready_in = queue.ready_in(now, self._closing)
      if ready_in == 0.0:
        batch = queue.batches.popleft()
        batch.closed = True
        if not queue.batches:
          self._pending.remove(queue)
        return (batch, queue.options), None
      wait = ready_in if wait is None else min(wait, ready_in)
    return None, wait

  def _work(self) -> None:
    while True:
      with self._cond:
        while True:
          found, wait = self._next_batch()
          if found is not None or (self._closing and not self._pending):
            break
          self._cond.wait(wait)
      if found is None:
        return
      self._process(*found)

  def _process(self, batch: _Batch, options: QueueOptions) -> None:
    now = time.monotonic()
    tasks = batch.tasks
    for task in tasks:
      self._metrics.observe(monitoring.BATCHING_QUEUING_LATENCY, (now - task.enqueued) * 1e6,
                            thread_pool_name="")
    try:
      if all(t.deadline is not None and t.deadline <= now for t in tasks):
        raise ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                           "Run() timeout exceeded while waiting in batching queue")
      timeout_ms = None
      if all(t.deadline is not None for t in tasks):
        timeout_ms = session_timeout_ms((max(t.deadline for t in tasks) - now) * 1e3)
      inputs, padding = _merge(tasks, options, self._metrics)
      self._metrics.add(monitoring.BATCHING_WRAPPED_RUN_COUNT)
      outputs = batch.run(inputs, timeout_ms)
      answers = _split(outputs, tasks, batch.size + padding)
    except BaseException as error:  # the run's error, or a bug: each request fails with it
      for task in tasks:
        task.future.set_exception(error)
    else:
      for task, answer in zip(tasks, answers):
        task.future.set_result(answer)

  def close(self) -> None:
    """Runs what is queued, then stops the threads."""
    with self._cond:
      self._closing = True
      self._cond.notify_all()
    for thread in self._threads:
      thread.join(timeout=60)


class BatchingSession:
  """A version's session under batching: each run joins a batch of the version's queue for its
  `batch_key`, and the batch runs as one run of the wrapped session."""

  def __init__(self, session: Session, scheduler: BatchScheduler, options: QueueOptions):
    self.options = options
    self._session = session
    self._scheduler = scheduler
    self._queues: Dict[Hashable, _Queue] = {}

  def submit(self, run: SessionRun, timeout_ms: Optional[int]) -> "futures.Future[Outputs]":
    return self._scheduler.submit(
        self._queues, batch_key(run.signature, run.inputs, run.output_keys, self.options),
        self.options, functools.partial(self._run_batch, run), run.inputs, timeout_ms)

  def _run_batch(self, first: SessionRun, inputs: Mapping[str, np.ndarray],
                 timeout_ms: Optional[int]) -> Outputs:
    """The batch's run: its first request's signature and outputs, on every request's rows."""
    return self._session.run(dataclasses.replace(first, inputs=inputs), timeout_ms)

  def run(self, run: SessionRun, timeout_ms: Optional[int]) -> Outputs:
    return self.submit(run, timeout_ms).result()

  async def run_async(self, run: SessionRun, timeout_ms: Optional[int],
                      offload: Offload) -> Outputs:
    return await asyncio.wrap_future(self.submit(run, timeout_ms))


class Batching:
  """--enable_batching: the server's scheduler, and the batching each version gets when it
  loads."""

  def __init__(self, params, per_model: bool, metrics: monitoring.Metrics):
    self._params = params
    self._per_model = per_model
    self._scheduler = BatchScheduler(num_batch_threads(params, os.cpu_count() or 1), metrics)

  def options(self, version_dir: str) -> Optional[QueueOptions]:
    """The version's parameters, checked: the server's, or with per-model parameters its own
    `batching_params.pbtxt` (None, unbatched, when it has none)."""
    if not self._per_model:
      return QueueOptions.from_params(self._params)
    path = version_dir.rstrip("/") + "/" + PER_MODEL_FILE
    if not tf.io.gfile.exists(path):
      return None
    return QueueOptions.from_params(config_files.read_batching_parameters(path))

  def session(self, session: Session, options: Optional[QueueOptions]) -> Session:
    """The version's session: `session` itself, or batched as `options` say."""
    if options is None:
      return session
    return BatchingSession(session, self._scheduler, options)

  def close(self) -> None:
    self._scheduler.close()


def _merge(tasks: Sequence[_Task], options: QueueOptions, metrics: monitoring.Metrics
           ) -> Tuple[Dict[str, np.ndarray], int]:
  """The batch's inputs, concatenated in request order and padded; and the padding rows."""
  size = sum(t.size for t in tasks)
  padded = next((s for s in options.allowed_batch_sizes if s >= size), size)
  merged = {}
  for name in tasks[0].inputs:
    parts = [t.inputs[name] for t in tasks]
    if options.pad_variable_length_inputs:
      parts = _pad_to_common_shape(parts)
    if padded > size:
      # TF Serving pads with copies of the last request's first row.
      parts.append(np.repeat(parts[-1][:1], padded - size, axis=0))
    merged[name] = parts[0] if len(parts) == 1 else np.concatenate(parts)
    for task in tasks:
      metrics.observe(monitoring.BATCHING_INPUT_BATCH_SIZE, task.size)
  metrics.observe(monitoring.BATCHING_PROCESSED_BATCH_SIZE, padded)
  metrics.observe(monitoring.BATCHING_PADDING_SIZE, padded - size,
                  execution_batch_size=str(padded))
  return merged, padded - size


def _pad_to_common_shape(parts: List[np.ndarray]) -> List[np.ndarray]:
  """Each request's tensor padded at the end of every dimension past the first to the
  batch's largest, with its own first value, as TF Serving pads variable-length inputs."""
  widest = tuple(max(p.shape[d] for p in parts) for d in range(1, parts[0].ndim))
  if all(p.shape[1:] == widest for p in parts):
    return parts
  if not 1 <= parts[0].ndim <= _MAX_PADDED_RANK:
    raise invalid_argument("Only tensors with rank from 1 to 6 can be padded.")
  padded = []
  for part in parts:
    if part.shape[1:] == widest:
      padded.append(part)
      continue
    if part.size == 0:
      raise invalid_argument("Got empty tensor in batch of non-empty tensors.")
    widths = [(0, 0)] + [(0, w - s) for s, w in zip(part.shape[1:], widest)]
    padded.append(np.pad(part, widths, constant_values=part.reshape(-1)[0]))
  return padded


def _split(outputs: Mapping[str, np.ndarray], tasks: Sequence[_Task], rows: int
           ) -> List[Dict[str, np.ndarray]]:
  """Each request's rows of the batch's outputs, padding rows dropped."""
  for array in outputs.values():
    if array.ndim == 0:
      raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                         "Batched output tensor has 0 dimensions")
    if array.shape[0] != rows:
      raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                         "Batched output tensor's 0th dimension does not equal the sum of the "
                         "0th dimension sizes of the input tensors")
  if len(tasks) == 1 and rows == tasks[0].size:
    return [dict(outputs)]
  answers, start = [], 0
  for task in tasks:
    answers.append({name: array[start:start + task.size] for name, array in outputs.items()})
    start += task.size
  return answers


def _joined(pieces: Sequence["futures.Future[Dict[str, np.ndarray]]"]
            ) -> "futures.Future[Dict[str, np.ndarray]]":
  """One future for a split request: its pieces' rows in order, or the first error."""
  joined: "futures.Future[Dict[str, np.ndarray]]" = futures.Future()
  remaining = [len(pieces)]
  lock = threading.Lock()

  def piece_done(_):
    with lock:
      remaining[0] -= 1
      if remaining[0]:
        return
    failed = next((p.exception() for p in pieces if p.exception() is not None), None)
    if failed is not None:
      joined.set_exception(failed)
    else:
      answers = [p.result() for p in pieces]
      joined.set_result({name: np.concatenate([a[name] for a in answers])
                         for name in answers[0]})

  for piece in pieces:
    piece.add_done_callback(piece_done)
  return joined
