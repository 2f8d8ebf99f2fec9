"""gather_constant_rows: a constant row repeated per example (the class strings a canned
classifier's head returns) sliced from rows stored in the graph, so no element is copied per
answer, or built by one gather instead of a Tile, while the model runs rather than after it."""

from typing import List, Optional

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import graph_pb2
from tensorflow.core.framework import node_def_pb2

from optimize.transforms.contract import GraphContext
from optimize.transforms.graph import ancestors
from optimize.transforms.graph import const_node
from optimize.transforms.graph import const_value
from optimize.transforms.graph import copy_graph
from optimize.transforms.graph import node_name
from optimize.transforms.graph import op_node
from optimize.transforms.graph import skip_identities
from optimize.transforms.registry import Param
from optimize.transforms.registry import register

_INPUT_OPS = ("Placeholder", "PlaceholderWithDefault")
# Batches up to this many rows get the stored rows: TF Serving's batching is commonly capped
# at 32-128. At Banking77's 77 class strings 128 rows add about 210 KB to the version (in
# variables/, as write_servable stores string constants of that size).
DEFAULT_STORED_ROWS = 128


@register("gather_constant_rows", params=[Param("stored_rows", int, DEFAULT_STORED_ROWS,
                                                minimum=0)], default_position=125)
def gather_constant_rows(graph_def: graph_pb2.GraphDef, context: GraphContext,
                         stored_rows: int = DEFAULT_STORED_ROWS) -> graph_pb2.GraphDef:
  """Tile(c, [n, 1, ..., 1]) of a constant `c` with one row becomes a slice of stored rows.

  A canned classifier's head tiles its [1, classes] constant of class strings once per
  example, a copy of every string of every answer. With `stored_rows` > 0 the graph stores
  a row of strings repeated that many times, flat, once per constant however many tiles
  repeat it; up to that many examples are answered by a Slice of its first n rows and a
  Reshape. A slice from the start of a rank-1 tensor shares the stored buffer (TensorFlow
  copies a dimension-0 slice of higher rank unless its rows are 64-byte aligned, which 77
  strings of 24 bytes are not), so such an answer copies no element. More examples get one
  GatherV2.

  Numbers, which copy as one memcpy per row, and every row with `stored_rows=0`, are
  gathered: GatherV2's per-row copy is about twice as fast as Tile's generic broadcast. The
  head counts the examples on its probabilities, so the copy would wait for the whole
  model; when a graph input of rank 1 (the serialized examples, or the text a signature
  feeds in their place) feeds that count, the rows are gathered from the start, one per
  element of the input, beside the model's own work, and a Slice keeps the first n at the
  end, which for n equal to the input's size forwards the tensor without a copy. Should n
  exceed the input's size, a Switch sends the request to a gather of n rows instead. Either
  way the result keeps the Tile's name, so a signature that returns it stays valid.
  """
  graph = copy_graph(graph_def)
  by_name = {n.name: n for n in graph.node}
  additions, pools = [], {}
  for tile in list(graph.node):
    if tile.op != "Tile":
      continue
    row = skip_identities(by_name.get(node_name(tile.input[0])), by_name)
    pack = skip_identities(by_name.get(node_name(tile.input[1])), by_name)
    if (row is None or row.op != "Const" or pack is None or pack.op != "Pack"
        or pack.attr["axis"].i != 0):
      continue
    shape = const_value(row).shape
    if not shape or shape[0] != 1 or not _ones(pack.input[1:], by_name):
      continue
    rows = pack.input[0]
    index_enum = pack.attr["T"].type
    if stored_rows and row.attr["dtype"].type == tf.string.as_datatype_enum:
      if row.name not in pools:
        pools[row.name] = _pool(row, stored_rows, tile.device)
        additions.append(pools[row.name])
      nodes = _sliced_from_pool(tile, row, rows, pools[row.name], index_enum)
    else:
      source = _rank_one_input(rows, by_name, context.fed) if context.fed else None
      nodes = (_gathered(tile, row, rows, index_enum) if source is None
               else _gathered_early(tile, row, rows, source, len(shape), index_enum))
    replacement = nodes[-1]
    replacement.input.extend(i for i in tile.input if i.startswith("^"))
    tile.CopyFrom(replacement)
    additions += nodes[:-1]
  graph.node.extend(additions)
  return graph


