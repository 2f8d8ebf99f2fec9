"""gather_constant_rows: a one-row constant repeated per example, sliced from stored rows, or by
GatherV2 not Tile (gathered early from a rank-1 input when there is one)."""

import numpy as np
import pytest
import tensorflow as tf

from optimize.transforms import outputs

from . import graphs
from .graphs import context, ops, run

GATHERED = {"stored_rows": 0}


def classes(graph_def, rows):
  feeds = {"x:0": np.random.RandomState(rows).randn(rows, 3).astype(np.float32)}
  return run(graph_def, "classes:0", feeds)


@pytest.mark.parametrize("rows", [0, 1, 64])
def test_the_class_strings_are_gathered_under_their_own_name_and_unchanged(rows):
  graph_def = graphs.class_strings_model()
  result = outputs.gather_constant_rows(graph_def, context("x", "probabilities", "classes"),
                                        **GATHERED)
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
  result = outputs.gather_constant_rows(graph_def, FED_TEXTS, **GATHERED)
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
  result = outputs.gather_constant_rows(graphs.class_strings_from_texts_model(rows), FED_TEXTS,
                                        **GATHERED)
  # Merge's second output says which branch answered: 1 the sliced pool, 0 the late gather.
  _, taken = run(result, ["classes:0", "classes:1"], {"texts:0": TEXTS})
  assert taken == branch


def test_without_knowing_what_signatures_feed_the_rows_are_gathered_late():
  graph_def = graphs.class_strings_from_texts_model()
  result = outputs.gather_constant_rows(graph_def, context("texts", "probabilities", "classes"),
                                        **GATHERED)
  assert next(n for n in result.node if n.name == "classes").op == "GatherV2"
  assert not any("/early/" in n.name for n in result.node)


def test_an_input_beyond_a_fed_tensor_is_not_counted():
  """A signature that feeds the lengths in place of the texts leaves the texts unfed."""
  graph_def = graphs.class_strings_from_texts_model()
  lengths = next(n.name for n in graph_def.node if n.op == "Cast")
  result = outputs.gather_constant_rows(
      graph_def, context("texts", lengths, "probabilities", "classes", fed=["texts", lengths]),
      **GATHERED)
  assert next(n for n in result.node if n.name == "classes").op == "GatherV2"


@pytest.mark.parametrize("rows, branch", [(0, 1), (1, 1), (4, 1), (5, 0), (64, 0)])
def test_up_to_the_stored_rows_answers_are_sliced_from_them_and_beyond_gathered(rows, branch):
  graph_def = graphs.class_strings_model()
  result = outputs.gather_constant_rows(graph_def, context("x", "probabilities", "classes"),
                                        stored_rows=4)
  assert "Tile" not in ops(result)
  feeds = {"x:0": np.random.RandomState(rows).randn(rows, 3).astype(np.float32)}
  # Merge's second output says which branch answered: 1 the stored rows, 0 the gather.
  answered, taken = run(result, ["classes:0", "classes:1"], feeds)
  assert taken == branch
  assert answered.shape == (rows, 3)
  np.testing.assert_array_equal(answered, classes(graph_def, rows))


def two_tiles_of_one_constant_model():
  def fn():
    x = tf.compat.v1.placeholder(tf.float32, [None, 3], name="x")
    rows = tf.shape(tf.nn.softmax(x, name="probabilities"))[0]
    names = tf.constant([graphs.CLASS_NAMES])
    tf.tile(names, tf.stack([rows, 1]), name="classes")
    return tf.tile(names, tf.stack([rows, 1]), name="all_classes")
  return graphs.build(fn)[0]


def test_tiles_of_one_constant_share_one_flat_store():
  graph_def = two_tiles_of_one_constant_model()
  result = outputs.gather_constant_rows(
      graph_def, context("x", "probabilities", "classes", "all_classes"), stored_rows=8)
  stores = [n for n in result.node if n.name.endswith("/stored_rows")]
  assert len(stores) == 1
  stored = tf.make_ndarray(stores[0].attr["value"].tensor)
  assert stored.shape == (8 * len(graphs.CLASS_NAMES),)
  feeds = {"x:0": np.zeros([3, 3], np.float32)}
  for name in ("classes:0", "all_classes:0"):
    np.testing.assert_array_equal(run(result, name, feeds), run(graph_def, name, feeds))


def test_a_tile_of_numbers_is_gathered_not_stored():
  def fn():
    x = tf.compat.v1.placeholder(tf.float32, [None, 3], name="x")
    rows = tf.shape(tf.nn.softmax(x, name="probabilities"))[0]
    return tf.tile(tf.constant([[0, 1, 2]]), tf.stack([rows, 1]), name="class_ids")
  graph_def = graphs.build(fn)[0]
  result = outputs.gather_constant_rows(graph_def, context("x", "probabilities", "class_ids"))
  assert next(n for n in result.node if n.name == "class_ids").op == "GatherV2"
  assert not any(n.name.endswith("/stored_rows") for n in result.node)
  feeds = {"x:0": np.zeros([2, 3], np.float32)}
  np.testing.assert_array_equal(run(result, "class_ids:0", feeds),
                                run(graph_def, "class_ids:0", feeds))
