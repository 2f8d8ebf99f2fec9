"""Embedding tables split at their vocabulary: vocabulary rows int8, out-of-vocabulary
(hash bucket) rows in 4 bits, two codes a byte. quantize_weights uses it with oov_rows=int4.

A vocabulary lookup with OOV buckets gives ids [0, V) to vocabulary entries and V + hash to
the rest, so a table's first V rows are the tokens seen often enough to be listed and the
others are shared by every rare token; those take 4 bits with little effect on answers. The
split is found in the graph: an Add of StringToHashBucketFast and V upstream of the gather's
ids, V a Const or the size of a table whose entries the graph or its text-file asset gives
(`GraphContext.asset_line_counts`); a table without one stays int8 throughout. Every id is
answered whatever its value: ids below V read the int8 part, the others the 4-bit part.
"""

from typing import List, Optional

import numpy as np
import tensorflow as tf

from optimize.transforms.contract import GraphContext
from optimize.transforms.graph import const_node
from optimize.transforms.graph import const_value
from optimize.transforms.graph import gather_like
from optimize.transforms.graph import nearest_ancestor
from optimize.transforms.graph import node_name
from optimize.transforms.graph import op_node
from optimize.transforms.graph import skip_identities

# 4-bit codes are -7..7 stored as 1..15 (0 unused, so the codes stay symmetric like int8's).
_LEVELS = 7
_OFFSET = 8
_MAX_ANCESTORS = 64


def vocabulary_size(ids: str, by_name, context: GraphContext) -> Optional[int]:
  """V when the ids come from a vocabulary lookup whose OOV ids are V + hash bucket: an Add
  of StringToHashBucketFast and V, a Const or the size of a table read from a text file."""
  def producers(node):
    return [by_name.get(node_name(i)) for i in node.input]

  def adds_a_hash_bucket(node):
    if node.op not in ("Add", "AddV2") or len(node.input) != 2:
      return False
    found = producers(node)
    return None not in found and "StringToHashBucketFast" in {p.op for p in found}

  add = nearest_ancestor(node_name(ids), by_name, adds_a_hash_bucket, _MAX_ANCESTORS)
  if add is None:
    return None
  offset = next(p for p in producers(add) if p.op != "StringToHashBucketFast")
  return _row_count(offset, by_name, context)


def _row_count(offset, by_name, context: GraphContext) -> Optional[int]:
  if offset.op == "Const":
    value = const_value(offset)
    return int(value.reshape(-1)[0]) if value.size == 1 else None
  if offset.op != "LookupTableSizeV2":
    return None
  table = skip_identities(by_name.get(node_name(offset.input[0])), by_name)
  if table is None:
    return None
  writers = [n for n in by_name.values() if n.op != "Identity" and n.input
             and skip_identities(by_name.get(node_name(n.input[0])), by_name) is table
             and n.op not in ("LookupTableSizeV2", "LookupTableFindV2")]
  if len(writers) != 1:
    return None
  writer = writers[0]
  if writer.op in ("LookupTableImportV2", "InitializeTableV2"):
    keys = by_name.get(node_name(writer.input[1]))
    return int(const_value(keys).size) if keys is not None and keys.op == "Const" else None
  if writer.op != "InitializeTableFromTextFileV2":
    return None
  # Keys are whole lines and values line numbers: the table holds one entry per line.
  if writer.attr["key_index"].i != -2 or writer.attr["value_index"].i != -1:
    return None
  if writer.attr["vocab_size"].i > 0:
    return int(writer.attr["vocab_size"].i)
  return context.asset_line_counts.get(node_name(writer.input[1]))


def oov_storage(base: str, oov: np.ndarray, scale: np.ndarray, device: str):
  """The OOV rows packed in 4 bits, and what turns their codes into units of the vocabulary
  rows' per-column `scale`, which the caller multiplies in after the reduction."""
  oov_scale = np.max(np.abs(oov), axis=0, keepdims=True) / _LEVELS
  oov_scale[oov_scale == 0] = 1.0
  codes = (np.clip(np.round(oov / oov_scale), -_LEVELS, _LEVELS) + _OFFSET).astype(np.uint8)
  half = oov.shape[1] // 2
  packed = codes[:, :half] | (codes[:, half:] << 4)
  ratio = (oov_scale / scale).astype(np.float32)
  return [const_node(f"{base}/oov/int4", packed, device),
          const_node(f"{base}/oov_ratio", ratio, device),
          const_node(f"{base}/oov_offset", (ratio * _OFFSET).astype(np.float32), device)]


