"""Original vs optimized servable on Banking77, measured in one run.

    python benchmarks/optimize_banking77.py [--job-dir DIR] [--transforms '...'] [trainer flags]

(--transforms is the trainer's flag, which names the optimizer's transforms.)

Trains the default model on ../shared/datasets/banking77 (or reuses the newest export
in --job-dir), optimizes it, then measures both models alternately in this process:
size on disk, cold start (load + first answer), batch-1 p50 latency, batch-64
throughput, test accuracy and top-1 agreement, and the cost of a session call that runs
no model (the floor under batch-1 latency). Prints JSON with the ratios.
"""

import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

import banking77  # noqa: E402  (beside this script)
from export import versions  # noqa: E402
from export import warmup  # noqa: E402
from export.servable import SessionServable  # noqa: E402
from optimize import optimizer  # noqa: E402
from optimize import savedmodel_io  # noqa: E402
from trainer import command  # noqa: E402
from trainer import pipeline  # noqa: E402

banking77.define_trainer_flags()
flags.DEFINE_string("signature", "serving_default", "Signature timed for latency.")
flags.DEFINE_integer("rounds", 10, "Alternating measurement rounds per model.")
FLAGS = flags.FLAGS


def newest_export(job_dir):
  return versions.latest_version_dir(os.path.join(job_dir, "export", FLAGS.model_name))


def signature_batch(signature, texts):
  if signature == "predict_text":
    return {"text": list(texts)}
  serialized = [warmup.text_example(t, "text").SerializeToString() for t in texts]
  return {"examples" if signature == "predict" else "inputs": serialized}


def cold_start(version_dir, signature, batch):
  started = time.perf_counter()
  with SessionServable(version_dir) as servable:
    servable.run(signature, batch)
  return time.perf_counter() - started


def latencies(version_dir, signature, texts, batch_size, count):
  """Seconds per call of a session callable, the closest Python gets to the graph's own time."""
  with SessionServable(version_dir) as servable:
    key = next(iter(signature_batch(signature, texts[:1])))
    run = servable.callable(signature, [key])
    batches = [signature_batch(signature, texts[s:s + batch_size])[key]
               for s in ((i * batch_size) % (len(texts) - batch_size) for i in range(count))]
    for batch in batches[:5]:
      run(batch)
    samples = []
    for batch in batches:
      started = time.perf_counter()
      run(batch)
      samples.append(time.perf_counter() - started)
  return samples


