"""Text and ragged-tensor rewrites: dedupe_char_ngrams, hoist_elementwise_ops and
lean_row_splits, for what tf.strings and tf.RaggedTensor leave in a serving graph."""

import re

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import graph_pb2
from tensorflow.core.framework import node_def_pb2
from tensorflow.python.framework import op_def_registry

from optimize.transforms.contract import GraphContext
from optimize.transforms.freeze_and_cleanup import strip_unused_nodes
from optimize.transforms.graph import ELEMENTWISE_OPS
from optimize.transforms.graph import VARIABLE_OPS
from optimize.transforms.graph import ancestors
from optimize.transforms.graph import const_node
from optimize.transforms.graph import const_value
from optimize.transforms.graph import consumers
from optimize.transforms.graph import copy_graph
from optimize.transforms.graph import descendants
from optimize.transforms.graph import max_outputs
from optimize.transforms.graph import node_name
from optimize.transforms.graph import op_node
from optimize.transforms.graph import rename_inputs
from optimize.transforms.graph import skip_identities
from optimize.transforms.graph import tensor_key
from optimize.transforms.graph import tensor_name
from optimize.transforms.patterns import OpTypePattern
from optimize.transforms.patterns import constant
from optimize.transforms.patterns import match
from optimize.transforms.registry import register

# Ops between UnicodeDecode's codepoints and UnicodeEncode's values that keep element order.
_ORDER_KEEPING_OPS = ("Identity", "Reshape", "ExpandDims", "Squeeze")
# Elementwise ops worth moving: per-element string work. Numeric ops alone are not, as
# copying them for each ConcatV2 input would only add nodes.
_STRING_WORK_OPS = {"StringJoin", "StringLower", "StringUpper", "StaticRegexReplace",
                    "StringStrip", "StringToHashBucketFast", "StringToHashBucketStrong",
                    "StringToHashBucket", "LookupTableFindV2"}
# Ops that only compute scalars, usable as the scalar operand of an elementwise op.
_SCALAR_OPS = {"LookupTableSizeV2"}


def _int_constant(value: int) -> OpTypePattern:
  return OpTypePattern("Const", where=lambda node: int(const_value(node)) == value)


# tf.strings.ngrams(tf.strings.unicode_split(words)): n-grams over one codepoint per row.
_CHAR_NGRAMS = OpTypePattern("StringNGrams", inputs=[
    OpTypePattern("UnicodeEncode", name="encode", output=0, through=["Identity"], inputs=[
        OpTypePattern("UnicodeDecode", name="decode", output=1, through=_ORDER_KEEPING_OPS)]),
    OpTypePattern("UnicodeDecode", name="decode", output=0, through=["Identity"])])
# One codepoint per row: splits = range(0, n + 1, 1), perhaps scaled by a row length of 1.
_UNIT_ROW_SPLITS = OpTypePattern("Range", through=["Identity"], inputs=[
    _int_constant(0), None, _int_constant(1)])
_UNIT_ROW_SPLITS_SCALED = OpTypePattern("Mul", through=["Identity"], commutative=True, inputs=[
    OpTypePattern("Const", where=lambda node: bool(np.all(const_value(node) == 1))),
    _UNIT_ROW_SPLITS])


def _inclusive_forward(cumsum: node_def_pb2.NodeDef) -> bool:
  return not cumsum.attr["exclusive"].b and not cumsum.attr["reverse"].b


# RaggedTensor.from_value_rowids' splits: concat([0], cumsum(bincount(ids, minlength=nrows,
# maxlength=nrows))), the bincount's size being min(nrows, max(nrows, ...)).
_BINCOUNT_SPLITS = OpTypePattern("ConcatV2", where=lambda node: node.attr["N"].i == 2, inputs=[
    constant(0),
    OpTypePattern("Cumsum", where=_inclusive_forward, inputs=[
        OpTypePattern("DenseBincount", name="bincount",
                      where=lambda node: not node.attr["binary_output"].b, inputs=[
                          OpTypePattern("Cast", name="ids_cast", through=["Identity", "Reshape"]),
                          OpTypePattern("Minimum", commutative=True, inputs=[
                              OpTypePattern("Cast", name="nrows_cast"),
                              OpTypePattern("Maximum", name="maximum")]),
                          OpTypePattern("Const", where=lambda node: const_value(node).size == 0)]),
        constant(0)]),
    constant(0)])


