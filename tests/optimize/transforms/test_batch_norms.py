"""fold_batch_norms on the two shapes DNNClassifier(batch_norm=True) exports."""

import numpy as np
import pytest

from optimize.transforms import batch_norms

from . import graphs
from .graphs import context, ops, run


@pytest.mark.parametrize("after_activation", [True, False])
def test_fold_batch_norms_folds_scale_and_shift_into_the_adjacent_matmul(after_activation):
  graph_def = graphs.dense_with_batch_norm(after_activation)
  x = np.random.RandomState(1).randn(5, 4).astype(np.float32)
  folded = batch_norms.fold_batch_norms(graph_def, context("x", "y"))
  assert "Mul" not in ops(folded) and "AddV2" not in ops(folded)
  assert len(folded.node) < len(graph_def.node)
  np.testing.assert_allclose(run(folded, "y:0", {"x:0": x}), run(graph_def, "y:0", {"x:0": x}),
                             rtol=1e-5, atol=1e-5)


def test_fold_batch_norms_leaves_a_batch_norm_whose_matmul_is_protected():
  graph_def = graphs.dense_with_batch_norm(after_activation=False)
  matmul = next(n.name for n in graph_def.node if n.op == "MatMul")
  folded = batch_norms.fold_batch_norms(graph_def, context("x", "y", matmul))
  assert "Mul" in ops(folded)
