"""End to end: `python -m trainer.task` on the bundled data, then the export alone."""

import json
import subprocess
import sys

import pytest

from conftest import PROJECT_ROOT, RUN_EVERY_SIGNATURE, run_python
from export import warmup
from trainer import config as config_lib
from trainer import inputs


@pytest.fixture(scope="module")
def job(tmp_path_factory):
  job_dir = tmp_path_factory.mktemp("e2e") / "job"
  completed = subprocess.run(
      [sys.executable, "-m", "trainer.task", f"--job-dir={job_dir}", "--train_steps=600",
       "--batch_size=32", "--embedding_dim=32", "--hidden_units=64", "--char_ngrams=3",
       "--oov_buckets=1000"],
      capture_output=True, text=True, timeout=600, cwd=PROJECT_ROOT)
  assert completed.returncode == 0, completed.stderr[-4000:]
  (servable_line,) = [l for l in completed.stdout.splitlines() if l.startswith("servable ")]
  return job_dir, servable_line.split(" ", 1)[1]


def answers(export_dir, texts):
  return json.loads(run_python(RUN_EVERY_SIGNATURE, export_dir, json.dumps(texts)))


def test_trainer_writes_checkpoints_summaries_report_and_a_versioned_export(job):
  job_dir, export_dir = job
  assert export_dir.startswith(f"{job_dir}/export/intent/")
  assert export_dir.rsplit("/", 1)[1].isdigit()
  assert list(job_dir.glob("model.ckpt-600.*"))
  assert list(job_dir.glob("events.out.tfevents.*")) and list(job_dir.glob("eval/events.*"))
  report = json.loads((job_dir / "eval_report.json").read_text())
  assert {"accuracy", "macro_f1", "per_intent", "confusion_pairs"} <= set(report)


def test_export_reloaded_in_a_fresh_process_is_accurate_on_the_bundled_eval_split(job):
  _, export_dir = job
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
  _, export_dir = job
  logs = warmup.read_warmup_file(f"{export_dir}/assets.extra/{warmup.WARMUP_FILENAME}")
  assert 0 < len(logs) <= 1000


@pytest.mark.parametrize("variant", [str.upper, str.title, lambda t: t + "?", lambda t: t + " !!",
                                     lambda t: t.capitalize() + "."])
def test_predictions_ignore_letter_case_and_trailing_punctuation(job, variant):
  _, export_dir = job
  texts = [e.text.rstrip("?!.").lower() for e in inputs.read_examples(config_lib.BUNDLED_EVAL)[:40]]
  original = answers(export_dir, texts)["predict_text"]
  changed = answers(export_dir, [variant(t) for t in texts])["predict_text"]
  assert changed["classes"] == original["classes"]
  for a, b in zip(changed["probabilities"], original["probabilities"]):
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-5