def _rank_one_input(rows: str, by_name, fed) -> Optional[node_def_pb2.NodeDef]:
  """A graph input of static rank 1 that every computation of the row count reads.

  The walk back from the count stops at inputs and at every node a signature feeds: an
  input beyond such a node goes unfed when a signature feeds it (a parsing receiver's
  examples, when a signature feeds the parsed text in their place), while one reached
  without crossing them is fed, or takes its default, whenever the count is computed."""
  def counted_from(node):
    return node.op in _INPUT_OPS or node.name in fed
  found = [by_name[n] for n in ancestors(node_name(rows), by_name, stop=counted_from)
           if n in by_name and counted_from(by_name[n])]
  # A fed node that is no input (a signature may feed any tensor) has no shape to trust.
  if not found or any(n.op not in _INPUT_OPS for n in found):
    return None
  for node in sorted(found, key=lambda n: n.name):
    shape = node.attr["shape"].shape if "shape" in node.attr else None
    if shape is not None and not shape.unknown_rank and len(shape.dim) == 1:
      return node
  return None


def _pool(row, stored_rows: int, device: str) -> node_def_pb2.NodeDef:
  """The row repeated `stored_rows` times, flattened to rank 1."""
  value = const_value(row)
  return const_node(f"{row.name}/stored_rows", np.repeat(value, stored_rows, 0).reshape(-1),
                    device)


def _sliced_from_pool(tile, row, rows: str, pool, index_enum: int
                      ) -> List[node_def_pb2.NodeDef]:
  """The first `rows` rows of `pool` while it has them, else a gather; the last node, a
  Merge named as the tile, the result."""
  index_type, device = tf.as_dtype(index_enum), tile.device
  dtype = tf.as_dtype(row.attr["dtype"].type)
  shape = const_value(row).shape
  stored_rows = const_value(pool).size // int(np.prod(shape))
  prefix = f"{tile.name}/stored"
  index = index_type.as_numpy_dtype
  nodes = [
      const_node(f"{prefix}/capacity", np.array(stored_rows, index), device),
      op_node(f"{prefix}/fits", "LessEqual", [rows, f"{prefix}/capacity"], device,
              T=index_type),
      op_node(f"{prefix}/pool_if_fits", "Switch", [pool.name, f"{prefix}/fits"], device,
              T=dtype),
      op_node(f"{prefix}/rows_if_fits", "Switch", [rows, f"{prefix}/fits"], device,
              T=index_type),
      const_node(f"{prefix}/row_size", np.array(int(np.prod(shape)), index), device),
      op_node(f"{prefix}/elements", "Mul", [f"{prefix}/rows_if_fits:1", f"{prefix}/row_size"],
              device, T=index_type),
      op_node(f"{prefix}/count", "Pack", [f"{prefix}/elements"], device, T=index_type, N=1,
              axis=0),
      const_node(f"{prefix}/begin", np.zeros(1, index), device),
      op_node(f"{prefix}/flat", "Slice",
              [f"{prefix}/pool_if_fits:1", f"{prefix}/begin", f"{prefix}/count"], device,
              T=dtype, Index=index_type),
      const_node(f"{prefix}/row_shape", np.array(shape[1:], index), device),
      const_node(f"{prefix}/axis", np.array(0, np.int32), device),
      op_node(f"{prefix}/shape", "ConcatV2",
              [f"{prefix}/count_rows", f"{prefix}/row_shape", f"{prefix}/axis"], device,
              T=index_type, N=2, Tidx=tf.int32),
      op_node(f"{prefix}/count_rows", "Pack", [f"{prefix}/rows_if_fits:1"], device,
              T=index_type, N=1, axis=0),
      op_node(f"{prefix}/sliced", "Reshape", [f"{prefix}/flat", f"{prefix}/shape"], device,
              T=dtype, Tshape=index_type),
  ]
  nodes += _zeros(f"{prefix}/beyond", f"{prefix}/rows_if_fits", index_type, device)
  nodes += [
      _gather(f"{prefix}/beyond", row, f"{prefix}/beyond/zeros", f"{prefix}/beyond/axis",
              index_type, device),
      op_node(tile.name, "Merge", [f"{prefix}/beyond", f"{prefix}/sliced"], device, T=dtype,
              N=2),
  ]
  return nodes


