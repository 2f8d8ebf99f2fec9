"""Training on n-gram ids tokenized once, not on text tokenized in every step.

The text module tokenizes inside the graph, so the servable takes raw text. In training
that meant the whole string pipeline (lower-casing, punctuation, word and character n-grams,
two vocabulary lookups) ran on every example in every one of the epochs, inside the step:
the most expensive part of a Banking77 step after the dense and sparse updates.

Here the training input does that work with the module's own functions and vocabulary
files, on the input pipeline's threads. It tokenizes every text once, before the first
batch, and keeps, per whitespace token, the token's normalized words and the ids of their
character n-grams (those of a word do not depend on its neighbours). Each batch gathers its
rows from that, applies token dropout to whole tokens with the very draw
`inputs.drop_words` makes, builds the word n-grams of the words kept and looks them up: the
ids are exactly those the module would compute from the dropped-out text. The feature
column (`text_feature_column`) embeds those ids with the module's own embedding variables
when training, and runs the module on text otherwise, so evaluation, prediction and the
export see the text contract and nothing of this.

IDF-weighted modules keep tokenizing in the step: their weights exist only inside the
module's graph.
"""

from typing import Dict, List, Optional, Sequence

import tensorflow as tf
import tensorflow_hub as hub
# The hub text column is public only through its factory; subclassing it keeps its module
# loading, naming and variable scope, so checkpoints and exports are those of hub's column.
# Its module is kept under hub's resource name.
from tensorflow_hub.feature_column import _MODULE_RESOURCE_STRING, _TextEmbeddingColumn

from trainer import text_module
from trainer.text_module import TextModuleConfig

# The cached tokenization of the texts: per text and whitespace token, its normalized words and
# the ids of their character n-grams.
_TOKEN_WORDS = "cached_token_words"
_TOKEN_CHAR_IDS = "cached_token_char_ids"


def supported(config: TextModuleConfig) -> bool:
  """Whether a module built with `config` can be trained on cached ids."""
  return config.ngram_weights == text_module.UNWEIGHTED


def ids_feature(key: str, table: int) -> str:
  """The training feature holding the ids `key`'s text looks up in embedding table `table`."""
  return f"{key}_ngram_ids_{table}"


class Tokenizer:
  """The two input-pipeline stages; build one inside the input_fn (its lookup tables
  belong to the graph being built)."""

  def __init__(self, key: str, config: TextModuleConfig, vocabulary_files: Sequence[str]):
    if not supported(config):
      raise ValueError(f"ngram_weights {config.ngram_weights!r}: cached n-gram ids carry "
                       f"no weights; train on text")
    self._key = key
    self._config = config
    self._lookups = text_module.id_lookups(config, vocabulary_files)
    # Separate tables: word n-grams in the first, character n-grams in the last.
    self._char_table = len(self._lookups) - 1

  def tokenize(self, texts: tf.Tensor) -> Dict[str, tf.RaggedTensor]:
    """The cached tokenization of `[n]` texts: per text and whitespace token, its normalized
    words and the ids of their character n-grams."""
    tokens = tf.strings.split(texts)
    words = text_module.normalized_words(tokens.flat_values)
    cached = {_TOKEN_WORDS: tokens.with_flat_values(words)}
    if self._config.char_ngrams:
      grams = text_module.char_ngrams(words, self._config)
      cached[_TOKEN_CHAR_IDS] = tokens.with_flat_values(
          tf.ragged.map_flat_values(self._lookups[self._char_table], grams))
    return cached

  def ids(self, tokenized: Dict[str, tf.RaggedTensor], rows: tf.Tensor, dropout: float,
          seed: Optional[tf.Tensor]) -> Dict[str, tf.SparseTensor]:
    """The sparse `[batch, ngrams]` ids of each table for the texts at `rows` of
    `tokenized`; with `dropout`, each token is left out as `inputs.drop_words` leaves it
    out with `seed`."""
    words = tf.gather(tokenized[_TOKEN_WORDS], rows)
    char_ids = None
    if _TOKEN_CHAR_IDS in tokenized:
      char_ids = tf.gather(tokenized[_TOKEN_CHAR_IDS], rows)
    if dropout:
      text_of_token = words.value_rowids()
      kept = tf.random.stateless_uniform(tf.shape(text_of_token), seed=seed) >= dropout
      kept_any = tf.math.unsorted_segment_max(tf.cast(kept, tf.int32), text_of_token,
                                              words.nrows())
      kept |= tf.equal(tf.gather(kept_any, text_of_token), 0)
      words = _kept_tokens(words, kept, text_of_token)
      if char_ids is not None:
        char_ids = _kept_tokens(char_ids, kept, text_of_token)
    else:
      words, char_ids = (t if t is None else t.merge_dims(1, 2) for t in (words, char_ids))
    groups: List[tf.RaggedTensor] = []
    if self._config.word_ngrams:
      grams = text_module.word_ngrams(words, self._config)
      groups.append(tf.ragged.map_flat_values(self._lookups[0], grams))
    if char_ids is not None:
      groups.append(char_ids)
    return {ids_feature(self._key, table): ids.to_sparse()
            for table, ids in enumerate(text_module.per_table(groups, self._config))}


