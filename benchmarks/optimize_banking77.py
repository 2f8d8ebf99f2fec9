"""Original vs optimized servable on Banking77, measured in one interleaved run.

    python benchmarks/optimize_banking77.py [--job-dir DIR] [--paths no_flags,eval_data]
        [--rounds 10] [--transforms '...'] [trainer flags]

(--transforms is the trainer's flag, which names the optimizer's transforms.)

Trains the default model on ../shared/datasets/banking77 (or reuses the newest export in
--job-dir; one without an evaluation sample is exported again from its checkpoint), then
optimizes it once per path:
  no_flags   `python -m optimize --input_dir ... --output_dir ...` as a user runs it: the guard
             judges the sample the export carries;
  eval_data  the same with `--eval_data test.csv --label_key category`;
  int8_rows  eval_data with the bucket rows int8 too (`oov_rows=int8`), which prices the
             default's 4-bit rows in the same run (not measured unless named in --paths).
It measures the original and every optimized model alternately over --rounds rounds, in this
order each round: cold start (a fresh process: load + first answer, after TensorFlow's import),
then batch-1 latency and batch-64 throughput of the classify signature fed serialized
tf.Examples, on two feed paths: `feed` (Session.run with a feed dict, names resolved per call
as TF Serving's Session::Run does) and `callable` (the project's cached runtime callable).
Prints JSON: per model the five figures (size of all files of the version, cold start,
batch-1 p50/p99, batch-64 examples/s, test accuracy), the ratios optimized / original from
all samples and the spread of the per-round ratios, the guard's real and synthetic evidence
per signature, the per-op profile at batch 1 and 64 (op type, share of summed op time), the
cold start's phases (graph import, restore, init ops, first answer) with and without
Grappler at load, and issue 27's bars and goals.
"""

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

import banking77  # noqa: E402  (beside this script)
from export import evaluation_sample  # noqa: E402
from export import examples as examples_lib  # noqa: E402
from export import versions  # noqa: E402
from export.servable import SessionServable  # noqa: E402
from optimize import guard  # noqa: E402
from optimize import optimizer  # noqa: E402
from optimize import profile  # noqa: E402
from optimize import savedmodel_io  # noqa: E402
from trainer import command  # noqa: E402
from trainer import pipeline  # noqa: E402

banking77.define_trainer_flags()
flags.DEFINE_list("paths", ["no_flags", "eval_data"], "Optimizer runs to measure.")
flags.DEFINE_integer("phase_runs", 3, "Fresh processes per model (and Grappler setting) "
                     "that time the cold start's phases apart.")
flags.DEFINE_integer("rounds", 10, "Alternating measurement rounds per model.")
flags.DEFINE_integer("profile_runs", 30, "Traced runs per profile.")
FLAGS = flags.FLAGS

SIGNATURE = "serving_default"
# Issue 27's table: (figure, bar, goal, lower is better).
TARGETS = {"batch64_throughput": (2.0, 2.5, False), "batch1_p50_latency": (0.70, 0.60, True),
           "cold_start": (0.35, 0.30, True), "size": (0.18, 0.15, True),
           "accuracy_drop_points": (0.1, 0.0, True)}
COLD_START = r"""
import os, sys, time
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import tensorflow as tf
from export.servable import SessionServable
from export import warmup
batch = {"inputs": [warmup.text_example(sys.argv[2], "text").SerializeToString()]}
started = time.perf_counter()
with SessionServable(sys.argv[1]) as servable:
  servable.run("serving_default", batch)
  print(time.perf_counter() - started)
"""


# One fresh process: the load's phases timed apart, as TF Serving runs them (graph import,
# restore, init ops, first answer, each its own Session::Run and Grappler pass). The
# phases need the loader's steps one by one, which only its private class offers; the
# collector is paused as SessionServable pauses it. argv: version dir, text, "grappler" or
# "no_grappler" (the session's meta optimizer off: what Grappler at load costs).
COLD_START_PHASES = r"""
import gc, json, os, sys, time
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import tensorflow as tf
from tensorflow.python.saved_model import loader_impl
from export import warmup
gc.disable()
batch = [warmup.text_example(sys.argv[2], "text").SerializeToString()]
config = tf.compat.v1.ConfigProto()
config.graph_options.rewrite_options.disable_meta_optimizer = sys.argv[3] == "no_grappler"
phases, started = {}, time.perf_counter()
def lap(name):
  global started
  phases[name] = time.perf_counter() - started
  started = time.perf_counter()
graph = tf.Graph()
session = tf.compat.v1.Session(graph=graph, config=config)
loader = loader_impl.SavedModelLoader(sys.argv[1])
with graph.as_default():
  saver, _ = loader.load_graph(graph, ["serve"])
  lap("import_graph")
  loader.restore_variables(session, saver)
  lap("restore")
  loader.run_init_ops(session, ["serve"])
  lap("init_ops")
  signature = loader.get_meta_graph_def_from_tags(["serve"]).signature_def["serving_default"]
  session.run([signature.outputs[k].name for k in sorted(signature.outputs)],
              {signature.inputs["inputs"].name: batch})
  lap("first_answer")
print(json.dumps(phases))
"""


