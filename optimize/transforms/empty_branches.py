"""skip_empty_stitch_parts: the part of a DynamicStitch that has no rows in a request is not
computed at all, rather than computed on empty tensors."""

from typing import Dict, List, Optional, Set

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import graph_pb2
from tensorflow.core.framework import node_def_pb2

from optimize.transforms.contract import GraphContext
from optimize.transforms.graph import consumers
from optimize.transforms.graph import const_node
from optimize.transforms.graph import copy_graph
from optimize.transforms.graph import imported
from optimize.transforms.graph import is_stateful
from optimize.transforms.graph import node_name
from optimize.transforms.graph import op_node
from optimize.transforms.graph import shape_of
from optimize.transforms.graph import tensor_key
from optimize.transforms.graph import topological_order
from optimize.transforms.registry import Param
from optimize.transforms.registry import register

# Ops a skipped part may hold: stateless ones, and these reads, which change nothing.
_READS = frozenset({"LookupTableFindV2", "LookupTableSizeV2", "ReadVariableOp"})
# Nodes that stay whatever they feed: a part's inputs, tables and variables.
_SOURCES = frozenset({"Placeholder", "PlaceholderWithDefault", "Const", "HashTableV2",
                      "MutableHashTableV2", "VarHandleOp"})
_INPUTS = frozenset({"Placeholder", "PlaceholderWithDefault"})
# A part already inside control flow is left to it.
_CONTROL_FLOW = frozenset({"Switch", "Merge", "Enter", "Exit", "NextIteration", "LoopCond"})
DEFAULT_MIN_NODES = 16


@register("skip_empty_stitch_parts",
          params=[Param("min_nodes", int, DEFAULT_MIN_NODES, minimum=1)], default_position=138)
def skip_empty_stitch_parts(graph_def: graph_pb2.GraphDef, context: GraphContext,
                            min_nodes: int = DEFAULT_MIN_NODES) -> graph_pb2.GraphDef:
  """DynamicStitch parts whose index tensor is empty are skipped by a Switch.

  precompute_known_words leaves two parts per request, stitched back in order: the words
  its table knows and the others, which alone run the string pipeline (Unicode split,
  n-grams, a lookup, gathers of 4-bit rows). A short request's words are usually all known,
  yet TensorFlow runs that pipeline's forty-odd kernels on empty tensors, a third of a
  batch-1 answer. Here the nodes that compute a stitch part and nothing else (at least
  `min_nodes` of them) are fed through a Switch on "the part's indices are not empty"; when
  they are, TensorFlow skips the whole part as a dead branch, and a Merge hands the stitch
  an empty tensor of the part's row shape. Parts that share their indices across stitches
  (sums and counts of the same words) are skipped together. A part that holds a stateful op
  other than a read, or whose row shape is not known statically, is left as it is.
  """
  graph = copy_graph(graph_def)
  by_name = {n.name: n for n in graph.node}
  users = consumers(graph)
  order = {n.name: i for i, n in enumerate(topological_order(graph))}
  shapes = imported(graph_def)
  parts: Dict[str, List[str]] = {}
  for stitch in graph.node:
    if stitch.op == "DynamicStitch":
      count = stitch.attr["N"].i
      for indices, data in zip(stitch.input[:count], stitch.input[count:2 * count]):
        parts.setdefault(tensor_key(indices), []).append(tensor_key(data))
  additions = []
  for index, (indices, data) in enumerate(sorted(parts.items())):
    members = _computed_only_for(data, by_name, users, order, context.protected)
    if members is None or len(members) < min_nodes:
      continue
    rows = [shape_of(tensor, shapes)[1:] for tensor in data]
    if not all(row.is_fully_defined() for row in rows):
      continue
    additions += _gate(by_name, users, members, indices, data, shapes, f"skip_empty_{index}")
  graph.node.extend(additions)
  return graph


def _computed_only_for(data: List[str], by_name, users, order,
                       protected) -> Optional[Set[str]]:
  """The nodes that `data`'s producers need and no other node does, producers included;
  None when a producer feeds anything but a stitch, or a node is fetched, stateful other
  than a read, or control flow."""
  members = {node_name(t) for t in data}
  for name in members:
    if any(user.op != "DynamicStitch" for user, _ in users.get(name, [])):
      return None
  candidates = set()
  stack = list(members)
  while stack:
    for tensor in by_name[stack.pop()].input:
      name = node_name(tensor)
      if name in by_name and name not in candidates and by_name[name].op not in _SOURCES:
        candidates.add(name)
        stack.append(name)
  # Latest first, so a node's users are decided before it is.
  for name in sorted(candidates - members, key=lambda n: -order[n]):
    if all(user.name in members for user, _ in users.get(name, [])):
      members.add(name)
  for name in members:
    node = by_name[name]
    if (name in protected or node.op in _CONTROL_FLOW
        or (node.op not in _READS and is_stateful(node.op))):
      return None
  return members


def _gate(by_name, users, members: Set[str], indices: str, data: List[str], shapes: tf.Graph,
          prefix: str) -> List[node_def_pb2.NodeDef]:
  """Switches every tensor entering `members` on whether `indices` has elements, and
  merges each of `data` with an empty tensor of its rows for when it has none."""
  device = by_name[node_name(data[0])].device
  nodes = [
      op_node(f"{prefix}/size", "Size", [indices], device, T=tf.int32, out_type=tf.int32),
      const_node(f"{prefix}/zero", np.array(0, np.int32), device),
      op_node(f"{prefix}/has_rows", "Greater", [f"{prefix}/size", f"{prefix}/zero"], device,
              T=tf.int32),
      op_node(f"{prefix}/switch_empty", "Switch", [f"{prefix}/has_rows", f"{prefix}/has_rows"],
              device, T=tf.bool),
      # A control input cannot come from a Switch itself.
      op_node(f"{prefix}/when_empty", "Identity", [f"{prefix}/switch_empty"], device, T=tf.bool),
  ]
  switched: Dict[str, str] = {}
  for name in sorted(members):
    node = by_name[name]
    for position, tensor in enumerate(node.input):
      source = by_name.get(node_name(tensor))
      if tensor.startswith("^") or source is None or source.name in members:
        continue
      if source.op in _SOURCES and source.op not in _INPUTS:
        continue
      if tensor not in switched:
        switched[tensor] = f"{prefix}/switch_{len(switched)}"
        nodes.append(op_node(switched[tensor], "Switch", [tensor, f"{prefix}/has_rows"],
                             device, T=shapes.get_tensor_by_name(tensor_key(tensor)).dtype))
      node.input[position] = f"{switched[tensor]}:1"
  for position, tensor in enumerate(data):
    known = shapes.get_tensor_by_name(tensor_key(tensor))
    dtype = known.dtype
    empty = const_node(f"{prefix}/empty_{position}",
                       np.zeros([0] + known.shape[1:].as_list(), dtype.as_numpy_dtype), device)
    empty.input.append(f"^{prefix}/when_empty")
    merged = f"{prefix}/merged_{position}"
    nodes += [empty, op_node(merged, "Merge", [tensor, empty.name], device, T=dtype, N=2)]
    # _computed_only_for admits only producers whose every user is a stitch.
    for stitch, slot in users[node_name(tensor)]:
      if tensor_key(stitch.input[slot]) == tensor:
        stitch.input[slot] = merged
  return nodes
