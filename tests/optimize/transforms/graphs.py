"""Small graphs whose right answers are known, and helpers to build and run them.

The family tests and test_no_transform_mutates_its_input share these graphs, so each
transform's example is a graph it is known to rewrite.
"""

import numpy as np
import tensorflow as tf

from optimize.transforms import GraphContext
from optimize.transforms import DEFAULT_TRANSFORMS
from optimize.transforms import parse_transforms


def build(fn):
  """Builds a graph with `fn` in TF1 style; returns (graph_def, named outputs)."""
  graph = tf.Graph()
  with graph.as_default():
    outputs = fn()
  return graph.as_graph_def(), outputs


def run(graph_def, fetches, feeds=None):
  graph = tf.Graph()
  with graph.as_default():
    tf.graph_util.import_graph_def(graph_def, name="")
  with tf.compat.v1.Session(graph=graph) as session:
    return session.run(fetches, feeds or {})


def run_with_tables(graph_def, fetches, feeds):
  graph = tf.Graph()
  with graph.as_default():
    tf.graph_util.import_graph_def(graph_def, name="")
  with tf.compat.v1.Session(graph=graph) as session:
    session.run("init_tables")
    return session.run(fetches, feeds)


def ops(graph_def):
  return [n.op for n in graph_def.node]


def context(*protected, values=None, fed=()):
  return GraphContext(frozenset(protected), values or {}, fed=frozenset(fed))


VARIABLE_VALUES = {"w": np.array([[1.0], [2.0]], np.float32), "table": np.eye(3, dtype=np.float32)}


def variables_model(use_resource=True):
  """y = x @ w + sum(table[[2, 0]]); a summary of w that nothing protected needs."""
  def fn():
    x = tf.compat.v1.placeholder(tf.float32, [None, 2], name="x")
    w = tf.compat.v1.get_variable("w", initializer=VARIABLE_VALUES["w"],
                                  use_resource=use_resource)
    table = tf.compat.v1.get_variable("table", initializer=VARIABLE_VALUES["table"],
                                      use_resource=use_resource)
    ids = tf.constant([2, 0])
    tf.identity(tf.matmul(x, w) + tf.reduce_sum(tf.gather(table, ids)), name="y")
    tf.compat.v1.summary.scalar("unused", tf.reduce_sum(w))
  return build(fn)[0]


def unused_branch_model():
  def fn():
    x = tf.compat.v1.placeholder(tf.float32, name="x")
    tf.identity(x * 2.0, name="y")
    tf.identity(x * 3.0, name="unused")
  return build(fn)[0]


def identity_chain_model():
  """y = a chain of Identities of x plus an Identity that orders one of them."""
  def fn():
    x = tf.compat.v1.placeholder(tf.float32, name="x")
    a = tf.identity(x, name="a")
    b = tf.identity(a, name="b")
    with tf.control_dependencies([b]):
      ordered = tf.identity(x, name="ordered")
    tf.add(b, ordered, name="y")
    tf.identity(b, name="protected")
  return build(fn)[0]


def asserting_model():
  """y = x * 2 behind tf.debugging.assert_non_negative and tf.Assert(x < 100)."""
  def fn():
    x = tf.compat.v1.placeholder(tf.float32, [None], name="x")
    with tf.control_dependencies([tf.debugging.assert_non_negative(x),
                                  tf.compat.v1.Assert(tf.reduce_all(x < 100.0), [x])]):
      tf.identity(x * 2.0, name="y")
  return build(fn)[0]


def duplicates_model():
  """y = (x + 1) * (x + 1) + noise_a + noise_b, each 1 and each x + 1 built twice, and
  the two random numbers alike but stateful."""
  def fn():
    x = tf.compat.v1.placeholder(tf.float32, name="x")
    one_a, one_b = tf.constant(1.0, name="one_a"), tf.constant(1.0, name="one_b")
    sum_a, sum_b = tf.add(x, one_a, name="sum_a"), tf.add(x, one_b, name="sum_b")
    noise_a = tf.random.uniform([], seed=1, name="noise_a")
    noise_b = tf.random.uniform([], seed=1, name="noise_b")
    tf.identity(sum_a * sum_b + noise_a + noise_b, name="y")
  return build(fn)[0]


