"""Builds the default text-embedding module in TF1 Hub format, offline.

The module maps a string batch `[batch]` to a float `[batch, dim]` embedding, the
contract `hub.text_embedding_column` expects. All tokenization happens inside the
graph (lower-casing, punctuation, word n-grams, optional character n-grams), so the
exported servable needs nothing but raw text. Tokens become ids either through a
vocabulary drawn from the training corpus plus OOV hash buckets (the vocabulary file
travels as a module asset) or through hashing alone.
"""

import collections
import dataclasses
import functools
import math
from typing import Callable, Iterable, List, Sequence, Tuple

import tensorflow as tf
import tensorflow_hub as hub

from export import artifact_io
from trainer import settings
from trainer.settings import setting

VOCABULARY = "vocabulary"
HASHED = "hashed"
SHARED = "shared"
SEPARATE = "separate"
UNWEIGHTED = "none"
IDF = "idf"
_VOCAB_FILENAME = "ngram_vocabulary.txt"
_CHAR_NGRAM_MARK = "~"


@dataclasses.dataclass(frozen=True)
class TextModuleConfig:
  """How text becomes tokens and tokens become one embedding."""

  embedding_dim: int = setting(128, "Embedding size of the built module.")
  word_ngrams: Tuple[int, ...] = setting((1, 2, 3), "Word n-gram widths of the built module, "
                                         "e.g. 1,2.")
  char_ngrams: Tuple[int, ...] = setting((3, 4, 5), "Character n-gram widths of the built "
                                         "module, e.g. 3,4 (empty = none).")
  id_mode: str = setting(VOCABULARY, "vocabulary: corpus vocabulary + OOV buckets; hashed: "
                         "hash buckets only.", choices=(VOCABULARY, HASHED))
  max_vocabulary_size: int = setting(200_000, "Most frequent n-grams kept in the vocabulary.")
  # N-grams seen once share OOV buckets with the unseen ones, so those buckets get
  # trained; with min_count=1 they stayed random and added noise at test time.
  min_count: int = setting(2, "Minimum count of a vocabulary n-gram.")
  oov_buckets: int = setting(50_000, "Hash buckets for n-grams outside the vocabulary.")
  hash_buckets: int = setting(1 << 18, "Embedding rows in hashed mode.")
  combiner: str = setting("sqrtn", "How the n-gram embeddings of one text are combined.",
                          choices=("sum", "mean", "sqrtn"))
  embedding_tables: str = setting(
      SEPARATE, "shared: word and character n-grams in one table, combined into one vector; "
      "separate: a table each, the combined vectors concatenated (2 x embedding_dim with both "
      "kinds).",
      choices=(SHARED, SEPARATE))
  ngram_weights: str = setting(
      UNWEIGHTED, "Weight of each n-gram's embedding when combined: none, or idf (its inverse "
      "document frequency in the training corpus; needs --id_mode vocabulary).",
      choices=(UNWEIGHTED, IDF))

  def __post_init__(self):
    problems = settings.choice_problems(self)
    if self.embedding_dim < 1:
      problems.append(f"embedding_dim must be >= 1, got {self.embedding_dim}")
    if not self.word_ngrams and not self.char_ngrams:
      problems.append("at least one of word_ngrams / char_ngrams is needed")
    for name in ("word_ngrams", "char_ngrams"):
      if any(n < 1 for n in getattr(self, name)):
        problems.append(f"{name} must hold positive widths, got {getattr(self, name)}")
    if self.min_count < 1:
      problems.append(f"min_count must be >= 1, got {self.min_count}")
    if self.oov_buckets < 1:
      problems.append(f"oov_buckets must be >= 1, got {self.oov_buckets}")
    if self.hash_buckets < 1:
      problems.append(f"hash_buckets must be >= 1, got {self.hash_buckets}")
    if self.ngram_weights == IDF and self.id_mode != VOCABULARY:
      problems.append("ngram_weights idf needs id_mode vocabulary: hash buckets carry no "
                      "document frequencies")
    if self.max_vocabulary_size < 1:
      problems.append(f"max_vocabulary_size must be >= 1, got {self.max_vocabulary_size}")
    if problems:
      raise ValueError("Invalid text module config: " + "; ".join(problems))


def normalized_words(texts: tf.Tensor) -> tf.RaggedTensor:
  """`[n]` strings to ragged `[n, (words)]`: lower-cased, punctuation as word breaks."""
  normalized = tf.strings.lower(texts, encoding="utf-8")
  normalized = tf.strings.regex_replace(normalized, r"[^\p{L}\p{N}\s]+", " ")
  return tf.strings.split(normalized)


def word_ngrams(words: tf.RaggedTensor, config: TextModuleConfig) -> tf.RaggedTensor:
  """Ragged `[n, (words)]` words to `[n, (n-grams)]` word n-grams of the configured widths."""
  return tf.strings.ngrams(words, list(config.word_ngrams), separator=" ")