def _kept_tokens(per_token: tf.RaggedTensor, kept: tf.Tensor, text_of_token: tf.Tensor
                 ) -> tf.RaggedTensor:
  """Ragged `[texts, (tokens), (items)]` to `[texts, (items)]` of the `kept` tokens alone:
  flat masks instead of nested ragged ones, a third of the ops."""
  items_per_token = per_token.values.row_lengths()
  items = tf.boolean_mask(per_token.flat_values, tf.repeat(kept, items_per_token))
  items_per_text = tf.math.unsorted_segment_sum(
      items_per_token * tf.cast(kept, items_per_token.dtype), text_of_token, per_token.nrows())
  return tf.RaggedTensor.from_row_lengths(items, items_per_text, validate=False)


class _CachedIdsColumn(_TextEmbeddingColumn):
  """hub's text embedding column, embedding cached ids (`Tokenizer.ids`) when training."""

  def __new__(cls, key, module_spec_path, trainable, module_config):
    del module_config
    return super().__new__(cls, key, module_spec_path, trainable)

  def __init__(self, key, module_spec_path, trainable, module_config: TextModuleConfig):
    super().__init__(key, module_spec_path, trainable)
    self.module_config = module_config

  def __getnewargs__(self):
    return (*self, self.module_config)

  def get_dense_tensor(self, transformation_cache, state_manager, training=None):
    # DenseFeatures passes a Python bool from canned estimators; anything else (a learning
    # phase tensor) is not training on cached ids.
    if training is not True:
      return super().get_dense_tensor(transformation_cache, state_manager)
    variables = state_manager.get_resource(self, _MODULE_RESOURCE_STRING).variable_map
    embedded = []
    for table, name in enumerate(text_module.embedding_names(self.module_config)):
      feature = ids_feature(self.key, table)
      try:
        ids = transformation_cache.get(feature, state_manager)
      except ValueError:
        raise ValueError(
            f"{self.key}: training on cached n-gram ids needs the feature {feature!r} that "
            f"cached_tokens.Tokenizer adds (pipeline.train_input_fn does), and the features "
            f"lack it; feed it, or train on text (--nocache_tokens)") from None
      embedded.append(tf.nn.safe_embedding_lookup_sparse(
          variables[name], ids, combiner=self.module_config.combiner))
    return embedded[0] if len(embedded) == 1 else tf.concat(embedded, axis=1)


def text_feature_column(key: str, module_path: str, trainable: bool,
                        module_config: Optional[TextModuleConfig] = None):
  """hub's text embedding column; with the `module_config` the module was built with, one
  that trains on the cached ids `Tokenizer` feeds instead of on text."""
  if module_config is None:
    return hub.text_embedding_column(key, module_path, trainable=trainable)
  return _CachedIdsColumn(key, module_path, trainable, module_config)
