"""Each transform on small graphs whose correct result is known."""

import numpy as np
import pytest
import tensorflow as tf

from optimize import transforms
from optimize.transforms import GraphContext


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


def ops(graph_def):
  return [n.op for n in graph_def.node]


def context(*protected, values=None):
  return GraphContext(frozenset(protected), values or {})


def test_freeze_turns_resource_variables_into_constants_and_keeps_answers():
  def fn():
    x = tf.compat.v1.placeholder(tf.float32, [None, 2], name="x")
    w = tf.compat.v1.get_variable("w", initializer=np.array([[1.0], [2.0]], np.float32),
                                  use_resource=True)
    table = tf.compat.v1.get_variable("table", initializer=np.eye(3, dtype=np.float32),
                                      use_resource=True)
    ids = tf.constant([2, 0])
    tf.identity(tf.matmul(x, w) + tf.reduce_sum(tf.gather(table, ids)), name="y")
    tf.compat.v1.summary.scalar("unused", tf.reduce_sum(w))
  graph_def, _ = build(fn)
  values = {"w": np.array([[1.0], [2.0]], np.float32), "table": np.eye(3, dtype=np.float32)}
  frozen = transforms.freeze(graph_def, context("x", "y", values=values))
  assert not {"VarHandleOp", "ReadVariableOp", "ResourceGather", "AssignVariableOp",
              "ScalarSummary"} & set(ops(frozen))
  np.testing.assert_allclose(run(frozen, "y:0", {"x:0": [[1.0, 1.0]]}), [[5.0]])


def test_freeze_names_the_variable_it_has_no_value_for():
  def fn():
    tf.identity(tf.compat.v1.get_variable("w", [2], use_resource=True), name="y")
  graph_def, _ = build(fn)
  with pytest.raises(transforms.TransformError, match="no value for variable 'w'"):
    transforms.freeze(graph_def, context("y"))


def test_strip_unused_nodes_keeps_only_what_protected_nodes_need():
  def fn():
    x = tf.compat.v1.placeholder(tf.float32, name="x")
    tf.identity(x * 2.0, name="y")
    tf.identity(x * 3.0, name="unused")
  graph_def, _ = build(fn)
  stripped = transforms.strip_unused_nodes(graph_def, context("x", "y"))
  names = {n.name for n in stripped.node}
  assert "y" in names and "unused" not in names
  with pytest.raises(transforms.TransformError, match="protected nodes are missing"):
    transforms.strip_unused_nodes(graph_def, context("x", "nope"))


def test_remove_identity_rewires_consumers_but_keeps_protected_and_ordering_nodes():
  def fn():
    x = tf.compat.v1.placeholder(tf.float32, name="x")
    a = tf.identity(x, name="a")
    b = tf.identity(a, name="b")
    with tf.control_dependencies([b]):
      ordered = tf.identity(x, name="ordered")
    tf.add(b, ordered, name="y")
    tf.identity(b, name="protected")
  graph_def, _ = build(fn)
  result = transforms.remove_nodes(graph_def, context("x", "y", "protected"), op="Identity")
  names = {n.name for n in result.node}
  assert "a" not in names and "b" not in names
  assert {"ordered", "protected"} <= names
  by_name = {n.name: n for n in result.node}
  assert list(by_name["ordered"].input) == ["x"]  # ^b became ^x, implied by the data input
  assert by_name["protected"].input[0] == "x"
  assert run(result, "y:0", {"x:0": 2.0}) == 4.0


def test_remove_nodes_refuses_ops_that_are_not_pass_through():
  graph_def, _ = build(lambda: tf.constant(1.0, name="c"))
  with pytest.raises(transforms.TransformError, match="not a pass-through op"):
    transforms.remove_nodes(graph_def, context("c"), op="Relu")


def test_merge_duplicate_nodes_merges_equal_stateless_nodes_only():
  def fn():
    x = tf.compat.v1.placeholder(tf.float32, name="x")
    one_a, one_b = tf.constant(1.0, name="one_a"), tf.constant(1.0, name="one_b")
    sum_a, sum_b = tf.add(x, one_a, name="sum_a"), tf.add(x, one_b, name="sum_b")
    noise_a = tf.random.uniform([], seed=1, name="noise_a")
    noise_b = tf.random.uniform([], seed=1, name="noise_b")
    tf.identity(sum_a * sum_b + noise_a + noise_b, name="y")
  graph_def, _ = build(fn)
  merged = transforms.merge_duplicate_nodes(graph_def, context("x", "y"))
  assert ops(merged).count("Const") < ops(graph_def).count("Const")
  assert ops(merged).count("AddV2") == ops(graph_def).count("AddV2") - 1
  assert ops(merged).count("RandomUniform") == 2
  graph = tf.Graph()
  with graph.as_default():
    tf.graph_util.import_graph_def(merged, name="")


