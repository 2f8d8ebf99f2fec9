"""The built text module: in-graph tokenization, vocabulary, and the hub contract."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_hub as hub

from trainer import text_module
from trainer.text_module import TextModuleConfig


def tokens(texts, **config):
  (ragged,) = text_module.table_tokens(
      tf.constant(texts), TextModuleConfig(embedding_tables=text_module.SHARED, **config))
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
  (vocabulary,) = text_module.build_vocabularies(["a b c", "a b a", "a"], config)
  assert vocabulary.tokens == ["a", "b"]
  assert vocabulary.document_frequencies == [3, 2], "a text counts once per n-gram"


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


@pytest.mark.parametrize("tables, width", [(text_module.SHARED, 8), (text_module.SEPARATE, 16)])
@pytest.mark.parametrize("id_mode", [text_module.VOCABULARY, text_module.HASHED])
def test_built_module_embeds_a_string_batch_and_ignores_case_and_punctuation(
    tmp_path, id_mode, tables, width):
  config = TextModuleConfig(embedding_dim=8, char_ngrams=(3,), id_mode=id_mode,
                            min_count=1, oov_buckets=10, hash_buckets=1000,
                            embedding_tables=tables)
  path = text_module.build_text_module(
      ["book a flight to rome", "play some jazz"], config, str(tmp_path / "module"))
  spec = hub.load_module_spec(path)
  assert spec.get_input_info_dict()["default"].dtype == tf.string
  assert spec.get_output_info_dict()["default"].get_shape().as_list() == [None, width]
  vectors = embed(path, ["Book a flight to Rome!", "book a flight to rome", "play some jazz", ""])
  assert vectors.shape == (4, width)
  np.testing.assert_allclose(vectors[0], vectors[1], rtol=1e-6)
  assert not np.allclose(vectors[1], vectors[2])
  np.testing.assert_array_equal(vectors[3], np.zeros(width))


def test_vocabulary_module_carries_its_vocabulary_as_an_asset(tmp_path):
  config = TextModuleConfig(embedding_dim=4, word_ngrams=(1, 2), char_ngrams=(), min_count=1,
                            embedding_tables=text_module.SHARED)
  path = text_module.build_text_module(["hello there"], config, str(tmp_path / "module"))
  with open(f"{path}/assets/ngram_vocabulary.txt") as f:
    assert f.read().split("\n")[:-1] == ["hello", "hello there", "there"]
  assert not [n for n in tf.io.gfile.listdir(str(tmp_path)) if n != "module"], \
      "staging files were left beside the module"


def test_module_build_refuses_to_overwrite_an_existing_module(tmp_path):
  config = TextModuleConfig(embedding_dim=4, min_count=1, oov_buckets=10,
                            embedding_tables=text_module.SHARED)
  path = text_module.build_text_module(["hello"], config, str(tmp_path / "module"))
  with pytest.raises(FileExistsError):
    text_module.build_text_module(["other"], config, path)
  assert embed(path, ["hello"]).shape == (1, 4)


def module_variables(module_path):
  with tf.Graph().as_default():
    module = hub.Module(module_path)
    with tf.compat.v1.Session() as session:
      session.run(tf.compat.v1.global_variables_initializer())
      return {v.name.split("/")[-1].split(":")[0]: session.run(v) for v in module.variables}


def test_separate_tables_concatenate_a_word_and_a_character_embedding(tmp_path):
  config = TextModuleConfig(embedding_dim=4, word_ngrams=(1,), char_ngrams=(3,), min_count=1,
                            oov_buckets=3, combiner="sum", embedding_tables="separate")
  path = text_module.build_text_module(["hi yo", "hi"], config, str(tmp_path / "module"))
  assert sorted(tf.io.gfile.listdir(f"{path}/assets")) == [
      "char_ngram_vocabulary.txt", "word_ngram_vocabulary.txt"]
  with open(f"{path}/assets/word_ngram_vocabulary.txt") as f:
    assert f.read().split() == ["hi", "yo"]
  tables = module_variables(path)
  (vector,) = embed(path, ["hi"])
  assert vector.shape == (8,)
  # "hi" is word row 0; its character trigrams "<hi" and "hi>" are char rows 0 and 1.
  np.testing.assert_allclose(vector[:4], tables["word_embeddings"][0], rtol=1e-6)
  np.testing.assert_allclose(vector[4:], tables["char_embeddings"][:2].sum(axis=0), rtol=1e-6)


def test_a_seed_gives_the_same_initial_embeddings_in_every_build(tmp_path):
  config = TextModuleConfig(embedding_dim=4, word_ngrams=(1,), char_ngrams=(3,), min_count=1,
                            oov_buckets=3, embedding_tables="separate")

  def built(name, seed):
    return module_variables(text_module.build_text_module(["hi yo", "hi"], config,
                                                          str(tmp_path / name), seed=seed))

  first, again, other = built("a", 3), built("b", 3), built("c", 4)
  for table in ("word_embeddings", "char_embeddings"):
    np.testing.assert_array_equal(first[table], again[table])
    assert not np.array_equal(first[table], other[table])
  assert not np.array_equal(first["word_embeddings"][:3], first["char_embeddings"][:3])


def test_idf_weights_frequent_ngrams_less(tmp_path):
  config = TextModuleConfig(embedding_dim=4, word_ngrams=(1,), char_ngrams=(), min_count=1,
                            oov_buckets=2, combiner="sum", ngram_weights="idf",
                            embedding_tables=text_module.SHARED)
  corpus = ["common rare", "common", "common other"]
  (vocabulary,) = text_module.build_vocabularies(corpus, config)
  assert vocabulary.tokens[0] == "common"
  idf = vocabulary.idf(config.oov_buckets)
  assert idf[0] == pytest.approx(1.0)  # in every text
  assert idf[vocabulary.tokens.index("rare")] == pytest.approx(np.log(4 / 2) + 1)
  path = text_module.build_text_module(corpus, config, str(tmp_path / "module"))
  table = module_variables(path)["embeddings"]
  (vector,) = embed(path, ["common rare"])
  rare = vocabulary.tokens.index("rare")
  np.testing.assert_allclose(vector, idf[0] * table[0] + idf[rare] * table[rare], rtol=1e-5)


def test_idf_weights_need_a_vocabulary():
  with pytest.raises(ValueError, match="idf needs id_mode vocabulary"):
    TextModuleConfig(ngram_weights="idf", id_mode="hashed")


def test_separate_tables_of_one_kind_are_one_table(tmp_path):
  config = TextModuleConfig(embedding_dim=4, word_ngrams=(1,), char_ngrams=(), min_count=1,
                            oov_buckets=3, embedding_tables="separate")
  path = text_module.build_text_module(["hi yo"], config, str(tmp_path / "module"))
  assert tf.io.gfile.listdir(f"{path}/assets") == ["word_ngram_vocabulary.txt"]
  assert list(module_variables(path)) == ["word_embeddings"]
  assert embed(path, ["hi"]).shape == (1, 4)


@pytest.mark.parametrize("tables", [text_module.SHARED, text_module.SEPARATE])
def test_a_corpus_without_tokens_builds_no_module(tmp_path, tables):
  config = TextModuleConfig(embedding_dim=4, char_ngrams=(3,), embedding_tables=tables)
  with pytest.raises(ValueError, match="produced no tokens"):
    text_module.build_text_module([], config, str(tmp_path / "module"))
  assert not (tmp_path / "module").exists()
