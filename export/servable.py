"""Loads a SavedModel version the way TF Serving does and runs its signatures in-process.

TF Serving loads the `serve` meta graph (or the tags it is given) with TensorFlow's SavedModel
loader, which restores the variables and runs the main op (table initializers included). This
is the same loader, and signatures run through the runtime's own feed path, as TF Serving runs
them, so an answer from here is the in-process reference for a served model.
"""

import contextlib
import gc
import threading
import time
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2
from tensorflow.core.protobuf import meta_graph_pb2

SERVE_TAG = "serve"


class ServableError(RuntimeError):
  """A version directory that cannot be loaded or a request it cannot answer."""


# Rows up to which a run executes on the calling thread. Measured on the Banking77 model
# (2 cores): one row runs 2.6x (optimized) and 1.8x (original) faster there than through the
# inter-op pool, whose hand-over and wake-ups cost more than the model; 64 rows run 1.2-1.3x
# slower there, where the pool's parallel ops pay off.
CALLER_THREAD_MAX_ROWS = 1


_LOOP_OPS = frozenset({"Enter", "Exit", "NextIteration", "LoopCond", "While", "StatelessWhile",
                       "_While"})
# The runtime's words when a run is cancelled at its deadline.
DEADLINE_MESSAGE = "Timed out waiting for notification"


@contextlib.contextmanager
def _collector_paused():
  """Loading builds a Python object per op and no garbage worth collecting, while a full
  collection it triggers walks every object TensorFlow's import made: about 0.12 s of a
  Banking77 model's 0.25 s load, or not, by where the allocation count happens to fall."""
  enabled = gc.isenabled()
  gc.disable()
  try:
    yield
  finally:
    if enabled:
      gc.enable()


def _has_loops(graph_def) -> bool:
  ops = {n.op for n in graph_def.node}
  for function in graph_def.library.function:
    ops.update(n.op for n in function.node_def)
  return bool(ops & _LOOP_OPS)


def _past_deadline_fails(run: Callable, timeout_ms: int) -> Callable:
  def timed(*values):
    started = time.monotonic()
    outputs = run(*values)
    if (time.monotonic() - started) * 1e3 > timeout_ms:
      raise tf.errors.DeadlineExceededError(None, None, DEADLINE_MESSAGE)
    return outputs
  return timed


def runs_on_caller_thread(values: Sequence) -> bool:
  """Whether a run fed `values` (one per input) executes on the calling thread."""
  return all(np.ndim(v) == 0 or len(v) <= CALLER_THREAD_MAX_ROWS for v in values)


