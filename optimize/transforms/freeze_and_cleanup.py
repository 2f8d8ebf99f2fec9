"""Freezing, and the clean-ups that remove nodes without changing any answer."""

import contextlib
from typing import Dict

import tensorflow as tf
from tensorflow.core.framework import graph_pb2
from tensorflow.core.framework import node_def_pb2

from optimize.transforms.contract import GraphContext
from optimize.transforms.contract import TransformError
from optimize.transforms.graph import VARIABLE_OPS
from optimize.transforms.graph import bypass
from optimize.transforms.graph import consumers
from optimize.transforms.graph import const_value
from optimize.transforms.graph import copy_graph
from optimize.transforms.graph import dedupe_control_inputs
from optimize.transforms.graph import imported
from optimize.transforms.graph import is_stateful
from optimize.transforms.graph import max_outputs
from optimize.transforms.graph import node_name
from optimize.transforms.graph import prune_library
from optimize.transforms.graph import rename_inputs
from optimize.transforms.graph import shape_of
from optimize.transforms.graph import tensor_key
from optimize.transforms.graph import tensor_name
from optimize.transforms.graph import topological_order
from optimize.transforms.graph import with_nodes
from optimize.transforms.patterns import OpTypePattern
from optimize.transforms.patterns import match
from optimize.transforms.registry import Param
from optimize.transforms.registry import register

PASS_THROUGH_OPS = ("Identity", "StopGradient", "PreventGradient", "Snapshot", "CheckNumerics")
_ASSIGN_OPS = ("AssignVariableOp", "Assign", "AssignAddVariableOp", "AssignSubVariableOp")
_ASSERT_BODY_OPS = {"Assert", "Identity", "NoOp", "Const", "_Arg", "_Retval", "Placeholder"}


@register("freeze", default_position=10)
def freeze(graph_def: graph_pb2.GraphDef, context: GraphContext) -> graph_pb2.GraphDef:
  """Keeps what the signatures and init op need, with variables turned into constants.

  TensorFlow's public converter reads each variable in a session, so the values read
  from the checkpoint are assigned to the variables of a scratch import first.
  """
  needed = strip_unused_nodes(graph_def, context)
  for node in needed.node:
    if node.op in _ASSIGN_OPS:
      raise TransformError(f"freeze: node {node.name!r} ({node.op}) writes a variable that a "
                           f"signature or the init op needs; such a model cannot be frozen")
  variables = [n for n in needed.node if n.op in VARIABLE_OPS]
  for node in variables:
    if node.name not in context.variable_values:
      raise TransformError(f"freeze: no value for variable {node.name!r}")
  try:
    with _session_holding(needed, variables, context.variable_values) as session:
      frozen = tf.compat.v1.graph_util.convert_variables_to_constants(
          session, needed, sorted(context.protected))
  except TransformError:
    raise
  except (ValueError, tf.errors.OpError) as e:
    raise TransformError(f"freeze: {e}") from e
  left = [n.name for n in frozen.node if n.op in VARIABLE_OPS]
  if left:
    raise TransformError(f"freeze: variables remain after conversion: {left[:5]}")
  return prune_library(frozen)


@contextlib.contextmanager
def _session_holding(graph_def, variables, values):
  """A session on a scratch import of `graph_def` whose `variables` hold `values`."""
  graph = imported(graph_def)
  with graph.as_default():
    assignments, feeds = [], {}
    for node in variables:
      dtype = tf.as_dtype(node.attr["dtype"].type)
      value = tf.compat.v1.placeholder(dtype, name=f"{node.name}/freeze/value")
      variable = graph.get_tensor_by_name(node.name + ":0")
      if node.op == "VarHandleOp":
        assignments.append(tf.raw_ops.AssignVariableOp(resource=variable, value=value))
        _ensure_read(graph, node, variable, dtype)
      else:
        assignments.append(tf.raw_ops.Assign(ref=variable, value=value, validate_shape=False))
      feeds[value] = values[node.name]
  with tf.compat.v1.Session(graph=graph) as session:
    session.run(assignments, feeds)
    yield session


