"""gather_constant_rows: a one-row constant repeated per example, by GatherV2 not Tile, gathered
early from a rank-1 input when there is one."""

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


TEXTS = [b"how do i top up", b"", b"my card has not arrived yet", b"pin", b"x"]
FED_TEXTS = context("texts", "probabilities", "classes", fed=["texts"])


@pytest.mark.parametrize("rows", ["one per text", "two per text", "first text only"])
@pytest.mark.parametrize("texts", [0, 1, 5])
def test_from_a_rank_one_input_the_rows_are_gathered_early_and_answers_are_unchanged(rows,
                                                                                     texts):
  graph_def = graphs.class_strings_from_texts_model(rows)
  result = outputs.gather_constant_rows(graph_def, FED_TEXTS)
  assert "Tile" not in ops(result)
  assert next(n for n in result.node if n.name == "classes").op == "Merge"
  by_name = {n.name: n for n in result.node}
  # The early gather counts the input itself, not the probabilities.
  assert by_name["classes/early/input_size"].input == ["texts"]
  feeds = {"texts:0": TEXTS[:texts]}
  answered = run(result, "classes:0", feeds)
  np.testing.assert_array_equal(answered, run(graph_def, "classes:0", feeds))
  assert answered.shape[0] == run(graph_def, "probabilities:0", feeds).shape[0]


@pytest.mark.parametrize("rows, branch", [("one per text", 1), ("first text only", 1),
                                         ("two per text", 0)])
def test_rows_within_the_input_come_from_the_pool_and_more_from_a_late_gather(rows, branch):
  result = outputs.gather_constant_rows(graphs.class_strings_from_texts_model(rows), FED_TEXTS)
  # Merge's second output says which branch answered: 1 the sliced pool, 0 the late gather.
  _, taken = run(result, ["classes:0", "classes:1"], {"texts:0": TEXTS})
  assert taken == branch


def test_without_knowing_what_signatures_feed_the_rows_are_gathered_late():
  graph_def = graphs.class_strings_from_texts_model()
  result = outputs.gather_constant_rows(graph_def, context("texts", "probabilities", "classes"))
  assert next(n for n in result.node if n.name == "classes").op == "GatherV2"
  assert not any("/early/" in n.name for n in result.node)


def test_an_input_beyond_a_fed_tensor_is_not_counted():
  """A signature that feeds the lengths in place of the texts leaves the texts unfed."""
  graph_def = graphs.class_strings_from_texts_model()
  lengths = next(n.name for n in graph_def.node if n.op == "Cast")
  result = outputs.gather_constant_rows(
      graph_def, context("texts", lengths, "probabilities", "classes", fed=["texts", lengths]))
  assert next(n for n in result.node if n.name == "classes").op == "GatherV2"