def test_fold_constants_evaluates_constant_subgraphs_and_keeps_protected_names():
  def fn():
    x = tf.compat.v1.placeholder(tf.float32, name="x")
    scale = tf.sqrt(tf.constant(16.0)) * tf.constant(2.0)
    tf.identity(x * scale, name="y")
  graph_def, _ = build(fn)
  folded = transforms.fold_constants(graph_def, context("x", "y"))
  assert "Sqrt" not in ops(folded)
  assert run(folded, "y:0", {"x:0": 1.5}) == 12.0


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


@pytest.mark.parametrize("after_activation", [True, False])
def test_fold_batch_norms_folds_scale_and_shift_into_the_adjacent_matmul(after_activation):
  graph_def = dense_with_batch_norm(after_activation)
  x = np.random.RandomState(1).randn(5, 4).astype(np.float32)
  folded = transforms.fold_batch_norms(graph_def, context("x", "y"))
  assert "Mul" not in ops(folded) and "AddV2" not in ops(folded)
  assert len(folded.node) < len(graph_def.node)
  np.testing.assert_allclose(run(folded, "y:0", {"x:0": x}), run(graph_def, "y:0", {"x:0": x}),
                             rtol=1e-5, atol=1e-5)


def embedding_model(rows=500, dim=16):
  rng = np.random.RandomState(0)
  table = rng.randn(rows, dim).astype(np.float32)
  weights = rng.randn(dim, 8).astype(np.float32)

  def fn():
    ids = tf.compat.v1.placeholder(tf.int64, [None], name="ids")
    tf.matmul(tf.gather(tf.constant(table, name="table"), ids),
              tf.constant(weights, name="weights"), name="y")
  return build(fn)[0], table


@pytest.mark.parametrize("dtype, tolerance", [("int8", 0.05), ("float16", 0.01)])
def test_quantize_weights_stores_small_weights_and_gathers_before_dequantizing(dtype, tolerance):
  graph_def, table = embedding_model()
  quantized = transforms.quantize_weights(graph_def, context("ids", "y"), dtype=dtype,
                                          min_elements=64)
  constants = {n.name: tf.make_ndarray(n.attr["value"].tensor) for n in quantized.node
               if n.op == "Const"}
  floats = {n: v for n, v in constants.items() if v.dtype == np.float32}
  assert not [n for n, v in floats.items() if v.shape in (table.shape, (16, 8))]
  assert sum(v.size for v in floats.values()) < table.size / 8  # per-row/column scales only
  assert constants[f"table/{dtype}"].shape == table.shape
  stored = np.dtype(np.int8 if dtype == "int8" else np.float16)
  assert constants[f"table/{dtype}"].dtype == stored
  ids = np.array([3, 499, 3, 0])
  expected = run(graph_def, "y:0", {"ids:0": ids})
  actual = run(quantized, "y:0", {"ids:0": ids})
  assert np.max(np.abs(actual - expected)) < tolerance * np.max(np.abs(expected))
  # Constant folding afterwards must not rebuild float weights from the small ones.
  refolded = transforms.fold_constants(quantized, context("ids", "y"))
  big_floats = [n.name for n in refolded.node if n.op == "Const"
                and tf.make_ndarray(n.attr["value"].tensor).dtype == np.float32
                and tf.make_ndarray(n.attr["value"].tensor).shape in (table.shape, (16, 8))]
  assert not big_floats


def test_parse_transforms_reads_gtt_style_specs():
  specs = transforms.parse_transforms(
      "freeze, remove_nodes(op=Identity) quantize_weights(dtype=float16, min_elements=10)")
  assert [s.label for s in specs] == [
      "freeze", "remove_nodes(op=Identity)", "quantize_weights(dtype=float16,min_elements=10)"]
  with pytest.raises(transforms.TransformError, match="unknown transform 'shrink'"):
    transforms.parse_transforms("freeze shrink")
  with pytest.raises(transforms.TransformError, match="unknown argument"):
    transforms.parse_transforms("quantize_weights(bits=4)")