def _ensure_read(graph: tf.Graph, node: node_def_pb2.NodeDef, handle: tf.Tensor, dtype) -> None:
  """The converter reads a resource variable through '<name>/Read/ReadVariableOp:0'
  (tf.Variable's own read), which stripping may have removed as unused."""
  read_name = node.name + "/Read/ReadVariableOp"
  try:
    read = graph.get_operation_by_name(read_name)
  except KeyError:
    with tf.name_scope(node.name + "/Read/"):
      read = tf.raw_ops.ReadVariableOp(resource=handle, dtype=dtype, name="ReadVariableOp").op
  if read.name != read_name or read.type != "ReadVariableOp" or read.inputs[0].name != handle.name:
    raise TransformError(f"freeze: {read.name!r} is not a read of variable {node.name!r}")


@register("strip_unused_nodes", default_position=20)
def strip_unused_nodes(graph_def: graph_pb2.GraphDef, context: GraphContext) -> graph_pb2.GraphDef:
  missing = sorted(context.protected - {n.name for n in graph_def.node})
  if missing:
    raise TransformError(f"strip_unused_nodes: protected nodes are missing: {missing[:5]}")
  return prune_library(
      tf.compat.v1.graph_util.extract_sub_graph(graph_def, sorted(context.protected)))


@register("remove_nodes", params=[Param("op", str, "Identity", choices=PASS_THROUGH_OPS)],
          default_position=40, default_args={"op": "Identity"})
def remove_nodes(graph_def: graph_pb2.GraphDef, context: GraphContext,
                 op: str = "Identity") -> graph_pb2.GraphDef:
  """Bypasses pass-through nodes of type `op`, as GTT's remove_nodes did.

  Kept: protected nodes, nodes with control inputs (they order something), and
  Identity nodes after a Switch (v1 control flow uses them as branch pivots).
  """
  by_name = {n.name: n for n in graph_def.node}
  sources = {}
  for node in topological_order(graph_def):
    if node.op != op or node.name in context.protected:
      continue
    data_inputs = [i for i in node.input if not i.startswith("^")]
    if len(data_inputs) != 1 or len(node.input) != 1:
      continue
    if by_name[node_name(data_inputs[0])].op in ("Switch", "RefSwitch"):
      continue
    sources[node.name] = data_inputs[0]
  return bypass(graph_def, sources)


@register("remove_asserts", default_position=30)
def remove_asserts(graph_def: graph_pb2.GraphDef, context: GraphContext) -> graph_pb2.GraphDef:
  """Drops runtime assertions that only order other nodes: Assert ops and the If /
  StatelessIf guards (tf.debugging.assert_* under v2 control flow) whose branches do
  nothing but assert.

  Ragged-tensor code validates its own row partitions this way on every request; the
  guard checks the answers stay the same. Only an input that would have failed an
  assertion behaves differently: it is no longer rejected by that assertion.
  """
  functions = {f.signature.name: f for f in graph_def.library.function}

  def only_asserts(name):
    function = functions.get(name)
    return function is not None and all(n.op in _ASSERT_BODY_OPS for n in function.node_def)

  asserting = set()
  for node in topological_order(graph_def):
    if node.name in context.protected:
      continue
    data_inputs = [node_name(i) for i in node.input if not i.startswith("^")]
    if (node.op == "Assert" or (
        node.op in ("If", "StatelessIf")
        and only_asserts(node.attr["then_branch"].func.name)
        and only_asserts(node.attr["else_branch"].func.name))
        # The Identity that tf.debugging wraps around a guard's output.
        or (node.op in ("Identity", "NoOp") and data_inputs
            and all(i in asserting for i in data_inputs))):
      asserting.add(node.name)
  users = consumers(graph_def)
  removable = set(asserting)
  changed = True
  while changed:
    changed = False
    for name in sorted(removable):
      if any(not u.input[p].startswith("^") and u.name not in removable
             for u, p in users.get(name, [])):
        removable.discard(name)
        changed = True
  result = with_nodes(graph_def, [n for n in graph_def.node if n.name not in removable])
  for node in result.node:
    kept = [i for i in node.input if not (i.startswith("^") and i[1:] in removable)]
    if len(kept) != len(node.input):
      del node.input[:]
      node.input.extend(kept)
  return strip_unused_nodes(result, context)


