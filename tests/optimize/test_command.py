"""`python -m optimize` as a user runs it: exit status, what it writes, and its lineage."""

import json
import subprocess
import sys

import pytest

from lineage import store as lineage_store
from tests.helpers import PROJECT_ROOT
from tests.optimize import estimator_exports

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def regressor(tmp_path_factory):
  base = tmp_path_factory.mktemp("regressor")
  version_dir = estimator_exports.build("dnn_regressor", str(base))
  few = estimator_exports.write_eval_tfrecord(str(base / "few.tfrecord"), count=40, labels=True)
  enough = estimator_exports.write_eval_tfrecord(str(base / "enough.tfrecord"), labels=True)
  return version_dir, few, enough


def optimize(*args):
  return subprocess.run([sys.executable, "-m", "optimize", *args], capture_output=True,
                        text=True, timeout=600, cwd=PROJECT_ROOT)


def test_a_refusal_exits_1_and_writes_nothing_and_force_writes(regressor, tmp_path):
  version_dir, few, _ = regressor
  output = tmp_path / "models" / "1"
  strict = [f"--input_dir={version_dir}", f"--output_dir={output}", f"--eval_data={few}",
            "--label_key=target", "--nomeasure", "--require_real_examples=598"]
  refused = optimize(*strict)
  assert refused.returncode == 1, refused.stderr[-2000:]
  assert "[guard]" in refused.stdout
  assert "judged 40 real examples; 598 are required" in refused.stdout
  assert not (tmp_path / "models").exists()
  forced = optimize(*strict, "--force")
  assert forced.returncode == 0, forced.stdout[-2000:] + forced.stderr[-2000:]
  assert (output / "saved_model.pb").exists()
  assert f"guard: forced; real examples: 40 from {few}; synthetic:" in forced.stdout


def test_a_few_real_examples_pass_topped_up_with_synthetic_ones(regressor, tmp_path):
  version_dir, few, _ = regressor
  completed = optimize(f"--input_dir={version_dir}", f"--output_dir={tmp_path / '1'}",
                       f"--eval_data={few}", "--label_key=target", "--nomeasure")
  assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-2000:]
  assert f"guard: passed; real examples: 40 from {few}; synthetic:" in completed.stdout
  assert "real 1.0000 on 40, synthetic" in completed.stdout


@pytest.mark.parametrize("flag, message", [
    ("--min_agreement=1.5", "--min_agreement must be in [0, 1)"),
    ("--min_agreement=1", "no count of examples vouches for 1.0"),
    ("--near_tie_margin=2", "--near_tie_margin must be in [0, 1)"),
    ("--max_accuracy_drop=-1", "--max_accuracy_drop must be >= 0"),
    ("--label_key=target", "--label_key needs eval_data, the file with the labels"),
    ("--fallback=maybe", "--fallback"),
])
def test_impossible_settings_are_refused_before_any_work(regressor, tmp_path, flag, message):
  version_dir, _, _ = regressor
  completed = optimize(f"--input_dir={version_dir}", f"--output_dir={tmp_path}/out", flag)
  assert completed.returncode != 0
  assert message in completed.stdout + completed.stderr
  assert not (tmp_path / "out").exists()


def test_report_dir_overwrite_and_the_recorded_execution(regressor, tmp_path):
  version_dir, _, enough = regressor
  output, report, db = tmp_path / "1", tmp_path / "report", tmp_path / "metadata.sqlite"
  output.mkdir()
  (output / "stale.txt").write_text("old")
  arguments = [f"--input_dir={version_dir}", f"--output_dir={output}", f"--eval_data={enough}",
               "--label_key=target", f"--report_dir={report}", "--model_name=regressor",
               f"--metadata_db={db}"]
  occupied = optimize(*arguments)
  assert occupied.returncode == 1 and "not empty" in occupied.stdout
  assert (output / "stale.txt").read_text() == "old"
  completed = optimize(*arguments, "--overwrite")
  assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-2000:]
  assert not (output / "stale.txt").exists() and (output / "saved_model.pb").exists()
  figures = json.loads((report / "report.json").read_text())
  assert figures["guard"]["examples"] == 600 and figures["guard"]["passed"]
  assert "mean_absolute_error" in completed.stdout
  assert set(figures["op_profile"]) == {"batch_1", "batch_64"}
  assert "## Where the time goes" in (report / "report.md").read_text()

  store = lineage_store.open_store(lineage_store.store_config(metadata_db=str(db)))
  executions = [e for e in store.mlmd.get_executions()
                if store.type_name(e.type_id) == "Optimize"]
  completed_runs = [e for e in executions if e.properties["guard_passed"].bool_value]
  (run,) = completed_runs
  assert run.properties["guard_examples"].int_value == 600
  assert run.properties["guard_labelled_examples"].int_value == 600
  assert run.properties["mean_absolute_error_before"].double_value > 0
  assert run.properties["label_key"].string_value == "target"
  assert run.properties["guard_real_examples"].int_value == 600
  rule = json.loads(run.properties["guard_rule"].string_value)
  assert rule["confidence"] == 0.95 and rule["examples_needed_with_no_disagreement"] == 598
