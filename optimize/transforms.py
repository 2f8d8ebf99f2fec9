"""Graph rewrites in the spirit of the Graph Transform Tool: pure GraphDef -> GraphDef.

Every transform takes the graph and a `GraphContext` (the nodes whose names the
signatures, the loader and the assets refer to, and the variables' values) and returns
a new graph; none touches the input or the file system. Protected nodes always
survive under their own names, so signatures stay valid without being rewritten.
"""

import collections
import dataclasses
import re
from typing import Callable, Dict, FrozenSet, Iterable, List, Mapping, Sequence, Tuple

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import graph_pb2
from tensorflow.core.framework import node_def_pb2
from tensorflow.core.protobuf import config_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow.core.protobuf import rewriter_config_pb2
from tensorflow.python.framework import convert_to_constants
from tensorflow.python.framework import op_def_registry
from tensorflow.python.grappler import tf_optimizer

VARIABLE_OPS = ("VarHandleOp", "VariableV2", "Variable")
PASS_THROUGH_OPS = ("Identity", "StopGradient", "PreventGradient", "Snapshot", "CheckNumerics")
DEQUANTIZE_SUFFIX = "/dequantize"
# Constants holding quantized weights; constant folding must never see them, or it
# turns the 8-bit or 16-bit constants back into float ones.
QUANTIZED_SUFFIXES = ("/int8", "/float16")


class TransformError(ValueError):
  """A graph this transform cannot rewrite safely; the message names the node or op."""


@dataclasses.dataclass(frozen=True)
class GraphContext:
  protected: FrozenSet[str]
  variable_values: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)


# ---------------------------------------------------------------------------- helpers


def node_name(tensor: str) -> str:
  return tensor.lstrip("^").split(":")[0]


def _output_index(tensor: str) -> int:
  parts = tensor.split(":")
  return int(parts[1]) if len(parts) > 1 else 0


def _copy(graph_def: graph_pb2.GraphDef) -> graph_pb2.GraphDef:
  result = graph_pb2.GraphDef()
  result.CopyFrom(graph_def)
  return result


def _with_nodes(graph_def: graph_pb2.GraphDef, nodes: Iterable[node_def_pb2.NodeDef]):
  result = graph_pb2.GraphDef()
  result.versions.CopyFrom(graph_def.versions)
  result.library.CopyFrom(graph_def.library)
  result.node.extend(nodes)
  return result


def consumers(graph_def: graph_pb2.GraphDef) -> Dict[str, List[Tuple[node_def_pb2.NodeDef, int]]]:
  """Node name -> [(consumer node, input position)], data and control inputs alike."""
  result = collections.defaultdict(list)
  for node in graph_def.node:
    for position, tensor in enumerate(node.input):
      result[node_name(tensor)].append((node, position))
  return result


def topological_order(graph_def: graph_pb2.GraphDef) -> List[node_def_pb2.NodeDef]:
  by_name = {n.name: n for n in graph_def.node}
  pending = {n.name: len({node_name(i) for i in n.input if node_name(i) in by_name})
             for n in graph_def.node}
  users = collections.defaultdict(set)
  for node in graph_def.node:
    for tensor in node.input:
      users[node_name(tensor)].add(node.name)
  ready = collections.deque(n.name for n in graph_def.node if pending[n.name] == 0)
  order = []
  while ready:
    name = ready.popleft()
    order.append(by_name[name])
    for user in sorted(users[name]):
      pending[user] -= 1
      if pending[user] == 0:
        ready.append(user)
  if len(order) != len(by_name):
    stuck = sorted(n for n, count in pending.items() if count > 0)[:5]
    raise TransformError(f"graph has a cycle outside control flow frames near {stuck}")
  return order


def _rename_inputs(node: node_def_pb2.NodeDef, renames: Mapping[str, str]) -> None:
  """Points inputs at replacement tensors; `renames` maps tensor or '^node' names."""
  for position, tensor in enumerate(node.input):
    key = tensor if ":" in tensor or tensor.startswith("^") else tensor + ":0"
    if key in renames:
      node.input[position] = renames[key]
  _fix_colocation(node, renames)


def _fix_colocation(node: node_def_pb2.NodeDef, renames: Mapping[str, str]) -> None:
  if "_class" not in node.attr:
    return
  values = []
  for value in node.attr["_class"].list.s:
    text = value.decode()
    target = renames.get("^" + text[len("loc:@"):]) if text.startswith("loc:@") else None
    values.append(("loc:@" + target[1:]).encode() if target else value)
  del node.attr["_class"].list.s[:]
  node.attr["_class"].list.s.extend(values)


def _tensor(name: str, index: int) -> str:
  return name if index == 0 else f"{name}:{index}"


def _tensor_key(tensor: str) -> str:
  return tensor if ":" in tensor else tensor + ":0"


def _is_stateful(op: str) -> bool:
  op_def = op_def_registry.get(op)
  return op_def is None or op_def.is_stateful


def _const_node(name: str, value: np.ndarray, device: str = "") -> node_def_pb2.NodeDef:
  node = node_def_pb2.NodeDef(name=name, op="Const", device=device)
  node.attr["dtype"].type = tf.as_dtype(value.dtype).as_datatype_enum
  node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value))
  return node


def _op_node(name: str, op: str, inputs: Sequence[str], device: str = "",
             **attrs) -> node_def_pb2.NodeDef:
  node = node_def_pb2.NodeDef(name=name, op=op, device=device)
  node.input.extend(inputs)
  for key, value in attrs.items():
    if isinstance(value, tf.DType):
      node.attr[key].type = value.as_datatype_enum
    elif isinstance(value, bool):
      node.attr[key].b = value
    elif isinstance(value, int):
      node.attr[key].i = value
    else:
      raise TypeError(f"unsupported attr {key}={value!r}")
  return node


def _const_value(node: node_def_pb2.NodeDef) -> np.ndarray:
  return tf.make_ndarray(node.attr["value"].tensor)


def _prune_library(graph_def: graph_pb2.GraphDef) -> graph_pb2.GraphDef:
  """Drops functions that no node (or function reachable from one) refers to."""
  functions = {f.signature.name: f for f in graph_def.library.function}
  if not functions:
    return graph_def

  def referenced(nodes):
    for node in nodes:
      if node.op in functions:
        yield node.op
      for attr in node.attr.values():
        if attr.HasField("func"):
          yield attr.func.name
        for func in attr.list.func:
          yield func.name

  keep, frontier = set(), list(referenced(graph_def.node))
  while frontier:
    name = frontier.pop()
    if name in keep or name not in functions:
      continue
    keep.add(name)
    frontier.extend(referenced(functions[name].node_def))
  result = _copy(graph_def)
  del result.library.function[:]
  result.library.function.extend(f for n, f in functions.items() if n in keep)
  kept_gradients = [g for g in graph_def.library.gradient if g.function_name in keep]
  del result.library.gradient[:]
  result.library.gradient.extend(kept_gradients)
  return result


# ------------------------------------------------------------------------- transforms


class _KnownValues(convert_to_constants._ConverterData):  # pylint: disable=protected-access
  """TensorFlow's own variable-to-constant converter, fed with values read earlier."""

  def __init__(self, graph_def, values):
    super().__init__(graph_def)
    for node in graph_def.node:
      if node.op in VARIABLE_OPS:
        if node.name not in values:
          raise TransformError(f"freeze: no value for variable {node.name!r}")
        self._tensor_data[node.name] = convert_to_constants._TensorData(  # pylint: disable=protected-access
            numpy=values[node.name], dtype=node.attr["dtype"].type, index=None)


def freeze(graph_def: graph_pb2.GraphDef, context: GraphContext) -> graph_pb2.GraphDef:
  """Keeps what the signatures and init op need, with variables turned into constants."""
  needed = strip_unused_nodes(graph_def, context)
  for node in needed.node:
    if node.op in ("AssignVariableOp", "Assign", "AssignAddVariableOp", "AssignSubVariableOp"):
      raise TransformError(f"freeze: node {node.name!r} ({node.op}) writes a variable that a "
                           f"signature or the init op needs; such a model cannot be frozen")
  try:
    frozen, _ = convert_to_constants._replace_variables_by_constants(  # pylint: disable=protected-access
        converter_data=_KnownValues(needed, context.variable_values))
  except ValueError as e:
    raise TransformError(f"freeze: {e}") from e
  left = [n.name for n in frozen.node if n.op in VARIABLE_OPS]
  if left:
    raise TransformError(f"freeze: variables remain after conversion: {left[:5]}")
  return _prune_library(frozen)


