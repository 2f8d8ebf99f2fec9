"""Per-word embedding sums: combine_once_per_word sums a text's character n-gram embeddings
once per distinct word of the request, then per text; precompute_known_words computes those
per-word sums once, when optimizing, for the word vocabulary's words, looked up when
serving, so only other words take the string pipeline."""

import dataclasses
import hashlib
from typing import List, Optional

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import graph_pb2
from tensorflow.core.framework import node_def_pb2

from optimize.transforms.contract import GraphContext
from optimize.transforms.contract import TransformError
from optimize.transforms.freeze_and_cleanup import strip_unused_nodes
from optimize.transforms.graph import TABLE_INITIALIZER_OPS
from optimize.transforms.graph import ancestors
from optimize.transforms.graph import const_node
from optimize.transforms.graph import const_value
from optimize.transforms.graph import consumers
from optimize.transforms.graph import copy_graph
from optimize.transforms.graph import descendants
from optimize.transforms.graph import imported
from optimize.transforms.graph import nearest_ancestor
from optimize.transforms.graph import node_name
from optimize.transforms.graph import op_node
from optimize.transforms.graph import rename_inputs
from optimize.transforms.graph import tensor_key
from optimize.transforms.registry import Param
from optimize.transforms.registry import register

_SEGMENT_COMBINERS = {"SparseSegmentSumWithNumSegments", "SparseSegmentMeanWithNumSegments",
                      "SparseSegmentSqrtNWithNumSegments"}


@register("combine_once_per_word", default_position=135)
def combine_once_per_word(graph_def: graph_pb2.GraphDef,
                          context: GraphContext) -> graph_pb2.GraphDef:
  """Sums each distinct word's n-gram embeddings once, then each text's words.

  After dedupe_char_ngrams a text's character n-gram ids are its words' rows of a
  RaggedGather over the request's distinct words, flattened per text, and one sparse
  segment reduction (lean_embedding_lookups) sums their embedding rows per text: every
  repeated word's n-grams are gathered, copied and added again. Sums are linear, so the
  same answer comes from one reduction over the distinct words' n-grams (a row per word)
  and a second over each text's words (a row per text), with the text's n-gram count (the
  sum of its words' counts) for the mean or sqrt-n scaling; the RaggedGather goes. The
  results differ in the last float bits only (the order of the additions). It runs after
  quantize_weights and leaves alone what gathers and dequantizes the rows.
  """
  def rewrite(combine, graph, by_name, users):
    found = _match_combine_over_words(combine, by_name, users, context)
    return _combine_per_word(combine, *found) if found is not None else []
  return _rewrite_each_node(graph_def, context, rewrite)


def _rewrite_each_node(graph_def, context, rewrite) -> graph_pb2.GraphDef:
  """A copy of the graph in which `rewrite(node, graph, by_name, users)` had its turn at
  every node, rewriting in place and returning the nodes it adds; stripped of what the
  rewrites left unused, or the plain copy when none added a node."""
  graph = copy_graph(graph_def)
  by_name = {n.name: n for n in graph.node}
  users = consumers(graph)
  additions = []
  for node in list(graph.node):
    additions += rewrite(node, graph, by_name, users)
  if not additions:
    return graph
  graph.node.extend(additions)
  return strip_unused_nodes(graph, context)


