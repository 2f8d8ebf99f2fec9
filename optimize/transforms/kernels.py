"""prefer_eigen_kernels: small float MatMuls and Softmax in forms oneDNN leaves alone."""

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import graph_pb2

from optimize.transforms.contract import GraphContext
from optimize.transforms.graph import const_node
from optimize.transforms.graph import const_value
from optimize.transforms.graph import copy_graph
from optimize.transforms.graph import node_name
from optimize.transforms.graph import op_node
from optimize.transforms.registry import Param
from optimize.transforms.registry import register


@register("prefer_eigen_kernels", params=[Param("max_elements", int, 1 << 20, minimum=0)],
          default_position=140)
def prefer_eigen_kernels(graph_def: graph_pb2.GraphDef, context: GraphContext,
                         max_elements: int = 1 << 20) -> graph_pb2.GraphDef:
  """Keeps small float MatMuls and Softmax on Eigen kernels.

  TensorFlow's oneDNN build (the x86 default since 2.9) rewrites every float MatMul and
  Softmax into a oneDNN op at load, whose fixed cost per call outweighs the arithmetic of
  a dense layer of a few hundred units or a softmax over a few dozen classes. Stock forms
  that no load-time pass rewrites compute the same on Eigen: SparseMatMul with both
  sparsity hints off (Eigen's dense contraction) for MatMuls whose constant weights have
  at most `max_elements` values, and Softmax spelled as Eigen computes it (subtract the
  row max, Exp, multiply by the reciprocal of the row sum). Results can differ in the
  last float bits. Run it last: the other transforms look for MatMul.
  """
  del context  # Nodes change op in place and keep their names, so protected ones qualify.
  graph = copy_graph(graph_def)
  by_name = {n.name: n for n in graph.node}
  additions = []
  for node in graph.node:
    if node.op == "MatMul" and node.attr["T"].type == tf.float32.as_datatype_enum:
      weights = _constant_source(node.input[1], by_name)
      if weights is not None and const_value(weights).size <= max_elements:
        _to_sparse_matmul(node)
    elif node.op == "Softmax" and node.attr["T"].type == tf.float32.as_datatype_enum:
      additions += _spell_out_softmax(node)
  graph.node.extend(additions)
  return graph


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