def strip_unused_nodes(graph_def: graph_pb2.GraphDef, context: GraphContext) -> graph_pb2.GraphDef:
  missing = sorted(context.protected - {n.name for n in graph_def.node})
  if missing:
    raise TransformError(f"strip_unused_nodes: protected nodes are missing: {missing[:5]}")
  return _prune_library(
      tf.compat.v1.graph_util.extract_sub_graph(graph_def, sorted(context.protected)))


def remove_nodes(graph_def: graph_pb2.GraphDef, context: GraphContext,
                 op: str = "Identity") -> graph_pb2.GraphDef:
  """Bypasses pass-through nodes of type `op`, as GTT's remove_nodes did.

  Kept: protected nodes, nodes with control inputs (they order something), and
  Identity nodes after a Switch (v1 control flow uses them as branch pivots).
  """
  if op not in PASS_THROUGH_OPS:
    raise TransformError(f"remove_nodes: op={op!r} is not a pass-through op; "
                         f"supported: {', '.join(PASS_THROUGH_OPS)}")
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
  return _bypass(graph_def, sources)


def _bypass(graph_def: graph_pb2.GraphDef, sources: Mapping[str, str]) -> graph_pb2.GraphDef:
  """Removes the nodes named in `sources` (in topological order), pointing each reader
  of a removed node's output at the tensor the node passed through."""
  renames: Dict[str, str] = {}
  for name, source in sources.items():
    source = renames.get(_tensor_key(source), source)
    renames[name + ":0"] = source
    renames["^" + name] = "^" + node_name(source)
  result = _with_nodes(graph_def, [n for n in graph_def.node if n.name not in sources])
  for node in result.node:
    _rename_inputs(node, renames)
  return _dedupe_control_inputs(result)


def remove_identity_reshapes(graph_def: graph_pb2.GraphDef,
                             context: GraphContext) -> graph_pb2.GraphDef:
  """Bypasses Reshapes that return their input unchanged, proven from static shapes.

  Ragged and feature-column code reshapes defensively: a vector flattened to a vector,
  ExpandDims undone by a flatten, a [batch, d] tensor reshaped to [Shape(x)[0], d].
  With TensorFlow's own static shape inference these are provably no-ops; Grappler
  leaves them in when the batch size is unknown.
  """
  shapes = _static_shapes(graph_def)
  by_name = {n.name: n for n in graph_def.node}
  sources = {}
  for node in topological_order(graph_def):
    if node.op == "Reshape" and node.name not in context.protected:
      source = _reshape_source(node, by_name, shapes)
      if source is not None:
        sources[node.name] = source
  if not sources:
    return graph_def
  return strip_unused_nodes(_bypass(graph_def, sources), context)


def _static_shapes(graph_def: graph_pb2.GraphDef) -> tf.Graph:
  """The graph imported into TensorFlow, whose tensors carry inferred static shapes."""
  graph = tf.Graph()
  with graph.as_default():
    tf.graph_util.import_graph_def(graph_def, name="")
  return graph


def _shape_of(tensor: str, shapes: tf.Graph) -> tf.TensorShape:
  return shapes.get_tensor_by_name(_tensor_key(tensor)).shape


def _reshape_source(node, by_name, shapes):
  """The tensor a Reshape node provably equals, or None."""
  x, x_shape = node.input[0], _shape_of(node.input[0], shapes)
  if _shape_of(node.name, shapes).rank == 1:
    if x_shape.rank == 1:
      return x
    expand = by_name.get(node_name(x))
    if (expand is not None and expand.op == "ExpandDims"
        and _shape_of(expand.input[0], shapes).rank == 1):
      return expand.input[0]
  target = by_name.get(node_name(node.input[1]))
  if target is None or target.op != "Pack" or x_shape.rank != len(target.input):
    return None
  for dim, piece in enumerate(target.input):
    source = by_name.get(node_name(piece))
    if source is None:
      return None
    if source.op == "Const":
      if x_shape[dim] is None or int(_const_value(source)) != x_shape[dim]:
        return None
    elif not _is_dim_of(source, x, dim, by_name):
      return None
  return x


def _is_dim_of(node, tensor, dim, by_name) -> bool:
  """Whether `node` is StridedSlice(Shape(tensor), [dim], [dim + 1], [1]) as a scalar."""
  if node.op != "StridedSlice" or node.attr["shrink_axis_mask"].i != 1 or any(
      node.attr[mask].i for mask in ("begin_mask", "end_mask", "ellipsis_mask",
                                     "new_axis_mask")):
    return False
  shape = by_name.get(node_name(node.input[0]))
  bounds = [by_name.get(node_name(t)) for t in node.input[1:4]]
  if shape is None or shape.op != "Shape" or _tensor_key(shape.input[0]) != _tensor_key(tensor):
    return False
  if any(b is None or b.op != "Const" for b in bounds):
    return False
  return [int(_const_value(b).reshape(-1)[0]) for b in bounds] == [dim, dim + 1, 1]


def _dedupe_control_inputs(graph_def: graph_pb2.GraphDef) -> graph_pb2.GraphDef:
  """Drops control inputs that repeat, or that duplicate a data input, after bypassing."""
  for node in graph_def.node:
    data_sources = {node_name(i) for i in node.input if not i.startswith("^")}
    seen, kept = set(), []
    for tensor in node.input:
      if tensor.startswith("^"):
        if tensor in seen or tensor[1:] in data_sources or tensor[1:] == node.name:
          continue
        seen.add(tensor)
      kept.append(tensor)
    if len(kept) != len(node.input):
      del node.input[:]
      node.input.extend(kept)
  return graph_def


def merge_duplicate_nodes(graph_def: graph_pb2.GraphDef,
                          context: GraphContext) -> graph_pb2.GraphDef:
  """Merges stateless nodes with the same op, inputs, device and attributes."""
  # Inputs are renamed as the walk goes, so it walks a copy: the input stays untouched.
  graph = _copy(graph_def)
  renames: Dict[str, str] = {}
  seen: Dict[bytes, str] = {}
  removed = set()
  for node in topological_order(graph):
    _rename_inputs(node, renames)
    if _is_stateful(node.op) or node.op in ("Placeholder", "PlaceholderWithDefault"):
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
      for index in range(_max_outputs(node)):
        renames[f"{node.name}:{index}"] = _tensor(keeper, index)
      renames["^" + node.name] = "^" + keeper
      removed.add(node.name)
    else:
      seen.setdefault(key, node.name)
  result = _with_nodes(graph, [n for n in graph.node if n.name not in removed])
  for node in result.node:
    _rename_inputs(node, renames)
  return _dedupe_control_inputs(result)


def _max_outputs(node: node_def_pb2.NodeDef) -> int:
  op_def = op_def_registry.get(node.op)
  if op_def is None:
    return 1
  count = 0
  for arg in op_def.output_arg:
    if arg.number_attr:
      count += node.attr[arg.number_attr].i
    elif arg.type_list_attr:
      count += len(node.attr[arg.type_list_attr].list.type)
    else:
      count += 1
  return max(count, 1)