def _combine_per_word(combine, unique, restore, text_splits):
  """Rewrites `combine` in place under its own name; returns the nodes it adds."""
  prefix, device = combine.name + "/per_word", combine.device
  word_splits, word_ids, occurrences = restore.input[:3]
  splits_type = tf.as_dtype(restore.attr["Tsplits"].type)
  occurrence_type = tf.as_dtype(restore.attr["Tindices"].type)
  value_type = tf.as_dtype(combine.attr["T"].type)
  nodes = [const_node(f"{prefix}/{name}", np.array(value, np.int32), device)
           for name, value in (("zeros", [0, 0]), ("column_end", [0, 1]), ("ones", [1, 1]),
                               ("first", [0]), ("second", [1]), ("last", [-1]), ("one", [1]))]
  nodes.append(const_node(f"{prefix}/unit", np.array(1, value_type.as_numpy_dtype), device))

  def sparse_rows(name, splits, values, values_type):
    """RaggedTensorToSparse of one ragged level: (its values, row ids, row count)."""
    sparse = op_node(f"{prefix}/{name}", "RaggedTensorToSparse", [splits, values], device,
                     T=values_type, Tsplits=splits_type, RAGGED_RANK=1)
    row_ids = op_node(f"{sparse.name}/row_ids", "StridedSlice",
                      [sparse.name, f"{prefix}/zeros", f"{prefix}/column_end", f"{prefix}/ones"],
                      device, T=tf.int64, Index=tf.int32, begin_mask=1, end_mask=1,
                      shrink_axis_mask=2)
    rows = op_node(f"{sparse.name}/rows", "StridedSlice",
                   [f"{sparse.name}:2", f"{prefix}/first", f"{prefix}/second", f"{prefix}/one"],
                   device, T=tf.int64, Index=tf.int32, shrink_axis_mask=1)
    nodes.extend([sparse, row_ids, rows])
    return [f"{sparse.name}:1", row_ids.name, rows.name]

  word_values, *per_word = sparse_rows("word_ngrams", word_splits, word_ids,
                                       tf.as_dtype(restore.attr["Tvalues"].type))
  per_text = sparse_rows("text_words", text_splits, occurrences, occurrence_type)
  unique.input[0] = word_values
  segment_attrs = dict(T=value_type, Tsegmentids=tf.int64, Tnumsegments=tf.int64)
  word_sums = op_node(f"{prefix}/word_sums", "SparseSegmentSumWithNumSegments",
                      list(combine.input[:2]) + per_word, device,
                      Tidx=tf.as_dtype(combine.attr["Tidx"].type), **segment_attrs)
  nodes.append(word_sums)
  controls = [i for i in combine.input if i.startswith("^")]
  if combine.op == "SparseSegmentSumWithNumSegments":
    combine.CopyFrom(op_node(combine.name, "SparseSegmentSumWithNumSegments",
                             [word_sums.name] + per_text + controls, device,
                             Tidx=occurrence_type, **segment_attrs))
    return nodes
  text_sums = op_node(f"{prefix}/text_sums", "SparseSegmentSumWithNumSegments",
                      [word_sums.name] + per_text, device, Tidx=occurrence_type,
                      **segment_attrs)
  ends = op_node(f"{prefix}/ends", "StridedSlice",
                 [word_splits, f"{prefix}/second", f"{prefix}/first", f"{prefix}/one"], device,
                 T=splits_type, Index=tf.int32, end_mask=1)
  starts = op_node(f"{prefix}/starts", "StridedSlice",
                   [word_splits, f"{prefix}/first", f"{prefix}/last", f"{prefix}/one"], device,
                   T=splits_type, Index=tf.int32)
  lengths = op_node(f"{prefix}/lengths", "Sub", [ends.name, starts.name], device, T=splits_type)
  counts = op_node(f"{prefix}/counts", "Cast", [lengths.name], device, SrcT=splits_type,
                   DstT=value_type)
  column = op_node(f"{prefix}/count_column", "ExpandDims", [counts.name, f"{prefix}/one"],
                   device, T=value_type, Tdim=tf.int32)
  text_counts = op_node(f"{prefix}/text_counts", "SparseSegmentSumWithNumSegments",
                        [column.name] + per_text, device, Tidx=occurrence_type, **segment_attrs)
  # An empty text sums to zeros; a count of one keeps it zeros rather than 0 * inf.
  at_least_one = op_node(f"{prefix}/at_least_one", "Maximum",
                         [text_counts.name, f"{prefix}/unit"], device, T=value_type)
  scale = op_node(f"{prefix}/scale",
                  "Rsqrt" if combine.op == "SparseSegmentSqrtNWithNumSegments" else "Reciprocal",
                  [at_least_one.name], device, T=value_type)
  nodes += [text_sums, ends, starts, lengths, counts, column, text_counts, at_least_one, scale]
  combine.CopyFrom(op_node(combine.name, "Mul", [text_sums.name, scale.name] + controls, device,
                           T=value_type))
  return nodes


def _source_tensor(tensor, by_name) -> str:
  """`tensor` with the Identity ops above it skipped."""
  node = by_name.get(node_name(tensor))
  while node is not None and node.op == "Identity" and not tensor.startswith("^"):
    tensor = node.input[0]
    node = by_name.get(node_name(tensor))
  return tensor_key(tensor)


