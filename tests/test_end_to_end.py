"""End to end: `python -m trainer.task` on the bundled data (train -> export -> optimize ->
smoke test -> push, recorded in ML Metadata), then the export alone."""

import json
import os
import subprocess
import sys

import pytest
from ml_metadata.proto import metadata_store_pb2

from export import warmup
from lineage import query
from lineage import store as lineage_store
from optimize import transforms
from tests.helpers import (PROJECT_ROOT, RUN_EVERY_SIGNATURE, run_python, scramble_weights,
                           small_config)
from trainer import config as config_lib
from trainer import inputs
from trainer import pipeline

# Trains a model or starts processes: the slow tier.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def job(tmp_path_factory):
  job_dir = tmp_path_factory.mktemp("e2e") / "job"
  completed = subprocess.run(
      [sys.executable, "-m", "trainer.task", f"--job-dir={job_dir}", "--train_steps=600",
       "--batch_size=32", "--embedding_dim=32", "--hidden_units=64", "--char_ngrams=3",
       "--oov_buckets=1000", f"--push_to={job_dir.parent / 'serving' / 'intent'}",
       "--smoke_test_backend=embedded"],
      capture_output=True, text=True, timeout=900, cwd=PROJECT_ROOT)
  assert completed.returncode == 0, completed.stderr[-4000:]
  lines = dict(l.split(" ", 1) for l in completed.stdout.splitlines()
               if l.split(" ", 1)[0] in ("accuracy", "servable", "optimized", "verdict", "pushed"))
  return job_dir, lines["servable"], lines


def answers(export_dir, texts):
  return json.loads(run_python(RUN_EVERY_SIGNATURE, export_dir, json.dumps(texts)))


def test_trainer_writes_checkpoints_summaries_report_and_a_versioned_export(job):
  job_dir, export_dir, lines = job
  assert export_dir.startswith(f"{job_dir}/export/intent/")
  assert export_dir.rsplit("/", 1)[1].isdigit()
  assert list(job_dir.glob("model.ckpt-600.*"))
  assert list(job_dir.glob("events.out.tfevents.*")) and list(job_dir.glob("eval/events.*"))
  report = json.loads((job_dir / "eval_report.json").read_text())
  assert {"accuracy", "macro_f1", "per_intent", "confusion_pairs", "calibration"} <= set(report)
  ece = report["calibration"]["expected_calibration_error"]
  assert f"ECE {ece:.4f}" in lines["accuracy"]


def test_export_reloaded_in_a_fresh_process_is_accurate_on_the_bundled_eval_split(job):
  _, export_dir, _ = job
  evaluation = inputs.read_examples(config_lib.BUNDLED_EVAL)
  result = answers(export_dir, [e.text for e in evaluation])
  predicted = [c[0] for c in result["predict_text"]["classes"]]
  accuracy = sum(p == e.intent for p, e in zip(predicted, evaluation)) / len(evaluation)
  assert accuracy >= 0.9
  for name in ("serving_default", "classification"):
    top = [classes[max(range(len(s)), key=s.__getitem__)]
           for classes, s in zip(result[name]["classes"], result[name]["scores"])]
    assert top == predicted
  assert [c[0] for c in result["predict"]["classes"]] == predicted


def test_warmup_file_parses(job):
  _, export_dir, _ = job
  logs = warmup.read_records(export_dir)
  assert 0 < len(logs) <= 1000


@pytest.mark.parametrize("variant", [str.upper, str.title, lambda t: t + "?", lambda t: t + " !!",
                                     lambda t: t.capitalize() + "."])
def test_predictions_ignore_letter_case_and_trailing_punctuation(job, variant):
  _, export_dir, _ = job
  texts = [e.text.rstrip("?!.").lower() for e in inputs.read_examples(config_lib.BUNDLED_EVAL)[:40]]
  original = answers(export_dir, texts)["predict_text"]
  changed = answers(export_dir, [variant(t) for t in texts])["predict_text"]
  assert changed["classes"] == original["classes"]
  for a, b in zip(changed["probabilities"], original["probabilities"]):
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-5


