"""dedupe_char_ngrams, hoist_elementwise_ops, lean_row_splits and combine_once_per_word: same
rows, less work."""

import numpy as np
import pytest
import tensorflow as tf

from optimize.transforms import embedding_lookups
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


# Repeated words within and across texts, an empty text, one with no words, a non-UTF-8 word.
TEXTS = [b"card top card", b"", b"top up my card", b"   ", "café card".encode(), b"\xffab top"]


@pytest.mark.parametrize("combiner", ["sqrtn", "mean", "sum"])
def test_combine_once_per_word_sums_each_distinct_word_once_with_the_same_answers(combiner):
  protected = context("texts", "y")
  before = graphs.per_word_ready(graphs.text_char_ngram_embedding_model(combiner), protected)
  assert "RaggedGather" in ops(before)
  after = text_and_ragged.combine_once_per_word(before, protected)
  assert "RaggedGather" not in ops(after)
  assert ops(after).count("SparseSegmentSumWithNumSegments") >= 2
  for texts in (TEXTS, TEXTS[:1], [b""], []):
    expected = run(before, "y:0", {"texts:0": texts})
    answered = run(after, "y:0", {"texts:0": texts})
    assert answered.shape == expected.shape == (len(texts), 4)
    np.testing.assert_allclose(answered, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(run(after, "y:0", {"texts:0": [b"", b" "]}), np.zeros((2, 4)))


def test_combine_once_per_word_needs_the_gather_over_distinct_words():
  protected = context("texts", "y")
  without_dedupe = embedding_lookups.lean_embedding_lookups(
      graphs.text_char_ngram_embedding_model(), protected)
  assert text_and_ragged.combine_once_per_word(without_dedupe, protected) == without_dedupe
  lookup = graphs.sparse_lookup_model("sqrtn")
  assert text_and_ragged.combine_once_per_word(lookup, context("values", "splits", "y")) == lookup


def test_combine_once_per_word_leaves_a_reduction_whose_unique_ids_are_read_elsewhere():
  graph_def = graphs.per_word_ready(graphs.text_char_ngram_embedding_model(),
                                    context("texts", "y"))
  unique = next(n for n in graph_def.node if n.op == "Unique" and "lean" in n.name)
  reader = graph_def.node.add()
  reader.CopyFrom(tf.compat.v1.NodeDef(name="distinct", op="Identity", input=[unique.name]))
  reader.attr["T"].type = unique.attr["T"].type
  protected = context("texts", "y", "distinct")
  assert text_and_ragged.combine_once_per_word(graph_def, protected) == graph_def
