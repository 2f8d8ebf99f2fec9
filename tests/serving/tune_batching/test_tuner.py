"""The batching tuner: a grid measured under load, the best point within budget written as a
file the server accepts, nothing written when no point qualifies, the run in ML Metadata."""

import json
import subprocess
import sys

import numpy as np
import pytest
from absl import flags
from ml_metadata.proto import metadata_store_pb2

from export import warmup
from lineage import query
from lineage import schema
from lineage import store as lineage_store
from lineage.record import Recorder
from serving.model_server import batching
from serving.model_server import command as model_server_command
from serving.model_server.core import ServerCore
from serving.tune_batching import load
from serving.tune_batching import recorded
from serving.tune_batching import tuner
from tests import tiny_models
from tests.helpers import PROJECT_ROOT


def measured(size, rps, p99, failures=0):
  return tuner.Measured(tuner.Point(size, 0), rps, p99 / 2, p99, 100, failures)


def test_the_best_point_is_the_fastest_within_budget_and_without_failures():
  points = [measured(8, 3000, 9.0), measured(16, 4000, 12.0), measured(32, 5000, 30.0),
            measured(64, 6000, 5.0, failures=1)]
  assert tuner.best_point(points, p99_budget_ms=20.0).point.max_batch_size == 16
  assert tuner.best_point(points, p99_budget_ms=30.0).point.max_batch_size == 32
  assert tuner.best_point(points, p99_budget_ms=1.0) is None
  tied = [measured(8, 3000, 9.0), measured(16, 3000, 7.0)]
  assert tuner.best_point(tied, p99_budget_ms=20.0).point.max_batch_size == 16


def test_parameters_hold_every_connection_and_the_points_batch_threads():
  settings = tuner.TuningSettings(concurrency=32)
  params = tuner.parameters(tuner.Point(8, 500, num_batch_threads=2), settings)
  options = batching.QueueOptions.from_params(params)
  assert (options.max_batch_size, options.batch_timeout_micros) == (8, 500)
  # Four full batches hold the 32 connections' requests, and two more are being run.
  assert options.max_enqueued_batches == 6
  assert params.num_batch_threads.value == 2


def test_the_grid_tries_one_batch_thread_and_one_per_core(monkeypatch):
  monkeypatch.setattr(tuner.os, "cpu_count", lambda: 4)
  grid = tuner.TuningSettings(max_batch_sizes=(8, 16), batch_timeouts_micros=(0,)).grid()
  assert [(p.max_batch_size, p.num_batch_threads) for p in grid] == [(8, 1), (8, 4), (16, 1),
                                                                     (16, 4)]
  monkeypatch.setattr(tuner.os, "cpu_count", lambda: 1)
  assert [p.num_batch_threads for p in tuner.TuningSettings(max_batch_sizes=(8,)).grid()] \
      == [1, 1]
  assert {p.num_batch_threads for p in tuner.TuningSettings(num_batch_threads=(3,)).grid()} \
      == {3}


@pytest.mark.parametrize("settings, message", [
    (dict(concurrency=0), "concurrency"), (dict(p99_budget_ms=0), "budget"),
    (dict(max_batch_sizes=()), "max_batch_sizes"), (dict(batch_timeouts_micros=(-1,)),
                                                    "batch_timeouts_micros"),
    (dict(num_batch_threads=(0,)), "num_batch_threads")])
def test_impossible_settings_are_refused(settings, message):
  with pytest.raises(ValueError, match=message):
    tuner.TuningSettings(**settings).check()


def test_the_load_counts_answers_that_are_not_200_as_failures():
  import http.server
  import threading

  class Answers(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
      self.rfile.read(int(self.headers["Content-Length"]))
      status = 200 if self.path == "/ok" else 503
      self.send_response(status)
      self.send_header("Content-Length", "2")
      self.end_headers()
      self.wfile.write(b"{}")

    def log_message(self, *args):
      pass

  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answers)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  try:
    port = server.server_address[1]
    ok = load.run_load("127.0.0.1", port, [load.post_request("127.0.0.1", port, "/ok", b"{}")],
                       2, 0.3, warmup_seconds=0.1)
    assert ok.requests > 0 and ok.failures == 0 and ok.percentile_ms(99) > 0
    refused = load.run_load("127.0.0.1", port,
                            [load.post_request("127.0.0.1", port, "/no", b"{}")], 2, 0.3,
                            warmup_seconds=0.1)
    assert refused.requests == 0 and refused.failures > 0
    assert refused.first_failure == "HTTP 503"
  finally:
    server.shutdown()


