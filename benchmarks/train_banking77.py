"""Banking77 training benchmark: validation and test accuracy, macro-F1, calibration, training
seconds and examples/s over several seeds, beside a TF-IDF + linear SVM fitted in the same run.

    python benchmarks/train_banking77.py [--seeds 42,43,44] [--nofinal_fit] [any trainer.task flag]

Per seed, two trainings with the given trainer flags on ../shared/datasets/banking77 (read in
place):
  validation run: trained on train.csv minus a validation split carved from it (stratified per
                  intent, seeded by --split_seed, the same split for every seed), evaluated on
                  that split. Choose flags by this figure.
  final fit:      trained on all of train.csv, evaluated on test.csv: what trainer.task with
                  these flags delivers. Skip it (--nofinal_fit) while choosing flags, so the
                  test set is looked at once per configuration.
The baseline is fitted on the same two splits. Job dirs are temporary and removed at the end.
"""

import collections
import dataclasses
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time

import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

import banking77  # noqa: E402  (beside this script)
from trainer import command  # noqa: E402
from trainer import pipeline  # noqa: E402
from trainer import step_profile  # noqa: E402

banking77.define_trainer_flags()
flags.DEFINE_list("seeds", ["42", "43", "44"], "Training seeds (--seed of each run).")
flags.DEFINE_float("validation_fraction", 0.1, "Share of each intent's training examples "
                   "held out as the validation split.")
flags.DEFINE_integer("split_seed", 0, "Seed of the validation split.")
flags.DEFINE_bool("final_fit", True, "Also train on all of train.csv and report test.csv.")
flags.DEFINE_bool("baseline", True, "Fit the TF-IDF + linear SVM baseline too.")
flags.DEFINE_integer("trace_from", 200, "The step profile traces the op time of steps from "
                     "this one on.")
flags.DEFINE_integer("traced_steps", 20, "How many steps the step profile traces.")
FLAGS = flags.FLAGS


def validation_split(examples, fraction, seed):
  """(train part, validation part): `fraction` of each intent, drawn with `seed`."""
  by_intent = collections.defaultdict(list)
  for example in examples:
    by_intent[example.intent].append(example)
  generator = random.Random(seed)
  kept, held_out = [], []
  for intent in sorted(by_intent):
    group = list(by_intent[intent])
    generator.shuffle(group)
    cut = max(1, round(fraction * len(group)))
    held_out.extend(group[:cut])
    kept.extend(group[cut:])
  return kept, held_out


def tfidf_svm_accuracy(train, evaluation):
  from sklearn.feature_extraction.text import TfidfVectorizer
  from sklearn.pipeline import make_pipeline, make_union
  from sklearn.svm import LinearSVC
  started = time.time()
  classifier = make_pipeline(
      make_union(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
                 TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True)),
      LinearSVC(C=1.0))
  classifier.fit([e.text for e in train], [e.intent for e in train])
  predicted = classifier.predict([e.text for e in evaluation])
  accuracy = sum(p == e.intent for p, e in zip(predicted, evaluation)) / len(evaluation)
  return {"accuracy": round(accuracy, 4), "seconds": round(time.time() - started, 1)}


def train_once(config, train_examples, eval_examples, scratch):
  job_dir = tempfile.mkdtemp(prefix="job-", dir=scratch)
  run_config = dataclasses.replace(config, job_dir=job_dir)
  profiler = step_profile.StepProfileHook(trace_from=FLAGS.trace_from,
                                          traced_steps=FLAGS.traced_steps)
  started = time.time()
  result = pipeline.train(run_config, train_examples, eval_examples, hooks=[profiler])
  wall = time.time() - started
  steps = run_config.steps_for(len(train_examples))
  report = result.eval_report
  profiled = profiler.summary()
  profiled["seconds_outside_steps_and_pauses"] = round(
      result.train_seconds - profiled["step_ms"]["seconds_in_steps"]
      - profiled["seconds_in_traced_steps"] - profiled["pauses"]["seconds"], 2)
  profiled["input_pipeline_alone_ms_per_batch"] = round(1000 * step_profile.input_batch_seconds(
      pipeline.train_input_fn(run_config, train_examples, tf.estimator.RunConfig(),
                              result.module_path)), 2)
  return {
      "accuracy": round(report["accuracy"], 4),
      "macro_f1": round(report["macro_f1"], 4),
      "balanced_accuracy": round(report["balanced_accuracy"], 4),
      "expected_calibration_error": round(
          report["calibration"]["expected_calibration_error"], 4),
      "steps": steps,
      "train_and_evaluate_seconds": round(result.train_seconds, 1),
      "train_examples_per_second": round(steps * config.batch_size / result.train_seconds, 1),
      "wall_seconds_with_module_build_and_report": round(wall, 1),
      "profile": profiled,
  }


def spread(runs, key):
  values = [run[key] for run in runs]
  return {"mean": round(statistics.mean(values), 4),
          "std": round(statistics.pstdev(values), 4),
          "min": min(values), "max": max(values)}


def main(argv):
  del argv
  if not FLAGS["job-dir"].value:
    FLAGS["job-dir"].value = tempfile.gettempdir()  # each run gets a fresh one below
  config = command.config_from_flags()
  train_examples, test_examples = pipeline.load_data(config)
  train_part, validation = validation_split(train_examples, FLAGS.validation_fraction,
                                            FLAGS.split_seed)
  figures = {"train_examples": len(train_examples), "validation_examples": len(validation),
             "test_examples": len(test_examples),
             "intents": len({e.intent for e in train_examples}),
             "flags": " ".join(a for a in sys.argv[1:]), "runs": []}
  # Job dirs are removed at the end, not between runs: deleting a few hundred MB of
  # checkpoints on a disk mounted with online discard stalls the next run's writes (seen
  # as 10-40 s pauses at the end of training here).
  scratch = tempfile.mkdtemp(prefix="banking77-jobs-")
  try:
    for seed in (int(s) for s in FLAGS.seeds):
      seeded = dataclasses.replace(config, seed=seed)
      run = {"seed": seed, "validation": train_once(seeded, train_part, validation, scratch)}
      if FLAGS.final_fit:
        run["test"] = train_once(seeded, train_examples, test_examples, scratch)
      figures["runs"].append(run)
      print(json.dumps(run), file=sys.stderr, flush=True)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  for split in ("validation", "test"):
    runs = [run[split] for run in figures["runs"] if split in run]
    if runs:
      figures[split] = {key: spread(runs, key) for key in (
          "accuracy", "macro_f1", "balanced_accuracy", "expected_calibration_error",
          "train_and_evaluate_seconds", "train_examples_per_second")}
  if FLAGS.baseline:
    try:
      figures["baseline_tfidf_svm"] = {"validation": tfidf_svm_accuracy(train_part, validation)}
      if FLAGS.final_fit:
        figures["baseline_tfidf_svm"]["test"] = tfidf_svm_accuracy(train_examples,
                                                                   test_examples)
        figures["test_accuracy_vs_baseline"] = round(
            figures["test"]["accuracy"]["mean"]
            / figures["baseline_tfidf_svm"]["test"]["accuracy"], 4)
    except ImportError:
      figures["baseline_tfidf_svm"] = "skipped: scikit-learn not installed"
  print(json.dumps(figures, indent=2))


if __name__ == "__main__":
  app.run(main)