def can_split(value: np.ndarray, vocabulary_rows: Optional[int]) -> bool:
  return (vocabulary_rows is not None and 0 < vocabulary_rows < value.shape[0]
          and value.shape[1] % 2 == 0)


def gathered_rows(base: str, prefix: str, gather, vocabulary_rows: int, device: str) -> List:
  """Nodes giving the rows of `gather`'s ids in units of the column scale, as float; the
  last one is the result."""
  ids = gather.input[1]
  id_type = tf.as_dtype(gather.attr["Tindices"].type)
  nodes = []

  def add(node):
    nodes.append(node)
    return node.name

  limit = add(const_node(f"{prefix}/vocabulary_size",
                         np.array(vocabulary_rows, id_type.as_numpy_dtype), device))
  in_vocabulary = add(op_node(f"{prefix}/in_vocabulary", "Less", [ids, limit], device,
                              T=id_type))
  partition = add(op_node(f"{prefix}/partition", "Cast", [in_vocabulary], device,
                          SrcT=tf.bool, DstT=tf.int32, Truncate=False))
  count = add(op_node(f"{prefix}/count", "Size", [ids], device, T=id_type, out_type=tf.int32))
  zero = add(const_node(f"{prefix}/zero", np.array(0, np.int32), device))
  one = add(const_node(f"{prefix}/one", np.array(1, np.int32), device))
  positions = add(op_node(f"{prefix}/positions", "Range", [zero, count, one], device,
                          Tidx=tf.int32))
  split_ids = add(op_node(f"{prefix}/split_ids", "DynamicPartition", [ids, partition],
                          device, T=id_type, num_partitions=2))
  split_positions = add(op_node(f"{prefix}/split_positions", "DynamicPartition",
                                [positions, partition], device, T=tf.int32, num_partitions=2))
  vocabulary = add(gather_like(gather, f"{prefix}/vocabulary_rows_int8",
                               f"{base}/vocabulary/int8", tf.int8, device, f"{split_ids}:1"))
  vocabulary = add(op_node(f"{prefix}/vocabulary_rows", "Cast", [vocabulary], device,
                           SrcT=tf.int8, DstT=tf.float32, Truncate=False))
  oov_ids = add(op_node(f"{prefix}/oov_ids", "Sub", [f"{split_ids}:0", limit], device,
                        T=id_type))
  packed = add(gather_like(gather, f"{prefix}/oov_packed", f"{base}/oov/int4", tf.uint8,
                           device, oov_ids))
  low_mask = add(const_node(f"{prefix}/low_mask", np.array(15, np.uint8), device))
  shift = add(const_node(f"{prefix}/shift", np.array(4, np.uint8), device))
  low = add(op_node(f"{prefix}/low", "BitwiseAnd", [packed, low_mask], device, T=tf.uint8))
  high = add(op_node(f"{prefix}/high", "RightShift", [packed, shift], device, T=tf.uint8))
  columns = add(const_node(f"{prefix}/columns", np.array(1, np.int32), device))
  codes = add(op_node(f"{prefix}/codes", "ConcatV2", [low, high, columns], device,
                      T=tf.uint8, Tidx=tf.int32, N=2))
  codes = add(op_node(f"{prefix}/codes_float", "Cast", [codes], device, SrcT=tf.uint8,
                      DstT=tf.float32, Truncate=False))
  scaled = add(op_node(f"{prefix}/oov_scaled", "Mul", [codes, f"{base}/oov_ratio"], device,
                       T=tf.float32))
  oov = add(op_node(f"{prefix}/oov_rows", "Sub", [scaled, f"{base}/oov_offset"], device,
                    T=tf.float32))
  add(op_node(f"{prefix}/rows_in_order", "DynamicStitch",
              [f"{split_positions}:0", f"{split_positions}:1", oov, vocabulary], device,
              T=tf.float32, N=2))
  return nodes
