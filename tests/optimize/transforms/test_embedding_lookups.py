"""lean_embedding_lookups: the same rows as safe_embedding_lookup_sparse, fewer ops."""

import numpy as np
import pytest

from optimize.transforms import embedding_lookups

from . import graphs
from .graphs import context, ops, run, run_with_tables


@pytest.mark.parametrize("combiner", ["sum", "mean", "sqrtn"])
def test_lean_embedding_lookups_gives_the_same_rows_with_fewer_ops(combiner):
  graph_def = graphs.sparse_lookup_model(combiner)
  lean = embedding_lookups.lean_embedding_lookups(graph_def, context("values", "splits", "y"))
  assert not {"SparseFillEmptyRows", "ZerosLike", "Select", "Tile"} & set(ops(lean))
  assert any(op.endswith("WithNumSegments") for op in ops(lean))
  assert len(lean.node) < len(graph_def.node)
  # Rows: two ids (one repeated), none (empty), one id, and an empty last row.
  feeds = {"values:0": [3, 3, 7, 49], "splits:0": [0, 3, 3, 4, 4]}
  expected = run(graph_def, "y:0", feeds)
  np.testing.assert_array_equal(run(lean, "y:0", feeds), expected)
  np.testing.assert_array_equal(expected[1], np.zeros(4))


@pytest.mark.parametrize("values, pruned", [([0, 1, 2], False), ([0, -1, 2], True)])
def test_lean_embedding_lookups_drops_id_pruning_only_when_ids_cannot_be_negative(values,
                                                                                  pruned):
  graph_def = graphs.vocabulary_embedding_model(values)
  lean = embedding_lookups.lean_embedding_lookups(
      graph_def, context("tokens", "splits", "y", "init_tables"))
  assert ("Where" in ops(lean)) == pruned
  # Rank 2 is known through the vocabulary lookup; the reshapes go with the pruning.
  assert ("SparseReshape" in ops(lean)) == pruned
  feeds = {"tokens:0": [b"a", b"zz", b"b", b"c", b"a"], "splits:0": [0, 2, 2, 5]}
  np.testing.assert_allclose(run_with_tables(lean, "y:0", feeds),
                             run_with_tables(graph_def, "y:0", feeds), rtol=1e-6)


def test_lean_embedding_lookups_leaves_a_protected_lookup_alone():
  graph_def = graphs.sparse_lookup_model("sum")
  select = next(n.name for n in graph_def.node if n.op in ("Select", "SelectV2"))
  lean = embedding_lookups.lean_embedding_lookups(graph_def,
                                                  context("values", "splits", "y", select))
  assert "SparseFillEmptyRows" in ops(lean)
