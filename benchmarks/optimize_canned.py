"""The optimizer on canned estimators this project did not make, measured in one run.

    python benchmarks/optimize_canned.py [--train_steps 3000] [--seed 0]

Trains a DNNRegressor and a LinearClassifier on tabular data generated here (numeric,
vocabulary-file and hash-bucket features; a regression target and a 5-class label that
depend on all three), exports each with `export_saved_model` (a parsing receiver, no warmup
records), and optimizes it with the default transforms three times: judged on 2,000 labelled
evaluation rows, on 64 of them (topped up with synthetic inputs), and with no data at all
(synthetic inputs alone). Prints JSON per model and path: size ratio, batch-1 and batch-64
latency ratios (medians of the report's interleaved rounds), accuracy or mean absolute error
before and after, the guard's real and synthetic counts, agreement and bound per signature,
and which weights the int8 fallback kept in float.
"""

import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from optimize import optimizer  # noqa: E402

flags.DEFINE_integer("train_steps", 3000, "Training steps per model.")
flags.DEFINE_integer("train_rows", 20000, "Rows of generated training data.")
flags.DEFINE_integer("eval_rows", 2000, "Rows of generated evaluation data.")
flags.DEFINE_integer("seed", 0, "Seed of the data and of the models.")
FLAGS = flags.FLAGS

CITIES = [f"city_{i:02d}" for i in range(60)]
NUMERIC = 16


def generate(rows, seed):
  rng = np.random.RandomState(seed)
  x = rng.randn(rows, NUMERIC).astype(np.float32)
  city = rng.randint(len(CITIES), size=rows)
  tag = rng.randint(5000, size=rows)
  city_effect = np.sin(np.arange(len(CITIES)) * 0.7) * 2.0
  tag_effect = np.cos(np.arange(5000) * 0.013) * 1.5
  weights = np.linspace(-1.0, 1.0, NUMERIC)
  target = (x @ weights + np.tanh(x[:, 0] * x[:, 1]) * 2.0 + city_effect[city]
            + tag_effect[tag] + rng.randn(rows) * 0.3).astype(np.float32)
  label = np.digitize(target, np.quantile(target, [0.2, 0.4, 0.6, 0.8])).astype(np.int64)
  return {"x": x, "city": np.array([CITIES[c] for c in city]),
          "tag": np.array([f"tag{t}" for t in tag]), "target": target, "label": label}


def columns(vocabulary_file):
  x = tf.feature_column.numeric_column("x", shape=[NUMERIC])
  city = tf.feature_column.categorical_column_with_vocabulary_file(
      "city", vocabulary_file, num_oov_buckets=1)
  tag = tf.feature_column.categorical_column_with_hash_bucket("tag", 2000)
  return x, city, tag


def input_fn(data, label_key):
  features = {"x": data["x"], "city": data["city"][:, None], "tag": data["tag"][:, None]}

  def make():
    return (tf.data.Dataset.from_tensor_slices((features, data[label_key]))
            .shuffle(10000, seed=FLAGS.seed).repeat().batch(128))
  return make


def write_eval(path, data):
  with tf.io.TFRecordWriter(path) as writer:
    for i in range(len(data["target"])):
      writer.write(tf.train.Example(features=tf.train.Features(feature={
          "x": tf.train.Feature(float_list=tf.train.FloatList(value=data["x"][i])),
          "city": tf.train.Feature(bytes_list=tf.train.BytesList(
              value=[data["city"][i].encode()])),
          "tag": tf.train.Feature(bytes_list=tf.train.BytesList(value=[data["tag"][i].encode()])),
          "target": tf.train.Feature(float_list=tf.train.FloatList(value=[data["target"][i]])),
          "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[data["label"][i]])),
      })).SerializeToString())
  return path


