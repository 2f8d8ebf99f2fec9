"""Two processes recording full chains into one SQLite store at the same time."""

import collections
import json
import os
import sqlite3
import subprocess
import sys
import time

import pytest
from ml_metadata.proto import metadata_store_pb2

from lineage import query
from lineage import schema
from lineage import store as store_lib
from tests.helpers import PROJECT_ROOT
from tests.lineage import lineage_chain

# Trains a model or starts processes: the slow tier.
pytestmark = pytest.mark.slow

PROCESSES, CHAINS = 2, 3
# Longer than the MLMD C++ layer waits on a busy database (about 2 s) before it gives up.
LOCK_SECS = 4.0
HERE = os.path.dirname(os.path.abspath(__file__))


def _wait_for(barrier, stage: str, count: int, workers) -> None:
  deadline = time.monotonic() + 300
  while len(list(barrier.glob(f"{stage}.*"))) < count:
    for worker in workers:
      assert worker.poll() is None, worker.communicate()[1][-4000:]
    assert time.monotonic() < deadline, f"the workers never reached {stage}"
    time.sleep(0.02)


def test_two_processes_share_one_sqlite_store(tmp_path):
  db = str(tmp_path / "shared" / "metadata.sqlite")
  data_dir = str(tmp_path / "data")
  lineage_chain.write_data(data_dir)
  barrier = tmp_path / "barrier"
  barrier.mkdir()
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([PROJECT_ROOT, HERE]))
  workers = [subprocess.Popen(
      [sys.executable, os.path.join(HERE, "lineage_chain.py"), db, str(tmp_path / "jobs"), tag,
       data_dir, str(barrier), str(PROCESSES), str(PROCESSES + 1), str(CHAINS)],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=PROJECT_ROOT)
      for tag in ("p", "q")]
  try:
    # Both workers have opened the store; hold its write lock (from this other process, as
    # SQLite locks are per process) while they start, so both must meet "database is
    # locked" and retry, then race each other.
    _wait_for(barrier, "record", PROCESSES, workers)
    lock = sqlite3.connect(db, timeout=0, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    (barrier / "record.lock-holder").touch()
    time.sleep(LOCK_SECS)
    lock.execute("ROLLBACK")
    lock.close()
    runs = []
    for worker in workers:
      stdout, stderr = worker.communicate(timeout=600)
      assert worker.returncode == 0, stderr[-4000:]
      assert "retry" in stderr, f"a worker never waited for the lock:\n{stderr[-2000:]}"
      runs += json.loads(stdout.strip().splitlines()[-1])
  finally:
    for worker in workers:
      if worker.poll() is None:
        worker.kill()

  store = store_lib.open_store(store_lib.store_config(metadata_db=db))
  chains = PROCESSES * CHAINS
  executions = store.mlmd.get_executions()
  assert collections.Counter(store.type_name(e.type_id) for e in executions) == {
      name: chains for name in schema.PIPELINE_EXECUTIONS}
  assert {e.last_known_state for e in executions} == {metadata_store_pb2.Execution.COMPLETE}
  artifacts = collections.Counter(store.type_name(a.type_id) for a in store.mlmd.get_artifacts())
  # Both processes recorded the same two data files: one artifact each, not one per chain.
  assert artifacts == {schema.DATASET: 2, **{name: chains for name in schema.ARTIFACT_TYPES
                                             if name not in (schema.DATASET,
                                                             schema.BATCHING_PARAMETERS)}}
  # Train: 2 inputs + 2 outputs; Export, Optimize, SmokeTest, Push: 1 + 1 each.
  assert len(store.mlmd.get_events_by_execution_ids([e.id for e in executions])) == chains * 12
  assert len(store.mlmd.get_contexts_by_type(schema.PIPELINE_RUN)) == chains
  assert len(store.mlmd.get_contexts_by_type(schema.EXPERIMENT)) == chains

  for run in runs:
    context = store.mlmd.get_context_by_type_and_name(schema.PIPELINE_RUN, run["run"])
    assert len(store.mlmd.get_executions_by_context(context.id)) == len(schema.PIPELINE_EXECUTIONS)
    chain = query.describe_chain(store, run["job_dir"])
    assert chain["target"]["id"] == run["pushed"]
    assert chain["push"]["artifact"]["properties"]["version"] == 1
    assert {chain[step]["execution"]["pipeline_run"] for step in query.STEPS[1:]} == {run["run"]}
    assert len(chain["data"]) == 2