# -- against servers, on a tiny model: the slow tier --------------------------------------------


@pytest.fixture
def base_path(tmp_path):
  logs = [warmup.predict_log("serving_default", {"x": np.array([[float(i)]], np.float32)})
          for i in range(4)]
  tiny_models.half_plus_two(str(tmp_path / "m" / "1"), warmup_logs=logs)
  return str(tmp_path / "m")


SMALL_GRID = tuner.TuningSettings(concurrency=4, max_batch_sizes=(2, 4),
                                  batch_timeouts_micros=(0,), num_batch_threads=(1, 2),
                                  seconds_per_point=0.5, backend="embedded")


@pytest.mark.slow
def test_the_tuner_writes_a_file_the_server_accepts_and_records_it(base_path, tmp_path):
  store = lineage_store.open_store(lineage_store.store_config(
      metadata_db=str(tmp_path / "lineage.sqlite")))
  servable = query.servable_at(store, f"{base_path}/1", "m")
  result, written = recorded.tune_version(Recorder(store, experiment=base_path), servable, "m",
                                          str(tmp_path / "out"), SMALL_GRID,
                                          log=lambda line: None)
  assert result.baseline.point.max_batch_size is None
  assert [(m.point.max_batch_size, m.point.num_batch_threads) for m in result.measured] == \
      [(2, 1), (2, 2), (4, 1), (4, 2)]
  assert all(m.requests > 0 and m.failures == 0 for m in result.measured + [result.baseline])
  (execution,) = store.mlmd.get_executions_by_type(schema.TUNE_BATCHING)
  (event,) = [e for e in store.mlmd.get_events_by_execution_ids([execution.id])
              if e.type == metadata_store_pb2.Event.OUTPUT]
  (artifact,) = store.mlmd.get_artifacts_by_id([event.artifact_id])
  assert artifact.uri == written
  assert artifact.properties["max_batch_size"].int_value == result.best.point.max_batch_size
  with open(written) as f:
    text = f.read()
  assert text.startswith("# Written by python -m serving.tune_batching")
  values = flags.FlagValues()
  model_server_command.define_flags(values)
  values(["model_server", f"--model_base_path={base_path}", "--model_name=m",
          "--enable_batching", f"--batching_parameters_file={written}"])
  config, _, core_options = model_server_command.options_from_flags(values)
  assert core_options.batching_parameters.max_batch_size.value == \
      result.best.point.max_batch_size
  assert core_options.batching_parameters.num_batch_threads.value == \
      result.best.point.num_batch_threads
  core = ServerCore(config, core_options)
  try:
    core.load()  # the parameters pass the server's load-time checks
  finally:
    core.close()
  with open(tmp_path / "out" / tuner.REPORT_FILE) as f:
    report = json.load(f)
  assert report["best"]["max_batch_size"] == result.best.point.max_batch_size
  assert report["best"]["num_batch_threads"] == result.best.point.num_batch_threads
  assert len(report["measured"]) == 4 and report["baseline"]["max_batch_size"] is None


@pytest.mark.slow
def test_with_no_point_in_budget_the_command_writes_no_file_and_exits_1(base_path, tmp_path):
  out = tmp_path / "out"
  db = tmp_path / "lineage.sqlite"
  completed = subprocess.run(
      [sys.executable, "-m", "serving.tune_batching", f"--model_base_path={base_path}",
       "--model_name=m", "--concurrency=2", "--max_batch_sizes=2", "--batch_timeouts_micros=0",
       "--num_batch_threads=1",
       "--seconds_per_point=0.3", "--p99_budget_ms=0.001", "--backend=embedded",
       f"--output_dir={out}", f"--metadata_db={db}"],
      cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
  assert completed.returncode == 1, completed.stderr[-3000:]
  assert "no point met the p99 budget of 0.001 ms" in completed.stdout
  assert not (out / tuner.PARAMETERS_FILE).exists()
  assert (out / tuner.REPORT_FILE).exists()
  store = lineage_store.open_store(lineage_store.store_config(metadata_db=str(db)))
  (execution,) = store.mlmd.get_executions_by_type(schema.TUNE_BATCHING)
  recorded = schema.get_properties(execution, schema.EXECUTION_TYPES[schema.TUNE_BATCHING])
  assert recorded["verdict"].startswith("no point met the p99 budget")
  assert "best" not in recorded and len(recorded["measured"]) == 1
  assert execution.last_known_state == metadata_store_pb2.Execution.COMPLETE