def exported_with_sample(config):
  """The newest export in the job dir that carries its evaluation sample, made if need be."""
  export_base = os.path.join(config.job_dir, "export", FLAGS.model_name)
  newest = versions.latest_version_dir(export_base)
  if newest is None or evaluation_sample.read(newest) is None:
    newest = pipeline.run(config).export_dir
  return newest


def fresh_process(script, *arguments):
  """The last line `script` prints, run in a new Python process that imports this tree."""
  completed = subprocess.run([sys.executable, "-c", script, *arguments],
                             capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONPATH": os.path.dirname(
                                 os.path.dirname(os.path.abspath(__file__)))})
  return completed.stdout.strip().splitlines()[-1]


def cold_start(version_dir, text):
  return float(fresh_process(COLD_START, version_dir, text))


def cold_start_phases(version_dir, text, runs):
  """Median seconds of each load phase over `runs` fresh processes, with Grappler at load
  (as TF Serving and SessionServable run) and without it."""
  figures = {}
  for mode in ("grappler", "no_grappler"):
    samples = [json.loads(fresh_process(COLD_START_PHASES, version_dir, text, mode))
               for _ in range(runs)]
    figures[mode] = {phase: round(statistics.median(s[phase] for s in samples), 4)
                     for phase in samples[0]}
  return figures


def batches(serialized, size, count):
  return [serialized[(i * size) % (len(serialized) - size):][:size] for i in range(count)]


def timed(run, inputs):
  for batch in inputs[:5]:
    run(batch)
  samples = []
  for batch in inputs:
    started = time.perf_counter()
    run(batch)
    samples.append(time.perf_counter() - started)
  return samples


def latencies(version_dir, serialized):
  """{path: (batch-1 seconds, batch-64 seconds)} for both feed paths."""
  with SessionServable(version_dir) as servable:
    signature = servable.signature(SIGNATURE)
    feed_name = signature.inputs["inputs"].name
    fetches = [signature.outputs[k].name for k in sorted(signature.outputs)]
    session = servable._session  # pylint: disable=protected-access  (the benchmark's own feed)
    callables = {rows: servable.callable(SIGNATURE, ["inputs"], caller_thread=rows == 1)
                 for rows in (1, 64)}
    paths = {"feed": lambda batch: session.run(fetches, {feed_name: batch}),
             "callable": lambda batch: callables[len(batch)](batch)}
    return {path: (timed(run, batches(serialized, 1, 300)), timed(run, batches(serialized, 64, 40)))
            for path, run in paths.items()}


def predicted(version_dir, serialized):
  with SessionServable(version_dir) as servable:
    classes = []
    for start in range(0, len(serialized), 256):
      out = servable.run(SIGNATURE, {"inputs": serialized[start:start + 256]})
      top = out["scores"].argmax(axis=1)
      classes.extend(out["classes"][range(len(top)), top])
  return classes


def profiles(version_dir, serialized):
  with SessionServable(version_dir) as servable:
    return {f"batch{rows}": profile.profile(servable, SIGNATURE, {"inputs": serialized[:rows]},
                                            FLAGS.profile_runs).to_dict(10)
            for rows in (1, 64)}


def guard_figures(result):
  verdict = result.guard
  rule = verdict.rule
  return {"passed": verdict.passed, "real_sources": verdict.real_sources,
          "synthetic_examples": verdict.synthetic_examples,
          "signatures": {s.name: {origin: {
              "examples": t.examples, "agreement": round(t.agreement, 4),
              "disagreement_bound_95": round(rule.bound(t.disagreements, t.examples), 4)}
              for origin, t in (("real", s.real), ("synthetic", s.synthetic),
                                ("counted", s.counted))} | (
              {"accuracy": [round(s.labels.original, 4), round(s.labels.optimized, 4)]}
              if s.labels else {}) for s in verdict.signatures},
          "plan": result.fallback.to_dict() if result.fallback else "as transformed"}


def spread(values):
  return {"min": round(min(values), 4), "median": round(statistics.median(values), 4),
          "max": round(max(values), 4)}