class SessionServable:
  """One loaded version: its graph, a session, and its signatures."""

  def __init__(self, version_dir: str, tags: Sequence[str] = (SERVE_TAG,),
               session_config: Optional[tf.compat.v1.ConfigProto] = None):
    with _collector_paused():
      self.version_dir = version_dir
      self._callables: Dict[tuple, Callable] = {}
      self._callables_lock = threading.Lock()
      self._graph = tf.Graph()
      self._session = tf.compat.v1.Session(graph=self._graph, config=session_config)
      try:
        with self._graph.as_default():
          self._meta_graph = tf.compat.v1.saved_model.load(self._session, list(tags),
                                                           version_dir)
      except Exception as e:
        self._session.close()
        raise ServableError(f"{version_dir}: cannot load the SavedModel: {e}") from e
      # Whether the graph (or a function in it) has a loop, whose run time no input bounds.
      self.has_loops = _has_loops(self._meta_graph.graph_def)

  @property
  def graph_def(self):
    """The loaded meta graph's GraphDef, as stored in the version dir."""
    return self._meta_graph.graph_def

  @property
  def signatures(self) -> Mapping[str, meta_graph_pb2.SignatureDef]:
    return self._meta_graph.signature_def

  def signature(self, name: str) -> meta_graph_pb2.SignatureDef:
    if name not in self.signatures:
      raise ServableError(f'Serving signature name: "{name}" not found in signature def '
                          f"(have: {sorted(self.signatures)})")
    return self.signatures[name]

  def run(self, signature_name: str, inputs: Mapping[str, object],
          output_keys=None) -> Dict[str, np.ndarray]:
    """Feeds `inputs` (by signature input key; lists and arrays are converted to the input's
    dtype, as session.run converts them) and fetches outputs (all by default)."""
    signature = self.signature(signature_name)
    missing = set(signature.inputs) - set(inputs)
    unknown = set(inputs) - set(signature.inputs)
    if missing or unknown:
      raise ServableError(f"signature {signature_name!r} takes inputs "
                          f"{sorted(signature.inputs)}; missing {sorted(missing)}, "
                          f"unknown {sorted(unknown)}")
    output_keys = list(output_keys or signature.outputs)
    input_keys = sorted(inputs)
    fed = [np.asarray(inputs[k], dtype=tf.as_dtype(signature.inputs[k].dtype).as_numpy_dtype)
           for k in input_keys]
    values = self.callable(signature_name, input_keys, output_keys,
                           caller_thread=runs_on_caller_thread(fed))(*fed)
    return dict(zip(output_keys, values))

  def callable(self, signature_name: str, input_keys: Sequence[str],
               output_keys: Optional[Sequence[str]] = None,
               timeout_ms: Optional[int] = None,
               caller_thread: bool = False) -> Callable[..., List[np.ndarray]]:
    """`run` as a function of the inputs in `input_keys` order, returning the outputs in
    `output_keys` order (default: all, sorted), cancelled past `timeout_ms` (the runtime's
    DEADLINE_EXCEEDED). Made once per signature, key lists and timeout, and cached.

    It feeds the runtime directly, as TF Serving's C++ Session::Run does: fed tensors are
    checked by the graph's ops and the runtime (dtype, what the kernels reject), not against
    the placeholders' static shapes, which Python's session.run and make_callable check and
    TF Serving does not (its own tests feed shape [1] to an input of shape [None, 1]). It is
    also about four times cheaper per call than make_callable.

    With `caller_thread` the runtime executes the graph on the calling thread instead of
    handing it to the inter-op pool (RunOptions.inter_op_thread_pool = -1): for one row the
    hand-over costs more than the model (see `runs_on_caller_thread`). Such a run cannot be
    cancelled part-way, so a graph with loops, which only a cancellation stops, keeps the
    pool when a timeout is set; for others a run that ends past its timeout fails with the
    runtime's DEADLINE_EXCEEDED, as a cancelled one would.
    """
    if output_keys is None:
      output_keys = sorted(self.signature(signature_name).outputs)
    caller_thread = caller_thread and not (timeout_ms and self.has_loops)
    key = (signature_name, tuple(input_keys), tuple(output_keys), timeout_ms, caller_thread)
    with self._callables_lock:
      found = self._callables.get(key)
    if found is not None:
      return found
    signature = self.signature(signature_name)
    unknown = [k for k in input_keys if k not in signature.inputs] + \
        [k for k in output_keys if k not in signature.outputs]
    if unknown or set(input_keys) != set(signature.inputs):
      raise ServableError(f"signature {signature_name!r} takes inputs "
                          f"{sorted(signature.inputs)} and has outputs "
                          f"{sorted(signature.outputs)}; asked for inputs {list(input_keys)}, "
                          f"outputs {list(output_keys)}")
    options = config_pb2.CallableOptions(
        feed=[signature.inputs[k].name for k in input_keys],
        fetch=[signature.outputs[k].name for k in output_keys])
    if timeout_ms:
      options.run_options.timeout_in_ms = timeout_ms
    if caller_thread:
      options.run_options.inter_op_thread_pool = -1
    # The one private TensorFlow API here: Session's public callables add the Python-side
    # static-shape check (see above), and nothing public feeds the runtime's callables.
    made = self._session._make_callable_from_options(options)  # pylint: disable=protected-access
    if caller_thread and timeout_ms:
      made = _past_deadline_fails(made, timeout_ms)
    with self._callables_lock:
      return self._callables.setdefault(key, made)

  def run_traced(self, signature_name: str, inputs: Mapping[str, object]
                 ) -> config_pb2.RunMetadata:
    """One run of the signature with the runtime's full trace: its step stats time every op.
    Like `run`, one row executes on the calling thread."""
    signature = self.signature(signature_name)
    fed = {signature.inputs[k].name: np.asarray(
        v, dtype=tf.as_dtype(signature.inputs[k].dtype).as_numpy_dtype)
        for k, v in inputs.items()}
    options = config_pb2.RunOptions(trace_level=config_pb2.RunOptions.FULL_TRACE)
    if runs_on_caller_thread(list(fed.values())):
      options.inter_op_thread_pool = -1
    metadata = config_pb2.RunMetadata()
    self._session.run([info.name for info in signature.outputs.values()], fed,
                      options=options, run_metadata=metadata)
    return metadata

  def close(self):
    self._session.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
