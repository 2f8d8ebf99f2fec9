"""combine_once_per_word and precompute_known_words: per-word sums, the same answers."""

import numpy as np
import pytest
import tensorflow as tf

from optimize.transforms import GraphContext
from optimize.transforms import embedding_lookups
from optimize.transforms import per_word
from optimize.transforms.graph import const_value

from . import graphs
from .graphs import KNOWN_WORDS_PROTECTED, context, ops, run, run_with_tables

# Known words repeated, unknown ones ("zebra", a non-UTF-8 one), an empty text, no words.
TEXTS = [b"card top card", b"", b"top up my card", b"zebra card", "café".encode(),
         b"\xffab zebra", b"  "]


def ready(**model):
  return graphs.per_word_ready(graphs.text_char_ngram_embedding_model(word_path=True, **model),
                               KNOWN_WORDS_PROTECTED, before="precompute_known_words")


def stored_words(graph_def):
  keys = next(n for n in graph_def.node if n.name.endswith("/known_words/keys"))
  return const_value(keys).tolist()


@pytest.mark.parametrize("combiner", ["sqrtn", "mean", "sum"])
def test_known_words_are_looked_up_and_the_answers_stay_the_same(combiner):
  before = ready(combiner=combiner)
  after = per_word.precompute_known_words(before, KNOWN_WORDS_PROTECTED)
  assert {"DynamicStitch", "LookupTableImportV2"} <= set(ops(after))
  # The single words of the word vocabulary, marked as the graph marks them; not bigrams.
  assert stored_words(after) == [b"<card>", b"<top>", b"<up>", b"<my>", "<café>".encode()]
  for texts in (TEXTS, TEXTS[:1], [b"zebra"], [b""], []):
    expected = run_with_tables(before, "y:0", {"texts:0": texts})
    answered = run_with_tables(after, "y:0", {"texts:0": texts})
    assert answered.shape == expected.shape == (len(texts), 8)
    np.testing.assert_allclose(answered, expected, rtol=1e-5, atol=1e-6)


def test_only_unknown_words_take_the_string_pipeline():
  after = per_word.precompute_known_words(ready(), KNOWN_WORDS_PROTECTED)
  decode = next(n for n in after.node if n.op == "UnicodeDecode")
  assert decode.input[0].endswith("/known_words/other_words")


def test_max_words_keeps_the_most_frequent_words():
  after = per_word.precompute_known_words(ready(), KNOWN_WORDS_PROTECTED, max_words=2)
  assert stored_words(after) == [b"<card>", b"<top>"]
  texts = TEXTS
  np.testing.assert_allclose(run_with_tables(after, "y:0", {"texts:0": texts}),
                             run_with_tables(ready(), "y:0", {"texts:0": texts}),
                             rtol=1e-5, atol=1e-6)


def test_a_vocabulary_file_is_read_where_the_context_says_the_asset_is(tmp_path):
  vocabulary = tmp_path / "words.txt"
  vocabulary.write_text("\n".join(graphs.WORD_VOCABULARY) + "\n", encoding="utf-8")
  before = ready(vocabulary_file=str(vocabulary))
  # The path the graph was built with is gone, as an export's build-time path is.
  moved = tmp_path / "assets" / "words.txt"
  moved.parent.mkdir()
  vocabulary.rename(moved)
  without_path = per_word.precompute_known_words(before, KNOWN_WORDS_PROTECTED)
  assert without_path == before
  context = GraphContext(KNOWN_WORDS_PROTECTED.protected,
                         asset_paths={"vocabulary_path": str(moved)})
  after = per_word.precompute_known_words(before, context)
  assert stored_words(after)[:2] == [b"<card>", b"<top>"]


def test_a_graph_without_a_word_vocabulary_is_left_alone():
  protected = graphs.context("texts", "y")
  before = graphs.per_word_ready(graphs.text_char_ngram_embedding_model(), protected,
                                 before="precompute_known_words")
  assert per_word.precompute_known_words(before, protected) == before
  lookup = graphs.sparse_lookup_model("sqrtn")
  assert per_word.precompute_known_words(
      lookup, graphs.context("values", "splits", "y")) == lookup


# Repeated words within and across texts, an empty text, one with no words, a non-UTF-8 word.
WORDS_TEXTS = [b"card top card", b"", b"top up my card", b"   ", "café card".encode(),
               b"\xffab top"]


@pytest.mark.parametrize("combiner", ["sqrtn", "mean", "sum"])
def test_combine_once_per_word_sums_each_distinct_word_once_with_the_same_answers(combiner):
  protected = context("texts", "y")
  before = graphs.per_word_ready(graphs.text_char_ngram_embedding_model(combiner), protected)
  assert "RaggedGather" in ops(before)
  after = per_word.combine_once_per_word(before, protected)
  assert "RaggedGather" not in ops(after)
  assert ops(after).count("SparseSegmentSumWithNumSegments") >= 2
  for texts in (WORDS_TEXTS, WORDS_TEXTS[:1], [b""], []):
    expected = run(before, "y:0", {"texts:0": texts})
    answered = run(after, "y:0", {"texts:0": texts})
    assert answered.shape == expected.shape == (len(texts), 4)
    np.testing.assert_allclose(answered, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(run(after, "y:0", {"texts:0": [b"", b" "]}), np.zeros((2, 4)))


def test_combine_once_per_word_needs_the_gather_over_distinct_words():
  protected = context("texts", "y")
  without_dedupe = embedding_lookups.lean_embedding_lookups(
      graphs.text_char_ngram_embedding_model(), protected)
  assert per_word.combine_once_per_word(without_dedupe, protected) == without_dedupe
  lookup = graphs.sparse_lookup_model("sqrtn")
  assert per_word.combine_once_per_word(lookup, context("values", "splits", "y")) == lookup


def test_combine_once_per_word_leaves_a_reduction_whose_unique_ids_are_read_elsewhere():
  graph_def = graphs.per_word_ready(graphs.text_char_ngram_embedding_model(),
                                    context("texts", "y"))
  unique = next(n for n in graph_def.node if n.op == "Unique" and "lean" in n.name)
  reader = graph_def.node.add()
  reader.CopyFrom(tf.compat.v1.NodeDef(name="distinct", op="Identity", input=[unique.name]))
  reader.attr["T"].type = unique.attr["T"].type
  protected = context("texts", "y", "distinct")
  assert per_word.combine_once_per_word(graph_def, protected) == graph_def