def _match_combine_over_words(combine, by_name, users, context):
  """(Unique, RaggedGather, the texts' word splits) when `combine` reduces per text the
  ids of a RaggedGather over distinct words flattened per text, as lean_embedding_lookups
  leaves it over dedupe_char_ngrams' gather."""
  if combine.op not in _SEGMENT_COMBINERS or combine.name in context.protected:
    return None
  unique = by_name.get(node_name(combine.input[1]))
  if unique is None or unique.op != "Unique" or tensor_key(combine.input[1]) != f"{unique.name}:1":
    return None
  ids = _source_tensor(unique.input[0], by_name)
  sparse = by_name.get(node_name(ids))
  if (sparse is None or sparse.op != "RaggedTensorToSparse" or sparse.attr["RAGGED_RANK"].i != 1
      or ids != f"{sparse.name}:1"
      or not _is_slice(combine.input[2], f"{sparse.name}:0", by_name, [0, 0], [0, 1], [1, 1],
                       begin_mask=1, end_mask=1, shrink_axis_mask=2)
      or not _is_slice(combine.input[3], f"{sparse.name}:2", by_name, [0], [1], [1],
                       shrink_axis_mask=1)):
    return None
  gather = by_name.get(node_name(_source_tensor(sparse.input[0], by_name)))
  restored = _source_tensor(sparse.input[1], by_name)
  restore = by_name.get(node_name(restored))
  if (gather is None or gather.op != "GatherV2" or restore is None
      or restore.op != "RaggedGather" or restore.attr["PARAMS_RAGGED_RANK"].i != 1
      or restore.attr["OUTPUT_RAGGED_RANK"].i != 1 or restored != f"{restore.name}:1"
      or _source_tensor(gather.input[0], by_name) != f"{restore.name}:0"):
    return None
  axis = by_name.get(node_name(gather.input[2]))
  if axis is None or axis.op != "Const" or int(const_value(axis)) != 0:
    return None
  # Whatever reads Unique must feed only this reduction, which is rewritten with it.
  beyond = descendants(combine.name, users)
  if not descendants(unique.name, users) - beyond <= ancestors(combine.name, by_name):
    return None
  return unique, restore, gather.input[1]


def _is_slice(tensor, source, by_name, begin, end, strides, **masks) -> bool:
  """`tensor` is StridedSlice(source, begin, end, strides) with these masks, others 0."""
  node = by_name.get(node_name(tensor))
  if node is None or node.op != "StridedSlice" or tensor_key(node.input[0]) != source:
    return False
  operands = [by_name.get(node_name(i)) for i in node.input[1:4]]
  if any(n is None or n.op != "Const" for n in operands):
    return False
  if [list(const_value(n).reshape(-1)) for n in operands] != [begin, end, strides]:
    return False
  return all(node.attr[mask].i == masks.get(mask, 0) for mask in (
      "begin_mask", "end_mask", "ellipsis_mask", "new_axis_mask", "shrink_axis_mask"))


_SEGMENT_SUM = "SparseSegmentSumWithNumSegments"
_MAX_ANCESTORS = 256
DEFAULT_MAX_WORDS = 50_000


@dataclasses.dataclass
class _PerWordSums:
  """combine_once_per_word's form: `word_sums` (a row per distinct word of `unique`) and
  `counts` (each distinct word's n-gram count, None for a plain sum) feed per-text sums."""
  text_sums: node_def_pb2.NodeDef
  word_sums: node_def_pb2.NodeDef
  counts: Optional[node_def_pb2.NodeDef]
  count_column: Optional[node_def_pb2.NodeDef]
  unique: node_def_pb2.NodeDef
  split: node_def_pb2.NodeDef
  word_table: str


@register("precompute_known_words",
          params=[Param("max_words", int, DEFAULT_MAX_WORDS, minimum=1)], default_position=137)
def precompute_known_words(graph_def: graph_pb2.GraphDef, context: GraphContext,
                           max_words: int = DEFAULT_MAX_WORDS) -> graph_pb2.GraphDef:
  """Looks up the per-word sums of words the model's own word vocabulary lists.

  After combine_once_per_word, each distinct word of a request goes through the string
  pipeline (Unicode split, n-grams, a vocabulary lookup) and has its n-gram embedding rows
  summed, which is most of a request's time. The sum depends on the word alone, so for
  the single words of the word vocabulary (up to `max_words`, most frequent first) the
  graph itself computes it once here, run on those words; the served graph looks each
  distinct word up in a table of them, gathers the stored sum and count of the ones it
  finds, runs only the others through the pipeline, and stitches the two back in order.
  The stored sums are what the served graph would compute for those words (after
  quantization, since this runs after it), so answers change in the last float bits at
  most. Needs the vocabulary's asset (`GraphContext.asset_paths`) to read the words.
  """
  def rewrite(node, graph, by_name, users):
    found = _match_per_word_sums(node, by_name, users, context)
    if found is None:
      return []
    known = _known_word_sums(graph_def, found, context, max_words)
    return _serve_known_words(graph, found, *known) if known is not None else []
  return _rewrite_each_node(graph_def, context, rewrite)


