"""gather_constant_rows: a constant row repeated per example (the class strings a canned
classifier's head returns) built by one gather instead of a Tile, and built while the model
runs rather than after it."""

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
from optimize.transforms.registry import register

_INPUT_OPS = ("Placeholder", "PlaceholderWithDefault")


@register("gather_constant_rows", default_position=125)
def gather_constant_rows(graph_def: graph_pb2.GraphDef,
                         context: GraphContext) -> graph_pb2.GraphDef:
  """Tile(c, [n, 1, ..., 1]) of a constant `c` with one row becomes a GatherV2 of c's row.

  A canned classifier's head tiles its [1, classes] constant of class strings once per
  example. Tile copies string elements through Eigen's generic broadcast, about twice
  as slow as GatherV2's per-row copy of the same elements.

  The head counts the examples on its probabilities, so the copy used to wait for the whole
  model. When a graph input of rank 1 (the serialized examples, or the text a signature
  feeds in their place) feeds that count, the rows are gathered from the start, one per
  element of the input, beside the model's own work; at the end a Slice keeps the first n,
  which for n equal to the input's size forwards the tensor without a copy. Should n ever exceed the input's size, a Switch sends the request
  to a gather of n rows instead, so every n is answered as before. Either way the result
  keeps the Tile's name, so a signature that returns it stays valid.
  """
  graph = copy_graph(graph_def)
  by_name = {n.name: n for n in graph.node}
  additions = []
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
    source = _rank_one_input(rows, by_name, context.fed) if context.fed else None
    nodes = (_gathered(tile, row, rows, pack.attr["T"].type) if source is None
             else _gathered_early(tile, row, rows, source, len(shape), pack.attr["T"].type))
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