@register("merge_duplicate_nodes", default_position=50)
def merge_duplicate_nodes(graph_def: graph_pb2.GraphDef,
                          context: GraphContext) -> graph_pb2.GraphDef:
  """Merges stateless nodes with the same op, inputs, device and attributes."""
  # Inputs are renamed as the walk goes, so it walks a copy: the input stays untouched.
  graph = copy_graph(graph_def)
  renames: Dict[str, str] = {}
  seen: Dict[bytes, str] = {}
  removed = set()
  for node in topological_order(graph):
    rename_inputs(node, renames)
    if is_stateful(node.op) or node.op in ("Placeholder", "PlaceholderWithDefault"):
      continue
    attrs = node_def_pb2.NodeDef()
    for key, value in node.attr.items():
      if key != "_class":
        attrs.attr[key].CopyFrom(value)
    key = b"\0".join([node.op.encode(), node.device.encode(),
                      "\0".join(node.input).encode(),
                      attrs.SerializeToString(deterministic=True)])
    if key in seen and node.name not in context.protected:
      keeper = seen[key]
      for index in range(max_outputs(node)):
        renames[f"{node.name}:{index}"] = tensor_name(keeper, index)
      renames["^" + node.name] = "^" + keeper
      removed.add(node.name)
    else:
      seen.setdefault(key, node.name)
  result = with_nodes(graph, [n for n in graph.node if n.name not in removed])
  # Colocation attrs are no inputs, so the walk can have passed them before a merge.
  for node in result.node:
    rename_inputs(node, renames)
  return dedupe_control_inputs(result)


@register("remove_identity_reshapes", default_position=110)
def remove_identity_reshapes(graph_def: graph_pb2.GraphDef,
                             context: GraphContext) -> graph_pb2.GraphDef:
  """Bypasses Reshapes that return their input unchanged, proven from static shapes.

  Ragged and feature-column code reshapes defensively: a vector flattened to a vector,
  ExpandDims undone by a flatten, a [batch, d] tensor reshaped to [Shape(x)[0], d].
  With TensorFlow's own static shape inference these are provably no-ops; Grappler
  leaves them in when the batch size is unknown.
  """
  graph = copy_graph(graph_def)
  shapes = imported(graph)
  by_name = {n.name: n for n in graph.node}
  sources = {}
  for node in topological_order(graph):
    if node.op == "Reshape" and node.name not in context.protected:
      source = _reshape_source(node, by_name, shapes)
      if source is not None:
        sources[node.name] = source
  if not sources:
    return graph
  return strip_unused_nodes(bypass(graph, sources), context)


def _reshape_source(node, by_name, shapes):
  """The tensor a Reshape node provably equals, or None."""
  x, x_shape = node.input[0], shape_of(node.input[0], shapes)
  if shape_of(node.name, shapes).rank == 1:
    if x_shape.rank == 1:
      return x
    expand = by_name.get(node_name(x))
    if (expand is not None and expand.op == "ExpandDims"
        and shape_of(expand.input[0], shapes).rank == 1):
      return expand.input[0]
  target = by_name.get(node_name(node.input[1]))
  if target is None or target.op != "Pack" or x_shape.rank != len(target.input):
    return None
  for dim, piece in enumerate(target.input):
    source = by_name.get(node_name(piece))
    if source is None:
      return None
    if source.op == "Const":
      if x_shape[dim] is None or int(const_value(source)) != x_shape[dim]:
        return None
    elif not _is_dim_of(source, x, dim, by_name):
      return None
  return x


def _takes_one_element(strided_slice: node_def_pb2.NodeDef) -> bool:
  return strided_slice.attr["shrink_axis_mask"].i == 1 and not any(
      strided_slice.attr[mask].i for mask in ("begin_mask", "end_mask", "ellipsis_mask",
                                              "new_axis_mask"))


# Shape(x)[dim] as a scalar, the way tf.shape(x)[dim] writes it.
_DIM_OF_SHAPE = OpTypePattern("StridedSlice", where=_takes_one_element, inputs=[
    OpTypePattern("Shape", name="shape"), OpTypePattern("Const", name="begin"),
    OpTypePattern("Const", name="end"), OpTypePattern("Const", name="strides")])


def _is_dim_of(node, tensor, dim, by_name) -> bool:
  """Whether `node` is StridedSlice(Shape(tensor), [dim], [dim + 1], [1]) as a scalar."""
  found = match(_DIM_OF_SHAPE, node, by_name)
  if found is None or tensor_key(found["shape"].input[0]) != tensor_key(tensor):
    return False
  bounds = [int(const_value(found[b]).reshape(-1)[0]) for b in ("begin", "end", "strides")]
  return bounds == [dim, dim + 1, 1]