def test_pipeline_optimizes_verifies_and_pushes_with_the_whole_chain_recorded(job):
  job_dir, export_dir, lines = job
  version = export_dir.rsplit("/", 1)[1]
  assert lines["optimized"] == f"{job_dir}/optimized/intent/{version}"
  assert lines["verdict"] == f"{job_dir}/smoke_test/{version}/verdict.json"
  assert os.path.exists(os.path.join(os.path.dirname(lines["verdict"]), "BLESSED"))
  pushed = lines["pushed"]
  assert pushed.endswith("/serving/intent/1")
  assert sorted(os.listdir(pushed)) == sorted(os.listdir(lines["optimized"]))

  store = lineage_store.open_store(lineage_store.store_config(str(job_dir)))
  chain = query.describe_chain(store, str(job_dir))
  assert chain["target"]["uri"] == pushed
  assert [d["properties"]["row_count"] for d in chain["data"]] == [616, 154]
  for step, artifact_type in (("train", "Model"), ("export", "ExportedModel"),
                              ("optimize", "OptimizedModel"), ("verdict", "Verdict"),
                              ("push", "PushedModel")):
    assert chain[step]["execution"]["state"] == "COMPLETE", step
    assert chain[step]["artifact"]["type"] == artifact_type, step
  assert chain["train"]["execution"]["properties"]["accuracy"] >= 0.9
  assert 0.0 <= chain["train"]["execution"]["properties"]["metrics"][
      "expected_calibration_error"] < 0.5
  assert os.path.getsize(os.path.join(str(job_dir), "calibration.png")) > 0
  assert chain["train"]["execution"]["properties"]["hyperparameters"]["batch_size"] == 32
  assert chain["export"]["artifact"]["uri"] == export_dir
  optimize = chain["optimize"]["execution"]["properties"]
  assert optimize["agreement"] >= 0.995
  # The export carries its real sample, the eval set (labelled) and the training texts
  # (154 + 616 distinct texts of the bundled data); the guard found it with no data passed.
  exported = chain["export"]["execution"]["properties"]
  assert exported["evaluation_sample_examples"] == 770
  assert exported["evaluation_sample_labelled"] == 154
  assert optimize["guard_labelled_examples"] == 154
  assert optimize["guard_examples"] == optimize["guard_real_examples"] == 770
  assert optimize["guard_synthetic_examples"] == 0
  assert optimize["guard_rule"]["examples_needed_with_no_disagreement"] == 598
  assert optimize["accuracy_before"] >= 0.9
  assert abs(optimize["accuracy_after"] - optimize["accuracy_before"]) <= 0.002
  assert chain["verdict"]["artifact"]["properties"]["blessed"] is True
  assert chain["push"]["artifact"]["properties"]["version"] == 1


def test_a_refused_optimization_is_recorded_as_failed_and_nothing_is_pushed(tmp_path):
  job_dir = tmp_path / "job"
  push_to = tmp_path / "serving" / "intent"
  with transforms.registry.registered("scramble_weights", scramble_weights):
    config = small_config(job_dir, train_steps=20, optimize=True, smoke_test=True,
                          transforms="freeze scramble_weights", push_to=str(push_to))
    with pytest.raises(pipeline.StageError, match=r"optimize: \[guard\]"):
      pipeline.run(config)
  assert not push_to.exists()
  assert not (job_dir / "optimized").exists()
  store = lineage_store.open_store(lineage_store.store_config(str(job_dir)))
  executions = {store.type_name(e.type_id): e for e in store.mlmd.get_executions()}
  assert set(executions) == {"Train", "Export", "Optimize"}
  failed = executions["Optimize"]
  assert failed.last_known_state == metadata_store_pb2.Execution.FAILED
  assert "fails the guard" in failed.properties["failure_reason"].string_value
  assert executions["Export"].last_known_state == metadata_store_pb2.Execution.COMPLETE