def char_ngrams(words: tf.RaggedTensor, config: TextModuleConfig) -> tf.RaggedTensor:
  """Ragged `[n, (words)]` words to `[n, (n-grams)]`: each word's character n-grams (padded
  with < and >, marked so "car" the word and "car" the trigram stay apart), word by word."""
  marked = tf.ragged.map_flat_values(lambda w: tf.strings.join(["<", w, ">"]), words)
  chars = tf.strings.unicode_split(marked, "UTF-8")
  grams = tf.strings.ngrams(chars, list(config.char_ngrams), separator="")
  return tf.ragged.map_flat_values(
      lambda g: tf.strings.join([_CHAR_NGRAM_MARK, g]), grams.merge_dims(1, 2))


def ngram_groups(texts: tf.Tensor, config: TextModuleConfig) -> List[tf.RaggedTensor]:
  """Turns a `[batch]` string tensor into ragged `[batch, (tokens)]` n-gram strings: the
  word n-grams, then the character n-grams, each group present when its widths are
  configured.

  The same function builds the vocabulary (eagerly) and runs inside the module, so what
  the vocabulary counts is exactly what the servable looks up.
  """
  words = normalized_words(texts)
  groups = []
  if config.word_ngrams:
    groups.append(word_ngrams(words, config))
  if config.char_ngrams:
    groups.append(char_ngrams(words, config))
  return groups


def table_tokens(texts: tf.Tensor, config: TextModuleConfig) -> List[tf.RaggedTensor]:
  """The tokens each embedding table looks up: all n-grams in one table, or one group each."""
  return per_table(ngram_groups(texts, config), config)


def per_table(groups: List[tf.RaggedTensor], config: TextModuleConfig
              ) -> List[tf.RaggedTensor]:
  """Ragged `[n, (items)]` per n-gram group (`ngram_groups` order) to one per embedding
  table: the groups themselves, or all of them concatenated in one shared table."""
  if config.embedding_tables == SEPARATE or len(groups) == 1:
    return groups
  return [tf.concat(groups, axis=1)]


def id_lookups(config: TextModuleConfig, vocabulary_files: Sequence[str]
               ) -> List[Callable[[tf.Tensor], tf.Tensor]]:
  """Per embedding table (in `table_tokens` order), the function from n-gram strings to
  rows: the vocabulary file's line number, or an OOV bucket, or (hashed mode) a hash
  bucket."""
  if config.id_mode == HASHED:
    return [functools.partial(tf.strings.to_hash_bucket_fast, num_buckets=config.hash_buckets)
            for _ in _table_kinds(config)]
  return [tf.compat.v1.lookup.StaticVocabularyTable(
      tf.compat.v1.lookup.TextFileInitializer(
          path, tf.string, tf.compat.v1.lookup.TextFileIndex.WHOLE_LINE,
          tf.int64, tf.compat.v1.lookup.TextFileIndex.LINE_NUMBER),
      num_oov_buckets=config.oov_buckets).lookup for path in vocabulary_files]


def module_vocabulary_files(module_path: str, config: TextModuleConfig) -> List[str]:
  """The vocabulary assets of a module this file built (none in hashed mode)."""
  if config.id_mode == HASHED:
    return []
  return [artifact_io.join(module_path, "assets", name)
          for name in vocabulary_filenames(config)]


def embedding_names(config: TextModuleConfig) -> List[str]:
  """The module's embedding variables, one per table in `table_tokens` order."""
  return [f"{kind}_embeddings" if kind else "embeddings" for kind in _table_kinds(config)]


@dataclasses.dataclass(frozen=True)
class Vocabulary:
  """One table's n-grams, most frequent first, with the document frequency of each."""
  tokens: List[str]
  document_frequencies: List[int]
  documents: int

  def idf(self, oov_buckets: int) -> List[float]:
    """Smoothed inverse document frequency of every row (vocabulary, then OOV buckets).
    OOV buckets hold n-grams seen at most min_count - 1 times or never: weighted as seen in
    one document."""
    def idf(df):
      return math.log((1 + self.documents) / (1 + df)) + 1.0
    return [idf(df) for df in self.document_frequencies] + [idf(1)] * oov_buckets


