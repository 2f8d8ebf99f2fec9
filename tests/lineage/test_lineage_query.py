"""`python -m lineage`: the chain behind a served or exported model, as a table or JSON."""

import json
import os
import subprocess
import sys

import pytest

from lineage import push
from lineage import query
from lineage import record
from lineage import schema
from lineage import store as store_lib
from tests.helpers import PROJECT_ROOT
from tests.lineage import lineage_chain


def run_cli(*args: str, expect: int = 0) -> subprocess.CompletedProcess:
  completed = subprocess.run([sys.executable, "-m", "lineage", *args], capture_output=True,
                             text=True, timeout=120, cwd=PROJECT_ROOT,
                             env=dict(os.environ, PYTHONPATH=PROJECT_ROOT))
  assert completed.returncode == expect, completed.stderr[-3000:]
  return completed


@pytest.fixture
def pushed_twice(tmp_path):
  """A job whose optimized model was pushed as versions 1 and 2; the store in the job dir."""
  job_dir = str(tmp_path / "job")
  store = store_lib.open_store(store_lib.store_config(job_dir=job_dir))
  recorder = record.Recorder(store, job_dir)
  done = lineage_chain.record_chain(recorder, str(tmp_path),
                                    push_to=str(tmp_path / "serving" / "intent"))
  push.push(recorder, done["optimized"], str(tmp_path / "serving" / "intent"))
  return job_dir, store, done


@pytest.mark.slow
def test_the_command_prints_the_chain_of_the_newest_push(pushed_twice, tmp_path):
  job_dir, _, done = pushed_twice
  table = run_cli("--job-dir", job_dir).stdout
  serving = str(tmp_path / "serving" / "intent")
  assert table.startswith(f"Lineage of version 2 pushed to {serving}\n")
  steps = table.split("\n\n")[1].splitlines()  # headline, steps table, properties
  assert steps[0].split() == ["step", "execution", "state", "artifact", "summary", "uri"]
  rows = {line.split("  ")[0]: line for line in steps[1:]}
  assert "Dataset" in rows["data (train)"] and "1 rows, 1 labels" in rows["data (train)"]
  assert "Train 1" in rows["train"] and "accuracy=0.875 macro_f1=0.86" in rows["train"]
  assert rows["export"].endswith(done["exported"].uri)
  assert "agreement 1" in rows["optimize"] and rows["optimize"].endswith(done["optimized"].uri)
  assert "BLESSED (embedded)" in rows["verdict"]
  assert "version 2" in rows["push"] and rows["push"].endswith(serving + "/2")
  assert '"batch_size":32' in table and '"hidden_units":[32]' in table  # hyperparameters

  chain = json.loads(run_cli("--job_dir", job_dir, "--json", "--model_version", "1").stdout)
  assert chain["target"]["uri"] == serving + "/1"
  assert chain["push"]["execution"]["state"] == "COMPLETE"
  assert chain["train"]["execution"]["properties"]["hyperparameters"] == (
      lineage_chain.HYPERPARAMETERS)
  assert chain["train"]["execution"]["properties"]["metrics"] == lineage_chain.METRICS
  assert chain["train"]["hub_module"]["type"] == schema.HUB_MODULE
  assert [d["properties"]["split"] for d in chain["data"]] == ["train", "eval"]
  assert chain["optimize"]["execution"]["properties"]["transforms"] == lineage_chain.TRANSFORMS
  assert chain["verdict"]["artifact"]["properties"]["blessed"] is True
  assert chain["export"]["artifact"]["id"] == done["exported"].id
  assert chain["push"]["execution"]["pipeline_run"]


def test_a_model_not_pushed_shows_how_far_it_got(tmp_path):
  store = store_lib.open_store(store_lib.store_config(metadata_db=str(tmp_path / "m.sqlite")))
  recorder = record.Recorder(store, str(tmp_path / "job"))
  done = lineage_chain.record_chain(recorder, str(tmp_path), blessed=False)
  chain = query.describe_chain(store, str(tmp_path / "job"))
  assert chain["target"]["id"] == done["exported"].id and chain["push"] is None
  assert chain["optimize"]["artifact"]["id"] == done["optimized"].id
  assert chain["verdict"]["artifact"]["properties"]["reason"] == "2 of 24 checks failed"
  table = query.format_table(chain)
  assert "(not pushed)" in table.splitlines()[0]
  assert "NOT BLESSED: 2 of 24 checks failed" in table
  [push_row] = [line for line in table.split("\n\n")[1].splitlines() if line.startswith("push")]
  assert "(none recorded)" in push_row


def test_a_failed_optimization_shows_as_failed(tmp_path):
  store = store_lib.open_store(store_lib.store_config(metadata_db=str(tmp_path / "m.sqlite")))
  recorder = record.Recorder(store, str(tmp_path / "job"))
  export_dir = lineage_chain.fake_servable(str(tmp_path / "export" / "7"), "a")
  with recorder.execution(schema.EXPORT) as run:
    exported = run.output("exported", schema.exported_model(export_dir))
  with pytest.raises(ValueError):
    with recorder.execution(schema.OPTIMIZE, inputs={"model": exported}):
      raise ValueError("guard refused")
  chain = query.describe_chain(store, str(tmp_path / "job"), model_version=7)
  assert chain["optimize"]["execution"]["state"] == "FAILED"
  assert chain["optimize"]["artifact"] is None and chain["train"] is None
  assert "FAILED: ValueError: guard refused" in query.format_table(chain)


@pytest.mark.slow
def test_the_command_says_what_is_missing(pushed_twice, tmp_path):
  job_dir, _, _ = pushed_twice
  missing = run_cli("--job-dir", job_dir, "--model_version", "9", expect=1)
  assert "no model with version 9" in missing.stderr and "recorded versions: [1, 2," in (
      missing.stderr)
  elsewhere = run_cli("--job-dir", str(tmp_path / "other"), expect=1)
  assert "no metadata store at" in elsewhere.stderr
  assert not (tmp_path / "other").exists()
  other_job = run_cli("--job-dir", str(tmp_path / "other"), "--metadata_db",
                      os.path.join(job_dir, "metadata.sqlite"), expect=1)
  assert "no lineage recorded for job dir" in other_job.stderr
