"""GraphDef utilities the transforms share: names, copies, walks, node builders."""

import collections
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import graph_pb2
from tensorflow.core.framework import node_def_pb2
from tensorflow.python.framework import op_def_registry

from optimize.transforms.contract import TransformError

VARIABLE_OPS = ("VarHandleOp", "VariableV2", "Variable")
# Ops that fill a lookup table once, from a file or from tensors.
TABLE_INITIALIZER_OPS = ("InitializeTableFromTextFileV2", "LookupTableImportV2",
                         "InitializeTableV2")

# Ops whose output element i depends only on element i of their per-element inputs,
# once every other input is a scalar (or, for a lookup, the table).
ELEMENTWISE_OPS = frozenset({
    "StringJoin", "StringLower", "StringUpper", "StaticRegexReplace", "StringStrip",
    "StringToHashBucketFast", "StringToHashBucketStrong", "StringToHashBucket",
    "LookupTableFindV2", "Identity", "Cast", "AddV2", "Add", "Sub", "Mul", "Maximum", "Minimum",
    "Equal", "NotEqual", "Less", "LessEqual", "Greater", "GreaterEqual", "LogicalAnd",
    "LogicalOr", "LogicalNot", "SelectV2"})


def node_name(tensor: str) -> str:
  """'^a', 'a:1' and 'a' all name node 'a'."""
  return tensor.lstrip("^").split(":")[0]


def output_index(tensor: str) -> int:
  parts = tensor.split(":")
  return int(parts[1]) if len(parts) > 1 else 0


def tensor_name(name: str, index: int) -> str:
  """How GraphDef inputs spell output `index` of node `name`."""
  return name if index == 0 else f"{name}:{index}"


def tensor_key(tensor: str) -> str:
  """One spelling per tensor ('a' and 'a:0' both become 'a:0'), for comparing inputs."""
  return tensor if ":" in tensor else tensor + ":0"


def copy_graph(graph_def: graph_pb2.GraphDef) -> graph_pb2.GraphDef:
  """A deep copy that a transform may change in place without touching its input."""
  result = graph_pb2.GraphDef()
  result.CopyFrom(graph_def)
  return result


def with_nodes(graph_def: graph_pb2.GraphDef,
               nodes: Iterable[node_def_pb2.NodeDef]) -> graph_pb2.GraphDef:
  """A graph with `graph_def`'s versions and function library, and copies of `nodes`."""
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


def descendants(name: str, users) -> Set[str]:
  """`name` and every node that reads it, directly or not (`users` from `consumers`)."""
  seen, stack = {name}, [name]
  while stack:
    for user, _ in users.get(stack.pop(), []):
      if user.name not in seen:
        seen.add(user.name)
        stack.append(user.name)
  return seen


def ancestors(name: str, by_name: Mapping[str, node_def_pb2.NodeDef],
              stop: Optional[Callable[[node_def_pb2.NodeDef], bool]] = None) -> Set[str]:
  """`name` and every node it reads, directly or not; a node `stop` accepts is included
  but what it reads is not walked."""
  seen, stack = {name}, [name]
  while stack:
    node = by_name.get(stack.pop())
    if node is None or (stop is not None and stop(node)):
      continue
    for tensor in node.input:
      if node_name(tensor) not in seen:
        seen.add(node_name(tensor))
        stack.append(node_name(tensor))
  return seen


def nearest_ancestor(name: str, by_name: Mapping[str, node_def_pb2.NodeDef],
                     matches: Callable[[node_def_pb2.NodeDef], bool],
                     limit: int) -> Optional[node_def_pb2.NodeDef]:
  """The first node `matches` accepts, breadth first from `name` up its data inputs,
  among the first `limit` nodes visited; None when there is none."""
  seen, queue = set(), collections.deque([name])
  while queue and len(seen) < limit:
    current = queue.popleft()
    if current in seen or current not in by_name:
      continue
    seen.add(current)
    if matches(by_name[current]):
      return by_name[current]
    queue.extend(node_name(i) for i in by_name[current].input if not i.startswith("^"))
  return None


def topological_order(graph_def: graph_pb2.GraphDef) -> List[node_def_pb2.NodeDef]:
  """The graph's own NodeDefs (not copies), each after every node it reads."""
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


def rename_inputs(node: node_def_pb2.NodeDef, renames: Mapping[str, str]) -> None:
  """Points inputs at replacement tensors; `renames` maps tensor keys or '^node' names.

  Colocation constraints ('loc:@node') follow a renamed '^node', or the graph would
  ask to colocate with a node that is gone.
  """
  for position, tensor in enumerate(node.input):
    key = tensor if ":" in tensor or tensor.startswith("^") else tensor + ":0"
    if key in renames:
      node.input[position] = renames[key]
  if "_class" not in node.attr:
    return
  values = []
  for value in node.attr["_class"].list.s:
    text = value.decode()
    target = renames.get("^" + text[len("loc:@"):]) if text.startswith("loc:@") else None
    values.append(("loc:@" + target[1:]).encode() if target else value)
  del node.attr["_class"].list.s[:]
  node.attr["_class"].list.s.extend(values)


