"""dedupe_char_ngrams, hoist_elementwise_ops and lean_row_splits: same rows, less work."""

import numpy as np
import tensorflow as tf

from optimize.transforms import text_and_ragged

from . import graphs
from .graphs import WORDS, build, context, ops, run, run_with_tables


def test_dedupe_char_ngrams_builds_each_distinct_word_once_with_identical_rows():
  graph_def, ngrams = graphs.char_ngram_model()
  deduped = text_and_ragged.dedupe_char_ngrams(graph_def, context("words", "grams", "splits"))
  assert {"Unique", "RaggedGather"} <= set(ops(deduped))
  feeds = {"words:0": WORDS}
  expected = run(graph_def, ["grams:0", "splits:0"], feeds)
  grams, splits, built = run(deduped, ["grams:0", "splits:0", f"{ngrams}:1"], feeds)
  np.testing.assert_array_equal(grams, expected[0])
  np.testing.assert_array_equal(splits, expected[1])
  assert len(built) - 1 == len(set(WORDS))
  np.testing.assert_array_equal(run(deduped, "grams:0", {"words:0": []}), [])


def test_dedupe_char_ngrams_leaves_characters_used_elsewhere_alone():
  graph_def, _ = graphs.char_ngram_model(count_chars_too=True)
  result = text_and_ragged.dedupe_char_ngrams(graph_def,
                                              context("words", "grams", "splits", "lengths"))
  assert "Unique" not in ops(result)
  np.testing.assert_array_equal(run(result, "lengths:0", {"words:0": WORDS}),
                                run(graph_def, "lengths:0", {"words:0": WORDS}))


def test_hoist_elementwise_ops_looks_up_before_concatenating_and_gathering():
  graph_def = graphs.vocabulary_lookup_model()
  hoisted = text_and_ragged.hoist_elementwise_ops(
      graph_def, context(*graphs.VOCABULARY_LOOKUP_PROTECTED))
  gather = next(n for n in hoisted.node if n.op == "RaggedGather")
  assert tf.as_dtype(gather.attr["Tvalues"].type) == tf.int64
  # One lookup per concatenated input, each on that input.
  finds = [n for n in hoisted.node if n.op == "LookupTableFindV2"]
  assert len(finds) == 2
  feeds = {"words:0": [b"card", b"x"], "marked:0": [b"top", b"card", b"top"],
           "splits:0": [0, 2, 3, 5], "rows:0": [2, 0, 2, 1]}
  expected = run_with_tables(graph_def, ["ids:0", "ids_splits:0"], feeds)
  actual = run_with_tables(hoisted, ["ids:0", "ids_splits:0"], feeds)
  np.testing.assert_array_equal(actual[0], expected[0])
  np.testing.assert_array_equal(actual[1], expected[1])
  assert list(expected[0][1:3]) == [1, 0]  # "~top" and "card" are in the vocabulary


def test_hoist_elementwise_ops_never_applies_an_op_to_a_whole_stored_table():
  def fn():
    rows = tf.compat.v1.placeholder(tf.int64, [None], name="rows")
    picked = tf.gather(tf.ragged.constant([["a", "b"], ["c"], ["d", "e", "f"]]), rows)
    tf.identity(tf.strings.to_hash_bucket_fast(picked.flat_values, 10), name="y")
  graph_def, _ = build(fn)
  result = text_and_ragged.hoist_elementwise_ops(graph_def, context("rows", "y"))
  gather = next(n for n in result.node if n.op == "RaggedGather")
  assert tf.as_dtype(gather.attr["Tvalues"].type) == tf.string
  np.testing.assert_array_equal(run(result, "y:0", {"rows:0": [2, 0]}),
                                run(graph_def, "y:0", {"rows:0": [2, 0]}))


def test_lean_row_splits_gives_the_same_splits_from_sorted_row_ids():
  graph_def = graphs.sentence_splits_model()
  assert "DenseBincount" in ops(graph_def)
  result = text_and_ragged.lean_row_splits(graph_def, context("sentences", "splits"))
  assert "DenseBincount" not in ops(result) and "LowerBound" in ops(result)
  for batch in ([b"a b c", b"", b"d", b"", b""], [b""], []):
    np.testing.assert_array_equal(run(result, "splits:0", {"sentences:0": batch}),
                                  run(graph_def, "splits:0", {"sentences:0": batch}))