def constant_subgraph_model():
  """y = x * (sqrt(16) * 2) = 8x."""
  def fn():
    # A scalar, not a shapeless placeholder: Grappler cannot import one whose default
    # shape an export left out.
    x = tf.compat.v1.placeholder(tf.float32, [], name="x")
    scale = tf.sqrt(tf.constant(16.0)) * tf.constant(2.0)
    tf.identity(x * scale, name="y")
  return build(fn)[0]


def dense_with_batch_norm(after_activation: bool):
  rng = np.random.RandomState(0)
  w1 = rng.randn(4, 3).astype(np.float32)
  w2 = rng.randn(3, 2).astype(np.float32)
  scale = rng.rand(3).astype(np.float32) + 0.5
  shift = rng.randn(3).astype(np.float32)

  def fn():
    x = tf.compat.v1.placeholder(tf.float32, [None, 4], name="x")
    h = tf.nn.bias_add(tf.matmul(x, tf.constant(w1)), tf.constant(np.ones(3, np.float32)))
    if after_activation:
      h = tf.nn.relu(h)
    h = h * tf.constant(scale) + tf.constant(shift)
    if not after_activation:
      h = tf.nn.relu(h)
    tf.nn.bias_add(tf.matmul(h, tf.constant(w2)), tf.constant(np.zeros(2, np.float32)),
                   name="y")
  return build(fn)[0]


def embedding_model(rows=500, dim=16):
  """y = table[ids] @ weights, with constant table and weights; returns the table too."""
  rng = np.random.RandomState(0)
  table = rng.randn(rows, dim).astype(np.float32)
  weights = rng.randn(dim, 8).astype(np.float32)

  def fn():
    ids = tf.compat.v1.placeholder(tf.int64, [None], name="ids")
    tf.matmul(tf.gather(tf.constant(table, name="table"), ids),
              tf.constant(weights, name="weights"), name="y")
  return build(fn)[0], table


def sparse_lookup_model(combiner):
  table = np.random.RandomState(0).randn(50, 4).astype(np.float32)

  def fn():
    values = tf.compat.v1.placeholder(tf.int64, [None], name="values")
    splits = tf.compat.v1.placeholder(tf.int64, [None], name="splits")
    ids = tf.RaggedTensor.from_row_splits(values, splits).to_sparse()
    tf.identity(tf.nn.safe_embedding_lookup_sparse(tf.constant(table), ids, combiner=combiner),
                name="y")
  return build(fn)[0]


def vocabulary_embedding_model(values):
  """safe_embedding_lookup_sparse of ids from a vocabulary whose values are `values`."""
  table = np.random.RandomState(0).randn(8, 4).astype(np.float32)

  def fn():
    tokens = tf.compat.v1.placeholder(tf.string, [None], name="tokens")
    splits = tf.compat.v1.placeholder(tf.int64, [None], name="splits")
    vocabulary = tf.lookup.StaticVocabularyTable(
        tf.lookup.KeyValueTensorInitializer(["a", "b", "c"], values, tf.string, tf.int64),
        num_oov_buckets=3)
    ids = tf.RaggedTensor.from_row_splits(vocabulary.lookup(tokens), splits, validate=False)
    tf.identity(tf.nn.safe_embedding_lookup_sparse(tf.constant(table), ids.to_sparse(),
                                                   combiner="sqrtn"), name="y")
    tf.compat.v1.tables_initializer(name="init_tables")
  return build(fn)[0]


def char_ngram_model(count_chars_too=False):
  """Character 2- and 3-grams of '<word>'; returns (graph_def, the StringNGrams node)."""
  def fn():
    words = tf.compat.v1.placeholder(tf.string, [None], name="words")
    chars = tf.strings.unicode_split(tf.strings.join(["<", words, ">"]), "UTF-8")
    grams = tf.strings.ngrams(chars, [2, 3], separator="")
    tf.identity(grams.flat_values, name="grams")
    tf.identity(grams.row_splits, name="splits")
    if count_chars_too:
      tf.identity(chars.row_lengths(), name="lengths")
    return grams
  graph_def, grams = build(fn)
  return graph_def, grams.flat_values.op.name