def run_grappler(graph_def: graph_pb2.GraphDef, context: GraphContext,
                 passes: Sequence[str]) -> graph_pb2.GraphDef:
  """Runs the named Grappler passes once, keeping protected nodes and quantized weights.

  Quantized constants are shown to Grappler as placeholders, so no pass can fold
  their dequantization back into a float constant; they are restored afterwards.
  """
  meta_graph = meta_graph_pb2.MetaGraphDef()
  meta_graph.graph_def.CopyFrom(graph_def)
  hidden = {}
  for node in meta_graph.graph_def.node:
    if node.op == "Const" and node.name.endswith(QUANTIZED_SUFFIXES):
      hidden[node.name] = node_def_pb2.NodeDef()
      hidden[node.name].CopyFrom(node)
      shape = node.attr["value"].tensor.tensor_shape
      node.op = "Placeholder"
      node.attr.clear()
      node.attr["dtype"].CopyFrom(hidden[node.name].attr["dtype"])
      node.attr["shape"].shape.CopyFrom(shape)
  keep = set(context.protected) | set(hidden)
  meta_graph.collection_def["train_op"].node_list.value.extend(sorted(keep))
  config = config_pb2.ConfigProto()
  rewrites = config.graph_options.rewrite_options
  rewrites.optimizers.extend(passes)
  rewrites.meta_optimizer_iterations = rewriter_config_pb2.RewriterConfig.ONE
  rewrites.min_graph_nodes = -1
  try:
    optimized = tf_optimizer.OptimizeGraph(config, meta_graph, verbose=False)
  except Exception as e:
    raise TransformError(f"grappler {list(passes)}: {e}") from e
  for node in optimized.node:
    if node.name in hidden:
      node.CopyFrom(hidden[node.name])
  return _prune_library(optimized)


_ASSERT_BODY_OPS = {"Assert", "Identity", "NoOp", "Const", "_Arg", "_Retval", "Placeholder"}


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
  result = _with_nodes(graph_def, [n for n in graph_def.node if n.name not in removable])
  for node in result.node:
    kept = [i for i in node.input if not (i.startswith("^") and i[1:] in removable)]
    if len(kept) != len(node.input):
      del node.input[:]
      node.input.extend(kept)
  return strip_unused_nodes(result, context)


_SEGMENT_OPS = {"SparseSegmentSum": "SparseSegmentSumWithNumSegments",
                "SparseSegmentMean": "SparseSegmentMeanWithNumSegments",
                "SparseSegmentSqrtN": "SparseSegmentSqrtNWithNumSegments"}


def lean_embedding_lookups(graph_def: graph_pb2.GraphDef,
                           context: GraphContext) -> graph_pb2.GraphDef:
  """Rewrites tf.nn.safe_embedding_lookup_sparse (no weights, default_id None) leaner.

  The library version fills empty rows with a dummy id, de-duplicates ids, gathers,
  combines, then masks the dummy rows back to zeros: about a dozen ops per request.
  One SparseSegment*WithNumSegments over the gathered unique rows gives the same
  rows, zeros for empty ones included, in the same summation order. Grappler has no such
  rewrite. When the ids cannot be negative (hash buckets, vocabulary line numbers, OOV
  buckets), the pruning of negative ids (a Where and two gathers over every id) goes
  too, and for rank-2 ids so do the reshapes to two dimensions and back. Run it before
  quantize_weights so the gather it leaves can be quantized.
  """
  graph = _copy(graph_def)
  by_name = {n.name: n for n in graph.node}
  shapes = _static_shapes(graph_def)
  additions, renames = [], {}
  for select in list(graph.node):
    match = _match_safe_lookup(select, by_name, context)
    if match is None:
      continue
    segment_op, params, fill, segment_ids = match
    indices, values, dense_shape = fill.input[0], fill.input[1], fill.input[2]
    unpruned = _unpruned(indices, values, by_name)
    if unpruned is not None:
      indices, values = unpruned
    original_shape = _rank_two_sparse_shape(indices, dense_shape, by_name, shapes)
    if original_shape is not None:
      # Rank 2: the library's reshapes to [rows, columns] and back change nothing.
      indices, dense_shape = by_name[node_name(indices)].input[0], original_shape
      for user in graph.node:
        if _is_reshape_back(user, select.name, original_shape, by_name):
          renames[user.name + ":0"] = select.name
    prefix, device = select.name + "/lean", select.device
    tidx = tf.as_dtype(segment_op.attr["Tidx"].type)
    # Unique first: every duplicate id is then gathered (and dequantized) only once.
    unique = _op_node(f"{prefix}/unique", "Unique", [values], device,
                      T=tf.as_dtype(fill.attr["T"].type), out_idx=tidx)
    axis = _const_node(f"{prefix}/axis", np.array(0, np.int32), device)
    rows = _op_node(f"{prefix}/rows", "GatherV2", [params, unique.name, axis.name], device,
                    Tparams=tf.as_dtype(segment_op.attr["T"].type),
                    Tindices=tf.as_dtype(fill.attr["T"].type), Taxis=tf.int32, batch_dims=0)
    row_ids = node_def_pb2.NodeDef()
    row_ids.CopyFrom(segment_ids)
    row_ids.name = f"{prefix}/row_ids"
    row_ids.input[0] = indices
    first = _const_node(f"{prefix}/first", np.array([0], np.int32), device)
    after_first = _const_node(f"{prefix}/after_first", np.array([1], np.int32), device)
    num_rows = _op_node(f"{prefix}/num_rows", "StridedSlice",
                        [dense_shape, first.name, after_first.name, after_first.name], device,
                        T=tf.int64, Index=tf.int32, begin_mask=0, end_mask=0, ellipsis_mask=0,
                        new_axis_mask=0, shrink_axis_mask=1)
    combined = _op_node(f"{prefix}/combined", _SEGMENT_OPS[segment_op.op],
                        [rows.name, f"{unique.name}:1", row_ids.name, num_rows.name], device,
                        T=tf.as_dtype(segment_op.attr["T"].type), Tidx=tidx,
                        Tnumsegments=tf.int64,
                        Tsegmentids=tf.as_dtype(segment_op.attr["Tsegmentids"].type))
    additions += [unique, axis, rows, row_ids, first, after_first, num_rows, combined]
    select.op = "Identity"
    del select.input[:]
    select.input.append(combined.name)
    for attr in list(select.attr):
      if attr not in ("T", "_class"):
        del select.attr[attr]
  graph.node.extend(additions)
  for node in graph.node:
    _rename_inputs(node, renames)
  return strip_unused_nodes(graph, context)


def _rank_two_sparse_shape(indices, dense_shape, by_name, shapes):
  """The original dense shape when `indices` come from safe_embedding_lookup_sparse's
  SparseReshape of a rank-2 sparse tensor to [prod(shape[:-1]), shape[-1]]; else None."""
  reshape = by_name.get(node_name(indices))
  if (reshape is None or reshape.op != "SparseReshape" or _output_index(indices) != 0
      or _producer(dense_shape, by_name) != (reshape, 1)):
    return None
  original = reshape.input[1]
  if _dense_shape_length(original, by_name, shapes) != 2:
    return None
  new_shape = by_name.get(node_name(reshape.input[2]))
  if new_shape is None or new_shape.op != "Pack" or len(new_shape.input) != 2:
    return None
  product, last = (by_name.get(node_name(t)) for t in new_shape.input)
  head = by_name.get(node_name(product.input[0])) if product is not None else None
  if (product is None or product.op != "Prod" or head is None or head.op != "Slice"
      or head.input[0] != original or not _is_const(head.input[1], by_name, 0)
      or not _is_const(head.input[2], by_name, 1)):
    return None
  if (last is None or last.op != "GatherV2" or last.input[0] != original
      or not _is_const(last.input[1], by_name, 1)):
    return None
  return original


def _dense_shape_length(tensor, by_name, shapes):
  """How many dimensions a sparse tensor with dense shape `tensor` has, if known."""
  known = _shape_of(tensor, shapes)
  if known.rank == 1 and known[0] is not None:
    return known[0]
  node = by_name.get(node_name(tensor))
  if node is not None and node.op == "RaggedTensorToSparse" and _output_index(tensor) == 2:
    ragged_rank = int(node.attr["RAGGED_RANK"].i)
    values_rank = _rank(node.input[ragged_rank], by_name, shapes)
    return None if values_rank is None else ragged_rank + values_rank
  return None


def _rank(tensor, by_name, shapes, depth=0):
  """The rank of `tensor`: TensorFlow's static shape, or else followed through the
  elementwise ops, lookups and ragged gathers whose shape functions lose it."""
  known = _shape_of(tensor, shapes).rank
  node = by_name.get(node_name(tensor))
  if known is not None or node is None or depth > 50:
    return known

  def rank_of(source):
    return _rank(source, by_name, shapes, depth + 1)

  if node.op == "LookupTableFindV2":
    return rank_of(node.input[1]) if rank_of(node.input[2]) == 0 else None
  if node.op == "RaggedGather" and _output_index(tensor) == node.attr["OUTPUT_RAGGED_RANK"].i:
    return rank_of(node.input[node.attr["PARAMS_RAGGED_RANK"].i])
  if node.op == "ConcatV2" or node.op in _ELEMENTWISE_OPS:
    data = node.input[:int(node.attr["N"].i)] if node.op == "ConcatV2" else \
        [t for t in node.input if not t.startswith("^")]
    ranks = [rank_of(t) for t in data]
    return None if None in ranks else max(ranks)
  return None