def test_remove_asserts_drops_assertions_that_only_order_other_nodes():
  def fn():
    x = tf.compat.v1.placeholder(tf.float32, [None], name="x")
    with tf.control_dependencies([tf.debugging.assert_non_negative(x),
                                  tf.compat.v1.Assert(tf.reduce_all(x < 100.0), [x])]):
      tf.identity(x * 2.0, name="y")
  graph_def, _ = build(fn)
  assert {"If", "Assert"} & set(ops(graph_def)) or "StatelessIf" in ops(graph_def)
  with pytest.raises(tf.errors.InvalidArgumentError):
    run(graph_def, "y:0", {"x:0": [-1.0]})
  result = transforms.remove_asserts(graph_def, context("x", "y"))
  assert not {"If", "StatelessIf", "Assert"} & set(ops(result))
  assert not result.library.function
  np.testing.assert_array_equal(run(result, "y:0", {"x:0": [1.0, 2.0]}), [2.0, 4.0])
  # What changes: an input that broke an assertion is no longer rejected by it.
  np.testing.assert_array_equal(run(result, "y:0", {"x:0": [-1.0]}), [-2.0])


def sparse_lookup_model(combiner):
  table = np.random.RandomState(0).randn(50, 4).astype(np.float32)

  def fn():
    values = tf.compat.v1.placeholder(tf.int64, [None], name="values")
    splits = tf.compat.v1.placeholder(tf.int64, [None], name="splits")
    ids = tf.RaggedTensor.from_row_splits(values, splits).to_sparse()
    tf.identity(tf.nn.safe_embedding_lookup_sparse(tf.constant(table), ids, combiner=combiner),
                name="y")
  return build(fn)[0]


@pytest.mark.parametrize("combiner", ["sum", "mean", "sqrtn"])
def test_lean_embedding_lookups_gives_the_same_rows_with_fewer_ops(combiner):
  graph_def = sparse_lookup_model(combiner)
  lean = transforms.lean_embedding_lookups(graph_def, context("values", "splits", "y"))
  assert not {"SparseFillEmptyRows", "ZerosLike", "Select", "Tile"} & set(ops(lean))
  assert any(op.endswith("WithNumSegments") for op in ops(lean))
  assert len(lean.node) < len(graph_def.node)
  # Rows: two ids (one repeated), none (empty), one id, and an empty last row.
  feeds = {"values:0": [3, 3, 7, 49], "splits:0": [0, 3, 3, 4, 4]}
  expected = run(graph_def, "y:0", feeds)
  np.testing.assert_array_equal(run(lean, "y:0", feeds), expected)
  np.testing.assert_array_equal(expected[1], np.zeros(4))


def char_ngram_model(count_chars_too=False):
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


def test_dedupe_char_ngrams_builds_each_distinct_word_once_with_identical_rows():
  graph_def, ngrams = char_ngram_model()
  deduped = transforms.dedupe_char_ngrams(graph_def, context("words", "grams", "splits"))
  assert {"Unique", "RaggedGather"} <= set(ops(deduped))
  feeds = {"words:0": WORDS}
  expected = run(graph_def, ["grams:0", "splits:0"], feeds)
  grams, splits, built = run(deduped, ["grams:0", "splits:0", f"{ngrams}:1"], feeds)
  np.testing.assert_array_equal(grams, expected[0])
  np.testing.assert_array_equal(splits, expected[1])
  assert len(built) - 1 == len(set(WORDS))
  np.testing.assert_array_equal(run(deduped, "grams:0", {"words:0": []}), [])


def test_dedupe_char_ngrams_leaves_characters_used_elsewhere_alone():
  graph_def, _ = char_ngram_model(count_chars_too=True)
  result = transforms.dedupe_char_ngrams(graph_def,
                                         context("words", "grams", "splits", "lengths"))
  assert "Unique" not in ops(result)
  np.testing.assert_array_equal(run(result, "lengths:0", {"words:0": WORDS}),
                                run(graph_def, "lengths:0", {"words:0": WORDS}))


def vocabulary_lookup_model():
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


def run_with_tables(graph_def, fetches, feeds):
  graph = tf.Graph()
  with graph.as_default():
    tf.graph_util.import_graph_def(graph_def, name="")
  with tf.compat.v1.Session(graph=graph) as session:
    session.run("init_tables")
    return session.run(fetches, feeds)


def test_hoist_elementwise_ops_looks_up_before_concatenating_and_gathering():
  graph_def = vocabulary_lookup_model()
  protected = context("words", "marked", "splits", "rows", "ids", "ids_splits", "init_tables")
  hoisted = transforms.hoist_elementwise_ops(graph_def, protected)
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
  result = transforms.hoist_elementwise_ops(graph_def, context("rows", "y"))
  gather = next(n for n in result.node if n.op == "RaggedGather")
  assert tf.as_dtype(gather.attr["Tvalues"].type) == tf.string
  np.testing.assert_array_equal(run(result, "y:0", {"rows:0": [2, 0]}),
                                run(graph_def, "y:0", {"rows:0": [2, 0]}))


def vocabulary_embedding_model(values):
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


