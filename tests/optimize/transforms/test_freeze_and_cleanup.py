"""freeze, strip_unused_nodes, remove_nodes, remove_asserts, merge_duplicate_nodes and
remove_identity_reshapes on small graphs whose right results are known."""

import numpy as np
import pytest
import tensorflow as tf

from optimize import transforms
from optimize.transforms import freeze_and_cleanup

from . import graphs
from .graphs import build, context, ops, run


def test_freeze_turns_resource_variables_into_constants_and_keeps_answers():
  graph_def = graphs.variables_model()
  frozen = freeze_and_cleanup.freeze(graph_def, context("x", "y", values=graphs.VARIABLE_VALUES))
  assert not {"VarHandleOp", "ReadVariableOp", "ResourceGather", "AssignVariableOp",
              "ScalarSummary"} & set(ops(frozen))
  np.testing.assert_allclose(run(frozen, "y:0", {"x:0": [[1.0, 1.0]]}), [[5.0]])


def test_freeze_reads_variables_whose_own_read_was_stripped():
  graph_def = graphs.variables_model()
  # What freeze converts: the reads TensorFlow's converter looks for are unused here.
  needed = freeze_and_cleanup.strip_unused_nodes(graph_def, context("x", "y"))
  assert "w/Read/ReadVariableOp" not in {n.name for n in needed.node}
  frozen = freeze_and_cleanup.freeze(graph_def, context("x", "y", values=graphs.VARIABLE_VALUES))
  np.testing.assert_allclose(run(frozen, "y:0", {"x:0": [[2.0, 0.0]]}), [[4.0]])


def test_freeze_turns_reference_variables_into_constants_too():
  graph_def = graphs.variables_model(use_resource=False)
  assert "VariableV2" in ops(graph_def)
  frozen = freeze_and_cleanup.freeze(graph_def, context("x", "y", values=graphs.VARIABLE_VALUES))
  assert not {"VariableV2", "Assign"} & set(ops(frozen))
  np.testing.assert_allclose(run(frozen, "y:0", {"x:0": [[1.0, 1.0]]}), [[5.0]])


def test_freeze_names_the_variable_it_has_no_value_for():
  def fn():
    tf.identity(tf.compat.v1.get_variable("w", [2], use_resource=True), name="y")
  graph_def, _ = build(fn)
  with pytest.raises(transforms.TransformError, match="^freeze: no value for variable 'w'$"):
    freeze_and_cleanup.freeze(graph_def, context("y"))


def test_freeze_refuses_a_graph_whose_outputs_write_a_variable():
  def fn():
    w = tf.compat.v1.get_variable("w", [2], use_resource=True)
    tf.identity(w.assign_add([1.0, 1.0]), name="y")
  graph_def, _ = build(fn)
  with pytest.raises(transforms.TransformError, match="AssignAddVariableOp.*cannot be frozen"):
    freeze_and_cleanup.freeze(graph_def, context("y", values={"w": np.zeros(2, np.float32)}))


def test_freeze_drops_functions_nothing_calls_any_more():
  def fn():
    x = tf.compat.v1.placeholder(tf.float32, [], name="x")
    tf.identity(x + 1.0, name="y")
    tf.identity(tf.cond(x > 0.0, lambda: x * 2.0, lambda: x * 3.0), name="unused")
  graph_def, _ = build(fn)
  assert graph_def.library.function
  frozen = freeze_and_cleanup.freeze(graph_def, context("x", "y"))
  assert not frozen.library.function
  assert run(frozen, "y:0", {"x:0": 2.0}) == 3.0


def test_strip_unused_nodes_keeps_only_what_protected_nodes_need():
  graph_def = graphs.unused_branch_model()
  stripped = freeze_and_cleanup.strip_unused_nodes(graph_def, context("x", "y"))
  names = {n.name for n in stripped.node}
  assert "y" in names and "unused" not in names
  with pytest.raises(transforms.TransformError, match="protected nodes are missing"):
    freeze_and_cleanup.strip_unused_nodes(graph_def, context("x", "nope"))