def _gathered(tile, row, rows: str, index_enum: int) -> List[node_def_pb2.NodeDef]:
  """GatherV2(row, zeros(rows)) named as the tile; the last node is the result."""
  index_type = tf.as_dtype(index_enum)
  prefix = f"{tile.name}/as_gather"
  return [*_zeros(prefix, rows, index_type, tile.device),
          _gather(tile.name, row, f"{prefix}/zeros", f"{prefix}/axis", index_type,
                  tile.device)]


def _gathered_early(tile, row, rows: str, source, rank: int,
                    index_enum: int) -> List[node_def_pb2.NodeDef]:
  """Rows gathered per element of `source`, sliced to `rows` once it is known (or gathered
  then, when `rows` exceeds them); the last node, a Merge named as the tile, the result."""
  index_type, device = tf.as_dtype(index_enum), tile.device
  prefix = f"{tile.name}/early"
  nodes = [op_node(f"{prefix}/input_size", "Size", [source.name], device,
                   T=tf.as_dtype(source.attr["dtype"].type), out_type=index_type)]
  nodes += _zeros(f"{prefix}/pool", nodes[0].name, index_type, device)
  nodes += [
      _gather(f"{prefix}/pool", row, f"{prefix}/pool/zeros", f"{prefix}/pool/axis",
              index_type, device),
      op_node(f"{prefix}/fits", "LessEqual", [rows, nodes[0].name], device, T=index_type),
      op_node(f"{prefix}/pool_if_fits", "Switch", [f"{prefix}/pool", f"{prefix}/fits"],
              device, T=tf.as_dtype(row.attr["dtype"].type)),
      op_node(f"{prefix}/rows_if_fits", "Switch", [rows, f"{prefix}/fits"], device,
              T=index_type),
      const_node(f"{prefix}/begin", np.zeros(rank, index_type.as_numpy_dtype), device),
      const_node(f"{prefix}/all", np.array(-1, index_type.as_numpy_dtype), device),
      op_node(f"{prefix}/size", "Pack",
              [f"{prefix}/rows_if_fits:1"] + [f"{prefix}/all"] * (rank - 1), device,
              T=index_type, N=rank, axis=0),
      op_node(f"{prefix}/sliced", "Slice",
              [f"{prefix}/pool_if_fits:1", f"{prefix}/begin", f"{prefix}/size"], device,
              T=tf.as_dtype(row.attr["dtype"].type), Index=index_type),
  ]
  nodes += _zeros(f"{prefix}/beyond", f"{prefix}/rows_if_fits", index_type, device)
  nodes += [
      _gather(f"{prefix}/beyond", row, f"{prefix}/beyond/zeros", f"{prefix}/beyond/axis",
              index_type, device),
      op_node(tile.name, "Merge", [f"{prefix}/beyond", f"{prefix}/sliced"], device,
              T=tf.as_dtype(row.attr["dtype"].type), N=2),
  ]
  return nodes


def _zeros(prefix: str, count: str, index_type: tf.DType, device: str
           ) -> List[node_def_pb2.NodeDef]:
  """`{prefix}/zeros`: `count` zeros, with the `{prefix}/axis` a gather of them takes."""
  zero = index_type.as_numpy_dtype(0)
  return [op_node(f"{prefix}/rows", "Pack", [count], device, T=index_type, N=1, axis=0),
          const_node(f"{prefix}/zero", np.array(zero), device),
          op_node(f"{prefix}/zeros", "Fill", [f"{prefix}/rows", f"{prefix}/zero"], device,
                  T=index_type, index_type=index_type),
          const_node(f"{prefix}/axis", np.array(0, np.int32), device)]


def _gather(name: str, row, zeros: str, axis: str, index_type: tf.DType,
            device: str) -> node_def_pb2.NodeDef:
  return op_node(name, "GatherV2", [row.name, zeros, axis], device,
                 Tparams=tf.as_dtype(row.attr["dtype"].type), Tindices=index_type,
                 Taxis=tf.int32, batch_dims=0)


def _ones(tensors, by_name) -> bool:
  for tensor in tensors:
    node = skip_identities(by_name.get(node_name(tensor)), by_name)
    if node is None or node.op != "Const" or not np.all(const_value(node) == 1):
      return False
  return True