@pytest.mark.parametrize("values, pruned", [([0, 1, 2], False), ([0, -1, 2], True)])
def test_lean_embedding_lookups_drops_id_pruning_only_when_ids_cannot_be_negative(values,
                                                                                  pruned):
  graph_def = vocabulary_embedding_model(values)
  lean = transforms.lean_embedding_lookups(
      graph_def, context("tokens", "splits", "y", "init_tables"))
  assert ("Where" in ops(lean)) == pruned
  # Rank 2 is known through the vocabulary lookup; the reshapes go with the pruning.
  assert ("SparseReshape" in ops(lean)) == pruned
  feeds = {"tokens:0": [b"a", b"zz", b"b", b"c", b"a"], "splits:0": [0, 2, 2, 5]}
  np.testing.assert_allclose(run_with_tables(lean, "y:0", feeds),
                             run_with_tables(graph_def, "y:0", feeds), rtol=1e-6)


def test_prefer_eigen_kernels_keeps_small_matmuls_and_softmax_off_onednn():
  rng = np.random.RandomState(0)
  small, large = rng.randn(4, 3).astype(np.float32), rng.randn(3, 50).astype(np.float32)

  def fn():
    x = tf.compat.v1.placeholder(tf.float32, [None, 4], name="x")
    hidden = tf.nn.relu(tf.matmul(x, tf.constant(small)))
    tf.nn.softmax(tf.matmul(hidden, tf.constant(large)), name="probabilities")
  graph_def, _ = build(fn)
  result = transforms.prefer_eigen_kernels(graph_def, context("x", "probabilities"),
                                           max_elements=100)
  assert ops(result).count("SparseMatMul") == 1  # the 150-value weights stay a MatMul
  assert "MatMul" in ops(result) and "Softmax" not in ops(result)
  assert any(n.name == "probabilities" for n in result.node)
  feeds = {"x:0": rng.randn(5, 4).astype(np.float32) * 3}
  np.testing.assert_allclose(run(result, "probabilities:0", feeds),
                             run(graph_def, "probabilities:0", feeds), rtol=1e-5, atol=1e-7)


def test_remove_identity_reshapes_bypasses_only_reshapes_that_change_nothing():
  def fn():
    words = tf.compat.v1.placeholder(tf.string, [None], name="words")
    tf.identity(tf.reshape(tf.expand_dims(words, 1), [-1]), name="flat_words")
    rows = tf.compat.v1.placeholder(tf.float32, [None, 3], name="rows")
    tf.identity(tf.reshape(rows, tf.stack([tf.shape(rows)[0], 3])), name="same_rows")
    tf.identity(tf.reshape(rows, [-1]), name="flat_rows")
  graph_def, _ = build(fn)
  result = transforms.remove_identity_reshapes(
      graph_def, context("words", "rows", "flat_words", "same_rows", "flat_rows"))
  assert ops(result).count("Reshape") == 1  # flattening a matrix does change it
  feeds = {"words:0": [b"a", b"b"], "rows:0": np.arange(6, dtype=np.float32).reshape(2, 3)}
  fetches = ["flat_words:0", "same_rows:0", "flat_rows:0"]
  for actual, expected in zip(run(result, fetches, feeds), run(graph_def, fetches, feeds)):
    np.testing.assert_array_equal(actual, expected)


def test_lean_row_splits_gives_the_same_splits_from_sorted_row_ids():
  def fn():
    sentences = tf.compat.v1.placeholder(tf.string, [None], name="sentences")
    tf.identity(tf.strings.split(sentences).row_splits, name="splits")
  graph_def, _ = build(fn)
  # What tf.strings.split leaves after remove_asserts: the bincount without its checks.
  graph_def = transforms.remove_asserts(graph_def, context("sentences", "splits"))
  assert "DenseBincount" in ops(graph_def)
  result = transforms.lean_row_splits(graph_def, context("sentences", "splits"))
  assert "DenseBincount" not in ops(result) and "LowerBound" in ops(result)
  for batch in ([b"a b c", b"", b"d", b"", b""], [b""], []):
    np.testing.assert_array_equal(run(result, "splits:0", {"sentences:0": batch}),
                                  run(graph_def, "splits:0", {"sentences:0": batch}))


def test_merge_duplicate_nodes_leaves_its_input_untouched():
  def fn():
    x = tf.compat.v1.placeholder(tf.float32, name="x")
    one_a, one_b = tf.constant(1.0, name="one_a"), tf.constant(1.0, name="one_b")
    tf.identity(tf.add(x, one_a, name="sum_a") * tf.add(x, one_b, name="sum_b"), name="y")
  graph_def, _ = build(fn)
  before = graph_def.SerializeToString(deterministic=True)
  transforms.merge_duplicate_nodes(graph_def, context("x", "y"))
  assert graph_def.SerializeToString(deterministic=True) == before
