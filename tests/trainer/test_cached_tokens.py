"""Training on cached n-gram ids: the very ids, and embedding, of the module's text path."""

import dataclasses
import functools

import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import small_config
from trainer import cached_tokens
from trainer import inputs
from trainer import model
from trainer import text_module
from trainer.text_module import TextModuleConfig

CORPUS = ["Book a flight to Rome!", "book a table for two, please", "play some jazz",
          "what's my card's balance?", "transfer 20 euros to Ana", "Café über alles"]
# Unseen words, punctuation-only tokens, a single word and accented capitals.
TEXTS = CORPUS + ["?? !!", "Zürich's   trains... are LATE", "a", "jazz jazz jazz book"]


def build_module(tmp_path, **overrides):
  config = TextModuleConfig(**{**dict(embedding_dim=8, char_ngrams=(2, 3), min_count=1,
                                      oov_buckets=7, hash_buckets=97), **overrides})
  return text_module.build_text_module(CORPUS, config, str(tmp_path / "module")), config


def sparse_ids(module_path, config, texts, dropout, seed):
  """(cached ids, ids of the module's own tokens of the dropped-out texts), per table."""
  files = text_module.module_vocabulary_files(module_path, config)
  with tf.Graph().as_default():
    seed = None if seed is None else tf.constant(seed, tf.int64)
    tokenizer = cached_tokens.Tokenizer("text", config, files)
    batch = tf.constant(texts)
    cached = tokenizer.ids(tokenizer.tokenize(batch), tf.range(len(texts), dtype=tf.int64),
                           dropout, seed)
    served_text = inputs.drop_words(batch, dropout, seed) if dropout else batch
    module_ids = [tf.ragged.map_flat_values(lookup, tokens).to_sparse()
                  for lookup, tokens in zip(text_module.id_lookups(config, files),
                                            text_module.table_tokens(served_text, config))]
    with tf.compat.v1.Session() as session:
      session.run(tf.compat.v1.tables_initializer())
      got, want = session.run(
          ([cached[cached_tokens.ids_feature("text", t)] for t in range(len(module_ids))],
           module_ids))
  return got, want


@pytest.mark.parametrize("overrides", [
    {},
    {"embedding_tables": text_module.SHARED},
    {"id_mode": text_module.HASHED},
    {"char_ngrams": ()},
    {"word_ngrams": ()},
], ids=["separate", "shared", "hashed", "words-only", "chars-only"])
@pytest.mark.parametrize("dropout", [0.0, 0.4])
def test_cached_ids_are_the_ids_the_module_looks_up_in_the_dropped_out_text(
    tmp_path, overrides, dropout):
  module_path, config = build_module(tmp_path, **overrides)
  got, want = sparse_ids(module_path, config, TEXTS, dropout, (5, 9))
  assert len(got) == len(want) == len(text_module.embedding_names(config))
  for cached, served in zip(got, want):
    np.testing.assert_array_equal(cached.indices, served.indices)
    np.testing.assert_array_equal(cached.values, served.values)
    np.testing.assert_array_equal(cached.dense_shape, served.dense_shape)


def test_dropout_leaves_tokens_out_of_the_cached_ids(tmp_path):
  module_path, config = build_module(tmp_path)
  (words_kept, _), _ = sparse_ids(module_path, config, TEXTS, 0.4, (5, 9))
  (all_words, _), _ = sparse_ids(module_path, config, TEXTS, 0.0, None)
  assert 0 < len(words_kept.values) < len(all_words.values)


def test_idf_weighted_modules_are_not_trained_on_cached_ids(tmp_path):
  config = TextModuleConfig(ngram_weights=text_module.IDF)
  assert not cached_tokens.supported(config)
  with pytest.raises(ValueError, match="ngram_weights 'idf'"):
    cached_tokens.Tokenizer("text", config, [])
  job = small_config(tmp_path)
  assert job.trains_on_cached_tokens()
  assert not dataclasses.replace(job, text_module=config).trains_on_cached_tokens()
  assert not dataclasses.replace(job, cache_tokens=False).trains_on_cached_tokens()
  assert not dataclasses.replace(job, hub_module=str(tmp_path)).trains_on_cached_tokens()


