"""prefer_eigen_kernels: small MatMuls and Softmax in forms oneDNN does not take over."""

import numpy as np

from optimize.transforms import kernels

from . import graphs
from .graphs import context, ops, run


def test_prefer_eigen_kernels_keeps_small_matmuls_and_softmax_off_onednn():
  graph_def = graphs.small_and_large_matmul_model()
  result = kernels.prefer_eigen_kernels(graph_def, context("x", "probabilities"),
                                        max_elements=100)
  assert ops(result).count("SparseMatMul") == 1  # the 150-value weights stay a MatMul
  assert "MatMul" in ops(result) and "Softmax" not in ops(result)
  assert any(n.name == "probabilities" for n in result.node)
  feeds = {"x:0": np.random.RandomState(0).randn(5, 4).astype(np.float32) * 3}
  np.testing.assert_allclose(run(result, "probabilities:0", feeds),
                             run(graph_def, "probabilities:0", feeds), rtol=1e-5, atol=1e-7)


def test_prefer_eigen_kernels_by_default_converts_every_matmul_of_a_small_model():
  graph_def = graphs.small_and_large_matmul_model()
  result = kernels.prefer_eigen_kernels(graph_def, context("x", "probabilities"))
  assert ops(result).count("SparseMatMul") == 2 and "MatMul" not in ops(result)
