"""precompute_known_words: the vocabulary's words summed when optimizing, looked up when
serving; other words still take the string pipeline."""

import numpy as np
import pytest

from optimize.transforms import GraphContext
from optimize.transforms import known_words
from optimize.transforms.graph import const_value

from . import graphs
from .graphs import KNOWN_WORDS_PROTECTED, ops, run_with_tables

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
  after = known_words.precompute_known_words(before, KNOWN_WORDS_PROTECTED)
  assert {"DynamicStitch", "LookupTableImportV2"} <= set(ops(after))
  # The single words of the word vocabulary, marked as the graph marks them; not bigrams.
  assert stored_words(after) == [b"<card>", b"<top>", b"<up>", b"<my>", "<café>".encode()]
  for texts in (TEXTS, TEXTS[:1], [b"zebra"], [b""], []):
    expected = run_with_tables(before, "y:0", {"texts:0": texts})
    answered = run_with_tables(after, "y:0", {"texts:0": texts})
    assert answered.shape == expected.shape == (len(texts), 8)
    np.testing.assert_allclose(answered, expected, rtol=1e-5, atol=1e-6)


def test_only_unknown_words_take_the_string_pipeline():
  after = known_words.precompute_known_words(ready(), KNOWN_WORDS_PROTECTED)
  decode = next(n for n in after.node if n.op == "UnicodeDecode")
  assert decode.input[0].endswith("/known_words/other_words")


def test_max_words_keeps_the_most_frequent_words():
  after = known_words.precompute_known_words(ready(), KNOWN_WORDS_PROTECTED, max_words=2)
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
  without_path = known_words.precompute_known_words(before, KNOWN_WORDS_PROTECTED)
  assert without_path == before
  context = GraphContext(KNOWN_WORDS_PROTECTED.protected,
                         asset_paths={"vocabulary_path": str(moved)})
  after = known_words.precompute_known_words(before, context)
  assert stored_words(after)[:2] == [b"<card>", b"<top>"]


def test_a_graph_without_a_word_vocabulary_is_left_alone():
  protected = graphs.context("texts", "y")
  before = graphs.per_word_ready(graphs.text_char_ngram_embedding_model(), protected,
                                 before="precompute_known_words")
  assert known_words.precompute_known_words(before, protected) == before
  lookup = graphs.sparse_lookup_model("sqrtn")
  assert known_words.precompute_known_words(
      lookup, graphs.context("values", "splits", "y")) == lookup
