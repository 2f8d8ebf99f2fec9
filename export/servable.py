"""Loads a SavedModel version the way TF Serving does and runs its signatures in-process.

TF Serving loads the `serve` meta graph with TensorFlow's SavedModel loader, which
restores the variables and runs the main op (table initializers included). This is the
same loader, so an answer from here is the in-process reference for a served model.
"""

import threading
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2

SERVE_TAG = "serve"


class ServableError(RuntimeError):
  """A version directory that cannot be loaded or a request it cannot answer."""


class SessionServable:
  """One loaded version: its graph, a session, and its signatures."""

  def __init__(self, version_dir: str, tags: Sequence[str] = (SERVE_TAG,),
               session_config: Optional[tf.compat.v1.ConfigProto] = None):
    self.version_dir = version_dir
    self._callables: Dict[tuple, Callable] = {}
    self._callables_lock = threading.Lock()
    self._graph = tf.Graph()
    self._session = tf.compat.v1.Session(graph=self._graph, config=session_config)
    try:
      with self._graph.as_default():
        self._meta_graph = tf.compat.v1.saved_model.load(self._session, list(tags), version_dir)
    except Exception as e:
      self._session.close()
      raise ServableError(f"{version_dir}: cannot load the SavedModel: {e}") from e

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
    """Feeds `inputs` (by signature input key) and fetches outputs (all by default)."""
    signature = self.signature(signature_name)
    missing = set(signature.inputs) - set(inputs)
    unknown = set(inputs) - set(signature.inputs)
    if missing or unknown:
      raise ServableError(f"signature {signature_name!r} takes inputs "
                          f"{sorted(signature.inputs)}; missing {sorted(missing)}, "
                          f"unknown {sorted(unknown)}")
    output_keys = list(output_keys or signature.outputs)
    feeds = {signature.inputs[k].name: v for k, v in inputs.items()}
    fetches = [signature.outputs[k].name for k in output_keys]
    values = self._session.run(fetches, feed_dict=feeds)
    return dict(zip(output_keys, values))

  def callable(self, signature_name: str, input_keys: Sequence[str],
               output_keys: Optional[Sequence[str]] = None) -> Callable[..., List[np.ndarray]]:
    """`run` as a function of the inputs in `input_keys` order, returning the outputs in
    `output_keys` order (default: all, sorted). A session callable, made once per key
    lists and cached: it skips session.run's per-call feed and fetch handling, which costs
    a server more than the graph itself on small requests."""
    if output_keys is None:
      output_keys = sorted(self.signature(signature_name).outputs)
    key = (signature_name, tuple(input_keys), tuple(output_keys))
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
    made = self._session.make_callable(
        [signature.outputs[k].name for k in output_keys],
        feed_list=[signature.inputs[k].name for k in input_keys])
    with self._callables_lock:
      return self._callables.setdefault(key, made)

  def close(self):
    self._session.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