def upstream_op_types(tensor, stop_at="IteratorGetNext"):
  """The op types `tensor` is computed from, not looking past the input iterator."""
  seen, pending, types = set(), [tensor.op], set()
  while pending:
    op = pending.pop()
    if op.name in seen:
      continue
    seen.add(op.name)
    types.add(op.type)
    if op.type != stop_at:
      pending.extend(i.op for i in op.inputs)
      pending.extend(op.control_inputs)
  return types


def test_training_embeds_the_cached_ids_as_the_module_embeds_the_text(tmp_path):
  module_path, config = build_module(tmp_path)
  examples = [inputs.Example(t, "i", f"t:{n}") for n, t in enumerate(TEXTS)]
  tokenizer = functools.partial(cached_tokens.Tokenizer, model.TEXT_FEATURE, config,
                                text_module.module_vocabulary_files(module_path, config))
  input_fn = inputs.make_input_fn(examples, len(examples), shuffle=False, num_epochs=1,
                                  tokenizer=tokenizer)
  column = model.text_feature_column(module_path, trainable=True, cached_ids_of=config)
  with tf.Graph().as_default():
    iterator = tf.compat.v1.data.make_initializable_iterator(input_fn())
    features, _ = iterator.get_next()
    layer = tf.keras.layers.DenseFeatures([column])
    trained = layer(features, training=True)
    served = layer(features, training=False)
    assert "StringNGrams" not in upstream_op_types(trained)
    assert "StringNGrams" in upstream_op_types(served)
    with tf.compat.v1.Session() as session:
      session.run([tf.compat.v1.global_variables_initializer(),
                   tf.compat.v1.tables_initializer()])
      session.run(iterator.initializer)
      trained_vectors, served_vectors = session.run([trained, served])
  assert trained_vectors.shape == (len(TEXTS), 16)
  np.testing.assert_allclose(trained_vectors, served_vectors, rtol=1e-5, atol=1e-6)
  has_words = [text != "?? !!" for text in TEXTS]
  assert (np.abs(trained_vectors).sum(axis=1) > 0).tolist() == has_words


def test_cached_batches_hold_the_examples_of_the_text_batches_in_their_order():
  examples = [inputs.Example(f"w{i} x", f"i{i}", f"t:{i}") for i in range(23)]
  weights = [float(i) for i in range(23)]

  class NoLookups:
    """A tokenizer for the rows alone: no module needed to see which examples come."""
    def tokenize(self, texts):
      return {}

    def ids(self, tokenized, rows, dropout, seed):
      return {"rows": rows}

  def batches(tokenizer, shard_index):
    dataset = inputs.make_input_fn(examples, 4, shuffle=True, num_epochs=2, seed=3,
                                   num_shards=2, shard_index=shard_index, weights=weights,
                                   tokenizer=tokenizer)()
    return [(f["text"].numpy().tolist(), f["example_weight"].numpy().tolist(),
             labels.numpy().tolist()) for f, labels in dataset]

  for shard in (0, 1):
    assert batches(NoLookups, shard) == batches(None, shard)


def test_training_without_the_cached_ids_says_which_input_to_feed(tmp_path):
  module_path, config = build_module(tmp_path)
  column = model.text_feature_column(module_path, trainable=True, cached_ids_of=config)
  with tf.Graph().as_default():
    layer = tf.keras.layers.DenseFeatures([column])
    with pytest.raises(ValueError, match="feature .text_ngram_ids_0. .*--nocache_tokens"):
      layer({"text": tf.constant(["play some jazz"])}, training=True)


def test_training_on_cached_ids_trains_the_model_training_on_text_trains(tmp_path):
  """The same seed, the same batches, the same token dropout: the same weights."""
  from trainer import pipeline

  def trained(name, cache_tokens):
    config = small_config(tmp_path / name, train_steps=30, save_checkpoints_steps=30,
                          cache_tokens=cache_tokens)
    train, evaluation = pipeline.load_data(config)
    pipeline.train(config, train, evaluation)
    reader = tf.train.load_checkpoint(str(tmp_path / name))
    return {n: reader.get_tensor(n) for n in reader.get_variable_to_shape_map()
            if n.startswith(("dnn/hiddenlayer_0/kernel", "module/"))
            and n.endswith(("kernel", "embeddings"))}

  on_ids, on_text = trained("ids", True), trained("text", False)
  assert sorted(on_ids) == sorted(on_text) and len(on_ids) == 3
  for name in on_ids:
    np.testing.assert_allclose(on_ids[name], on_text[name], rtol=1e-4, atol=1e-6,
                               err_msg=name)