def _is_reshape_back(node, result, original_shape, by_name) -> bool:
  """Whether `node` is the library's final Reshape of `result` to
  original_shape[:1] + Shape(result)[1:]: the identity for a rank-2 sparse input."""
  if node.op != "Reshape" or node_name(node.input[0]) != result:
    return False
  target = by_name.get(node_name(node.input[1]))
  if target is None or target.op != "ConcatV2" or len(target.input) != 3:
    return False
  leading, trailing = (by_name.get(node_name(t)) for t in target.input[:2])
  cast = by_name.get(node_name(leading.input[0])) if leading is not None else None
  if (leading is None or leading.op != "Slice" or cast is None or cast.op != "Cast"
      or cast.input[0] != original_shape or not _is_const(leading.input[1], by_name, 0)
      or not _is_const(leading.input[2], by_name, 1)):
    return False
  shape = by_name.get(node_name(trailing.input[0])) if trailing is not None else None
  return (trailing is not None and trailing.op == "Slice" and shape is not None
          and shape.op == "Shape" and node_name(shape.input[0]) == result
          and _is_const(trailing.input[1], by_name, 1)
          and _is_const(trailing.input[2], by_name, -1))


def _unpruned(indices, values, by_name):
  """(indices, values) before safe_embedding_lookup_sparse pruned negative ids, if that
  pruning keeps every id; else None."""
  kept = []
  for tensor in (indices, values):
    gather = by_name.get(node_name(tensor))
    if gather is None or gather.op != "GatherV2" or not _is_const(gather.input[2], by_name, 0):
      return None
    kept.append(gather)
  if kept[0].input[1] != kept[1].input[1]:
    return None
  positions = _skip_identities(by_name.get(node_name(kept[0].input[1])), by_name)
  if positions is not None and positions.op == "Reshape":
    positions = by_name.get(node_name(positions.input[0]))
  if positions is None or positions.op != "Where":
    return None
  valid = by_name.get(node_name(positions.input[0]))
  if (valid is None or valid.op != "GreaterEqual" or valid.input[0] != kept[1].input[0]
      or not _is_const(valid.input[1], by_name, 0)
      or not _non_negative(valid.input[0], by_name, _table_writers(by_name))):
    return None
  return kept[0].input[0], kept[1].input[0]


def _is_const(tensor, by_name, value) -> bool:
  """Whether `tensor` is a non-empty constant whose every element equals `value`."""
  node = by_name.get(node_name(tensor))
  if node is None or node.op != "Const":
    return False
  constant = _const_value(node)
  return constant.size > 0 and bool(np.all(constant == value))


def _table_writers(by_name):
  """Table node name -> the nodes that fill or change that table."""
  writers = collections.defaultdict(list)
  for node in by_name.values():
    if node.op in ("InitializeTableFromTextFileV2", "LookupTableImportV2", "LookupTableInsertV2",
                   "LookupTableRemoveV2", "InitializeTableV2"):
      table = _skip_identities(by_name.get(node_name(node.input[0])), by_name)
      writers[table.name if table is not None else node.input[0]].append(node)
  return writers


def _non_negative(tensor, by_name, table_writers, depth=0) -> bool:
  """Whether every element of `tensor` is >= 0, judged from the ops that make it."""
  node = by_name.get(node_name(tensor))
  if node is None or depth > 50:
    return False
  index = _output_index(tensor)

  def check(*tensors):
    return all(_non_negative(t, by_name, table_writers, depth + 1) for t in tensors)

  if node.op in ("StringToHashBucketFast", "StringToHashBucketStrong", "StringToHashBucket",
                 "LookupTableSizeV2", "Size", "Shape"):
    return True
  if node.op == "Const":
    value = _const_value(node)
    return value.dtype.kind in "iuf" and bool(np.all(value >= 0))
  if node.op in ("Identity", "Reshape", "ExpandDims", "Squeeze"):
    return check(node.input[0])
  if node.op in ("AddV2", "Add"):
    return check(node.input[0], node.input[1])
  if node.op == "ConcatV2":
    return check(*node.input[:int(node.attr["N"].i)])
  if node.op == "GatherV2":
    return check(node.input[0])
  if node.op == "RaggedGather" and index == int(node.attr["OUTPUT_RAGGED_RANK"].i):
    return check(node.input[int(node.attr["PARAMS_RAGGED_RANK"].i)])
  if node.op == "RaggedTensorToSparse" and index == 1:
    return check(node.input[int(node.attr["RAGGED_RANK"].i)])
  if node.op == "LookupTableFindV2":
    return check(node.input[2]) and _table_values_non_negative(node.input[0], by_name,
                                                                table_writers)
  if node.op == "SelectV2":
    condition, chosen, other = node.input[:3]
    return check(other) and (check(chosen) or _found_only(condition, chosen, by_name,
                                                          table_writers))
  return False


def _found_only(condition, chosen, by_name, table_writers) -> bool:
  """Whether `condition` picks `chosen` only where a table lookup found its key."""
  test = by_name.get(node_name(condition))
  find = by_name.get(node_name(chosen))
  if test is None or test.op != "NotEqual" or find is None or find.op != "LookupTableFindV2":
    return False
  if chosen not in test.input[:2]:
    return False
  default = test.input[1] if test.input[0] == chosen else test.input[0]
  found_default = by_name.get(node_name(find.input[2]))
  other_default = by_name.get(node_name(default))
  return (found_default is not None and other_default is not None
          and found_default.op == other_default.op == "Const"
          and np.array_equal(_const_value(found_default), _const_value(other_default))
          and _table_values_non_negative(find.input[0], by_name, table_writers))


def _table_values_non_negative(handle, by_name, table_writers) -> bool:
  table = _skip_identities(by_name.get(node_name(handle)), by_name)
  writers = table_writers.get(table.name, []) if table is not None else []
  if not writers:
    return False
  for writer in writers:
    if writer.op == "InitializeTableFromTextFileV2":
      if writer.attr["value_index"].i != -1:  # -1: the value is the line number
        return False
    elif writer.op in ("LookupTableImportV2", "LookupTableInsertV2", "InitializeTableV2"):
      values = by_name.get(node_name(writer.input[2]))
      if values is None or values.op != "Const" or not np.all(_const_value(values) >= 0):
        return False
    else:
      return False
  return True


def _skip_identities(node, by_name):
  while node is not None and node.op == "Identity" and len(node.input) == 1:
    node = by_name.get(node_name(node.input[0]))
  return node


def _match_safe_lookup(select, by_name, context):
  """(segment op, params tensor, SparseFillEmptyRows, segment-id node) or None."""
  if select.op not in ("Select", "SelectV2") or select.name in context.protected:
    return None
  inputs = [by_name.get(node_name(i)) for i in select.input[:3]]
  if None in inputs or len(select.input) != 3:
    return None
  mask, zeros, segment_op = inputs
  if segment_op.op not in _SEGMENT_OPS or zeros.op != "ZerosLike" or \
      node_name(zeros.input[0]) != segment_op.name or mask.op != "Tile":
    return None
  reshape = by_name.get(node_name(mask.input[0]))
  if reshape is None or reshape.op != "Reshape":
    return None
  fill = by_name.get(node_name(reshape.input[0]))
  if fill is None or fill.op != "SparseFillEmptyRows" or _output_index(reshape.input[0]) != 2:
    return None
  segment_ids = by_name.get(node_name(segment_op.input[2]))
  if (segment_ids is None or segment_ids.op != "StridedSlice"
      or segment_ids.input[0] not in (fill.name, fill.name + ":0")):
    return None
  ids = segment_op.input[1]
  if ids == f"{fill.name}:1":
    # Plain tensor params: the library combines straight from the table.
    return segment_op, segment_op.input[0], fill, segment_ids
  # Variable params: unique ids, a gather, then combine by the unique positions.
  unique = by_name.get(node_name(ids))
  gather = _skip_identities(by_name.get(node_name(segment_op.input[0])), by_name)
  if (unique is None or unique.op != "Unique" or _output_index(ids) != 1
      or unique.input[0] != f"{fill.name}:1" or gather is None or gather.op != "GatherV2"
      or gather.input[1] not in (unique.name, unique.name + ":0")):
    return None
  axis = by_name.get(node_name(gather.input[2]))
  if axis is None or axis.op != "Const" or int(_const_value(axis)) != 0:
    return None
  return segment_op, gather.input[0], fill, segment_ids