def build_vocabularies(texts: Iterable[str], config: TextModuleConfig,
                       batch_size: int = 4096) -> List[Vocabulary]:
  """Counts each table's n-grams over the corpus; keeps those seen `min_count` times."""
  # Per table: occurrences and documents of each n-gram.
  tables = [(collections.Counter(), collections.Counter()) for _ in _table_kinds(config)]
  documents = 0
  batch = []

  def count(batch):
    for (counts, frequencies), tokens in zip(tables, table_tokens(tf.constant(batch), config)):
      for row in tokens.to_list():
        decoded = [t.decode("utf-8") for t in row]
        counts.update(decoded)
        frequencies.update(set(decoded))

  for text in texts:
    documents += 1
    batch.append(text)
    if len(batch) == batch_size:
      count(batch)
      batch = []
  if batch:
    count(batch)
  vocabularies = []
  for counts, frequencies in tables:
    kept = sorted(((t, c) for t, c in counts.items() if c >= config.min_count),
                  key=lambda tc: (-tc[1], tc[0]))[:config.max_vocabulary_size]
    vocabularies.append(Vocabulary([t for t, _ in kept], [frequencies[t] for t, _ in kept],
                                   documents))
  return vocabularies


def _table_kinds(config: TextModuleConfig) -> List[str]:
  """One name per embedding table, in `table_tokens` order."""
  if config.embedding_tables == SHARED:
    return [""]
  return [kind for kind, widths in (("word", config.word_ngrams), ("char", config.char_ngrams))
          if widths]


def vocabulary_filenames(config: TextModuleConfig) -> List[str]:
  """The module's vocabulary assets, one per table (hub copies assets by base name)."""
  return [f"{kind}_{_VOCAB_FILENAME}" if kind else _VOCAB_FILENAME
          for kind in _table_kinds(config)]


def _module_fn(config: TextModuleConfig, vocabulary_files: Sequence[str],
               vocabularies: Sequence[Vocabulary], seed: int):
  texts = tf.compat.v1.placeholder(tf.string, shape=[None], name="text")
  combined = []
  tokens_per_table = table_tokens(texts, config)
  lookups = id_lookups(config, vocabulary_files)
  for index, (tokens, name) in enumerate(zip(tokens_per_table, embedding_names(config))):
    weights = None
    to_ids = lookups[index]
    if config.id_mode == VOCABULARY:
      vocabulary = vocabularies[index]
      rows = len(vocabulary.tokens) + config.oov_buckets
      if config.ngram_weights == IDF:
        weights = tf.constant(vocabulary.idf(config.oov_buckets), tf.float32,
                              name=f"{name}_idf")
    else:
      rows = config.hash_buckets
    embeddings = tf.compat.v1.get_variable(
        name, shape=[rows, config.embedding_dim],
        # Seeded here: the module's graph is built apart from (and imported into) the graph
        # that initializes it, so that graph's seed never reaches this op.
        initializer=tf.compat.v1.random_normal_initializer(
            stddev=1.0 / math.sqrt(config.embedding_dim), seed=seed + index))
    ids = tf.ragged.map_flat_values(to_ids, tokens).to_sparse()
    sparse_weights = None
    if weights is not None:
      sparse_weights = tf.SparseTensor(ids.indices, tf.gather(weights, ids.values),
                                       ids.dense_shape)
    combined.append(tf.nn.safe_embedding_lookup_sparse(
        embeddings, ids, sparse_weights, combiner=config.combiner))
  embedding = combined[0] if len(combined) == 1 else tf.concat(combined, axis=1)
  hub.add_signature(inputs=texts, outputs=embedding)


def build_text_module(texts: Iterable[str], config: TextModuleConfig, output_dir: str,
                      seed: int = 0) -> str:
  """Writes a TF1-Hub-format text-embedding module to `output_dir` and returns it.

  The module is assembled in a sibling temporary directory and renamed into place,
  so an interrupted build never leaves a half-written module behind.
  """
  vocabularies = build_vocabularies(texts, config) if config.id_mode == VOCABULARY else []
  if config.id_mode == VOCABULARY and not all(v.tokens for v in vocabularies):
    raise ValueError("The training texts produced no tokens; cannot build a vocabulary.")
  with artifact_io.staging_dir(output_dir) as staging:
    # Hub copies asset files by base name, so each vocabulary gets its final name here.
    vocabulary_dir = staging + ".vocabulary"
    tf.io.gfile.makedirs(vocabulary_dir)
    vocabulary_files = []
    for filename, vocabulary in zip(vocabulary_filenames(config), vocabularies):
      vocabulary_files.append(vocabulary_dir + "/" + filename)
      with tf.io.gfile.GFile(vocabulary_files[-1], "w") as f:
        f.write("".join(token + "\n" for token in vocabulary.tokens))
    try:
      spec = hub.create_module_spec(
          functools.partial(_module_fn, config, vocabulary_files, vocabularies, seed))
      with tf.Graph().as_default():
        module = hub.Module(spec)
        with tf.compat.v1.Session() as session:
          session.run([tf.compat.v1.global_variables_initializer(),
                       tf.compat.v1.tables_initializer()])
          module.export(staging, session)
    finally:
      tf.io.gfile.rmtree(vocabulary_dir)
  return output_dir
