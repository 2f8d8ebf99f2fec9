"""quantize_weights: int8 and float16 weights, gathered before they are dequantized."""

import numpy as np
import pytest
import tensorflow as tf

from optimize.transforms import constant_folding
from optimize.transforms import embedding_lookups
from optimize.transforms import quantize

from . import graphs
from .graphs import context, run, run_with_tables


@pytest.mark.parametrize("dtype, tolerance", [("int8", 0.05), ("float16", 0.01)])
def test_quantize_weights_stores_small_weights_and_gathers_before_dequantizing(dtype, tolerance):
  graph_def, table = graphs.embedding_model()
  quantized = quantize.quantize_weights(graph_def, context("ids", "y"), dtype=dtype,
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
  refolded = constant_folding.fold_constants(quantized, context("ids", "y"))
  big_floats = [n.name for n in refolded.node if n.op == "Const"
                and tf.make_ndarray(n.attr["value"].tensor).dtype == np.float32
                and tf.make_ndarray(n.attr["value"].tensor).shape in (table.shape, (16, 8))]
  assert not big_floats


def test_quantize_weights_leaves_weights_smaller_than_min_elements():
  graph_def, _ = graphs.embedding_model()
  result = quantize.quantize_weights(graph_def, context("ids", "y"), min_elements=200)
  names = {n.name for n in result.node}
  assert "table/int8" in names  # 8000 values
  assert "weights/int8" not in names and "weights" in names  # 128 values


@pytest.mark.parametrize("combiner", ["sum", "mean", "sqrtn"])
def test_a_table_combined_by_segment_reductions_is_scaled_per_column_after_the_reduction(
    combiner):
  graph_def = embedding_lookups.lean_embedding_lookups(graphs.sparse_lookup_model(combiner),
                                                       context("values", "splits", "y"))
  protected = context("values", "splits", "y")
  quantized = quantize.quantize_weights(graph_def, protected, min_elements=64)
  by_name = {n.name: n for n in quantized.node}
  scales = [n for n in quantized.node if n.name.endswith("/column_scale")]
  assert len(scales) == 1 and tf.make_ndarray(scales[0].attr["value"].tensor).shape == (1, 4)
  multiplies = [n for n in quantized.node if n.op == "Mul" and scales[0].name in n.input]
  assert multiplies and all(by_name[m.input[0]].op in quantize._COMBINERS for m in multiplies)
  assert not [n for n in quantized.node if n.name.endswith("/scale")]  # no per-row scales
  feeds = {"values:0": [3, 3, 7, 49], "splits:0": [0, 3, 3, 4, 4]}
  expected = run(graph_def, "y:0", feeds)
  actual = run(quantized, "y:0", feeds)
  np.testing.assert_allclose(actual, expected, atol=0.02 * np.max(np.abs(expected)))
  np.testing.assert_array_equal(actual[1], np.zeros(4))  # an empty row stays zero
  per_row = quantize.quantize_weights(graph_def, protected, min_elements=64,
                                      embedding_scales="per_row")
  assert not [n for n in per_row.node if n.name.endswith("/column_scale")]
  np.testing.assert_allclose(run(per_row, "y:0", feeds), expected,
                             atol=0.02 * np.max(np.abs(expected)))


def test_a_gather_with_a_consumer_other_than_a_reduction_keeps_per_row_scales():
  graph_def, _ = graphs.embedding_model()
  quantized = quantize.quantize_weights(graph_def, context("ids", "y"), min_elements=64)
  assert "table/scale" in {n.name for n in quantized.node}
  assert not [n for n in quantized.node if n.name.endswith("/column_scale")]


def test_oov_rows_int4_keeps_vocabulary_rows_int8_and_packs_bucket_rows_in_4_bits():
  graph_def = graphs.vocabulary_embedding_model([0, 1, 2])
  protected = context("tokens", "splits", "y", "init_tables")
  lean = embedding_lookups.lean_embedding_lookups(graph_def, protected)
  quantized = quantize.quantize_weights(lean, protected, min_elements=16, oov_rows="int4")
  constants = {n.name: tf.make_ndarray(n.attr["value"].tensor) for n in quantized.node
               if n.op == "Const"}
  (vocabulary,) = [v for n, v in constants.items() if n.endswith("/vocabulary/int8")]
  (packed,) = [v for n, v in constants.items() if n.endswith("/oov/int4")]
  assert vocabulary.shape == (3, 4) and vocabulary.dtype == np.int8  # 'a', 'b', 'c'
  assert packed.shape == (5, 2) and packed.dtype == np.uint8  # two 4-bit codes a byte
  # Vocabulary tokens, OOV tokens (hash buckets), a row of both and an empty row.
  feeds = {"tokens:0": [b"a", b"zz", b"b", b"c", b"a", b"qq", b"yy"],
           "splits:0": [0, 2, 2, 5, 7]}
  expected = run_with_tables(lean, "y:0", feeds)
  actual = run_with_tables(quantized, "y:0", feeds)
  np.testing.assert_allclose(actual, expected, atol=0.15 * np.max(np.abs(expected)))
  np.testing.assert_array_equal(actual[1], np.zeros(4))
  # The vocabulary-only row is as exact as int8 makes it.
  np.testing.assert_allclose(actual[2], expected[2], atol=0.02 * np.max(np.abs(expected)))
  empty = {"tokens:0": np.array([], dtype=object), "splits:0": [0, 0]}
  np.testing.assert_array_equal(run_with_tables(quantized, "y:0", empty), np.zeros((1, 4)))


def test_oov_rows_int4_leaves_a_table_without_a_vocabulary_int8_throughout():
  graph_def = embedding_lookups.lean_embedding_lookups(graphs.sparse_lookup_model("sum"),
                                                       context("values", "splits", "y"))
  quantized = quantize.quantize_weights(graph_def, context("values", "splits", "y"),
                                        min_elements=64, oov_rows="int4")
  names = {n.name for n in quantized.node}
  assert not [n for n in names if n.endswith("/oov/int4")]
  assert [n for n in names if n.endswith("/int8")]
