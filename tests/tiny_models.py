"""Tiny SavedModels made in the tests, in seconds: half_plus_two in the shape of TF Serving's
own test model (predict, classify and regress signatures), with optional warmup records."""

import os
from typing import Optional, Sequence

import tensorflow as tf

from export import warmup


def x_example(value: float) -> tf.train.Example:
  example = tf.train.Example()
  example.features.feature["x"].float_list.value.append(value)
  return example


def half_plus_two(version_dir: str, offset: float = 2.0,
                  warmup_logs: Optional[Sequence] = None,
                  tags: Sequence[str] = (tf.saved_model.SERVING,), extras: bool = False) -> str:
  """y = 0.5 * x + offset, as signatures TF Serving's half_plus_two has, and a slow one:

  - `serving_default`, `predict_x`: predict, input `x` float [None, 1], output `y`.
  - `classify_x_to_y`: classify, input `inputs` (serialized tf.Example with float `x`),
    output `scores` [batch, 1].
  - `regress_x_to_y`: regress, same input, output `outputs` [batch, 1].
  With `extras`, also:
  - `count_to`: predict, input `n` int64 scalar, output `count`: a loop of n steps, for
    requests that take as long as a test needs.
  - `odd_method`: `serving_default` with a method name outside TF Serving's three.
  - `text_length`: predict, input `text` string [None], output `length` int32 [None].
  """
  graph = tf.Graph()
  with graph.as_default():
    x = tf.compat.v1.placeholder(tf.float32, [None, 1], name="x")
    y = tf.add(0.5 * x, offset, name="y")
    serialized = tf.compat.v1.placeholder(tf.string, [None], name="tf_example")
    parsed = tf.io.parse_example(serialized, {"x": tf.io.FixedLenFeature([1], tf.float32)})
    y_from_examples = tf.add(0.5 * parsed["x"], offset, name="y_from_examples")
    info = tf.compat.v1.saved_model.utils.build_tensor_info
    predict = tf.compat.v1.saved_model.signature_def_utils.build_signature_def(
        {"x": info(x)}, {"y": info(y)}, tf.saved_model.PREDICT_METHOD_NAME)
    classify = tf.compat.v1.saved_model.signature_def_utils.build_signature_def(
        {"inputs": info(serialized)}, {"scores": info(y_from_examples)},
        tf.saved_model.CLASSIFY_METHOD_NAME)
    regress = tf.compat.v1.saved_model.signature_def_utils.build_signature_def(
        {"inputs": info(serialized)}, {"outputs": info(y_from_examples)},
        tf.saved_model.REGRESS_METHOD_NAME)
    n = tf.compat.v1.placeholder(tf.int64, [], name="n")
    (count,) = tf.while_loop(lambda i: i < n, lambda i: i + 1, [tf.constant(0, tf.int64)],
                             name="count")
    count_to = tf.compat.v1.saved_model.signature_def_utils.build_signature_def(
        {"n": info(n)}, {"count": info(tf.identity(count, name="count_out"))},
        tf.saved_model.PREDICT_METHOD_NAME)
    odd = tf.compat.v1.saved_model.signature_def_utils.build_signature_def(
        {"x": info(x)}, {"y": info(y)}, "tensorflow/serving/something_else")
    text = tf.compat.v1.placeholder(tf.string, [None], name="text")
    text_length = tf.compat.v1.saved_model.signature_def_utils.build_signature_def(
        {"text": info(text)}, {"length": info(tf.strings.length(text, name="length"))},
        tf.saved_model.PREDICT_METHOD_NAME)
    with tf.compat.v1.Session(graph=graph) as session:
      builder = tf.compat.v1.saved_model.Builder(version_dir)
      signatures = {"serving_default": predict, "predict_x": predict,
                    "classify_x_to_y": classify, "regress_x_to_y": regress}
      if extras:
        signatures.update(count_to=count_to, odd_method=odd, text_length=text_length)
      builder.add_meta_graph_and_variables(session, list(tags), signature_def_map=signatures)
      builder.save()
  if warmup_logs:
    extra = os.path.join(version_dir, "assets.extra")
    os.makedirs(extra, exist_ok=True)
    warmup.write_warmup_file(os.path.join(extra, warmup.WARMUP_FILENAME), list(warmup_logs))
  return version_dir