# Ops between UnicodeDecode's codepoints and UnicodeEncode's values that keep element order.
_ORDER_KEEPING_OPS = {"Identity", "Reshape", "ExpandDims", "Squeeze"}


def dedupe_char_ngrams(graph_def: graph_pb2.GraphDef, context: GraphContext) -> graph_pb2.GraphDef:
  """Builds character n-grams once per distinct word in the request, not once per word.

  Matches tf.strings.ngrams over tf.strings.unicode_split (UnicodeDecode, UnicodeEncode
  one codepoint per row, StringNGrams over the decoded row splits): each output row
  depends on its own word alone. Words repeat across a batch (about four times each in
  64 Banking77 queries), so the words go through Unique first and a RaggedGather on
  the unique indices puts every row back, byte for byte. Follow it with
  hoist_elementwise_ops, so what is done to each n-gram is done before that gather.
  """
  # Dead nodes would count as other readers of the decoded words.
  graph = strip_unused_nodes(graph_def, context)
  by_name = {n.name: n for n in graph.node}
  additions = []
  for ngrams in list(graph.node):
    match = _match_unicode_ngrams(ngrams, graph, by_name, context)
    if match is None:
      continue
    decode, words = match
    prefix, device = ngrams.name + "/dedupe", ngrams.device
    flat = _op_node(f"{prefix}/flat_words", "Reshape", [words, f"{prefix}/flat_shape"], device,
                    T=tf.string, Tshape=tf.int32)
    unique = _op_node(f"{prefix}/unique_words", "Unique", [flat.name], device, T=tf.string,
                      out_idx=tf.int64)
    decode.input[0] = unique.name
    gather = _op_node(f"{prefix}/restore_rows", "RaggedGather",
                      [_tensor(ngrams.name, 1), _tensor(ngrams.name, 0), f"{unique.name}:1"],
                      device, Tvalues=tf.string, Tindices=tf.int64,
                      Tsplits=tf.as_dtype(ngrams.attr["Tsplits"].type), PARAMS_RAGGED_RANK=1,
                      OUTPUT_RAGGED_RANK=1)
    renames = {f"{ngrams.name}:1": f"{gather.name}:0", f"{ngrams.name}:0": f"{gather.name}:1"}
    for node in graph.node:
      _rename_inputs(node, renames)
    additions += [_const_node(f"{prefix}/flat_shape", np.array([-1], np.int32), device),
                  flat, unique, gather]
    graph.node.extend(additions[-4:])
    by_name.update({n.name: n for n in additions[-4:]})
  return strip_unused_nodes(graph, context) if additions else graph


def _producer(tensor, by_name, through=("Identity",)):
  """The node making `tensor` and its output index, looking through `through` ops."""
  node, index = by_name.get(node_name(tensor)), _output_index(tensor)
  while node is not None and node.op in through and node.input:
    tensor = node.input[0]
    node, index = by_name.get(node_name(tensor)), _output_index(tensor)
  return node, index


def _match_unicode_ngrams(ngrams, graph, by_name, context):
  """(UnicodeDecode node, its words tensor) when `ngrams` is ngrams(unicode_split(words))."""
  if ngrams.op != "StringNGrams" or ngrams.name in context.protected:
    return None
  encode, encode_output = _producer(ngrams.input[0], by_name)
  decode, decode_output = _producer(ngrams.input[1], by_name)
  if (encode is None or encode.op != "UnicodeEncode" or encode_output != 0
      or decode is None or decode.op != "UnicodeDecode" or decode_output != 0):
    return None
  codepoints, codepoints_output = _producer(encode.input[0], by_name, _ORDER_KEEPING_OPS)
  if codepoints is not decode or codepoints_output != 1:
    return None
  # One codepoint per row: splits = range(0, n + 1, 1), perhaps scaled by a row length of 1.
  splits, _ = _producer(encode.input[1], by_name)
  if splits is not None and splits.op == "Mul":
    factors = [by_name.get(node_name(t)) for t in splits.input[:2]]
    ones = [f for f in factors if f is not None and f.op == "Const"
            and np.all(_const_value(f) == 1)]
    others = [t for t, f in zip(splits.input[:2], factors) if f not in ones]
    splits = _producer(others[0], by_name)[0] if len(ones) == 1 and len(others) == 1 else None
  if splits is None or splits.op != "Range":
    return None
  bounds = [by_name.get(node_name(t)) for t in (splits.input[0], splits.input[2])]
  if any(b is None or b.op != "Const" for b in bounds) or \
      (int(_const_value(bounds[0])), int(_const_value(bounds[1]))) != (0, 1):
    return None
  # Everything computed from the decoded words must feed only this n-gram op and read
  # nothing else derived from the words, or it would mix distinct words with all of them.
  users = consumers(graph)
  between = _descendants(decode.name, users) & _ancestors(ngrams.name, by_name)
  from_words = _descendants(node_name(decode.input[0]), users)
  for name in between:
    if name != ngrams.name and any(u.name not in between for u, _ in users.get(name, [])):
      return None
    if name != decode.name and any(node_name(t) in from_words - between
                                   for t in by_name[name].input):
      return None
  return decode, decode.input[0]


def _descendants(name, users):
  seen, stack = {name}, [name]
  while stack:
    for user, _ in users.get(stack.pop(), []):
      if user.name not in seen:
        seen.add(user.name)
        stack.append(user.name)
  return seen


def _ancestors(name, by_name):
  seen, stack = {name}, [name]
  while stack:
    node = by_name.get(stack.pop())
    for tensor in node.input if node is not None else ():
      if node_name(tensor) not in seen:
        seen.add(node_name(tensor))
        stack.append(node_name(tensor))
  return seen


# Ops whose output element i depends only on element i of their per-element inputs,
# once every other input is a scalar (or, for a lookup, the table).
_ELEMENTWISE_OPS = {
    "StringJoin", "StringLower", "StringUpper", "StaticRegexReplace", "StringStrip",
    "StringToHashBucketFast", "StringToHashBucketStrong", "StringToHashBucket",
    "LookupTableFindV2", "Identity", "Cast", "AddV2", "Add", "Sub", "Mul", "Maximum", "Minimum",
    "Equal", "NotEqual", "Less", "LessEqual", "Greater", "GreaterEqual", "LogicalAnd",
    "LogicalOr", "LogicalNot", "SelectV2"}
# Elementwise ops worth moving: per-element string work. Numeric ops alone are not, as
# copying them for each ConcatV2 input would only add nodes.
_STRING_WORK_OPS = {"StringJoin", "StringLower", "StringUpper", "StaticRegexReplace",
                    "StringStrip", "StringToHashBucketFast", "StringToHashBucketStrong",
                    "StringToHashBucket", "LookupTableFindV2"}
# Ops that only compute scalars, usable as the scalar operand of an elementwise op.
_SCALAR_OPS = {"LookupTableSizeV2"}


def hoist_elementwise_ops(graph_def: graph_pb2.GraphDef,
                          context: GraphContext) -> graph_pb2.GraphDef:
  """Moves elementwise work (string edits, hashing, vocabulary lookups) above the
  RaggedGather and ConcatV2 that feed it.

  f(gather(x)) == gather(f(x)) and f(concat(a, b)) == concat(f(a), f(b)) for any
  elementwise f with scalar operands, so the answers are unchanged. After a gather
  over unique values (dedupe_char_ngrams) f runs once per distinct value, and ids
  rather than strings get gathered. Gathers from constants or variables are left
  alone: there hoisting would apply f to the whole table.
  """
  graph = _copy(graph_def)
  # Each hoist moves one region above one gather or concat, so this ends; the bound says so.
  for _ in range(len(graph.node)):
    if not _hoist_one_region(graph, context):
      break
  return strip_unused_nodes(graph, context)