def session_call_floor(count=2000):
  """Seconds per call of a session callable that only echoes its batch: the part of a
  batch-1 latency that no graph rewrite can remove."""
  graph = tf.Graph()
  with graph.as_default():
    inputs = tf.compat.v1.placeholder(tf.string, [None])
    echoed = tf.identity(inputs)
  with tf.compat.v1.Session(graph=graph) as session:
    run = session.make_callable(echoed, feed_list=[inputs])
    batch = [warmup.text_example("hello", "text").SerializeToString()]
    samples = []
    for _ in range(count):
      started = time.perf_counter()
      run(batch)
      samples.append(time.perf_counter() - started)
  return statistics.median(samples[count // 10:])


def predicted_classes(version_dir, texts):
  with SessionServable(version_dir) as servable:
    classes = []
    for i in range(0, len(texts), 256):
      out = servable.run("predict_text", {"text": texts[i:i + 256]}, ["classes"])
      classes.extend(c[0].decode() for c in out["classes"])
  return classes


def main(argv):
  del argv
  if not FLAGS["job-dir"].value:
    FLAGS["job-dir"].value = tempfile.mkdtemp(prefix="banking77-optimize-")
  # The benchmark optimizes and measures itself; the pipeline only trains and exports.
  config = dataclasses.replace(command.config_from_flags(), optimize=False, smoke_test=False)
  train_examples, test_examples = pipeline.load_data(config)
  original = newest_export(config.job_dir)
  if original is None:
    original = pipeline.run(config).export_dir
  optimized = os.path.join(tempfile.mkdtemp(prefix="optimized-"), "1")
  started = time.perf_counter()
  # The guard judges what the pipeline gives it: the test set with labels, then training texts.
  guard_examples = pipeline.write_guard_examples(config, test_examples, train_examples)
  result = optimizer.optimize(original, optimized, FLAGS.transforms, eval_data=guard_examples,
                              label_key=pipeline.GUARD_LABEL_KEY, latency_repeats=20)
  optimize_seconds = time.perf_counter() - started

  texts = [e.text for e in test_examples]
  labels = [e.intent for e in test_examples]
  signature = FLAGS.signature
  figures = {"original": {}, "optimized": {}}
  samples = {name: {"cold": [], "b1": [], "b64": []} for name in figures}
  # Per round, optimized over original from that round alone: this VM's speed drifts
  # between rounds, so the spread of these says how far one run's figure can be trusted.
  round_ratios = {"batch1_p50_latency": [], "batch64_throughput": []}
  for _ in range(FLAGS.rounds):
    this_round = {}
    for name, path in (("original", original), ("optimized", optimized)):
      samples[name]["cold"].append(cold_start(path, signature, signature_batch(signature, texts[:1])))
      b1 = latencies(path, signature, texts, 1, 200)
      b64 = latencies(path, signature, texts, 64, 40)
      samples[name]["b1"].extend(b1)
      samples[name]["b64"].extend(b64)
      this_round[name] = (statistics.median(b1), statistics.median(b64))
    round_ratios["batch1_p50_latency"].append(
        this_round["optimized"][0] / this_round["original"][0])
    round_ratios["batch64_throughput"].append(
        this_round["original"][1] / this_round["optimized"][1])
  predictions = {}
  for name, path in (("original", original), ("optimized", optimized)):
    predictions[name] = predicted_classes(path, texts)
    b1 = sorted(samples[name]["b1"])
    figures[name] = {
        "bytes_on_disk": savedmodel_io.directory_bytes(path),
        "graph_nodes": len(savedmodel_io.read_servable(path).graph_def.node),
        "cold_start_s_median": round(statistics.median(samples[name]["cold"]), 4),
        "batch1_p50_ms": round(1000 * b1[len(b1) // 2], 4),
        "batch1_p99_ms": round(1000 * b1[int(len(b1) * 0.99)], 4),
        "batch64_examples_per_s": round(64 / statistics.median(samples[name]["b64"]), 1),
        "test_accuracy": round(sum(p == l for p, l in zip(predictions[name], labels))
                               / len(labels), 4),
    }
  o, p = figures["original"], figures["optimized"]
  figures["ratios_optimized_over_original"] = {
      "size": round(p["bytes_on_disk"] / o["bytes_on_disk"], 4),
      "cold_start": round(p["cold_start_s_median"] / o["cold_start_s_median"], 4),
      "batch1_p50_latency": round(p["batch1_p50_ms"] / o["batch1_p50_ms"], 4),
      "batch64_throughput": round(p["batch64_examples_per_s"] / o["batch64_examples_per_s"], 4),
  }
  figures["per_round_ratio_spread"] = {
      key: {"min": round(min(values), 4), "median": round(statistics.median(values), 4),
            "max": round(max(values), 4)} for key, values in round_ratios.items()}
  figures["accuracy_drop_points"] = round(100 * (o["test_accuracy"] - p["test_accuracy"]), 3)
  figures["top1_agreement_test_set"] = round(
      sum(a == b for a, b in zip(predictions["original"], predictions["optimized"])) / len(texts), 4)
  figures["guard_lowest_agreement"] = round(result.guard.agreement, 4)
  figures["guard"] = {
      "examples": result.guard.examples, "synthetic": result.guard.synthetic_examples,
      "passed": result.guard.passed,
      "signatures": {s.name: {"agreement": round(s.agreement, 4),
                              "disagreement_bound_95": round(s.disagreement_bound, 4),
                              **({"labelled": s.labels.examples,
                                  s.labels.metric: [round(s.labels.original, 4),
                                                    round(s.labels.optimized, 4)]}
                                 if s.labels else {})}
                     for s in result.guard.signatures},
      "kept_in_float": [f"{k.name} ({k.stored_as})" for k in result.fallback.kept]
                       if result.fallback else []}
  figures["session_call_floor_ms"] = round(1000 * session_call_floor(), 4)
  figures["transforms"] = [s.step for s in result.steps[1:]]
  figures["latency_signature"] = signature
  figures["optimize_seconds"] = round(optimize_seconds, 1)
  figures["original_dir"], figures["optimized_dir"] = original, optimized
  figures["report"] = result.report_paths.get("markdown")
  print(json.dumps(figures, indent=2))


if __name__ == "__main__":
  app.run(main)
