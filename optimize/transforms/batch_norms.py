"""fold_batch_norms: inference batch norm folded into the weights of a MatMul beside it."""

from typing import Tuple

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import graph_pb2

from optimize.transforms.contract import GraphContext
from optimize.transforms.contract import TransformError
from optimize.transforms.freeze_and_cleanup import strip_unused_nodes
from optimize.transforms.graph import const_value
from optimize.transforms.graph import consumers
from optimize.transforms.graph import copy_graph
from optimize.transforms.graph import node_name
from optimize.transforms.patterns import OpTypePattern
from optimize.transforms.patterns import match
from optimize.transforms.registry import register


def _untransposed(matmul) -> bool:
  return not matmul.attr["transpose_a"].b and not matmul.attr["transpose_b"].b


def _float_matrix(const) -> bool:
  value = const_value(const)
  return value.dtype == np.float32 and value.ndim == 2


# A dense layer: x @ weights + bias, both constant; the weights are what gets scaled.
_DENSE_LAYER = OpTypePattern("BiasAdd", name="bias_add", inputs=[
    OpTypePattern("MatMul", name="matmul", where=_untransposed, inputs=[
        None, OpTypePattern("Const", name="weights", where=_float_matrix)]),
    OpTypePattern("Const", name="bias")])


@register("fold_batch_norms", default_position=70)
def fold_batch_norms(graph_def: graph_pb2.GraphDef, context: GraphContext) -> graph_pb2.GraphDef:
  """Folds inference batch norm (x * scale + shift, constants) into an adjacent MatMul.

  Two shapes occur: batch norm right after MatMul[+BiasAdd] (scale the weight columns
  and the bias) and batch norm feeding a MatMul, as DNNClassifier(batch_norm=True)
  exports it after each ReLU (scale the weight rows, push the shift into the bias).
  Runs best after fold_constants, which turns the moving statistics into one
  scale and one shift constant.
  """
  graph = copy_graph(graph_def)
  folded = True
  while folded:
    folded = _fold_one_batch_norm(graph, context)
  return strip_unused_nodes(graph, context)


def _fold_one_batch_norm(graph: graph_pb2.GraphDef, context: GraphContext) -> bool:
  by_name = {n.name: n for n in graph.node}
  users = consumers(graph)
  for mul in graph.node:
    if mul.op != "Mul" or mul.name in context.protected:
      continue
    scale_position, scale = _const_operand(mul, by_name)
    add = _single_consumer(mul.name, users, context)
    if scale_position < 0 or add is None or add.op not in ("Add", "AddV2"):
      continue
    add_position = [p for p, t in enumerate(add.input[:2]) if node_name(t) == mul.name]
    shift_position, shift = _const_operand(add, by_name)
    if len(add_position) != 1 or shift_position < 0:
      continue
    x = mul.input[1 - scale_position]
    after = _single_consumer(add.name, users, context)
    if after is not None and after.op == "MatMul" and node_name(after.input[0]) == add.name:
      if _fold_into_next_matmul(by_name, users, context, x, after, scale, shift):
        return True
    before = by_name.get(node_name(x))
    if before is not None and _fold_into_previous_matmul(by_name, users, context, before, mul,
                                                         add, scale, shift):
      return True
  return False


def _const_operand(node, by_name) -> Tuple[int, np.ndarray]:
  """(position, value) of the node's one Const data input, or (-1, None)."""
  found = [(p, by_name[node_name(t)]) for p, t in enumerate(node.input[:2])
           if node_name(t) in by_name and by_name[node_name(t)].op == "Const"]
  if len(found) != 1:
    return -1, None
  return found[0][0], const_value(found[0][1])


def _single_consumer(name, users, context):
  """The one node reading `name` through a data input, unless `name` is protected."""
  use = users.get(name, [])
  if name in context.protected or len(use) != 1 or use[0][0].input[use[0][1]].startswith("^"):
    return None
  return use[0][0]


def _as_vector(value: np.ndarray, width: int):
  """A per-channel constant as a [width] vector, or None if it is not one."""
  if value is None or value.dtype != np.float32:
    return None
  flat = value.reshape(-1) if value.ndim <= 1 or value.shape[:-1] == (1,) * (value.ndim - 1) \
      else None
  if flat is None or flat.shape[0] not in (1, width):
    return None
  return np.broadcast_to(flat, (width,)).astype(np.float32)


def _dense_layer(bias_add, by_name, users, context):
  """The match of _DENSE_LAYER at `bias_add` when the fold may rewrite the layer: its
  MatMul is read by the BiasAdd alone, its weights by the MatMul alone."""
  found = match(_DENSE_LAYER, bias_add, by_name) if bias_add is not None else None
  if (found is None or _single_consumer(found["matmul"].name, users, context) is not bias_add
      or len(users[found["weights"].name]) != 1):
    return None
  return found


def _fold_into_next_matmul(by_name, users, context, x, matmul, scale, shift):
  """Scales the weight rows of the `matmul` that reads the batch norm, and adds the
  shift's contribution to its bias."""
  found = _dense_layer(_single_consumer(matmul.name, users, context), by_name, users, context)
  if found is None or found["matmul"] is not matmul:
    return False
  weights = const_value(found["weights"])
  rows = weights.shape[0]
  scale, shift = _as_vector(scale, rows), _as_vector(shift, rows)
  if scale is None or shift is None:
    return False
  found["weights"].attr["value"].tensor.CopyFrom(tf.make_tensor_proto(weights * scale[:, None]))
  _set_const(found["bias"], const_value(found["bias"]) + shift @ weights, users)
  matmul.input[0] = x
  return True


def _fold_into_previous_matmul(by_name, users, context, before, mul, add, scale, shift):
  """Scales the weight columns and the bias of the dense layer the batch norm reads
  (`before`, its BiasAdd), and points the batch norm's readers at that BiasAdd."""
  if before.op != "BiasAdd" or _single_consumer(before.name, users, context) is not mul:
    return False
  found = _dense_layer(before, by_name, users, context)
  if found is None:
    return False
  weights = const_value(found["weights"])
  columns = weights.shape[1]
  scale, shift = _as_vector(scale, columns), _as_vector(shift, columns)
  if scale is None or shift is None:
    return False
  found["weights"].attr["value"].tensor.CopyFrom(tf.make_tensor_proto(weights * scale[None, :]))
  _set_const(found["bias"], const_value(found["bias"]) * scale + shift, users)
  for user, position in users[add.name]:
    user.input[position] = "^" + before.name if user.input[position].startswith("^") \
        else before.name
  return True


def _set_const(node, value, users):
  if len(users[node.name]) != 1:
    raise TransformError(f"fold_batch_norms: constant {node.name!r} is shared; cannot rewrite")
  node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value.astype(np.float32)))