def _hoist_one_region(graph, context) -> bool:
  by_name = {n.name: n for n in graph.node}
  users = consumers(graph)
  for mover in graph.node:
    if mover.op == "RaggedGather":
      sources = [int(mover.attr["PARAMS_RAGGED_RANK"].i)]
      moved = f"{mover.name}:{mover.attr['OUTPUT_RAGGED_RANK'].i}"
      type_attr = "Tvalues"
    elif mover.op == "ConcatV2":
      sources = list(range(int(mover.attr["N"].i)))
      moved, type_attr = mover.name + ":0", "T"
    else:
      continue
    if any(_is_stored(by_name.get(node_name(mover.input[i])), by_name) for i in sources):
      continue
    region = _elementwise_region(moved, by_name, users, context)
    if region is None:
      continue
    nodes, output = region
    for position in sources:
      renames = {moved: mover.input[position]}
      clones = []
      for node in nodes:
        clone = node_def_pb2.NodeDef()
        clone.CopyFrom(node)
        clone.name = _fresh_name(re.sub(r"(/hoisted_\d+)+$", "", node.name) + "/hoisted", by_name)
        by_name[clone.name] = clone
        clones.append(clone)
        renames["^" + node.name] = "^" + clone.name
        renames[node.name + ":0"] = clone.name
      for clone in clones:
        _rename_inputs(clone, renames)
      graph.node.extend(clones)
      mover.input[position] = renames[output]
    mover.attr[type_attr].type = _output_dtype(by_name[node_name(output)]).as_datatype_enum
    region_names = {n.name for n in nodes}
    for node in graph.node:
      if node is not mover and node.name not in region_names:
        _rename_inputs(node, {output: moved})
    return True
  return False


def _fresh_name(base, by_name) -> str:
  index = 0
  while f"{base}_{index}" in by_name:
    index += 1
  return f"{base}_{index}"


def _is_stored(node, by_name) -> bool:
  """True for a constant or variable table (possibly behind Identity ops)."""
  node = _skip_identities(node, by_name)
  return node is None or node.op in ("Const", "ReadVariableOp") + VARIABLE_OPS


def _elementwise_region(moved, by_name, users, context):
  """(region nodes in order, its one output tensor) for the elementwise ops reading the
  tensor `moved` ("node:index"); None when there is no such region worth moving."""
  region_tensors = {moved}
  region, changed = [], True
  while changed:
    changed = False
    for tensor in sorted(region_tensors):
      for user, _ in users.get(node_name(tensor), []):
        if (user in region or user.name in context.protected
            or not _elementwise_over(user, region_tensors, by_name)):
          continue
        region.append(user)
        region_tensors.add(user.name + ":0")
        changed = True
  if not any(n.op in _STRING_WORK_OPS for n in region):
    return None
  names = {n.name for n in region}
  moved_users = [u for u, p in users.get(node_name(moved), [])
                 if _tensor_key(u.input[p]) == moved]
  if any(u.name not in names for u in moved_users):
    return None
  outputs = set()
  for node in region:
    for user, position in users.get(node.name, []):
      if user.name in names:
        continue
      if user.input[position].startswith("^"):
        return None
      outputs.add(_tensor_key(user.input[position]))
  if len(outputs) != 1:
    return None
  return region, outputs.pop()


def _elementwise_over(node, region_tensors, by_name) -> bool:
  if node.op not in _ELEMENTWISE_OPS or _max_outputs(node) != 1:
    return False
  per_element = False
  for position, tensor in enumerate(node.input):
    if tensor.startswith("^"):
      return False
    if _tensor_key(tensor) in region_tensors:
      per_element = True
      continue
    if node.op == "LookupTableFindV2" and position == 0:
      continue
    source = by_name.get(node_name(tensor))
    scalar = source is not None and (
        source.op in _SCALAR_OPS
        or (source.op == "Const" and _const_value(source).ndim == 0))
    if not scalar:
      return False
  return per_element


def _output_dtype(node):
  output_arg = op_def_registry.get(node.op).output_arg[0]
  if output_arg.type_attr:
    return tf.as_dtype(node.attr[output_arg.type_attr].type)
  return tf.as_dtype(output_arg.type)


def prefer_eigen_kernels(graph_def: graph_pb2.GraphDef, context: GraphContext,
                         max_elements: int = 1 << 20) -> graph_pb2.GraphDef:
  del context  # In-place op changes keep every node's name.
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
  max_elements = int(max_elements)
  graph = _copy(graph_def)
  by_name = {n.name: n for n in graph.node}
  additions = []
  # Nodes change op in place and keep their names, so protected ones qualify too.
  for node in graph.node:
    if node.op == "MatMul" and node.attr["T"].type == tf.float32.as_datatype_enum:
      weights = _constant_source(node.input[1], by_name)
      if weights is not None and _const_value(weights).size <= max_elements:
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
  axis = _const_node(f"{prefix}/last_axis", np.array([-1], np.int32), device)
  reduce_attrs = dict(T=tf.float32, Tidx=tf.int32, keep_dims=True)
  row_max = _op_node(f"{prefix}/row_max", "Max", [logits, axis.name], device, **reduce_attrs)
  shifted = _op_node(f"{prefix}/shifted", "Sub", [logits, row_max.name], device, T=tf.float32)
  exp = _op_node(f"{prefix}/exp", "Exp", [shifted.name], device, T=tf.float32)
  row_sum = _op_node(f"{prefix}/row_sum", "Sum", [exp.name, axis.name], device, **reduce_attrs)
  inverse = _op_node(f"{prefix}/inverse", "Reciprocal", [row_sum.name], device, T=tf.float32)
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
      operands = [by_name.get(node_name(t)) for t in node.input[:2]]
      if any(o is None for o in operands):
        return None
      # The dequantize Mul: the weights and a per-column scale, both constant-derived.
      sources = [_constant_source(t, by_name) for t in node.input[:2]]
      if None in sources:
        return None
      return max(sources, key=lambda n: _const_value(n).size)
    else:
      return None
  return node


def lean_row_splits(graph_def: graph_pb2.GraphDef, context: GraphContext) -> graph_pb2.GraphDef:
  """Computes ragged row splits from row ids with one LowerBound instead of a bincount.

  RaggedTensor.from_value_rowids (behind tf.strings.split and others) turns sorted row
  ids into row splits as concat([0], cumsum(bincount(ids, minlength=n, maxlength=n))),
  a dozen ops per request. For sorted ids in [0, n), which a ragged tensor's row ids
  are, splits[i] is the number of ids below i: LowerBound(ids, range(n + 1)).
  """
  graph = _copy(graph_def)
  by_name = {n.name: n for n in graph.node}
  renames, additions = {}, []
  for concat in list(graph.node):
    match = _match_bincount_splits(concat, by_name, context)
    if match is None:
      continue
    row_ids, nrows, index_type, splits_type = match
    prefix, device = concat.name + "/lower_bound", concat.device
    zero = _const_node(f"{prefix}/zero", np.array(0, index_type.as_numpy_dtype), device)
    one = _const_node(f"{prefix}/one", np.array(1, index_type.as_numpy_dtype), device)
    first_axis = _const_node(f"{prefix}/first_axis", np.array(0, np.int32), device)
    limit = _op_node(f"{prefix}/limit", "AddV2", [nrows, one.name], device, T=index_type)
    rows = _op_node(f"{prefix}/rows", "Range", [zero.name, limit.name, one.name], device,
                    Tidx=index_type)
    nodes = [zero, one, first_axis, limit, rows]
    for name, source in (("sorted_ids", row_ids), ("row_numbers", rows.name)):
      nodes.append(_op_node(f"{prefix}/{name}", "ExpandDims", [source, first_axis.name],
                            device, T=index_type, Tdim=tf.int32))
    bound = _op_node(f"{prefix}/bound", "LowerBound", [nodes[-2].name, nodes[-1].name], device,
                     T=index_type, out_type=splits_type)
    flat_shape = _const_node(f"{prefix}/flat_shape", np.array([-1], np.int32), device)
    splits = _op_node(f"{prefix}/splits", "Reshape", [bound.name, flat_shape.name], device,
                      T=splits_type, Tshape=tf.int32)
    additions += nodes + [bound, flat_shape, splits]
    renames[concat.name + ":0"] = splits.name
  if not additions:
    return graph
  for node in graph.node:
    _rename_inputs(node, renames)
  graph.node.extend(additions)
  return strip_unused_nodes(graph, context)