@register("dedupe_char_ngrams", default_position=90)
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
    found = _match_unicode_ngrams(ngrams, graph, by_name, context)
    if found is None:
      continue
    decode, words = found
    prefix, device = ngrams.name + "/dedupe", ngrams.device
    flat = op_node(f"{prefix}/flat_words", "Reshape", [words, f"{prefix}/flat_shape"], device,
                   T=tf.string, Tshape=tf.int32)
    unique = op_node(f"{prefix}/unique_words", "Unique", [flat.name], device, T=tf.string,
                     out_idx=tf.int64)
    decode.input[0] = unique.name
    gather = op_node(f"{prefix}/restore_rows", "RaggedGather",
                     [tensor_name(ngrams.name, 1), tensor_name(ngrams.name, 0), f"{unique.name}:1"],
                     device, Tvalues=tf.string, Tindices=tf.int64,
                     Tsplits=tf.as_dtype(ngrams.attr["Tsplits"].type), PARAMS_RAGGED_RANK=1,
                     OUTPUT_RAGGED_RANK=1)
    renames = {f"{ngrams.name}:1": f"{gather.name}:0", f"{ngrams.name}:0": f"{gather.name}:1"}
    for node in graph.node:
      rename_inputs(node, renames)
    additions += [const_node(f"{prefix}/flat_shape", np.array([-1], np.int32), device),
                  flat, unique, gather]
    graph.node.extend(additions[-4:])
    by_name.update({n.name: n for n in additions[-4:]})
  return strip_unused_nodes(graph, context) if additions else graph


def _match_unicode_ngrams(ngrams, graph, by_name, context):
  """(UnicodeDecode node, its words tensor) when `ngrams` is ngrams(unicode_split(words))."""
  if ngrams.name in context.protected:
    return None
  found = match(_CHAR_NGRAMS, ngrams, by_name)
  if found is None or not any(match(splits, found["encode"].input[1], by_name) is not None
                              for splits in (_UNIT_ROW_SPLITS, _UNIT_ROW_SPLITS_SCALED)):
    return None
  decode = found["decode"]
  # Everything computed from the decoded words must feed only this n-gram op and read
  # nothing else derived from the words, or it would mix distinct words with all of them.
  users = consumers(graph)
  between = descendants(decode.name, users) & ancestors(ngrams.name, by_name)
  from_words = descendants(node_name(decode.input[0]), users)
  for name in between:
    if name != ngrams.name and any(u.name not in between for u, _ in users.get(name, [])):
      return None
    if name != decode.name and any(node_name(t) in from_words - between
                                   for t in by_name[name].input):
      return None
  return decode, decode.input[0]


@register("hoist_elementwise_ops", default_position=100)
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
  graph = copy_graph(graph_def)
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
        rename_inputs(clone, renames)
      graph.node.extend(clones)
      mover.input[position] = renames[output]
    mover.attr[type_attr].type = _output_dtype(by_name[node_name(output)]).as_datatype_enum
    region_names = {n.name for n in nodes}
    for node in graph.node:
      if node is not mover and node.name not in region_names:
        rename_inputs(node, {output: moved})
    return True
  return False


def _fresh_name(base, by_name) -> str:
  index = 0
  while f"{base}_{index}" in by_name:
    index += 1
  return f"{base}_{index}"


def _is_stored(node, by_name) -> bool:
  """True for a constant or variable table (possibly behind Identity ops)."""
  node = skip_identities(node, by_name)
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
                 if tensor_key(u.input[p]) == moved]
  if any(u.name not in names for u in moved_users):
    return None
  outputs = set()
  for node in region:
    for user, position in users.get(node.name, []):
      if user.name in names:
        continue
      if user.input[position].startswith("^"):
        return None
      outputs.add(tensor_key(user.input[position]))
  if len(outputs) != 1:
    return None
  return region, outputs.pop()


