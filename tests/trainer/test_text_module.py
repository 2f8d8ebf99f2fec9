"""The built text module: in-graph tokenization, vocabulary, and the hub contract."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_hub as hub

from trainer import text_module
from trainer.text_module import TextModuleConfig


def tokens(texts, **config):
  ragged = text_module.ngram_tokens(tf.constant(texts), TextModuleConfig(**config))
  return [[t.decode() for t in row] for row in ragged.to_list()]


def test_tokens_are_lower_cased_word_ngrams_without_punctuation():
  assert tokens(["Book a FLIGHT, to Rome!"], word_ngrams=(1, 2), char_ngrams=()) == [[
      "book", "a", "flight", "to", "rome",
      "book a", "a flight", "flight to", "to rome"]]


def test_character_ngrams_are_marked_and_padded_per_word():
  assert tokens(["Hi yo"], word_ngrams=(1,), char_ngrams=(3,)) == [
      ["hi", "yo", "~<hi", "~hi>", "~<yo", "~yo>"]]


def test_non_ascii_letters_are_lower_cased_and_kept():
  assert tokens(["Café ÜBER"], word_ngrams=(1,), char_ngrams=()) == [["café", "über"]]


def test_vocabulary_keeps_frequent_ngrams_most_frequent_first():
  config = TextModuleConfig(word_ngrams=(1,), char_ngrams=(), min_count=2)
  assert text_module.build_vocabulary(["a b c", "a b", "a"], config) == ["a", "b"]


@pytest.mark.parametrize("overrides, message", [
    ({"embedding_dim": 0}, "embedding_dim"),
    ({"word_ngrams": (), "char_ngrams": ()}, "at least one"),
    ({"id_mode": "bpe"}, "id_mode"),
    ({"combiner": "max"}, "combiner"),
])
def test_invalid_module_config_is_rejected_naming_the_setting(overrides, message):
  with pytest.raises(ValueError, match=message):
    TextModuleConfig(**overrides)


def embed(module_path, texts):
  with tf.Graph().as_default():
    module = hub.Module(module_path)
    output = module(tf.constant(texts))
    with tf.compat.v1.Session() as session:
      session.run([tf.compat.v1.global_variables_initializer(),
                   tf.compat.v1.tables_initializer()])
      return session.run(output)


@pytest.mark.parametrize("id_mode", [text_module.VOCABULARY, text_module.HASHED])
def test_built_module_embeds_a_string_batch_and_ignores_case_and_punctuation(tmp_path, id_mode):
  config = TextModuleConfig(embedding_dim=8, char_ngrams=(3,), id_mode=id_mode,
                            min_count=1, oov_buckets=10, hash_buckets=1000)
  path = text_module.build_text_module(
      ["book a flight to rome", "play some jazz"], config, str(tmp_path / "module"))
  spec = hub.load_module_spec(path)
  assert spec.get_input_info_dict()["default"].dtype == tf.string
  assert spec.get_output_info_dict()["default"].get_shape().as_list() == [None, 8]
  vectors = embed(path, ["Book a flight to Rome!", "book a flight to rome", "play some jazz", ""])
  assert vectors.shape == (4, 8)
  np.testing.assert_allclose(vectors[0], vectors[1], rtol=1e-6)
  assert not np.allclose(vectors[1], vectors[2])
  np.testing.assert_array_equal(vectors[3], np.zeros(8))


def test_vocabulary_module_carries_its_vocabulary_as_an_asset(tmp_path):
  config = TextModuleConfig(embedding_dim=4, word_ngrams=(1, 2), char_ngrams=(), min_count=1)
  path = text_module.build_text_module(["hello there"], config, str(tmp_path / "module"))
  with open(f"{path}/assets/ngram_vocabulary.txt") as f:
    assert f.read().split("\n")[:-1] == ["hello", "hello there", "there"]
  assert not [n for n in tf.io.gfile.listdir(str(tmp_path)) if n != "module"], \
      "staging files were left beside the module"


def test_module_build_refuses_to_overwrite_an_existing_module(tmp_path):
  config = TextModuleConfig(embedding_dim=4, min_count=1, oov_buckets=10)
  path = text_module.build_text_module(["hello"], config, str(tmp_path / "module"))
  with pytest.raises(FileExistsError):
    text_module.build_text_module(["other"], config, path)
  assert embed(path, ["hello"]).shape == (1, 4)