def _match_bincount_splits(concat, by_name, context):
  """(row ids, nrows, their dtype, splits dtype) for concat([0], cumsum(bincount(...)))."""
  if concat.op != "ConcatV2" or concat.name in context.protected or concat.attr["N"].i != 2:
    return None
  if not _is_const(concat.input[0], by_name, 0) or not _is_const(concat.input[2], by_name, 0):
    return None
  cumsum = by_name.get(node_name(concat.input[1]))
  if (cumsum is None or cumsum.op != "Cumsum" or cumsum.attr["exclusive"].b
      or cumsum.attr["reverse"].b or not _is_const(cumsum.input[1], by_name, 0)):
    return None
  bincount = by_name.get(node_name(cumsum.input[0]))
  if bincount is None or bincount.op != "DenseBincount" or bincount.attr["binary_output"].b:
    return None
  weights = by_name.get(node_name(bincount.input[2]))
  if weights is None or weights.op != "Const" or _const_value(weights).size != 0:
    return None
  ids_cast, _ = _producer(bincount.input[0], by_name, ("Identity", "Reshape"))
  size = by_name.get(node_name(bincount.input[1]))
  if ids_cast is None or ids_cast.op != "Cast" or size is None or size.op != "Minimum":
    return None
  # minlength = maxlength = nrows: the size is min(nrows, max(nrows, ...)) = nrows.
  bounds = [by_name.get(node_name(t)) for t in size.input[:2]]
  nrows_cast = next((b for b in bounds if b is not None and b.op == "Cast"), None)
  other = next((b for b in bounds if b is not nrows_cast), None)
  if (nrows_cast is None or other is None or other.op != "Maximum"
      or nrows_cast.name not in [node_name(t) for t in other.input[:2]]):
    return None
  index_type = tf.as_dtype(ids_cast.attr["SrcT"].type)
  if tf.as_dtype(nrows_cast.attr["SrcT"].type) != index_type or \
      index_type not in (tf.int32, tf.int64):
    return None
  splits_type = tf.as_dtype(bincount.attr["T"].type)
  if splits_type not in (tf.int32, tf.int64):
    return None
  return ids_cast.input[0], nrows_cast.input[0], index_type, splits_type


def fold_constants(graph_def: graph_pb2.GraphDef, context: GraphContext) -> graph_pb2.GraphDef:
  return run_grappler(graph_def, context, ["constfold"])


def grappler(graph_def: graph_pb2.GraphDef, context: GraphContext,
             passes: str = "constfold,arithmetic,dependency,shape,pruning") -> graph_pb2.GraphDef:
  """Any of Grappler's stock passes; the remapper is left out, it emits fused _ ops."""
  names = [p.strip() for p in passes.replace("+", ",").split(",") if p.strip()]
  if "remapper" in names:
    raise TransformError("grappler: the remapper emits fused internal ops; TF Serving applies "
                         "it at load time itself")
  return run_grappler(graph_def, context, names)


def _const_operand(node, by_name) -> Tuple[int, np.ndarray]:
  """(position, value) of the node's one Const data input, or (-1, None)."""
  found = [(p, by_name[node_name(t)]) for p, t in enumerate(node.input[:2])
           if node_name(t) in by_name and by_name[node_name(t)].op == "Const"]
  if len(found) != 1:
    return -1, None
  return found[0][0], _const_value(found[0][1])


def _single_consumer(name, users, context):
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


def fold_batch_norms(graph_def: graph_pb2.GraphDef, context: GraphContext) -> graph_pb2.GraphDef:
  """Folds inference batch norm (x * scale + shift, constants) into an adjacent MatMul.

  Two shapes occur: batch norm right after MatMul[+BiasAdd] (scale the weight columns
  and the bias) and batch norm feeding a MatMul, as DNNClassifier(batch_norm=True)
  exports it after each ReLU (scale the weight rows, push the shift into the bias).
  Runs best after fold_constants, which turns the moving statistics into one
  scale and one shift constant.
  """
  graph = _copy(graph_def)
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
      if _fold_into_next_matmul(graph, by_name, users, context, x, add, after, scale, shift):
        return True
    before = by_name.get(node_name(x))
    if before is not None and _fold_into_previous_matmul(graph, by_name, users, context, before,
                                                         mul, add, scale, shift):
      return True
  return False


def _weights(matmul, by_name):
  weights = by_name.get(node_name(matmul.input[1]))
  if (weights is None or weights.op != "Const" or matmul.attr["transpose_a"].b
      or matmul.attr["transpose_b"].b):
    return None, None
  value = _const_value(weights)
  return (weights, value) if value.dtype == np.float32 and value.ndim == 2 else (None, None)


def _bias_add_after(matmul, by_name, users, context):
  bias_add = _single_consumer(matmul.name, users, context)
  if bias_add is None or bias_add.op != "BiasAdd" or node_name(bias_add.input[0]) != matmul.name:
    return None, None
  bias = by_name.get(node_name(bias_add.input[1]))
  if bias is None or bias.op != "Const":
    return None, None
  return bias_add, _const_value(bias)


def _fold_into_next_matmul(graph, by_name, users, context, x, add, matmul, scale, shift):
  weights_node, weights = _weights(matmul, by_name)
  if weights_node is None:
    return False
  rows = weights.shape[0]
  scale, shift = _as_vector(scale, rows), _as_vector(shift, rows)
  if scale is None or shift is None or len(users[weights_node.name]) != 1:
    return False
  bias_add, bias = _bias_add_after(matmul, by_name, users, context)
  if bias_add is None:
    return False
  new_weights = weights * scale[:, None]
  new_bias = bias + shift @ weights
  weights_node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(new_weights))
  _set_const(by_name[node_name(bias_add.input[1])], new_bias, users)
  matmul.input[0] = x
  return True


def _fold_into_previous_matmul(graph, by_name, users, context, before, mul, add, scale, shift):
  if before.op != "BiasAdd" or _single_consumer(before.name, users, context) is not mul:
    return False
  matmul = by_name.get(node_name(before.input[0]))
  if matmul is None or matmul.op != "MatMul":
    return False
  weights_node, weights = _weights(matmul, by_name)
  bias_add, bias = _bias_add_after(matmul, by_name, users, context)
  if weights_node is None or bias_add is not before or len(users[weights_node.name]) != 1:
    return False
  columns = weights.shape[1]
  scale, shift = _as_vector(scale, columns), _as_vector(shift, columns)
  if scale is None or shift is None:
    return False
  weights_node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(weights * scale[None, :]))
  _set_const(by_name[node_name(before.input[1])], bias * scale + shift, users)
  for user, position in users[add.name]:
    user.input[position] = "^" + before.name if user.input[position].startswith("^") \
        else before.name
  return True


def _set_const(node, value, users):
  if len(users[node.name]) != 1:
    raise TransformError(f"fold_batch_norms: constant {node.name!r} is shared; cannot rewrite")
  node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value.astype(np.float32)))


