"""lean_embedding_lookups, and the proofs it needs that ids cannot be negative."""

import collections

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import graph_pb2
from tensorflow.core.framework import node_def_pb2

from optimize.transforms.contract import GraphContext
from optimize.transforms.freeze_and_cleanup import strip_unused_nodes
from optimize.transforms.graph import ELEMENTWISE_OPS
from optimize.transforms.graph import TABLE_INITIALIZER_OPS
from optimize.transforms.graph import const_node
from optimize.transforms.graph import const_value
from optimize.transforms.graph import copy_graph
from optimize.transforms.graph import imported
from optimize.transforms.graph import node_name
from optimize.transforms.graph import op_node
from optimize.transforms.graph import output_index
from optimize.transforms.graph import rename_inputs
from optimize.transforms.graph import shape_of
from optimize.transforms.graph import skip_identities
from optimize.transforms.patterns import OpTypePattern
from optimize.transforms.patterns import constant
from optimize.transforms.patterns import match
from optimize.transforms.registry import register

_SEGMENT_OPS = {"SparseSegmentSum": "SparseSegmentSumWithNumSegments",
                "SparseSegmentMean": "SparseSegmentMeanWithNumSegments",
                "SparseSegmentSqrtN": "SparseSegmentSqrtNWithNumSegments"}
_FILL = "SparseFillEmptyRows"
_SOLE_IDENTITY = OpTypePattern("Identity", input_count=1)


def _safe_lookup(params, ids) -> OpTypePattern:
  """safe_embedding_lookup_sparse's last op: Select(empty row, zeros, combined rows)."""
  return OpTypePattern("Select|SelectV2", input_count=3, inputs=[
      OpTypePattern("Tile", inputs=[
          OpTypePattern("Reshape", inputs=[OpTypePattern(_FILL, name="fill", output=2)])]),
      OpTypePattern("ZerosLike", inputs=[OpTypePattern(name="segment")]),
      OpTypePattern("|".join(_SEGMENT_OPS), name="segment", inputs=[
          params, ids, OpTypePattern("StridedSlice", name="segment_ids", inputs=[
              OpTypePattern(_FILL, name="fill", output=0)])])])


# Plain tensor params: the library combines straight from the table.
_LOOKUP_IN_TENSOR = _safe_lookup(params=None, ids=OpTypePattern(_FILL, name="fill", output=1))
# Variable params: unique ids, a gather, then combine by the unique positions.
_LOOKUP_IN_GATHERED_ROWS = _safe_lookup(
    params=OpTypePattern("GatherV2", name="gather", through=[_SOLE_IDENTITY], inputs=[
        None, OpTypePattern("Unique", name="unique", output=0),
        OpTypePattern("Const", where=lambda axis: int(const_value(axis)) == 0)]),
    ids=OpTypePattern("Unique", name="unique", output=1, inputs=[
        OpTypePattern(_FILL, name="fill", output=1)]))

# The library's SparseReshape of a sparse tensor to [prod(shape[:-1]), shape[-1]].
_FLATTENED_TO_ROWS = OpTypePattern("SparseReshape", name="reshape", output=0, inputs=[
    None, None, OpTypePattern("Pack", input_count=2, inputs=[
        OpTypePattern("Prod", inputs=[
            OpTypePattern("Slice", name="head", inputs=[None, constant(0), constant(1)])]),
        OpTypePattern("GatherV2", name="last", inputs=[None, constant(1)])])])
_FLATTENED_SHAPE = OpTypePattern("SparseReshape", name="reshape", output=1, through=["Identity"])

# The library's final Reshape of the result to original_shape[:1] + Shape(result)[1:].
_RESHAPED_BACK = OpTypePattern("Reshape", inputs=[
    OpTypePattern(name="result"),
    OpTypePattern("ConcatV2", input_count=3, inputs=[
        OpTypePattern("Slice", inputs=[OpTypePattern("Cast", name="cast"), constant(0),
                                       constant(1)]),
        OpTypePattern("Slice", inputs=[
            OpTypePattern("Shape", inputs=[OpTypePattern(name="result")]), constant(1),
            constant(-1)])])])