def test_remove_identity_rewires_consumers_but_keeps_protected_and_ordering_nodes():
  graph_def = graphs.identity_chain_model()
  result = freeze_and_cleanup.remove_nodes(graph_def, context("x", "y", "protected"),
                                           op="Identity")
  names = {n.name for n in result.node}
  assert "a" not in names and "b" not in names
  assert {"ordered", "protected"} <= names
  by_name = {n.name: n for n in result.node}
  assert list(by_name["ordered"].input) == ["x"]  # ^b became ^x, implied by the data input
  assert by_name["protected"].input[0] == "x"
  assert run(result, "y:0", {"x:0": 2.0}) == 4.0


def test_remove_nodes_refuses_ops_that_are_not_pass_through():
  with pytest.raises(transforms.TransformError,
                     match="remove_nodes: op='Relu' is not one of Identity, StopGradient"):
    transforms.parse_transforms("remove_nodes(op=Relu)")


def test_remove_asserts_drops_assertions_that_only_order_other_nodes():
  graph_def = graphs.asserting_model()
  assert {"If", "Assert"} & set(ops(graph_def)) or "StatelessIf" in ops(graph_def)
  with pytest.raises(tf.errors.InvalidArgumentError):
    run(graph_def, "y:0", {"x:0": [-1.0]})
  result = freeze_and_cleanup.remove_asserts(graph_def, context("x", "y"))
  assert not {"If", "StatelessIf", "Assert"} & set(ops(result))
  assert not result.library.function
  np.testing.assert_array_equal(run(result, "y:0", {"x:0": [1.0, 2.0]}), [2.0, 4.0])
  # What changes: an input that broke an assertion is no longer rejected by it.
  np.testing.assert_array_equal(run(result, "y:0", {"x:0": [-1.0]}), [-2.0])


def test_merge_duplicate_nodes_merges_equal_stateless_nodes_only():
  graph_def = graphs.duplicates_model()
  merged = freeze_and_cleanup.merge_duplicate_nodes(graph_def, context("x", "y"))
  assert ops(merged).count("Const") < ops(graph_def).count("Const")
  assert ops(merged).count("AddV2") == ops(graph_def).count("AddV2") - 1
  assert ops(merged).count("RandomUniform") == 2
  for x in (0.0, -1.0, 2.5):
    assert run(merged, "y:0", {"x:0": x}) == run(graph_def, "y:0", {"x:0": x})


def test_remove_identity_reshapes_bypasses_only_reshapes_that_change_nothing():
  graph_def = graphs.reshapes_model()
  result = freeze_and_cleanup.remove_identity_reshapes(graph_def,
                                                       context(*graphs.RESHAPES_PROTECTED))
  assert ops(result).count("Reshape") == 1  # flattening a matrix does change it
  feeds = {"words:0": [b"a", b"b"], "rows:0": np.arange(6, dtype=np.float32).reshape(2, 3)}
  fetches = ["flat_words:0", "same_rows:0", "flat_rows:0"]
  for actual, expected in zip(run(result, fetches, feeds), run(graph_def, fetches, feeds)):
    np.testing.assert_array_equal(actual, expected)


def test_freeze_refuses_a_node_named_like_a_variable_read_that_reads_something_else():
  graph_def = graphs.variables_model()
  impostor = next(n for n in graph_def.node if n.name == "w/Read/ReadVariableOp")
  impostor.op = "Identity"
  del impostor.input[:]
  impostor.input.append("x")
  impostor.attr.clear()
  impostor.attr["T"].type = tf.float32.as_datatype_enum
  with pytest.raises(transforms.TransformError,
                     match="^freeze: 'w/Read/ReadVariableOp' is not a read of variable 'w'$"):
    freeze_and_cleanup.freeze(graph_def, context("x", "y", "w/Read/ReadVariableOp",
                                                 values=graphs.VARIABLE_VALUES))