def train_and_export(kind, base, data):
  vocabulary_file = os.path.join(base, "cities.txt")
  with open(vocabulary_file, "w") as f:
    f.write("\n".join(CITIES[:50]) + "\n")
  x, city, tag = columns(vocabulary_file)
  config = tf.estimator.RunConfig(model_dir=os.path.join(base, kind), tf_random_seed=FLAGS.seed)
  if kind == "dnn_regressor":
    estimator = tf.estimator.DNNRegressor(
        hidden_units=[256, 128], config=config,
        feature_columns=[x, tf.feature_column.embedding_column(city, 16),
                         tf.feature_column.embedding_column(tag, 32)])
    label_key = "target"
  else:
    estimator = tf.estimator.LinearClassifier(
        n_classes=5, config=config,
        feature_columns=[x, city, tag, tf.feature_column.crossed_column([city, "tag"], 20000)])
    label_key = "label"
  started = time.perf_counter()
  estimator.train(input_fn(data, label_key), steps=FLAGS.train_steps)
  seconds = time.perf_counter() - started
  receiver = tf.estimator.export.build_parsing_serving_input_receiver_fn(
      tf.feature_column.make_parse_example_spec([x, city, tag]))
  path = estimator.export_saved_model(os.path.join(base, "export", kind), receiver)
  return (path.decode() if isinstance(path, bytes) else path), label_key, seconds


def signature_figures(verdict):
  """Per signature: real and synthetic counts, agreement and the 95 % bound of each."""
  rule = verdict.rule
  return {s.name: {origin: {"examples": tally.examples, "agreement": round(tally.agreement, 4),
                            "disagreement_bound": round(rule.bound(tally.disagreements,
                                                                   tally.examples), 4)}
                   for origin, tally in (("real", s.real), ("synthetic", s.synthetic),
                                         ("counted", s.counted))}
          | {"near_ties_set_aside": s.near_ties} for s in verdict.signatures}


def figures(result):
  first, last = result.steps[0], result.steps[-1]
  verdict = result.guard
  scored = [s for s in verdict.signatures if s.labels is not None]
  out = {
      "written": result.written,
      "steps": [s.step for s in result.steps[1:]],
      "size_ratio": round(last.bytes_on_disk / first.bytes_on_disk, 4),
      "batch1_p50_ratio": round(last.batch1_p50_ms / first.batch1_p50_ms, 4),
      "batch64_p50_ratio": round(last.batch64_p50_ms / first.batch64_p50_ms, 4),
      "batch1_p50_ms": [round(first.batch1_p50_ms, 4), round(last.batch1_p50_ms, 4)],
      "guard_examples": verdict.examples,
      "guard_real_examples": verdict.real_examples,
      "guard_synthetic_examples": verdict.synthetic_examples,
      "lowest_agreement": round(verdict.agreement, 4),
      "signatures": signature_figures(verdict),
  }
  if scored:
    labels = scored[0].labels
    out[labels.metric] = {"before": round(labels.original, 4), "after": round(labels.optimized, 4),
                          "drop": round(labels.drop, 3), "examples": labels.examples}
  out["kept_in_float"] = ([f"{k.name} ({k.stored_as}, int8 alone: agreement "
                           f"{k.agreement_when_int8_alone:.4f})" for k in result.fallback.kept]
                          if result.fallback else [])
  out["int8_weights"] = result.fallback.quantized if result.fallback else None
  return out


def main(argv):
  del argv
  base = tempfile.mkdtemp(prefix="optimize-canned-")
  train = generate(FLAGS.train_rows, FLAGS.seed)
  evaluation = generate(FLAGS.eval_rows, FLAGS.seed + 1)
  eval_file = write_eval(os.path.join(base, "eval.tfrecord"), evaluation)
  few_file = write_eval(os.path.join(base, "few.tfrecord"),
                        {key: values[:64] for key, values in evaluation.items()})
  report = {}
  for kind in ("dnn_regressor", "linear_classifier"):
    version_dir, label_key, seconds = train_and_export(kind, base, train)
    report[kind] = {"train_seconds": round(seconds, 1)}
    for name, arguments in (("labelled", dict(eval_data=eval_file, label_key=label_key)),
                            ("64_real_topped_up", dict(eval_data=few_file, label_key=label_key)),
                            ("synthetic_inputs", {})):
      try:
        report[kind][name] = figures(optimizer.optimize(
            version_dir, os.path.join(base, name, kind, "1"),
            optimizer.OptimizeSettings(latency_repeats=20, **arguments)))
      except optimizer.OptimizeError as e:
        report[kind][name] = {"refused": str(e)}
  report["work_dir"] = base
  print(json.dumps(report, indent=2))


if __name__ == "__main__":
  app.run(main)