def main(argv):
  del argv
  if not FLAGS["job-dir"].value:
    FLAGS["job-dir"].value = tempfile.mkdtemp(prefix="banking77-optimize-")
  # The benchmark optimizes and measures itself; the pipeline only trains and exports.
  config = dataclasses.replace(command.config_from_flags(), optimize=False, smoke_test=False)
  _, test_examples = pipeline.load_data(config)
  original = exported_with_sample(config)
  settings = {
      "no_flags": optimizer.OptimizeSettings(transforms=FLAGS.transforms),
      "eval_data": optimizer.OptimizeSettings(
          transforms=FLAGS.transforms, eval_data=os.path.join(banking77.DATASET, "test.csv"),
          label_key="category"),
      "int8_rows": optimizer.OptimizeSettings(
          transforms=FLAGS.transforms.replace("oov_rows=int4", "oov_rows=int8"),
          eval_data=os.path.join(banking77.DATASET, "test.csv"), label_key="category")}
  models, results, optimize_seconds = {"original": original}, {}, {}
  work = tempfile.mkdtemp(prefix="optimized-")
  for path in FLAGS.paths:
    started = time.perf_counter()
    results[path] = optimizer.optimize(original, os.path.join(work, path, "1"), settings[path])
    optimize_seconds[path] = round(time.perf_counter() - started, 1)
    models[path] = results[path].output_dir

  serialized = [e.SerializeToString() for e in examples_lib.read_examples(
      os.path.join(banking77.DATASET, "test.csv"), {"text": tf.string})]
  labels = [e.intent.encode() for e in test_examples]
  samples = {name: {"cold": [], "feed": ([], []), "callable": ([], [])} for name in models}
  per_round = {name: [] for name in models}
  for _ in range(FLAGS.rounds):
    for name, version_dir in models.items():
      samples[name]["cold"].append(cold_start(version_dir, test_examples[0].text))
      measured = latencies(version_dir, serialized)
      this_round = {"cold": samples[name]["cold"][-1]}
      for path, (one, sixty_four) in measured.items():
        samples[name][path][0].extend(one)
        samples[name][path][1].extend(sixty_four)
        this_round[path] = (statistics.median(one), statistics.median(sixty_four))
      per_round[name].append(this_round)

  answers = {name: predicted(version_dir, serialized) for name, version_dir in models.items()}
  figures = {}
  for name, version_dir in models.items():
    model = {"bytes_on_disk": savedmodel_io.directory_bytes(version_dir),
             "graph_nodes": len(savedmodel_io.read_servable(version_dir).graph_def.node),
             "cold_start_s_median": round(statistics.median(samples[name]["cold"]), 4),
             "test_accuracy": round(sum(a == b for a, b in zip(answers[name], labels))
                                    / len(labels), 4)}
    for path in ("feed", "callable"):
      one, sixty_four = (sorted(s) for s in samples[name][path])
      model[path] = {"batch1_p50_ms": round(1000 * one[len(one) // 2], 4),
                     "batch1_p99_ms": round(1000 * one[int(len(one) * 0.99)], 4),
                     "batch64_examples_per_s": round(64 / sixty_four[len(sixty_four) // 2], 1)}
    model["profile"] = profiles(version_dir, serialized)
    model["cold_start_phases_s"] = cold_start_phases(version_dir, test_examples[0].text,
                                                     FLAGS.phase_runs)
    figures[name] = model

  base = figures["original"]
  report = {"models": figures, "optimize_seconds": optimize_seconds, "rounds": FLAGS.rounds,
            "signature": SIGNATURE, "test_examples": len(labels)}
  for path in FLAGS.paths:
    model = figures[path]
    ratios = {"size": model["bytes_on_disk"] / base["bytes_on_disk"],
              "cold_start": model["cold_start_s_median"] / base["cold_start_s_median"],
              "accuracy_drop_points": 100 * (base["test_accuracy"] - model["test_accuracy"])}
    rounds = {"cold_start": [r["cold"] / o["cold"]
                             for r, o in zip(per_round[path], per_round["original"])]}
    for feed in ("feed", "callable"):
      ratios[f"{feed}_batch1_p50_latency"] = (model[feed]["batch1_p50_ms"]
                                              / base[feed]["batch1_p50_ms"])
      ratios[f"{feed}_batch64_throughput"] = (model[feed]["batch64_examples_per_s"]
                                              / base[feed]["batch64_examples_per_s"])
      rounds[f"{feed}_batch1_p50_latency"] = [r[feed][0] / o[feed][0] for r, o in zip(
          per_round[path], per_round["original"])]
      rounds[f"{feed}_batch64_throughput"] = [o[feed][1] / r[feed][1] for r, o in zip(
          per_round[path], per_round["original"])]
    targets = {}
    for key, (bar, goal, lower) in TARGETS.items():
      for feed in (("feed", "callable") if key.startswith("batch") else ("",)):
        name = f"{feed}_{key}" if feed else key
        value = ratios[name]
        targets[name] = {"value": round(value, 4), "bar": bar, "goal": goal,
                         "bar_met": value <= bar if lower else value >= bar,
                         "goal_met": value <= goal if lower else value >= goal}
    report[path] = {
        "ratios_optimized_over_original": {k: round(v, 4) for k, v in ratios.items()},
        "per_round_ratio_spread": {k: spread(v) for k, v in rounds.items()},
        "targets": targets,
        "top1_agreement_test_set": round(sum(
            a == b for a, b in zip(answers["original"], answers[path])) / len(labels), 4),
        "guard": guard_figures(results[path]),
        "steps": [s.step for s in results[path].steps[1:]],
        "report": results[path].report_paths.get("markdown")}
  report["original_dir"] = original
  report["near_tie_margin"] = guard.DEFAULT_NEAR_TIE_MARGIN
  print(json.dumps(report, indent=2))


if __name__ == "__main__":
  app.run(main)
