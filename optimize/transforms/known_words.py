"""precompute_known_words: the per-word character n-gram sums of the vocabulary's words,
computed once when optimizing and looked up when serving; only other words take the string
pipeline."""

import collections
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
from optimize.transforms.graph import const_node
from optimize.transforms.graph import ancestors
from optimize.transforms.graph import consumers
from optimize.transforms.graph import copy_graph
from optimize.transforms.graph import descendants
from optimize.transforms.graph import imported
from optimize.transforms.graph import node_name
from optimize.transforms.graph import op_node
from optimize.transforms.graph import rename_inputs
from optimize.transforms.graph import tensor_key
from optimize.transforms.registry import Param
from optimize.transforms.registry import register

_SEGMENT_SUM = "SparseSegmentSumWithNumSegments"
_TABLE_INITIALIZERS = ("InitializeTableFromTextFileV2", "LookupTableImportV2", "InitializeTableV2")
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
  graph = copy_graph(graph_def)
  by_name = {n.name: n for n in graph.node}
  users = consumers(graph)
  additions = []
  for node in list(graph.node):
    found = _match_per_word_sums(node, by_name, users, context)
    if found is None:
      continue
    known = _known_word_sums(graph_def, found, context, max_words)
    if known is not None:
      additions += _serve_known_words(graph, found, *known)
  if not additions:
    return graph
  graph.node.extend(additions)
  return strip_unused_nodes(graph, context)


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
  reach = set().union(set(), *(descendants(r, users) for r in readers)) - beyond
  if not readers or not reach <= inside:
    return None
  split = _nearest_ancestor(unique.name, by_name, "StringSplitV2")
  if split is None:
    return None
  word_table = _word_table(split, unique, by_name, users)
  if word_table is None:
    return None
  return _PerWordSums(text_sums, word_sums, counts, count_column, unique, split, word_table)


def _nearest_ancestor(name, by_name, op):
  seen, queue = set(), collections.deque([name])
  while queue and len(seen) < _MAX_ANCESTORS:
    current = queue.popleft()
    if current in seen or current not in by_name:
      continue
    seen.add(current)
    if by_name[current].op == op:
      return by_name[current]
    queue.extend(node_name(i) for i in by_name[current].input if not i.startswith("^"))
  return None


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
  initializers = [n for n in graph_def.node if n.op in _TABLE_INITIALIZERS]
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
  initializers = {n.name for n in graph.node if n.op in _TABLE_INITIALIZERS}
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

