"""prefer_eigen_kernels: small float MatMuls of small batches, and Softmax, in forms oneDNN
leaves alone."""

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import graph_pb2
from tensorflow.core.framework import node_def_pb2

from optimize.transforms.contract import GraphContext
from optimize.transforms.graph import const_node
from optimize.transforms.graph import const_value
from optimize.transforms.graph import copy_graph
from optimize.transforms.graph import node_name
from optimize.transforms.graph import op_node
from optimize.transforms.registry import Param
from optimize.transforms.registry import register


DEFAULT_MAX_ROWS = 8


@register("prefer_eigen_kernels", params=[Param("max_elements", int, 1 << 20, minimum=0),
                                          Param("max_rows", int, DEFAULT_MAX_ROWS, minimum=1)],
          default_position=140)
def prefer_eigen_kernels(graph_def: graph_pb2.GraphDef, context: GraphContext,
                         max_elements: int = 1 << 20,
                         max_rows: int = DEFAULT_MAX_ROWS) -> graph_pb2.GraphDef:
  """Keeps small float MatMuls of small batches, and Softmax, on Eigen kernels.

  TensorFlow's oneDNN build (the x86 default since 2.9) rewrites every float MatMul and
  Softmax into a oneDNN op at load, whose fixed cost per call outweighs the arithmetic of
  a dense layer of a few hundred units or a softmax over a few dozen classes at a batch of
  a few rows; at larger batches oneDNN's kernel is the faster one. Stock forms that no
  load-time pass rewrites compute the same on Eigen: SparseMatMul with both sparsity hints
  off (Eigen's dense contraction), and Softmax spelled as Eigen computes it (subtract the
  row max, Exp, multiply by the reciprocal of the row sum). A MatMul whose constant weights
  have at most `max_elements` values becomes a choice made per call on its batch's rows
  (Switch and Merge, as tf.cond builds them): at most `max_rows` rows take SparseMatMul,
  more keep the MatMul oneDNN takes over (a large `max_rows` gives Eigen at every batch
  size). Results can differ in the last float bits. Run it last: the other transforms look
  for MatMul.
  """
  del context  # Nodes change op in place and keep their names, so protected ones qualify.
  graph = copy_graph(graph_def)
  by_name = {n.name: n for n in graph.node}
  additions = []
  for node in list(graph.node):
    if node.op == "MatMul" and node.attr["T"].type == tf.float32.as_datatype_enum:
      weights = _constant_source(node.input[1], by_name)
      if weights is not None and const_value(weights).size <= max_elements:
        additions += _matmul_by_batch_rows(node, max_rows)
    elif node.op == "Softmax" and node.attr["T"].type == tf.float32.as_datatype_enum:
      additions += _spell_out_softmax(node)
  graph.node.extend(additions)
  return graph


def _matmul_by_batch_rows(node, max_rows: int):
  """Turns `node` into Merge(MatMul of large batches, SparseMatMul of small ones), keeping
  its name; returns the nodes it adds."""
  prefix, device = node.name + "/by_rows", node.device
  row_axis = 1 if node.attr["transpose_a"].b else 0
  shape = op_node(f"{prefix}/shape", "Shape", [node.input[0]], device, T=tf.float32,
                  out_type=tf.int32)
  begin = const_node(f"{prefix}/row_axis", np.array([row_axis], np.int32), device)
  end = const_node(f"{prefix}/row_axis_end", np.array([row_axis + 1], np.int32), device)
  stride = const_node(f"{prefix}/stride", np.array([1], np.int32), device)
  rows = op_node(f"{prefix}/rows", "StridedSlice", [shape.name, begin.name, end.name,
                                                    stride.name], device,
                 T=tf.int32, Index=tf.int32, begin_mask=0, end_mask=0, ellipsis_mask=0,
                 new_axis_mask=0, shrink_axis_mask=1)
  limit = const_node(f"{prefix}/max_rows", np.array(max_rows, np.int32), device)
  few = op_node(f"{prefix}/few_rows", "LessEqual", [rows.name, limit.name], device,
                T=tf.int32)
  switch = op_node(f"{prefix}/switch", "Switch", [node.input[0], few.name], device,
                   T=tf.float32)
  onednn = node_def_pb2.NodeDef()
  onednn.CopyFrom(node)
  onednn.name = f"{prefix}/many_rows_matmul"
  onednn.input[0] = f"{switch.name}:0"
  eigen = node_def_pb2.NodeDef()
  eigen.CopyFrom(onednn)
  eigen.name = f"{prefix}/few_rows_matmul"
  eigen.input[0] = f"{switch.name}:1"
  _to_sparse_matmul(eigen)
  node.op = "Merge"
  del node.input[:]
  node.input.extend([onednn.name, eigen.name])
  node.attr.clear()
  node.attr["T"].type = tf.float32.as_datatype_enum
  node.attr["N"].i = 2
  return [shape, begin, end, stride, rows, limit, few, switch, onednn, eigen]


def _to_sparse_matmul(node) -> None:
  transpose = {key: node.attr[key].b for key in ("transpose_a", "transpose_b")}
  del node.attr["T"]
  node.op = "SparseMatMul"
  node.attr["Ta"].type = node.attr["Tb"].type = tf.float32.as_datatype_enum
  node.attr["a_is_sparse"].b = node.attr["b_is_sparse"].b = False
  for key, value in transpose.items():
    node.attr[key].b = value


def _spell_out_softmax(node):
  """Turns `node` into Mul(Exp(x - max), 1 / sum) over the last axis, keeping its name."""
  prefix, device, logits = node.name + "/eigen", node.device, node.input[0]
  axis = const_node(f"{prefix}/last_axis", np.array([-1], np.int32), device)
  reduce_attrs = dict(T=tf.float32, Tidx=tf.int32, keep_dims=True)
  row_max = op_node(f"{prefix}/row_max", "Max", [logits, axis.name], device, **reduce_attrs)
  shifted = op_node(f"{prefix}/shifted", "Sub", [logits, row_max.name], device, T=tf.float32)
  exp = op_node(f"{prefix}/exp", "Exp", [shifted.name], device, T=tf.float32)
  row_sum = op_node(f"{prefix}/row_sum", "Sum", [exp.name, axis.name], device, **reduce_attrs)
  inverse = op_node(f"{prefix}/inverse", "Reciprocal", [row_sum.name], device, T=tf.float32)
  node.op = "Mul"
  del node.input[:]
  node.input.extend([exp.name, inverse.name])
  return [axis, row_max, shifted, exp, row_sum, inverse]


def _constant_source(tensor, by_name):
  """The Const a tensor is made from through Identity, Cast or a scaling Mul, or None."""
  node = by_name.get(node_name(tensor))
  while node is not None and node.op != "Const":
    if node.op in ("Identity", "Cast"):
      node = by_name.get(node_name(node.input[0]))
    elif node.op == "Mul":
      # The dequantize Mul: the weights and a per-column scale, both constant-derived.
      sources = [_constant_source(t, by_name) for t in node.input[:2]]
      if None in sources:
        return None
      return max(sources, key=lambda n: const_value(n).size)
    else:
      return None
  return node
