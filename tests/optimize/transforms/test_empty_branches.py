"""skip_empty_stitch_parts: a DynamicStitch part without rows is skipped as a dead branch,
and every answer stays what it was."""

import numpy as np
import pytest
import tensorflow as tf

from optimize.transforms import empty_branches

from . import graphs
from .graphs import context, run

PROTECTED = context("x", "y")
INPUTS = {"mixed": [1.0, -2.0, 4.0, 0.0], "positive only": [1.0, 9.0], "none positive": [-1.0],
          "empty": []}


def merges(graph_def):
  return sorted(n.name for n in graph_def.node if n.op == "Merge")


@pytest.mark.parametrize("values", sorted(INPUTS))
def test_answers_are_unchanged_whichever_parts_have_rows(values):
  graph_def = graphs.stitched_parts_model()
  result = empty_branches.skip_empty_stitch_parts(graph_def, PROTECTED, min_nodes=3)
  assert len(merges(result)) == 2
  feeds = {"x:0": np.array(INPUTS[values], np.float32)}
  np.testing.assert_allclose(run(result, "y:0", feeds), run(graph_def, "y:0", feeds))


@pytest.mark.parametrize("values", sorted(INPUTS))
def test_a_part_without_rows_is_answered_by_the_empty_tensor(values):
  result = empty_branches.skip_empty_stitch_parts(graphs.stitched_parts_model(), PROTECTED,
                                                  min_nodes=3)
  x = np.array(INPUTS[values], np.float32)
  without_rows = {"positive_rows:0": not (x > 0).any(), "other_rows:0": not (x <= 0).any()}
  part_of = {n.name: n.input[0] for n in result.node if n.op == "Merge"}
  # Merge's second output: 0 when the part was computed, 1 when the empty tensor stood in.
  taken = run(result, [f"{name}:1" for name in part_of], {"x:0": x})
  assert {part: bool(index) for part, index in zip(part_of.values(), taken)} == without_rows


def test_parts_with_fewer_nodes_than_asked_are_left_alone():
  graph_def = graphs.stitched_parts_model()
  result = empty_branches.skip_empty_stitch_parts(graph_def, PROTECTED, min_nodes=50)
  assert result == graph_def


def test_a_part_whose_rows_are_also_fetched_is_left_alone():
  graph_def = graphs.stitched_parts_model()
  result = empty_branches.skip_empty_stitch_parts(
      graph_def, context("x", "y", "other_rows"), min_nodes=3)
  assert len(merges(result)) == 1
  merged = next(n for n in result.node if n.op == "Merge")
  assert merged.input[0] == "positive_rows:0"


def test_a_part_with_a_stateful_op_is_left_alone():
  def fn():
    x = tf.compat.v1.placeholder(tf.float32, [None], name="x")
    at = tf.reshape(tf.where(x > 0), [-1])
    noisy = tf.gather(x, at) + tf.random.uniform(tf.shape(at), dtype=tf.float32)
    rows = tf.stack([noisy, 2.0 * noisy], 1)
    return tf.dynamic_stitch([tf.cast(at, tf.int32)], [rows], name="y")
  graph_def = graphs.build(fn)[0]
  assert empty_branches.skip_empty_stitch_parts(graph_def, PROTECTED, min_nodes=1) == graph_def


def test_without_a_stitch_the_graph_is_unchanged():
  graph_def = graphs.small_and_large_matmul_model()
  assert empty_branches.skip_empty_stitch_parts(graph_def, context("x", "probabilities")) \
      == graph_def