def _producer(tensor, by_name, op):
  node = by_name.get(node_name(tensor))
  return node if node is not None and node.op == op else None


def _match_per_word_sums(text_sums, by_name, users, context) -> Optional[_PerWordSums]:
  if text_sums.op != _SEGMENT_SUM:
    return None
  word_sums = _producer(text_sums.input[0], by_name, _SEGMENT_SUM)
  text_words = _producer(text_sums.input[1], by_name, "RaggedTensorToSparse")
  if word_sums is None or text_words is None or word_sums.name in context.protected:
    return None
  unique = _producer(text_words.input[1], by_name, "Unique")
  if unique is None or tensor_key(text_words.input[1]) != f"{unique.name}:1":
    return None
  if unique.attr["T"].type != tf.string.as_datatype_enum:
    return None
  count_column, counts = None, None
  for user, _ in users.get(text_words.name, []):
    if user is text_sums or user.op != _SEGMENT_SUM:
      continue
    column = _producer(user.input[0], by_name, "ExpandDims")
    cast = column is not None and _producer(column.input[0], by_name, "Cast")
    if cast:
      count_column, counts = column, cast
  # Everything derived from the distinct words must end in the word sums or counts, which
  # are rewritten together; one per-word op feeding anything else would mix known words in.
  ends = {word_sums.name} | ({counts.name} if counts is not None else set())
  inside = set().union(*(ancestors(e, by_name) for e in ends))
  beyond = set().union(*(descendants(e, users) for e in ends)) - ends
  readers = {u.name for u, _ in users.get(unique.name, [])
             if any(tensor_key(i) == f"{unique.name}:0" for i in u.input)}
  reach = set().union(*(descendants(r, users) for r in readers)) - beyond
  if not readers or not reach <= inside:
    return None
  split = nearest_ancestor(unique.name, by_name, lambda n: n.op == "StringSplitV2",
                           _MAX_ANCESTORS)
  if split is None:
    return None
  word_table = _word_table(split, unique, by_name, users)
  if word_table is None:
    return None
  return _PerWordSums(text_sums, word_sums, counts, count_column, unique, split, word_table)


def _word_table(split, unique, by_name, users) -> Optional[str]:
  """The table looked up with the split's words (their n-grams) apart from the character
  path: its keys are the model's word vocabulary."""
  character_path = descendants(unique.name, users)
  for name in sorted(descendants(split.name, users) - character_path):
    node = by_name[name]
    if node.op == "LookupTableFindV2":
      table = by_name.get(node_name(node.input[0]))
      if table is not None and table.op == "HashTableV2":
        return table.name
  return None


def _known_word_sums(graph_def, found: _PerWordSums, context: GraphContext, max_words: int):
  """(the distinct words as the graph marks them, their sums, their counts) computed by
  the graph itself on the word vocabulary's single words; None without its assets."""
  initializers = [n for n in graph_def.node if n.op in TABLE_INITIALIZER_OPS]
  feeds = {}
  for initializer in initializers:
    if initializer.op == "InitializeTableFromTextFileV2":
      asset = node_name(initializer.input[1])
      if asset not in context.asset_paths:
        return None
      feeds[f"{asset}:0"] = context.asset_paths[asset]
  graph = imported(graph_def)
  fetches = [f"{found.unique.name}:0", f"{found.word_sums.name}:0"]
  if found.counts is not None:
    fetches.append(f"{found.counts.name}:0")
  try:
    with graph.as_default():
      exported = tf.raw_ops.LookupTableExportV2(
          table_handle=graph.get_tensor_by_name(found.word_table + ":0"), Tkeys=tf.string,
          Tvalues=tf.int64)
    with tf.compat.v1.Session(graph=graph) as session:
      session.run([graph.get_operation_by_name(n.name) for n in initializers], feeds)
      keys, values = session.run(exported)
      # Entries are listed most frequent first; single words are those without a separator.
      words = [key for _, key in sorted(zip(values.tolist(), keys.tolist()))
               if len(key.split()) == 1][:max_words]
      if not words:
        return None
      computed = session.run(fetches, {tensor_key(found.split.input[0]): np.array(words, object)})
  except tf.errors.OpError as e:
    raise TransformError(f"precompute_known_words: computing the words' sums at "
                         f"{found.word_sums.name!r} failed: {e.message}") from e
  marked, sums = computed[0], computed[1]
  counts = computed[2] if found.counts is not None else None
  return marked, sums, counts


