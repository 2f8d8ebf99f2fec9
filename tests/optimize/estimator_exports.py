"""Tiny canned-estimator exports, built in seconds, for the optimizer's tests."""

import os

import numpy as np
import tensorflow as tf

WORDS = ["alpha", "beta", "gamma", "delta"]


def _examples(count=64, seed=0):
  rng = np.random.RandomState(seed)
  rows = []
  for _ in range(count):
    x = rng.randn(3).astype(np.float32)
    word = WORDS[rng.randint(len(WORDS))]
    tag = f"tag{rng.randint(10)}"
    label = int(x[0] + (word in ("alpha", "beta")) > 0.5)
    rows.append({"x": x, "word": word, "tag": tag, "label": label,
                 "target": float(x @ [1.0, -2.0, 0.5])})
  return rows


# Enough for the guard's default proof at 0.995 agreement (598 examples).
EVAL_EXAMPLES = 600


def write_eval_tfrecord(path, count=EVAL_EXAMPLES, labels=False):
  """Evaluation examples; with `labels`, each also holds `label` (int), `label_name` (the
  vocabulary label, "no" or "yes") and `target` (float)."""
  with tf.io.TFRecordWriter(path) as writer:
    for row in _examples(count, seed=1):
      features = {
          "x": tf.train.Feature(float_list=tf.train.FloatList(value=row["x"])),
          "word": tf.train.Feature(bytes_list=tf.train.BytesList(value=[row["word"].encode()])),
          "tag": tf.train.Feature(bytes_list=tf.train.BytesList(value=[row["tag"].encode()])),
      }
      if labels:
        features["label"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[row["label"]]))
        features["label_name"] = tf.train.Feature(bytes_list=tf.train.BytesList(
            value=[("no", "yes")[row["label"]].encode()]))
        features["target"] = tf.train.Feature(
            float_list=tf.train.FloatList(value=[row["target"]]))
      writer.write(tf.train.Example(features=tf.train.Features(feature=features))
                   .SerializeToString())
  return path


def _input_fn(label_key, string_labels=False):
  rows = _examples()
  features = {"x": np.stack([r["x"] for r in rows]),
              "word": np.array([[r["word"]] for r in rows]),
              "tag": np.array([[r["tag"]] for r in rows])}
  labels = np.array([r[label_key] for r in rows])
  if string_labels:
    labels = np.array([["no", "yes"][int(l)] for l in labels])

  def input_fn():
    return tf.data.Dataset.from_tensor_slices((features, labels)).repeat().batch(16)
  return input_fn


def _columns(tmp_dir):
  vocabulary_file = os.path.join(tmp_dir, "words.txt")
  with open(vocabulary_file, "w") as f:
    f.write("\n".join(WORDS[:3]) + "\n")
  x = tf.feature_column.numeric_column("x", shape=[3])
  word = tf.feature_column.categorical_column_with_vocabulary_file(
      "word", vocabulary_file, num_oov_buckets=1)
  tag = tf.feature_column.categorical_column_with_hash_bucket("tag", 20)
  return x, word, tag


def build(kind: str, tmp_dir: str) -> str:
  """Trains a tiny `kind` estimator and exports it; returns the version dir."""
  x, word, tag = _columns(tmp_dir)
  config = tf.estimator.RunConfig(model_dir=os.path.join(tmp_dir, kind), tf_random_seed=3)
  label_key, string_labels, raw = "label", False, False
  if kind == "dnn_batch_norm":
    estimator = tf.estimator.DNNClassifier(
        hidden_units=[8, 4], feature_columns=[x, tf.feature_column.indicator_column(word)],
        batch_norm=True, label_vocabulary=["no", "yes"], config=config)
    string_labels = True
  elif kind == "linear_vocabulary_file":
    estimator = tf.estimator.LinearClassifier(feature_columns=[word, tag], config=config)
  elif kind == "dnn_linear_combined":
    estimator = tf.estimator.DNNLinearCombinedClassifier(
        linear_feature_columns=[word, tag],
        dnn_feature_columns=[x, tf.feature_column.embedding_column(tag, 4)],
        dnn_hidden_units=[8], config=config)
  elif kind == "dnn_regressor":
    estimator = tf.estimator.DNNRegressor(hidden_units=[8], feature_columns=[x], config=config)
    label_key = "target"
  elif kind == "raw_receiver":
    estimator = tf.estimator.DNNClassifier(hidden_units=[8], feature_columns=[x], config=config)
    raw = True
  elif kind == "wide_deep_raw":
    estimator = tf.estimator.DNNLinearCombinedClassifier(
        linear_feature_columns=[word, tag],
        dnn_feature_columns=[x, tf.feature_column.embedding_column(tag, 4)],
        dnn_hidden_units=[8], config=config)
    raw = True
  else:
    raise ValueError(kind)
  estimator.train(_input_fn(label_key, string_labels), steps=40)
  if raw:
    def receiver():
      features = {"x": tf.compat.v1.placeholder(tf.float32, [None, 3], name="x")}
      if kind == "wide_deep_raw":
        features.update({name: tf.compat.v1.placeholder(tf.string, [None, 1], name=name)
                         for name in ("word", "tag")})
      return tf.estimator.export.ServingInputReceiver(features, features)
  else:
    columns = {"dnn_batch_norm": [x, word], "linear_vocabulary_file": [word, tag],
               "dnn_linear_combined": [x, word, tag], "dnn_regressor": [x]}[kind]
    receiver = tf.estimator.export.build_parsing_serving_input_receiver_fn(
        tf.feature_column.make_parse_example_spec(columns))
  path = estimator.export_saved_model(os.path.join(tmp_dir, "export", kind), receiver)
  return path.decode() if isinstance(path, bytes) else path


KINDS = ("dnn_batch_norm", "linear_vocabulary_file", "dnn_linear_combined", "dnn_regressor",
         "raw_receiver", "wide_deep_raw")
