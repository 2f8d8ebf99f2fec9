"""gather_constant_rows: a one-row constant repeated per example, by GatherV2 not Tile."""

import numpy as np
import pytest

from optimize.transforms import outputs

from . import graphs
from .graphs import context, ops, run


def classes(graph_def, rows):
  feeds = {"x:0": np.random.RandomState(rows).randn(rows, 3).astype(np.float32)}
  return run(graph_def, "classes:0", feeds)


@pytest.mark.parametrize("rows", [0, 1, 64])
def test_the_class_strings_are_gathered_under_their_own_name_and_unchanged(rows):
  graph_def = graphs.class_strings_model()
  result = outputs.gather_constant_rows(graph_def, context("x", "probabilities", "classes"))
  assert "Tile" not in ops(result)
  assert next(n for n in result.node if n.name == "classes").op == "GatherV2"
  answered = classes(result, rows)
  assert answered.shape == (rows, 3)
  np.testing.assert_array_equal(answered, classes(graph_def, rows))
  assert all(list(row) == graphs.CLASS_NAMES for row in answered)


def test_a_tile_that_also_repeats_columns_is_left_alone():
  graph_def = graphs.class_strings_model(second_multiple=2)
  result = outputs.gather_constant_rows(graph_def, context("x", "probabilities", "classes"))
  assert result == graph_def


def test_a_tile_of_a_computed_tensor_is_left_alone():
  graph_def = graphs.small_and_large_matmul_model()
  assert outputs.gather_constant_rows(graph_def, context("x", "probabilities")) == graph_def
