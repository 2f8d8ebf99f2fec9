"""Banking77 training benchmark: test accuracy, examples/s and wall time on this machine.

    python benchmarks/train_banking77.py [any trainer.task flag]

Trains in a fresh temporary job dir (unless --job-dir is given) on
../shared/datasets/banking77 and, as the baseline measured in the same run, fits a
TF-IDF + linear SVM (scikit-learn, from the `bench` extra) on the same split.
"""

import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

import banking77  # noqa: E402  (beside this script)
from trainer import command  # noqa: E402
from trainer import pipeline  # noqa: E402

banking77.define_trainer_flags()


def tfidf_svm_baseline(train, test):
  from sklearn.feature_extraction.text import TfidfVectorizer
  from sklearn.pipeline import make_pipeline, make_union
  from sklearn.svm import LinearSVC
  started = time.time()
  classifier = make_pipeline(
      make_union(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
                 TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True)),
      LinearSVC(C=1.0))
  classifier.fit([e.text for e in train], [e.intent for e in train])
  predicted = classifier.predict([e.text for e in test])
  accuracy = sum(p == e.intent for p, e in zip(predicted, test)) / len(test)
  return accuracy, time.time() - started


def main(argv):
  del argv
  if not flags.FLAGS["job-dir"].value:
    flags.FLAGS["job-dir"].value = tempfile.mkdtemp(prefix="banking77-job-")
  config = command.config_from_flags()
  started = time.time()
  train_examples, eval_examples = pipeline.load_data(config)
  result = pipeline.train(config, train_examples, eval_examples)
  wall = time.time() - started
  steps = config.steps_for(len(train_examples))
  figures = {
      "train_examples": len(train_examples),
      "test_examples": len(eval_examples),
      "intents": len({e.intent for e in train_examples}),
      "steps": steps,
      "batch_size": config.batch_size,
      "test_accuracy": round(result.eval_report["accuracy"], 4),
      "test_macro_f1": round(result.eval_report["macro_f1"], 4),
      "train_and_evaluate_seconds": round(result.train_seconds, 1),
      "train_examples_per_second": round(steps * config.batch_size / result.train_seconds, 1),
      "wall_seconds_including_module_build_and_report": round(wall, 1),
      "job_dir": config.job_dir,
  }
  try:
    baseline_accuracy, baseline_seconds = tfidf_svm_baseline(train_examples, eval_examples)
    figures["baseline_tfidf_svm_accuracy"] = round(baseline_accuracy, 4)
    figures["baseline_tfidf_svm_seconds"] = round(baseline_seconds, 1)
    figures["accuracy_vs_baseline"] = round(figures["test_accuracy"] / baseline_accuracy, 4)
  except ImportError:
    figures["baseline_tfidf_svm_accuracy"] = "skipped: scikit-learn not installed"
  print(json.dumps(figures, indent=2))


if __name__ == "__main__":
  app.run(main)
