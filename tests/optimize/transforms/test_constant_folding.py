"""fold_constants and grappler: Grappler's passes keep protected nodes and answers."""

import numpy as np
import pytest
import tensorflow as tf

from optimize import transforms
from optimize.transforms import constant_folding
from optimize.transforms import freeze_and_cleanup

from . import graphs
from .graphs import build, context, ops, run


def test_fold_constants_evaluates_constant_subgraphs_and_keeps_protected_names():
  graph_def = graphs.constant_subgraph_model()
  folded = constant_folding.fold_constants(graph_def, context("x", "y"))
  assert "Sqrt" not in ops(folded)
  assert run(folded, "y:0", {"x:0": 1.5}) == 12.0


def involution_model():
  """y = Identity(-(-x) * 4) = 4x, and a protected Identity of x beside it."""
  def fn():
    x = tf.compat.v1.placeholder(tf.float32, [None], name="x")
    tf.identity(x, name="kept")
    tf.identity(tf.identity(tf.negative(tf.negative(x)) * tf.sqrt(16.0)), name="y")
  return build(fn)[0]


def test_grappler_runs_the_passes_a_spec_names_and_keeps_protected_nodes():
  graph_def = graphs.constant_subgraph_model()
  spec, = transforms.parse_transforms("grappler(passes=constfold+arithmetic)")
  result = spec.apply(graph_def, context("x", "y"))
  assert "Sqrt" not in ops(result)
  assert run(result, "y:0", {"x:0": 1.5}) == 12.0
  x = np.array([1.0, -2.0, 0.5], np.float32)
  graph_def = involution_model()
  result = spec.apply(graph_def, context("x", "y", "kept"))
  assert "Sqrt" not in ops(result)  # sqrt(16) is 4
  # -(-x) is x: the Negs are left for a pruning pass, but nothing reads them any more.
  needed = freeze_and_cleanup.strip_unused_nodes(result, context("x", "y", "kept"))
  assert "Neg" in ops(result) and "Neg" not in ops(needed)
  assert {"kept", "y"} <= {n.name for n in result.node}
  np.testing.assert_allclose(run(result, ["y:0", "kept:0"], {"x:0": x}), [4 * x, x])


def test_grappler_by_default_runs_several_passes_with_the_same_answers():
  graph_def = involution_model()
  x = np.array([4.0, 0.0], np.float32)
  result = constant_folding.grappler(graph_def, context("x", "y", "kept"))
  assert not {"Neg", "Sqrt"} & set(ops(result))
  assert ops(result).count("Identity") == 2  # the unprotected one is bypassed
  assert "kept" in {n.name for n in result.node}
  np.testing.assert_allclose(run(result, ["y:0", "kept:0"], {"x:0": x}),
                             run(graph_def, ["y:0", "kept:0"], {"x:0": x}))


def test_grappler_refuses_the_remapper():
  spec, = transforms.parse_transforms("grappler(passes=constfold+remapper)")
  with pytest.raises(transforms.TransformError, match="grappler: the remapper"):
    spec.apply(graphs.constant_subgraph_model(), context("x", "y"))