# Repeats, an empty word, accents and bytes that are not UTF-8 (decoded as U+FFFD).
WORDS = [b"card", b"top", b"card", b"", "café".encode(), b"top", b"\xffab", b"card"]


def vocabulary_lookup_model():
  """ids = vocabulary lookup of gather(concat(words, '~' + marked), rows), ragged."""
  def fn():
    words = tf.compat.v1.placeholder(tf.string, [None], name="words")
    marked = tf.compat.v1.placeholder(tf.string, [None], name="marked")
    splits = tf.compat.v1.placeholder(tf.int64, [None], name="splits")
    rows = tf.compat.v1.placeholder(tf.int64, [None], name="rows")
    tokens = tf.RaggedTensor.from_row_splits(
        tf.concat([words, tf.strings.join(["~", marked])], 0), splits, validate=False)
    picked = tf.gather(tokens, rows)
    table = tf.lookup.StaticVocabularyTable(
        tf.lookup.KeyValueTensorInitializer(["card", "~top"], [0, 1], tf.string, tf.int64),
        num_oov_buckets=3)
    tf.identity(table.lookup(picked.flat_values), name="ids")
    tf.identity(picked.row_splits, name="ids_splits")
    tf.compat.v1.tables_initializer(name="init_tables")
  return build(fn)[0]


VOCABULARY_LOOKUP_PROTECTED = ("words", "marked", "splits", "rows", "ids", "ids_splits",
                               "init_tables")


def reshapes_model():
  """Two reshapes that change nothing (flat_words, same_rows) and one that does."""
  def fn():
    words = tf.compat.v1.placeholder(tf.string, [None], name="words")
    tf.identity(tf.reshape(tf.expand_dims(words, 1), [-1]), name="flat_words")
    rows = tf.compat.v1.placeholder(tf.float32, [None, 3], name="rows")
    tf.identity(tf.reshape(rows, tf.stack([tf.shape(rows)[0], 3])), name="same_rows")
    tf.identity(tf.reshape(rows, [-1]), name="flat_rows")
  return build(fn)[0]


RESHAPES_PROTECTED = ("words", "rows", "flat_words", "same_rows", "flat_rows")


def sentence_splits_model():
  """tf.strings.split's row splits, as remove_asserts leaves them: a bincount."""
  from optimize.transforms.freeze_and_cleanup import remove_asserts

  def fn():
    sentences = tf.compat.v1.placeholder(tf.string, [None], name="sentences")
    tf.identity(tf.strings.split(sentences).row_splits, name="splits")
  graph_def, _ = build(fn)
  return remove_asserts(graph_def, context("sentences", "splits"))


def small_and_large_matmul_model():
  """probabilities = softmax(relu(x @ small) @ large), with 12 and 150 weights."""
  rng = np.random.RandomState(0)
  small, large = rng.randn(4, 3).astype(np.float32), rng.randn(3, 50).astype(np.float32)

  def fn():
    x = tf.compat.v1.placeholder(tf.float32, [None, 4], name="x")
    hidden = tf.nn.relu(tf.matmul(x, tf.constant(small)))
    tf.nn.softmax(tf.matmul(hidden, tf.constant(large)), name="probabilities")
  return build(fn)[0]


WORD_VOCABULARY = ["card", "top", "card top", "up", "my", "café"]