def quantize_weights(graph_def: graph_pb2.GraphDef, context: GraphContext,
                     dtype: str = "int8", min_elements: int = 1024) -> graph_pb2.GraphDef:
  """Stores large float weights as int8 (per-channel scale) or float16.

  MatMul weights get one scale per output column and are dequantized before the
  MatMul. Embedding tables (GatherV2 params on axis 0) get one scale per row and are
  dequantized after the gather, so only the gathered rows are ever float: no full
  float table is rebuilt at load or per request. Weights with other consumers stay.
  """
  if dtype not in ("int8", "float16"):
    raise TransformError(f"quantize_weights: dtype must be int8 or float16, got {dtype!r}")
  min_elements = int(min_elements)
  graph = _copy(graph_def)
  by_name = {n.name: n for n in graph.node}
  users = consumers(graph)
  new_nodes = []
  for node in list(graph.node):
    if node.op != "Const" or node.name in context.protected:
      continue
    if node.attr["dtype"].type != tf.float32.as_datatype_enum:
      continue
    value = _const_value(node)
    if value.size < min_elements or value.ndim != 2:
      continue
    use = users.get(node.name, [])
    if not use or not all(_is_weight_use(u, p, by_name) for u, p in use):
      continue
    gathers = [u for u, _ in use if u.op == "GatherV2"]
    if gathers and len(gathers) != len(use):
      continue
    per_row = bool(gathers)
    new_nodes.extend(_quantized(node, value, use, dtype, per_row, by_name))
  graph.node.extend(new_nodes)
  return strip_unused_nodes(graph, context)


def _is_weight_use(user, position, by_name) -> bool:
  if user.input[position].startswith("^"):
    return False
  if user.op == "MatMul":
    return position == 1 and not user.attr["transpose_b"].b
  if user.op == "GatherV2":
    axis = by_name.get(node_name(user.input[2]))
    return (position == 0 and axis is not None and axis.op == "Const"
            and int(_const_value(axis)) == 0 and user.attr["batch_dims"].i == 0)
  return False


def _quantized(node, value, use, dtype, per_row, by_name):
  """New nodes storing `value` compactly; rewires `use` to the dequantized tensors."""
  base, device = node.name, node.device
  float_type = tf.float32
  if dtype == "float16":
    stored = _const_node(f"{base}/float16", value.astype(np.float16), device)
    scale = None
  else:
    axis = 1 if per_row else 0
    scale = np.max(np.abs(value), axis=axis, keepdims=True) / 127.0
    scale[scale == 0] = 1.0
    quantized = np.clip(np.round(value / scale), -127, 127).astype(np.int8)
    stored = _const_node(f"{base}/int8", quantized, device)
    scale = scale.astype(np.float32).reshape(-1)
  nodes = [stored]
  if not per_row:
    cast = _op_node(f"{base}/cast", "Cast", [stored.name], device,
                    SrcT=tf.as_dtype(_const_value(stored).dtype), DstT=float_type, Truncate=False)
    nodes.append(cast)
    if scale is None:
      cast.name = base + DEQUANTIZE_SUFFIX
      dequantized = cast.name
    else:
      scale_node = _const_node(f"{base}/scale", scale.reshape(1, -1), device)
      cast.name = f"{base}/cast{DEQUANTIZE_SUFFIX}"
      nodes += [scale_node, _op_node(base + DEQUANTIZE_SUFFIX, "Mul",
                                     [cast.name, scale_node.name], device, T=float_type)]
      dequantized = base + DEQUANTIZE_SUFFIX
    for user, position in use:
      user.input[position] = dequantized
    return nodes
  if scale is not None:
    # Shaped [rows, 1], so a gathered scale broadcasts over its row without an ExpandDims.
    nodes.append(_const_node(f"{base}/scale", scale.reshape(-1, 1), device))
  for index, (gather, position) in enumerate(use):
    prefix = f"{base}/gather_{index}"
    ids, axis = gather.input[1], gather.input[2]
    gathered = _op_node(f"{prefix}/rows", "GatherV2", [stored.name, ids, axis], device,
                        Tparams=tf.as_dtype(_const_value(stored).dtype),
                        Tindices=tf.as_dtype(gather.attr["Tindices"].type),
                        Taxis=tf.as_dtype(gather.attr["Taxis"].type), batch_dims=0)
    cast = _op_node(f"{prefix}/cast" + ("" if scale is not None else DEQUANTIZE_SUFFIX), "Cast",
                    [gathered.name], device, SrcT=tf.as_dtype(_const_value(stored).dtype),
                    DstT=float_type, Truncate=False)
    nodes += [gathered, cast]
    result = cast.name
    if scale is not None:
      row_scale = _op_node(f"{prefix}/row_scale", "GatherV2", [f"{base}/scale", ids, axis],
                           device, Tparams=float_type,
                           Tindices=tf.as_dtype(gather.attr["Tindices"].type),
                           Taxis=tf.as_dtype(gather.attr["Taxis"].type), batch_dims=0)
      multiply = _op_node(f"{prefix}{DEQUANTIZE_SUFFIX}", "Mul", [cast.name, row_scale.name],
                          device, T=float_type)
      nodes += [row_scale, multiply]
      result = multiply.name
    # The gather node keeps its name (others refer to it) but becomes an Identity.
    gather.op = "Identity"
    del gather.input[:]
    gather.input.append(result)
    for attr in list(gather.attr):
      if attr != "_class":
        del gather.attr[attr]
    gather.attr["T"].type = float_type.as_datatype_enum
  return nodes


# ---------------------------------------------------------------------- registry / specs

TRANSFORMS: Dict[str, Callable] = {
    "freeze": freeze,
    "strip_unused_nodes": strip_unused_nodes,
    "remove_nodes": remove_nodes,
    "remove_identity_reshapes": remove_identity_reshapes,
    "lean_row_splits": lean_row_splits,
    "merge_duplicate_nodes": merge_duplicate_nodes,
    "fold_constants": fold_constants,
    "fold_batch_norms": fold_batch_norms,
    "remove_asserts": remove_asserts,
    "lean_embedding_lookups": lean_embedding_lookups,
    "dedupe_char_ngrams": dedupe_char_ngrams,
    "hoist_elementwise_ops": hoist_elementwise_ops,
    "prefer_eigen_kernels": prefer_eigen_kernels,
    "quantize_weights": quantize_weights,
    "grappler": grappler,
}

DEFAULT_TRANSFORMS = (
    "freeze strip_unused_nodes remove_asserts remove_nodes(op=Identity) merge_duplicate_nodes "
    "fold_constants fold_batch_norms lean_embedding_lookups dedupe_char_ngrams "
    "hoist_elementwise_ops remove_identity_reshapes lean_row_splits quantize_weights(dtype=int8) "
    "prefer_eigen_kernels")

_SPEC = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)(?:\(([^)]*)\))?\s*")


@dataclasses.dataclass(frozen=True)
class TransformSpec:
  name: str
  params: Tuple[Tuple[str, str], ...] = ()

  @property
  def label(self) -> str:
    if not self.params:
      return self.name
    return f"{self.name}({','.join(f'{k}={v}' for k, v in self.params)})"

  def apply(self, graph_def: graph_pb2.GraphDef, context: GraphContext) -> graph_pb2.GraphDef:
    return TRANSFORMS[self.name](graph_def, context, **dict(self.params))


def parse_transforms(text) -> List[TransformSpec]:
  """Parses GTT-style specs: 'freeze remove_nodes(op=Identity) quantize_weights(dtype=int8)'.

  Accepts one string (space or comma separated outside parentheses) or a list of them.
  """
  if not isinstance(text, str):
    text = " ".join(text)
  specs, position = [], 0
  while position < len(text):
    if text[position] in ", \t\n":
      position += 1
      continue
    match = _SPEC.match(text, position)
    if not match or match.end() == position:
      raise TransformError(f"cannot parse transforms at {text[position:]!r}")
    name, arguments = match.group(1), match.group(2)
    if name not in TRANSFORMS:
      raise TransformError(f"unknown transform {name!r}; known: {', '.join(TRANSFORMS)}")
    params = []
    for argument in filter(None, (a.strip() for a in (arguments or "").split(","))):
      if "=" not in argument:
        raise TransformError(f"{name}: argument {argument!r} is not key=value")
      key, value = (p.strip() for p in argument.split("=", 1))
      params.append((key, value))
    _check_params(name, dict(params))
    specs.append(TransformSpec(name, tuple(params)))
    position = match.end()
  if not specs:
    raise TransformError("no transforms given")
  return specs


def _check_params(name: str, params: Mapping[str, str]) -> None:
  import inspect
  accepted = [p for p in inspect.signature(TRANSFORMS[name]).parameters
              if p not in ("graph_def", "context")]
  unknown = sorted(set(params) - set(accepted))
  if unknown:
    raise TransformError(f"{name}: unknown argument(s) {unknown}; accepted: {accepted or 'none'}")
