"""quantize_weights: int8 and float16 weights, gathered before they are dequantized."""

import numpy as np
import pytest
import tensorflow as tf

from optimize.transforms import constant_folding
from optimize.transforms import quantize

from . import graphs
from .graphs import context, run


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