def text_char_ngram_embedding_model(combiner="sqrtn", buckets=40, word_path=False,
                                    vocabulary_file=None):
  """The text module's character path: texts -> words -> '<word>' -> 2- and 3-grams, hashed,
  one embedding bag per text; with `word_path`, also the words and word bigrams looked up in
  WORD_VOCABULARY (plus OOV buckets), a second bag concatenated before the first: from
  `vocabulary_file` when given, named by the Const 'vocabulary_path' as an asset is."""
  rng = np.random.RandomState(0)
  table = rng.randn(buckets, 4).astype(np.float32)
  word_table = rng.randn(len(WORD_VOCABULARY) + 3, 4).astype(np.float32)

  def fn():
    texts = tf.compat.v1.placeholder(tf.string, [None], name="texts")
    words = tf.strings.split(texts)
    marked = tf.ragged.map_flat_values(lambda w: tf.strings.join(["<", w, ">"]), words)
    grams = tf.strings.ngrams(tf.strings.unicode_split(marked, "UTF-8"), [2, 3], separator="")
    ids = tf.ragged.map_flat_values(
        lambda g: tf.strings.to_hash_bucket_fast(g, buckets), grams.merge_dims(1, 2))
    bags = [tf.nn.safe_embedding_lookup_sparse(tf.constant(table), ids.to_sparse(),
                                               combiner=combiner)]
    if word_path:
      if vocabulary_file:
        initializer = tf.lookup.TextFileInitializer(
            tf.constant(vocabulary_file, name="vocabulary_path"), tf.string,
            tf.lookup.TextFileIndex.WHOLE_LINE, tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER)
      else:
        initializer = tf.lookup.KeyValueTensorInitializer(
            WORD_VOCABULARY, list(range(len(WORD_VOCABULARY))), tf.string, tf.int64)
      vocabulary = tf.lookup.StaticVocabularyTable(initializer, 3)
      word_ids = tf.ragged.map_flat_values(
          vocabulary.lookup, tf.strings.ngrams(words, [1, 2], separator=" "))
      bags.insert(0, tf.nn.safe_embedding_lookup_sparse(
          tf.constant(word_table), word_ids.to_sparse(), combiner=combiner))
      tf.compat.v1.tables_initializer(name="init_tables")
    tf.concat(bags, axis=1, name="y") if word_path else tf.identity(bags[0], name="y")
  return build(fn)[0]


def per_word_ready(graph_def, context, before="combine_once_per_word"):
  """`graph_def` as the default pipeline hands it to transform `before` (in float)."""
  for spec in parse_transforms(DEFAULT_TRANSFORMS):
    if spec.name == before:
      return graph_def
    if spec.name != "quantize_weights":
      graph_def = spec.apply(graph_def, context)
  raise AssertionError(f"{before} is not in the default pipeline")


CLASS_NAMES = [b"card_arrival_was_never_confirmed_by_the_bank", b"pin", b"top_up_failed"]


def class_strings_model(second_multiple=1):
  """A canned classifier head's outputs: probabilities and its class strings tiled once per
  example (columns repeated `second_multiple` times)."""
  def fn():
    x = tf.compat.v1.placeholder(tf.float32, [None, 3], name="x")
    probabilities = tf.nn.softmax(x, name="probabilities")
    rows = tf.shape(probabilities)[0]
    return tf.tile(tf.constant([CLASS_NAMES]), tf.stack([rows, second_multiple]), name="classes")
  return build(fn)[0]


def class_strings_from_texts_model(rows="one per text"):
  """The same head over a rank-1 input of texts, as a parsing receiver's serialized
  examples are; `rows` "one per text", "two per text" or "first text only" says how many
  rows the probabilities have for the texts fed."""
  def fn():
    texts = tf.compat.v1.placeholder(tf.string, [None], name="texts")
    lengths = tf.cast(tf.strings.length(texts), tf.float32)[:, None]
    if rows == "two per text":
      lengths = tf.concat([lengths, lengths], 0)
    elif rows == "first text only":
      lengths = lengths[:1]
    logits = tf.concat([lengths, -lengths, 0.5 * lengths], 1)
    probabilities = tf.nn.softmax(logits, name="probabilities")
    count = tf.shape(probabilities)[0]
    return tf.tile(tf.constant([CLASS_NAMES]), tf.stack([count, 1]), name="classes")
  return build(fn)[0]


KNOWN_WORDS_PROTECTED = context("texts", "y", "init_tables")


