"""Op-type patterns over a GraphDef, after the Graph Transform Tool's OpTypePattern.

A pattern states a chain of producers as one value instead of a walk of lookups:

  OpTypePattern("Tile", inputs=[
      OpTypePattern("Reshape", inputs=[
          OpTypePattern("SparseFillEmptyRows", name="fill", output=2)])])

matches a Tile whose input 0 is a Reshape of output 2 of a SparseFillEmptyRows, and
returns {"fill": that node}. Beyond GTT's op alternatives ("Select|SelectV2"), wildcard
("*") and nested inputs, a pattern can check which output an input reads (`output`),
look through pass-through producers (`through`), demand an exact input count, try the
first two inputs in either order (`commutative`) and test the node itself (`where`).
A name bound twice must bind the same node both times, which is how a pattern says
that two paths meet.
"""

import dataclasses
from typing import Callable, Dict, Mapping, Optional, Sequence, Union

import numpy as np
from tensorflow.core.framework import node_def_pb2

from optimize.transforms.graph import const_value
from optimize.transforms.graph import node_name
from optimize.transforms.graph import output_index

Match = Dict[str, node_def_pb2.NodeDef]


@dataclasses.dataclass(frozen=True)
class OpTypePattern:
  """What a node must be. Fields:

  op: the op type, alternatives separated by '|', or '*' for any op.
  inputs: patterns for the node's first inputs by position; None leaves a position
    unchecked (the input may even name a node the graph lacks), '*' needs a node.
  name: binds the matched node under this name in the match.
  output: which output of the node the consumer's input must read. Not checked when
    the match starts at a node rather than a tensor.
  through: producers to look through before matching, following their input 0: op
    names (any inputs) or patterns (checked for op, input_count and where only).
  input_count: the exact number of inputs, control inputs included.
  commutative: also try the first two input patterns the other way round.
  where: a test of the node itself, run once its op and input count are right.
  """

  op: str = "*"
  inputs: Sequence[Optional["OpTypePattern"]] = ()
  name: Optional[str] = None
  output: Optional[int] = None
  through: Sequence[Union[str, "OpTypePattern"]] = ()
  input_count: Optional[int] = None
  commutative: bool = False
  where: Optional[Callable[[node_def_pb2.NodeDef], bool]] = None

  def __post_init__(self):
    object.__setattr__(self, "inputs", tuple(self.inputs))
    object.__setattr__(self, "through", tuple(
        OpTypePattern(p) if isinstance(p, str) else p for p in self.through))
    if self.commutative and len(self.inputs) < 2:
      raise ValueError("a commutative pattern needs two input patterns")

  def accepts(self, node: node_def_pb2.NodeDef) -> bool:
    """Whether the node itself (not its inputs) fits: op, input count and `where`."""
    return ((self.op == "*" or node.op in self.op.split("|"))
            and (self.input_count is None or len(node.input) == self.input_count)
            and len(node.input) >= len(self.inputs)
            and (self.where is None or self.where(node)))


def match(pattern: OpTypePattern, start: Union[node_def_pb2.NodeDef, str],
          nodes: Mapping[str, node_def_pb2.NodeDef]) -> Optional[Match]:
  """The bound nodes when `start` fits `pattern` (an empty dict if it names none), else
  None; so test the result with `is None`.

  `start` is a node, or a tensor whose producer (looked through and output checked as
  the pattern says) must fit. `nodes` maps node names to the graph's nodes.
  """
  if isinstance(start, str):
    return _match_tensor(pattern, start, nodes, {})
  return _match_node(pattern, start, None, nodes, {})


def constant(value, name: Optional[str] = None) -> OpTypePattern:
  """A Const holding at least one element, every one equal to `value`."""
  def all_equal(node):
    held = const_value(node)
    return held.size > 0 and bool(np.all(held == value))
  return OpTypePattern("Const", name=name, where=all_equal)


def _match_tensor(pattern, tensor, nodes, bound) -> Optional[Match]:
  node, index = nodes.get(node_name(tensor)), output_index(tensor)
  while node is not None and node.input and any(p.accepts(node) for p in pattern.through):
    tensor = node.input[0]
    node, index = nodes.get(node_name(tensor)), output_index(tensor)
  return _match_node(pattern, node, index, nodes, bound)


def _match_node(pattern, node, index, nodes, bound) -> Optional[Match]:
  if node is None or not pattern.accepts(node):
    return None
  if pattern.output is not None and index is not None and index != pattern.output:
    return None
  if pattern.name is not None:
    if pattern.name in bound and bound[pattern.name].name != node.name:
      return None
    bound = {**bound, pattern.name: node}
  orders = [pattern.inputs]
  if pattern.commutative:
    orders.append((pattern.inputs[1], pattern.inputs[0]) + pattern.inputs[2:])
  for inputs in orders:
    result = bound
    for input_pattern, tensor in zip(inputs, node.input):
      if input_pattern is not None:
        result = _match_tensor(input_pattern, tensor, nodes, result)
        if result is None:
          break
    else:
      return result
  return None