def is_stateful(op: str) -> bool:
  """Stateful, or unknown to this TensorFlow: either way not safe to merge or move."""
  op_def = op_def_registry.get(op)
  return op_def is None or op_def.is_stateful


def max_outputs(node: node_def_pb2.NodeDef) -> int:
  """How many outputs the node has, from its OpDef (1 for ops this TensorFlow lacks)."""
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


def const_node(name: str, value: np.ndarray, device: str = "") -> node_def_pb2.NodeDef:
  node = node_def_pb2.NodeDef(name=name, op="Const", device=device)
  node.attr["dtype"].type = tf.as_dtype(value.dtype).as_datatype_enum
  node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value))
  return node


def op_node(name: str, op: str, inputs: Sequence[str], device: str = "",
            **attrs) -> node_def_pb2.NodeDef:
  """A NodeDef whose attrs are given as tf.DType, bool or int values."""
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


def gather_like(gather: node_def_pb2.NodeDef, name: str, params: str, params_type: tf.DType,
                device: str, ids: Optional[str] = None) -> node_def_pb2.NodeDef:
  """A GatherV2 of `params` with `gather`'s ids (or `ids`), axis and index dtypes."""
  return op_node(name, "GatherV2", [params, ids or gather.input[1], gather.input[2]],
                 device, Tparams=params_type,
                 Tindices=tf.as_dtype(gather.attr["Tindices"].type),
                 Taxis=tf.as_dtype(gather.attr["Taxis"].type), batch_dims=0)


def const_value(node: node_def_pb2.NodeDef) -> np.ndarray:
  return tf.make_ndarray(node.attr["value"].tensor)


def skip_identities(node: Optional[node_def_pb2.NodeDef],
                    by_name: Mapping[str, node_def_pb2.NodeDef]):
  """The first node at or above `node` that is not an Identity of one input."""
  while node is not None and node.op == "Identity" and len(node.input) == 1:
    node = by_name.get(node_name(node.input[0]))
  return node


def prune_library(graph_def: graph_pb2.GraphDef) -> graph_pb2.GraphDef:
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
  result = copy_graph(graph_def)
  del result.library.function[:]
  result.library.function.extend(f for n, f in functions.items() if n in keep)
  kept_gradients = [g for g in graph_def.library.gradient if g.function_name in keep]
  del result.library.gradient[:]
  result.library.gradient.extend(kept_gradients)
  return result


def imported(graph_def: graph_pb2.GraphDef) -> tf.Graph:
  """A copy of the graph imported into a new tf.Graph, whose tensors carry inferred
  static shapes. A copy, because import_graph_def spells out default attrs in place."""
  graph = tf.Graph()
  with graph.as_default():
    tf.graph_util.import_graph_def(copy_graph(graph_def), name="")
  return graph


def shape_of(tensor: str, graph: tf.Graph) -> tf.TensorShape:
  return graph.get_tensor_by_name(tensor_key(tensor)).shape


def with_default_attrs(graph_def: graph_pb2.GraphDef) -> graph_pb2.GraphDef:
  """A copy whose nodes spell out every attr their OpDef has a default for, as
  import_graph_def does to the GraphDef it is given."""
  result = copy_graph(graph_def)
  for node in result.node:
    op_def = op_def_registry.get(node.op)
    for attr_def in op_def.attr if op_def is not None else ():
      if (attr_def.HasField("default_value")
          and node.attr[attr_def.name].WhichOneof("value") is None):
        node.attr[attr_def.name].CopyFrom(attr_def.default_value)
  return result


def bypass(graph_def: graph_pb2.GraphDef, sources: Mapping[str, str]) -> graph_pb2.GraphDef:
  """Removes the nodes named in `sources` (in topological order), pointing each reader
  of a removed node's output at the tensor the node passed through."""
  renames: Dict[str, str] = {}
  for name, source in sources.items():
    source = renames.get(tensor_key(source), source)
    renames[name + ":0"] = source
    renames["^" + name] = "^" + node_name(source)
  result = with_nodes(graph_def, [n for n in graph_def.node if n.name not in sources])
  for node in result.node:
    rename_inputs(node, renames)
  return dedupe_control_inputs(result)


def dedupe_control_inputs(graph_def: graph_pb2.GraphDef) -> graph_pb2.GraphDef:
  """Drops control inputs that repeat, or that duplicate a data input, after bypassing.

  Changes `graph_def` in place (callers pass a graph of their own) and returns it.
  """
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