# The library's pruning of negative ids: gathers at Where(ids >= 0), maybe reshaped.
_GATHERED_ON_AXIS_0 = OpTypePattern("GatherV2", name="gather", inputs=[None, None, constant(0)])
_NON_NEGATIVE_POSITIONS = OpTypePattern("Where", inputs=[
    OpTypePattern("GreaterEqual", name="valid", inputs=[None, constant(0)])])
_KEPT_POSITIONS = (
    OpTypePattern("Where", through=[_SOLE_IDENTITY], inputs=_NON_NEGATIVE_POSITIONS.inputs),
    OpTypePattern("Reshape", through=[_SOLE_IDENTITY], inputs=[_NON_NEGATIVE_POSITIONS]))


@register("lean_embedding_lookups", default_position=80)
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
  graph = copy_graph(graph_def)
  by_name = {n.name: n for n in graph.node}
  shapes = imported(graph_def)
  additions, renames = [], {}
  for select in list(graph.node):
    found = _match_safe_lookup(select, by_name, context)
    if found is None:
      continue
    segment_op, params, fill, segment_ids = found
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
    unique = op_node(f"{prefix}/unique", "Unique", [values], device,
                     T=tf.as_dtype(fill.attr["T"].type), out_idx=tidx)
    axis = const_node(f"{prefix}/axis", np.array(0, np.int32), device)
    rows = op_node(f"{prefix}/rows", "GatherV2", [params, unique.name, axis.name], device,
                   Tparams=tf.as_dtype(segment_op.attr["T"].type),
                   Tindices=tf.as_dtype(fill.attr["T"].type), Taxis=tf.int32, batch_dims=0)
    row_ids = node_def_pb2.NodeDef()
    row_ids.CopyFrom(segment_ids)
    row_ids.name = f"{prefix}/row_ids"
    row_ids.input[0] = indices
    first = const_node(f"{prefix}/first", np.array([0], np.int32), device)
    after_first = const_node(f"{prefix}/after_first", np.array([1], np.int32), device)
    num_rows = op_node(f"{prefix}/num_rows", "StridedSlice",
                       [dense_shape, first.name, after_first.name, after_first.name], device,
                       T=tf.int64, Index=tf.int32, begin_mask=0, end_mask=0, ellipsis_mask=0,
                       new_axis_mask=0, shrink_axis_mask=1)
    combined = op_node(f"{prefix}/combined", _SEGMENT_OPS[segment_op.op],
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
    rename_inputs(node, renames)
  return strip_unused_nodes(graph, context)


def _match_safe_lookup(select, by_name, context):
  """(segment op, params tensor, SparseFillEmptyRows, segment-id node) or None."""
  if select.name in context.protected:
    return None
  found = match(_LOOKUP_IN_TENSOR, select, by_name)
  if found is not None:
    return found["segment"], found["segment"].input[0], found["fill"], found["segment_ids"]
  found = match(_LOOKUP_IN_GATHERED_ROWS, select, by_name)
  if found is not None:
    return found["segment"], found["gather"].input[0], found["fill"], found["segment_ids"]
  return None


def _unpruned(indices, values, by_name):
  """(indices, values) before safe_embedding_lookup_sparse pruned negative ids, if that
  pruning keeps every id; else None."""
  gathers = [match(_GATHERED_ON_AXIS_0, tensor, by_name) for tensor in (indices, values)]
  if None in gathers:
    return None
  kept_indices, kept_values = (g["gather"] for g in gathers)
  if kept_indices.input[1] != kept_values.input[1]:
    return None
  positions = next((found for found in (match(p, kept_indices.input[1], by_name)
                                        for p in _KEPT_POSITIONS) if found is not None), None)
  if (positions is None or positions["valid"].input[0] != kept_values.input[0]
      or not _non_negative(kept_values.input[0], by_name, _table_writers(by_name))):
    return None
  return kept_indices.input[0], kept_values.input[0]


def _rank_two_sparse_shape(indices, dense_shape, by_name, shapes):
  """The original dense shape when `indices` come from safe_embedding_lookup_sparse's
  SparseReshape of a rank-2 sparse tensor to [prod(shape[:-1]), shape[-1]]; else None."""
  found = match(_FLATTENED_TO_ROWS, indices, by_name)
  if found is None:
    return None
  shape_source = match(_FLATTENED_SHAPE, dense_shape, by_name)
  if shape_source is None or shape_source["reshape"] is not found["reshape"]:
    return None
  original = found["reshape"].input[1]
  if _dense_shape_length(original, by_name, shapes) != 2:
    return None
  if found["head"].input[0] != original or found["last"].input[0] != original:
    return None
  return original


def _is_reshape_back(node, result, original_shape, by_name) -> bool:
  """Whether `node` is the library's final Reshape of `result` to
  original_shape[:1] + Shape(result)[1:]: the identity for a rank-2 sparse input."""
  found = match(_RESHAPED_BACK, node, by_name)
  return (found is not None and found["result"].name == result
          and found["cast"].input[0] == original_shape)


def _dense_shape_length(tensor, by_name, shapes):
  """How many dimensions a sparse tensor with dense shape `tensor` has, if known."""
  known = shape_of(tensor, shapes)
  if known.rank == 1 and known[0] is not None:
    return known[0]
  node = by_name.get(node_name(tensor))
  if node is not None and node.op == "RaggedTensorToSparse" and output_index(tensor) == 2:
    ragged_rank = int(node.attr["RAGGED_RANK"].i)
    values_rank = _rank(node.input[ragged_rank], by_name, shapes)
    return None if values_rank is None else ragged_rank + values_rank
  return None


def _rank(tensor, by_name, shapes, depth=0):
  """The rank of `tensor`: TensorFlow's static shape, or else followed through the
  elementwise ops, lookups and ragged gathers whose shape functions lose it."""
  known = shape_of(tensor, shapes).rank
  node = by_name.get(node_name(tensor))
  if known is not None or node is None or depth > 50:
    return known

  def rank_of(source):
    return _rank(source, by_name, shapes, depth + 1)

  if node.op == "LookupTableFindV2":
    return rank_of(node.input[1]) if rank_of(node.input[2]) == 0 else None
  if node.op == "RaggedGather" and output_index(tensor) == node.attr["OUTPUT_RAGGED_RANK"].i:
    return rank_of(node.input[node.attr["PARAMS_RAGGED_RANK"].i])
  if node.op == "ConcatV2" or node.op in ELEMENTWISE_OPS:
    data = node.input[:int(node.attr["N"].i)] if node.op == "ConcatV2" else \
        [t for t in node.input if not t.startswith("^")]
    ranks = [rank_of(t) for t in data]
    return None if None in ranks else max(ranks)
  return None


def _table_writers(by_name):
  """Table node name -> the nodes that fill or change that table."""
  writers = collections.defaultdict(list)
  for node in by_name.values():
    if node.op in TABLE_INITIALIZER_OPS + ("LookupTableInsertV2", "LookupTableRemoveV2"):
      table = skip_identities(by_name.get(node_name(node.input[0])), by_name)
      writers[table.name if table is not None else node.input[0]].append(node)
  return writers


def _non_negative(tensor, by_name, table_writers, depth=0) -> bool:
  """Whether every element of `tensor` is >= 0, judged from the ops that make it."""
  node = by_name.get(node_name(tensor))
  if node is None or depth > 50:
    return False
  index = output_index(tensor)

  def check(*tensors):
    return all(_non_negative(t, by_name, table_writers, depth + 1) for t in tensors)

  if node.op in ("StringToHashBucketFast", "StringToHashBucketStrong", "StringToHashBucket",
                 "LookupTableSizeV2", "Size", "Shape"):
    return True
  if node.op == "Const":
    value = const_value(node)
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
          and np.array_equal(const_value(found_default), const_value(other_default))
          and _table_values_non_negative(find.input[0], by_name, table_writers))


def _table_values_non_negative(handle, by_name, table_writers) -> bool:
  table = skip_identities(by_name.get(node_name(handle)), by_name)
  writers = table_writers.get(table.name, []) if table is not None else []
  if not writers:
    return False
  for writer in writers:
    if writer.op == "InitializeTableFromTextFileV2":
      if writer.attr["value_index"].i != -1:  # -1: the value is the line number
        return False
    elif writer.op in ("LookupTableImportV2", "LookupTableInsertV2", "InitializeTableV2"):
      values = by_name.get(node_name(writer.input[2]))
      if values is None or values.op != "Const" or not np.all(const_value(values) >= 0):
        return False
    else:
      return False
  return True
