"""A real TF_CONFIG cluster on 127.0.0.1, and the launcher's fail-fast and clean-up rules."""

import glob
import io
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format

from tests.helpers import PROJECT_ROOT, small_config
from trainer import cloud
from trainer import local_cluster
from trainer import pipeline

# Trains a model or starts processes: the slow tier.
pytestmark = pytest.mark.slow

TRAIN_STEPS = 600
# Small enough for a 2-core machine running four TensorFlow processes at once.
CLUSTER_TRAINER_FLAGS = [
    f"--train_steps={TRAIN_STEPS}", "--batch_size=16", "--hidden_units=16",
    "--embedding_dim=16", "--char_ngrams=3", "--oov_buckets=500",
    "--save_checkpoints_steps=200", "--eval_throttle_secs=1", "--max_worker_delay_secs=0",
    "--chief_wait_secs=120"]


def started_pids(output: str):
  return {name: int(pid) for name, pid in
          re.findall(r"\[local_cluster\] started (\S+) pid (\d+)", output)}


def is_running(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  return True


def assert_all_gone(pids):
  assert not {name: pid for name, pid in pids.items() if is_running(pid)}


def eval_summary_steps(eval_dir: str, tag: str):
  steps = []
  for path in glob.glob(os.path.join(eval_dir, "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      steps.extend(event.step for v in event.summary.value if v.tag == tag)
  return steps


@pytest.fixture(scope="module")
def cluster_run(tmp_path_factory):
  job_dir = tmp_path_factory.mktemp("cluster") / "job"
  completed = subprocess.run(
      [sys.executable, "-m", "trainer.local_cluster", "--workers", "1", "--ps", "1",
       "--evaluator", "--timeout_secs", "240", "--", f"--job-dir={job_dir}",
       *CLUSTER_TRAINER_FLAGS],
      capture_output=True, text=True, timeout=300, cwd=PROJECT_ROOT)
  return job_dir, completed


def test_cluster_trains_to_the_step_limit_and_the_chief_exports_once(cluster_run):
  job_dir, completed = cluster_run
  assert completed.returncode == 0, completed.stdout[-6000:]
  assert sorted(started_pids(completed.stdout)) == ["chief", "evaluator-0", "ps-0", "worker-0"]
  versions = [v for v in os.listdir(job_dir / "export" / "intent") if v.isdigit()]
  assert len(versions) == 1, os.listdir(job_dir / "export" / "intent")
  assert tf.train.load_checkpoint(str(job_dir)).get_tensor("global_step") >= TRAIN_STEPS
  assert (job_dir / "eval_report.json").exists()
  assert completed.stdout.count("Built the text module") == 1
  assert re.search(r"\[chief\] .*Built the text module", completed.stdout)
  assert re.search(r"\[worker-0\] .*Loss for final step: [0-9.]+", completed.stdout), \
      "the worker never ran a training step"
  assert max(eval_summary_steps(str(job_dir / "eval"), cloud.METRIC_TAG)) >= TRAIN_STEPS


def test_every_cluster_process_is_gone_at_the_end(cluster_run):
  _, completed = cluster_run
  pids = started_pids(completed.stdout)
  assert len(pids) == 4
  assert "stopping the parameter servers" in completed.stdout
  assert_all_gone(pids)


def test_cluster_training_updates_the_module_embeddings_on_the_parameter_server(cluster_run):
  job_dir, completed = cluster_run
  assert completed.returncode == 0, completed.stdout[-6000:]
  module_variables = str(job_dir / "hub_module" / "variables" / "variables")
  tables = sorted(n for n, _ in tf.train.list_variables(module_variables)
                  if n.endswith("embeddings"))
  assert tables
  reader = tf.train.load_checkpoint(str(job_dir))
  graph = text_format.Parse((job_dir / "graph.pbtxt").read_text(), tf.compat.v1.GraphDef())
  devices = {(n.op, n.name): n.device for n in graph.node}
  for table in tables:
    before = tf.train.load_checkpoint(module_variables).get_tensor(table)
    changed_rows = np.any(before != reader.get_tensor(f"module/{table}"), axis=1)
    assert changed_rows.sum() > 100, table
    # The table and its sparse Adagrad update live on the ps; each worker keeps its own
    # vocabulary lookup table, initialized from the module's asset.
    assert devices[("VarHandleOp", f"module/{table}")].startswith("/job:ps")
    assert devices[("ResourceSparseApplyAdagrad",
                    f"training/Adagrad/update_module/{table}/ResourceSparseApplyAdagrad")
                   ].startswith("/job:ps")
  assert devices[("HashTableV2", "module/hash_table")].startswith("/job:chief")


# A stand-in task: exits with the status given for its type, or serves (sleeps, bounded)
# like a parameter server that never exits on its own.
FAKE_TASK = r"""
import json, os, sys, time

task_type = json.loads(os.environ["TF_CONFIG"])["task"]["type"]
status = json.loads(sys.argv[1]).get(task_type)
if status is None:
  time.sleep(120)
sys.exit(status or 0)
"""


def run_fake_cluster(statuses, **kwargs):
  output = io.StringIO()
  status = local_cluster.run([json.dumps(statuses)], command=[sys.executable, "-c", FAKE_TASK],
                             timeout_secs=60, stream=output, **kwargs)
  return status, output.getvalue()


def test_a_failing_task_stops_the_whole_cluster_with_its_status():
  status, output = run_fake_cluster({"worker": 3}, workers=2, ps=1, evaluator=True)
  assert status == 3, output
  assert "failed: stopping the cluster" in output
  assert len(started_pids(output)) == 5
  assert_all_gone(started_pids(output))


def test_parameter_servers_are_stopped_once_the_chief_and_workers_are_done():
  status, output = run_fake_cluster({"chief": 0, "worker": 0}, workers=1, ps=2)
  assert status == 0, output
  assert "chief and workers are done: stopping the parameter servers" in output
  assert_all_gone(started_pids(output))


def test_a_parameter_server_that_exits_is_a_failure():
  status, output = run_fake_cluster({"ps": 0}, workers=1, ps=1)
  assert status == 1, output
  assert_all_gone(started_pids(output))


def test_every_task_gets_its_own_tf_config_with_free_local_ports():
  spec = local_cluster.cluster_spec(workers=2, ps=1, evaluator=True)
  addresses = [a for tasks in spec.values() for a in tasks]
  assert len(set(addresses)) == len(addresses) == 5
  assert all(a.startswith("127.0.0.1:") for a in addresses)
  config = json.loads(local_cluster.tf_config(spec, "worker", 1))
  assert config["task"] == {"type": "worker", "index": 1} and config["cluster"] == spec


def test_only_the_chief_builds_the_module_others_wait_and_give_up_clearly(tmp_path):
  config = small_config(tmp_path / "job", chief_wait_secs=1)
  worker = cloud.JobEnvironment(task_type=cloud.WORKER, cluster_jobs=("chief", "ps", "worker"))
  with pytest.raises(TimeoutError, match=r"worker-0: the chief's text module did not appear "
                                         r"within 1s .*hub_module\.ready"):
    pipeline.ensure_text_module(config, ["book a flight"], worker)
  assert not (tmp_path / "job").exists(), "a worker must not write to the job dir"

  chief = cloud.JobEnvironment(task_type=cloud.CHIEF, cluster_jobs=("chief", "ps", "worker"))
  train, _ = pipeline.load_data(config)
  path = pipeline.ensure_text_module(config, [e.text for e in train], chief)
  assert os.path.exists(pipeline.module_ready_marker(config))
  assert pipeline.ensure_text_module(config, [], worker) == path


@pytest.mark.parametrize("task_type, index, expected", [
    ("chief", 0, (3, 0)), ("worker", 0, (3, 1)), ("worker", 1, (3, 2)),
    ("ps", 0, (1, 0)), ("evaluator", 0, (1, 0))])
def test_each_training_task_reads_its_own_shard(monkeypatch, task_type, index, expected):
  cluster = {"chief": ["h:1"], "worker": ["h:2", "h:3"], "ps": ["h:4"], "evaluator": ["h:5"]}
  monkeypatch.setenv("TF_CONFIG", local_cluster.tf_config(cluster, task_type, index))
  shard = pipeline._train_shard(tf.estimator.RunConfig())
  assert (shard["num_shards"], shard["shard_index"]) == expected
