"""gather_constant_rows: a constant row repeated per example (the class strings a canned
classifier's head returns) built by one gather instead of a Tile."""

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import graph_pb2

from optimize.transforms.contract import GraphContext
from optimize.transforms.graph import const_node
from optimize.transforms.graph import const_value
from optimize.transforms.graph import copy_graph
from optimize.transforms.graph import op_node
from optimize.transforms.graph import skip_identities
from optimize.transforms.registry import register


@register("gather_constant_rows", default_position=125)
def gather_constant_rows(graph_def: graph_pb2.GraphDef,
                         context: GraphContext) -> graph_pb2.GraphDef:
  """Tile(c, [n, 1, ..., 1]) of a constant `c` with one row becomes GatherV2(c, zeros(n)).

  A canned classifier's head tiles its [1, classes] constant of class strings once per
  example. Tile copies string elements through Eigen's generic broadcast, about twice
  as slow as GatherV2's per-row copy of the same elements; the result is the same tensor,
  and the Tile keeps its name, so a signature that returns it stays valid.
  """
  graph = copy_graph(graph_def)
  by_name = {n.name: n for n in graph.node}
  additions = []
  for tile in graph.node:
    if tile.op != "Tile":
      continue
    row = skip_identities(by_name.get(tile.input[0].split(":")[0]), by_name)
    pack = skip_identities(by_name.get(tile.input[1].split(":")[0]), by_name)
    if (row is None or row.op != "Const" or pack is None or pack.op != "Pack"
        or pack.attr["axis"].i != 0):
      continue
    shape = const_value(row).shape
    if not shape or shape[0] != 1 or not _ones(pack.input[1:], by_name):
      continue
    index_type = tf.as_dtype(pack.attr["T"].type)
    device, prefix = tile.device, tile.name + "/as_gather"
    rows = op_node(f"{prefix}/rows", "Pack", [pack.input[0]], device, T=index_type, N=1,
                   axis=0)
    zeros = op_node(f"{prefix}/zeros", "Fill", [rows.name, f"{prefix}/zero"], device,
                    T=index_type, index_type=index_type)
    params_type = tf.as_dtype(row.attr["dtype"].type)
    controls = [i for i in tile.input if i.startswith("^")]
    tile.op = "GatherV2"
    del tile.input[:]
    tile.input.extend([row.name, zeros.name, f"{prefix}/axis"] + controls)
    tile.attr.clear()
    for key, value in (("Tparams", params_type), ("Tindices", index_type),
                       ("Taxis", tf.int32)):
      tile.attr[key].type = value.as_datatype_enum
    tile.attr["batch_dims"].i = 0
    additions += [const_node(f"{prefix}/zero", np.array(0, index_type.as_numpy_dtype), device),
                  const_node(f"{prefix}/axis", np.array(0, np.int32), device), rows, zeros]
  graph.node.extend(additions)
  return graph


def _ones(tensors, by_name) -> bool:
  for tensor in tensors:
    node = skip_identities(by_name.get(tensor.split(":")[0]), by_name)
    if node is None or node.op != "Const" or not np.all(const_value(node) == 1):
      return False
  return True