def _elementwise_over(node, region_tensors, by_name) -> bool:
  if node.op not in ELEMENTWISE_OPS or max_outputs(node) != 1:
    return False
  per_element = False
  for position, tensor in enumerate(node.input):
    if tensor.startswith("^"):
      return False
    if tensor_key(tensor) in region_tensors:
      per_element = True
      continue
    if node.op == "LookupTableFindV2" and position == 0:
      continue
    source = by_name.get(node_name(tensor))
    scalar = source is not None and (
        source.op in _SCALAR_OPS
        or (source.op == "Const" and const_value(source).ndim == 0))
    if not scalar:
      return False
  return per_element


def _output_dtype(node):
  output_arg = op_def_registry.get(node.op).output_arg[0]
  if output_arg.type_attr:
    return tf.as_dtype(node.attr[output_arg.type_attr].type)
  return tf.as_dtype(output_arg.type)


@register("lean_row_splits", default_position=120)
def lean_row_splits(graph_def: graph_pb2.GraphDef, context: GraphContext) -> graph_pb2.GraphDef:
  """Computes ragged row splits from row ids with one LowerBound instead of a bincount.

  RaggedTensor.from_value_rowids (behind tf.strings.split and others) turns sorted row
  ids into row splits as concat([0], cumsum(bincount(ids, minlength=n, maxlength=n))),
  a dozen ops per request. For sorted ids in [0, n), which a ragged tensor's row ids
  are, splits[i] is the number of ids below i: LowerBound(ids, range(n + 1)).
  """
  graph = copy_graph(graph_def)
  by_name = {n.name: n for n in graph.node}
  renames, additions = {}, []
  for concat in list(graph.node):
    found = _match_bincount_splits(concat, by_name, context)
    if found is None:
      continue
    row_ids, nrows, index_type, splits_type = found
    prefix, device = concat.name + "/lower_bound", concat.device
    zero = const_node(f"{prefix}/zero", np.array(0, index_type.as_numpy_dtype), device)
    one = const_node(f"{prefix}/one", np.array(1, index_type.as_numpy_dtype), device)
    first_axis = const_node(f"{prefix}/first_axis", np.array(0, np.int32), device)
    limit = op_node(f"{prefix}/limit", "AddV2", [nrows, one.name], device, T=index_type)
    rows = op_node(f"{prefix}/rows", "Range", [zero.name, limit.name, one.name], device,
                   Tidx=index_type)
    nodes = [zero, one, first_axis, limit, rows]
    for name, source in (("sorted_ids", row_ids), ("row_numbers", rows.name)):
      nodes.append(op_node(f"{prefix}/{name}", "ExpandDims", [source, first_axis.name],
                           device, T=index_type, Tdim=tf.int32))
    bound = op_node(f"{prefix}/bound", "LowerBound", [nodes[-2].name, nodes[-1].name], device,
                    T=index_type, out_type=splits_type)
    flat_shape = const_node(f"{prefix}/flat_shape", np.array([-1], np.int32), device)
    splits = op_node(f"{prefix}/splits", "Reshape", [bound.name, flat_shape.name], device,
                     T=splits_type, Tshape=tf.int32)
    additions += nodes + [bound, flat_shape, splits]
    renames[concat.name + ":0"] = splits.name
  if not additions:
    return graph
  for node in graph.node:
    rename_inputs(node, renames)
  graph.node.extend(additions)
  return strip_unused_nodes(graph, context)


def _match_bincount_splits(concat, by_name, context):
  """(row ids, nrows, their dtype, splits dtype) for concat([0], cumsum(bincount(...)))."""
  if concat.name in context.protected:
    return None
  found = match(_BINCOUNT_SPLITS, concat, by_name)
  if found is None or found["nrows_cast"].name not in [
      node_name(t) for t in found["maximum"].input[:2]]:
    return None
  ids_cast, nrows_cast = found["ids_cast"], found["nrows_cast"]
  index_type = tf.as_dtype(ids_cast.attr["SrcT"].type)
  if tf.as_dtype(nrows_cast.attr["SrcT"].type) != index_type or \
      index_type not in (tf.int32, tf.int64):
    return None
  splits_type = tf.as_dtype(found["bincount"].attr["T"].type)
  if splits_type not in (tf.int32, tf.int64):
    return None
  return ids_cast.input[0], nrows_cast.input[0], index_type, splits_type