def stitched_parts_model():
  """y: rows for the positive values of x and for the others, each part computed on its
  own elements and stitched back in x's order, as precompute_known_words serves known and
  unknown words."""
  def fn():
    x = tf.compat.v1.placeholder(tf.float32, [None], name="x")
    positive = x > 0
    positive_at = tf.reshape(tf.where(positive), [-1])
    other_at = tf.reshape(tf.where(tf.logical_not(positive)), [-1])
    positives = tf.gather(x, positive_at)
    others = tf.gather(x, other_at)
    positive_rows = tf.stack([tf.sqrt(positives), 2.0 * tf.exp(-positives)], 1,
                             name="positive_rows")
    other_rows = tf.stack([3.0 * others, others + 1.0], 1, name="other_rows")
    return tf.dynamic_stitch([tf.cast(positive_at, tf.int32), tf.cast(other_at, tf.int32)],
                             [positive_rows, other_rows], name="y")
  return build(fn)[0]


# Transform name -> () -> (graph_def, context, arguments): a graph it rewrites.
EXAMPLES = {
    "freeze": lambda: (variables_model(), context("x", "y", values=VARIABLE_VALUES), {}),
    "strip_unused_nodes": lambda: (unused_branch_model(), context("x", "y"), {}),
    "remove_nodes": lambda: (identity_chain_model(), context("x", "y", "protected"),
                             {"op": "Identity"}),
    "remove_asserts": lambda: (asserting_model(), context("x", "y"), {}),
    "merge_duplicate_nodes": lambda: (duplicates_model(), context("x", "y"), {}),
    "fold_constants": lambda: (constant_subgraph_model(), context("x", "y"), {}),
    "grappler": lambda: (constant_subgraph_model(), context("x", "y"), {}),
    "fold_batch_norms": lambda: (dense_with_batch_norm(True), context("x", "y"), {}),
    "quantize_weights": lambda: (embedding_model()[0], context("ids", "y"),
                                 {"min_elements": 64}),
    "lean_embedding_lookups": lambda: (sparse_lookup_model("sum"),
                                       context("values", "splits", "y"), {}),
    "dedupe_char_ngrams": lambda: (char_ngram_model()[0], context("words", "grams", "splits"),
                                   {}),
    "hoist_elementwise_ops": lambda: (vocabulary_lookup_model(),
                                      context(*VOCABULARY_LOOKUP_PROTECTED), {}),
    "remove_identity_reshapes": lambda: (reshapes_model(), context(*RESHAPES_PROTECTED), {}),
    "lean_row_splits": lambda: (sentence_splits_model(), context("sentences", "splits"), {}),
    "prefer_eigen_kernels": lambda: (small_and_large_matmul_model(),
                                     context("x", "probabilities"), {}),
    "combine_once_per_word": lambda: (
        per_word_ready(text_char_ngram_embedding_model(), context("texts", "y")),
        context("texts", "y"), {}),
    "precompute_known_words": lambda: (
        per_word_ready(text_char_ngram_embedding_model(word_path=True), KNOWN_WORDS_PROTECTED,
                       before="precompute_known_words"), KNOWN_WORDS_PROTECTED, {}),
    "skip_empty_stitch_parts": lambda: (stitched_parts_model(), context("x", "y"),
                                        {"min_nodes": 3}),
    "gather_constant_rows": lambda: (class_strings_from_texts_model(),
                                     context("texts", "probabilities", "classes",
                                             fed=["texts"]), {}),
}


def without_default_attrs(graph_def):
  """A copy without the attrs that equal their OpDef's default, as SavedModel exports
  store graphs (estimators export with strip_default_attrs)."""
  from tensorflow.python.framework import op_def_registry
  result = type(graph_def)()
  result.CopyFrom(graph_def)
  for node in result.node:
    op_def = op_def_registry.get(node.op)
    for attr_def in op_def.attr if op_def is not None else ():
      if (attr_def.HasField("default_value") and attr_def.name in node.attr
          and node.attr[attr_def.name] == attr_def.default_value):
        del node.attr[attr_def.name]
  return result