def _serve_known_words(graph, found: _PerWordSums, marked, sums, counts) -> List:
  prefix = found.word_sums.name + "/known_words"
  device = found.word_sums.device
  words = f"{found.unique.name}:0"
  value_type = tf.as_dtype(found.word_sums.attr["T"].type)
  fingerprint = hashlib.sha256(b"\0".join(marked.tolist())).hexdigest()[:16]
  table = op_node(f"{prefix}/table", "HashTableV2", [], device, key_dtype=tf.string,
                  value_dtype=tf.int64, use_node_name_sharing=False)
  table.attr["shared_name"].s = f"{prefix}_{fingerprint}".encode()
  table.attr["container"].s = b""
  fill = op_node(f"{prefix}/fill", "LookupTableImportV2",
                 [table.name, f"{prefix}/keys", f"{prefix}/rows"], device, Tin=tf.string,
                 Tout=tf.int64)
  nodes = [const_node(f"{prefix}/keys", np.array(marked, object), device),
           const_node(f"{prefix}/rows", np.arange(len(marked), dtype=np.int64), device),
           const_node(f"{prefix}/sums", sums.astype(value_type.as_numpy_dtype), device),
           const_node(f"{prefix}/missing", np.array(-1, np.int64), device),
           const_node(f"{prefix}/flat", np.array([-1], np.int32), device),
           const_node(f"{prefix}/axis", np.array(0, np.int32), device),
           table, fill]
  initializers = {n.name for n in graph.node if n.op in TABLE_INITIALIZER_OPS}
  init_groups = [n for n in graph.node if n.op == "NoOp" and any(
      i.startswith("^") and i[1:] in initializers for i in n.input)]
  if not init_groups:
    return []
  for group in init_groups:
    group.input.append(f"^{fill.name}")
  found_at = op_node(f"{prefix}/lookup", "LookupTableFindV2",
                     [table.name, words, f"{prefix}/missing"], device, Tin=tf.string,
                     Tout=tf.int64)
  known = op_node(f"{prefix}/known", "GreaterEqual", [found_at.name, f"{prefix}/zero"], device,
                  T=tf.int64)
  unknown = op_node(f"{prefix}/unknown", "LogicalNot", [known.name], device)
  nodes += [const_node(f"{prefix}/zero", np.array(0, np.int64), device), found_at, known,
            unknown]
  positions = {}
  for kind, mask in (("known", known), ("unknown", unknown)):
    where = op_node(f"{prefix}/{kind}_where", "Where", [mask.name], device, T=tf.bool)
    at = op_node(f"{prefix}/{kind}_at", "Reshape", [where.name, f"{prefix}/flat"], device,
                 T=tf.int64, Tshape=tf.int32)
    at32 = op_node(f"{prefix}/{kind}_at32", "Cast", [at.name], device, SrcT=tf.int64,
                   DstT=tf.int32)
    nodes += [where, at, at32]
    positions[kind] = (at.name, at32.name)

  def gather(name, params, params_type, ids):
    node = op_node(f"{prefix}/{name}", "GatherV2", [params, ids, f"{prefix}/axis"], device,
                   Tparams=params_type, Tindices=tf.int64, Taxis=tf.int32, batch_dims=0)
    nodes.append(node)
    return node.name

  rows = gather("known_rows", found_at.name, tf.int64, positions["known"][0])
  others = gather("other_words", words, tf.string, positions["unknown"][0])
  for node in graph.node:
    rename_inputs(node, {words: others})

  def stitched(name, known_values, computed):
    node = op_node(f"{prefix}/{name}", "DynamicStitch",
                   [positions["known"][1], positions["unknown"][1], known_values, computed],
                   device, T=value_type, N=2)
    nodes.append(node)
    return node.name

  found.text_sums.input[0] = stitched(
      "all_sums", gather("known_sums", f"{prefix}/sums", value_type, rows), found.word_sums.name)
  if found.counts is not None:
    nodes.append(const_node(f"{prefix}/counts", counts.astype(value_type.as_numpy_dtype),
                            device))
    found.count_column.input[0] = stitched(
        "all_counts", gather("known_counts", f"{prefix}/counts", value_type, rows),
        found.counts.name)
  return nodes

