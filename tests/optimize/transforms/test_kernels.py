"""prefer_eigen_kernels: small MatMuls of small batches, and Softmax, off oneDNN."""

import numpy as np
import pytest
import tensorflow as tf

from optimize.transforms import kernels

from . import graphs
from .graphs import context, ops, run


def probabilities(graph_def, rows):
  feeds = {"x:0": np.random.RandomState(rows).randn(rows, 4).astype(np.float32) * 3}
  return run(graph_def, "probabilities:0", feeds)


def test_prefer_eigen_kernels_chooses_by_weights_and_leaves_softmax_off_onednn():
  graph_def = graphs.small_and_large_matmul_model()
  result = kernels.prefer_eigen_kernels(graph_def, context("x", "probabilities"),
                                        max_elements=100)
  assert ops(result).count("SparseMatMul") == 1  # the 150-value weights stay a MatMul alone
  assert ops(result).count("Merge") == 1 and ops(result).count("MatMul") == 2
  assert "Softmax" not in ops(result)
  assert any(n.name == "probabilities" for n in result.node)
  for rows in (1, 5, 9, 64):
    np.testing.assert_allclose(probabilities(result, rows), probabilities(graph_def, rows),
                               rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("rows, eigen", [(1, True), (8, True), (9, False), (64, False)])
def test_a_batch_takes_eigen_only_up_to_max_rows(rows, eigen):
  graph_def = graphs.small_and_large_matmul_model()
  result = kernels.prefer_eigen_kernels(graph_def, context("x", "probabilities"), max_rows=8)
  assert ops(result).count("SparseMatMul") == 2 and ops(result).count("Merge") == 2
  graph = tf.Graph()
  with graph.as_default():
    tf.graph_util.import_graph_def(result, name="")
  x = np.random.RandomState(0).randn(rows, 4).astype(np.float32)
  with tf.compat.v1.Session(graph=graph) as session:
    metadata = tf.compat.v1.RunMetadata()
    session.run("probabilities:0", {"x:0": x}, run_metadata=metadata,
                options=tf.compat.v1.RunOptions(trace_level=tf.compat.v1.RunOptions.FULL_TRACE))
  ran = {stats.node_name for device in metadata.step_stats.dev_stats
         for stats in device.node_stats}
  took_eigen = any(name.endswith("/few_rows_matmul") for name in ran)
  took_onednn = any(name.endswith("/many_rows_matmul") for name in ran)
  assert (took_eigen, took_onednn) == (eigen, not eigen)
  np.testing.assert_allclose(probabilities(result, rows), probabilities(graph_def, rows),
                             rtol=1e-5, atol=1e-7)
