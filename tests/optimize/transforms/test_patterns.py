"""OpTypePattern: what matches, what binds, and what each option refuses."""

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import node_def_pb2

from optimize.transforms.patterns import OpTypePattern
from optimize.transforms.patterns import constant
from optimize.transforms.patterns import match

from .graphs import build


def nodes_of(fn):
  graph_def, _ = build(fn)
  return {n.name: n for n in graph_def.node}


@pytest.fixture(scope="module")
def nodes():
  def fn():
    x = tf.compat.v1.placeholder(tf.float32, [None, 2], name="x")
    two = tf.constant(2.0, name="two")
    tf.add(tf.multiply(x, two, name="scaled"), two, name="shifted")
    tf.multiply(two, x, name="scaled_other_way")
    tf.multiply(x, x, name="square")
    read = tf.identity(tf.identity(x, name="read"), name="read_again")
    with tf.control_dependencies([read]):
      tf.identity(x, name="ordered")
    tf.identity(tf.split(x, 2, axis=1, name="halves")[1], name="right_half")
    tf.constant(np.zeros([0], np.float32), name="empty")
    tf.constant([0, 0], name="zeros")
  return nodes_of(fn)


def test_op_alternatives_wildcards_and_nested_inputs_bind_nodes_by_name(nodes):
  pattern = OpTypePattern("Add|AddV2", name="sum", inputs=[
      OpTypePattern("Mul", inputs=[OpTypePattern("*", name="input"), OpTypePattern("Const")]),
      OpTypePattern("Const", name="shift")])
  found = match(pattern, nodes["shifted"], nodes)
  assert {k: v.name for k, v in found.items()} == {"sum": "shifted", "input": "x",
                                                    "shift": "two"}
  assert match(pattern, nodes["scaled"], nodes) is None
  deeper = OpTypePattern("AddV2", inputs=[OpTypePattern("Mul", inputs=[OpTypePattern("Const")])])
  assert match(deeper, nodes["shifted"], nodes) is None


def test_a_name_bound_twice_must_be_the_same_node(nodes):
  same_twice = OpTypePattern("Mul", inputs=[OpTypePattern(name="a"), OpTypePattern(name="a")])
  assert match(same_twice, nodes["square"], nodes)["a"].name == "x"
  assert match(same_twice, nodes["scaled"], nodes) is None


def test_output_is_checked_for_inputs_and_tensors_but_not_a_starting_node(nodes):
  right = OpTypePattern("Identity", inputs=[OpTypePattern("Split", output=1)])
  left = OpTypePattern("Identity", inputs=[OpTypePattern("Split", output=0)])
  assert match(right, nodes["right_half"], nodes) is not None
  assert match(left, nodes["right_half"], nodes) is None
  assert match(OpTypePattern("Split", output=1), "halves:1", nodes) is not None
  assert match(OpTypePattern("Split", output=0), "halves:1", nodes) is None
  assert match(OpTypePattern("Split", output=0), nodes["halves"], nodes) is not None


def test_through_looks_through_pass_through_producers(nodes):
  assert match(OpTypePattern("Placeholder"), "read_again", nodes) is None
  assert match(OpTypePattern("Placeholder", through=["Identity"]), "read_again",
               nodes) is not None
  # A pattern in `through` is checked too: here an Identity with a control input stops it.
  sole_input = OpTypePattern("Identity", input_count=1)
  assert match(OpTypePattern("Placeholder", through=[sole_input]), "read_again",
               nodes) is not None
  assert match(OpTypePattern("Placeholder", through=[sole_input]), "ordered", nodes) is None
  assert match(OpTypePattern("Placeholder", through=["Identity"]), "ordered", nodes) is not None


def test_input_count_counts_control_inputs(nodes):
  assert match(OpTypePattern("Identity", input_count=1), nodes["read"], nodes) is not None
  assert match(OpTypePattern("Identity", input_count=1), nodes["ordered"], nodes) is None
  assert match(OpTypePattern("Identity", input_count=2), nodes["ordered"], nodes) is not None


def test_an_unchecked_input_may_name_a_node_the_graph_lacks():
  node = node_def_pb2.NodeDef(name="mul", op="Mul", input=["missing", "two"])
  nodes = {"mul": node, "two": node_def_pb2.NodeDef(name="two", op="Const")}
  assert match(OpTypePattern("Mul", inputs=[None, OpTypePattern("Const")]), node, nodes) == {}
  assert match(OpTypePattern("Mul", inputs=[OpTypePattern(), OpTypePattern("Const")]), node,
               nodes) is None
  # More input patterns than inputs: no match.
  assert match(OpTypePattern("Mul", inputs=[None, None, None]), node, nodes) is None
  assert match(OpTypePattern("Mul"), "absent:0", nodes) is None


def test_commutative_tries_both_orders_and_forgets_the_failed_one(nodes):
  pattern = OpTypePattern("Mul", commutative=True, inputs=[
      OpTypePattern("Placeholder", name="x"), OpTypePattern("Const", name="factor")])
  for name in ("scaled", "scaled_other_way"):
    found = match(pattern, nodes[name], nodes)
    assert (found["x"].name, found["factor"].name) == ("x", "two")
  assert match(pattern, nodes["square"], nodes) is None
  # The first order binds "a" to x before failing; the second must start afresh.
  rebinding = OpTypePattern("Mul", commutative=True, inputs=[
      OpTypePattern(name="a"), OpTypePattern("Placeholder", name="a")])
  assert match(rebinding, nodes["scaled_other_way"], nodes) is None
  with pytest.raises(ValueError, match="two input patterns"):
    OpTypePattern("Mul", commutative=True, inputs=[OpTypePattern()])


def test_where_tests_the_node_itself(nodes):
  two_d = OpTypePattern("Placeholder", where=lambda n: len(n.attr["shape"].shape.dim) == 2)
  one_d = OpTypePattern("Placeholder", where=lambda n: len(n.attr["shape"].shape.dim) == 1)
  assert match(two_d, nodes["x"], nodes) is not None
  assert match(one_d, nodes["x"], nodes) is None


def test_constant_needs_every_element_equal_and_at_least_one(nodes):
  assert match(constant(2.0), nodes["two"], nodes) is not None
  assert match(constant(0), nodes["zeros"], nodes) is not None
  assert match(constant(1), nodes["zeros"], nodes) is None
  assert match(constant(0.0), nodes["empty"], nodes) is None
  assert match(constant(2.0, name="c"), "two", nodes)["c"].name == "two"
