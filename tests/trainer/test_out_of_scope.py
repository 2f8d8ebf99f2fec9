"""Out-of-scope rejection on a CLINC-style data set made here: out-of-scope texts are not
trained on, the threshold picked on the eval splits holds its precision there, and it travels
with the export, the optimized servable, the smoke test and the lineage."""

import glob
import json
import random

import numpy as np
import pytest

from export import out_of_scope
from export.servable import SessionServable
from lineage import query
from lineage import store as lineage_store
from tests.helpers import small_config
from trainer import config as config_lib
from trainer import inputs
from trainer import pipeline

pytestmark = pytest.mark.slow  # trains, optimizes and serves a model

_OOS_WORDS = ["zorblatt", "quiffle", "mirkwood", "plinth", "gazebo", "tundra", "oboe",
              "sonnet", "walrus", "nebula", "paprika", "yodel"]
TARGET = 0.9


def oos_texts(count, seed):
  generator = random.Random(seed)
  return [" ".join(generator.sample(_OOS_WORDS, 4)) for _ in range(count)]


@pytest.fixture(scope="module")
def oos_job(tmp_path_factory):
  root = tmp_path_factory.mktemp("oos")
  train = inputs.read_examples(config_lib.BUNDLED_TRAIN)
  evaluation = inputs.read_examples(config_lib.BUNDLED_EVAL)
  data = {"train": [[e.text, e.intent] for e in train],
          "oos_train": [[t, "oos"] for t in oos_texts(40, 1)],
          "val": [[e.text, e.intent] for e in evaluation],
          "oos_val": [[t, "oos"] for t in oos_texts(30, 2)]}
  path = root / "clinc.json"
  path.write_text(json.dumps(data))
  config = small_config(
      root / "job", train_files=str(path), eval_files=str(path), train_split="train,oos_train",
      eval_split="val,oos_val", oos_label="oos", oos_target_precision=TARGET, optimize=True,
      smoke_test=True, smoke_test_backend="embedded")
  return config, pipeline.run(config), data


def test_out_of_scope_texts_are_not_trained_on(oos_job):
  config, result, _ = oos_job
  report = result.train.eval_report
  assert "oos" not in report["per_intent"]
  assert report["examples"] == len(inputs.read_examples(config_lib.BUNDLED_EVAL))
  vocabulary = set()
  for asset in glob.glob(f"{result.train.module_path}/assets/*vocabulary.txt"):
    with open(asset) as f:
      vocabulary.update(f.read().split("\n"))
  assert "card" in vocabulary
  assert not vocabulary & set(_OOS_WORDS), "out-of-scope words reached the vocabulary"


def test_the_threshold_keeps_the_target_precision_on_the_eval_splits(oos_job):
  _, result, data = oos_job
  figures = result.train.eval_report["out_of_scope"]
  assert figures["target_met"] and figures["out_of_scope_examples"] == 30
  threshold = out_of_scope.read(result.export_dir)
  assert threshold.threshold == figures["threshold"] and threshold.label == "oos"
  # Applied as a client would, to what the exported model answers.
  rows = data["val"] + data["oos_val"]
  with SessionServable(result.export_dir) as servable:
    answers = servable.run("predict_text", {"text": np.array([t for t, _ in rows])})
  given = [threshold.applied(c[0].decode(), float(max(p)))
           for c, p in zip(answers["classes"], answers["probabilities"])]
  answered = [(g, label) for g, (_, label) in zip(given, rows) if g != "oos"]
  precision = sum(g == label for g, label in answered) / len(answered)
  assert precision >= TARGET
  assert precision == pytest.approx(figures["in_scope_precision"], abs=1e-9)
  assert sum(g == "oos" for g, (_, l) in zip(given, rows) if l == "oos") / 30 == \
      pytest.approx(figures["out_of_scope_recall"])


def test_the_threshold_travels_with_the_servable_into_the_verdict_and_the_lineage(oos_job):
  config, result, _ = oos_job
  threshold = out_of_scope.read(result.export_dir)
  assert out_of_scope.read(result.optimized_dir) == threshold
  with open(result.verdict_path) as f:
    verdict = json.load(f)
  assert verdict["blessed"] and verdict["out_of_scope"]["threshold"] == threshold.threshold
  store = lineage_store.open_store(lineage_store.store_config(config.job_dir))
  train_run = query.describe_chain(store, config.job_dir)["train"]["execution"]
  assert train_run["properties"]["oos_threshold"] == pytest.approx(threshold.threshold, rel=1e-5)
  assert f"oos_threshold={threshold.threshold:.6g}" in query.report(store, config.job_dir)
