"""The smoke test: blesses a good export, refuses a broken one with the reason, never hangs."""

import json
import os
import posixpath
import subprocess
import sys

import pytest

from export import out_of_scope
from export import warmup
from serving.model_server import config_files
from serving.model_server.server import ModelServer, ServerOptions
from serving.smoke_test import verdict as smoke_test
from tests.helpers import PROJECT_ROOT, small_config
from tests.serving.helpers import SIGNATURES, copy_version
from trainer import pipeline


def read_verdict(output_dir):
  with open(os.path.join(output_dir, smoke_test.VERDICT_FILE)) as f:
    return json.load(f)


def markers(output_dir):
  return sorted(m for m in os.listdir(output_dir)
                if m in (smoke_test.BLESSED, smoke_test.NOT_BLESSED))


def test_a_good_export_is_blessed_on_every_signature_over_rest_and_grpc(trained, tmp_path):
  output_dir = str(tmp_path / "verdict")
  verdict = smoke_test.run_smoke_test(posixpath.dirname(trained.export_dir), "intent",
                                      output_dir, latency_requests=10, log=lambda _: None)
  assert verdict.blessed, verdict.reason
  assert verdict.backend == "embedded" and verdict.reason == ""
  assert verdict.version == int(posixpath.basename(trained.export_dir))
  assert verdict.probe_source == "warmup"
  assert {(c.signature, c.protocol) for c in verdict.checks} == {
      (s, p) for s in SIGNATURES for p in ("rest", "grpc")}
  assert {c.api for c in verdict.checks} == {"classify", "predict", "predict (row)",
                                             "predict (columnar)"}
  assert {c.batch_size for c in verdict.checks} == {1, 8}
  assert all(c.ok for c in verdict.checks)
  for figure in ("rest_batch_1", "rest_batch_8", "grpc_batch_1", "grpc_batch_8"):
    assert verdict.latency_ms[figure]["requests"] == 10
    assert 0 < verdict.latency_ms[figure]["p50"] <= verdict.latency_ms[figure]["p99"]
  assert read_verdict(output_dir)["blessed"] is True
  assert markers(output_dir) == ["BLESSED"]


def _broken_copy(trained, tmp_path, relative_path, content):
  base = str(tmp_path / "models" / "intent")
  version_dir = copy_version(trained.export_dir, base, 1)
  with open(os.path.join(version_dir, relative_path), "wb") as f:
    f.write(content)
  return base


@pytest.mark.slow
def test_the_command_refuses_a_corrupt_saved_model_with_the_reason_and_no_retry(
    trained, tmp_path):
  base = _broken_copy(trained, tmp_path, "saved_model.pb", b"\x00 this is not a SavedModel")
  output_dir = tmp_path / "verdict"
  output_dir.mkdir()
  (output_dir / smoke_test.BLESSED).write_text("")  # a stale verdict, which must go
  completed = subprocess.run(
      [sys.executable, "-m", "serving.smoke_test", f"--model_base_path={base}",
       "--model_name=intent", f"--output_dir={output_dir}"],
      cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
  assert completed.returncode == 1
  assert "backend: embedded" in completed.stdout
  assert f"NOT_BLESSED: {output_dir}/verdict.json" in completed.stdout
  verdict = read_verdict(output_dir)
  assert verdict["blessed"] is False
  assert "could not load the model" in verdict["reason"]
  assert ("servable(s) did not become available: {{{name: intent version: 1} due to error"
          in verdict["reason"])
  assert "saved_model.pb" in verdict["reason"]
  assert "Failed to start server" in verdict["server_log_tail"]
  assert "server log (last lines)" in completed.stderr
  assert markers(output_dir) == ["NOT_BLESSED"]
  assert sorted(p.name for p in output_dir.glob("server-*")) == ["server-1"]


def test_a_bad_warmup_file_fails_the_load_and_the_verdict(trained, tmp_path):
  base = _broken_copy(trained, tmp_path, f"assets.extra/{warmup.WARMUP_FILENAME}",
                      b"not a TFRecord file")
  verdict = smoke_test.run_smoke_test(base, "intent", str(tmp_path / "verdict"),
                                      log=lambda _: None)
  assert not verdict.blessed
  assert "{name: intent version: 1} due to error: DATA_LOSS" in verdict.reason
  assert "Please verify your warmup data is in TFRecord format" in verdict.reason
  assert markers(str(tmp_path / "verdict")) == ["NOT_BLESSED"]


@pytest.fixture(scope="module")
def running_server(trained):
  config = config_files.single_model_config("intent", posixpath.dirname(trained.export_dir))
  with ModelServer(config, ServerOptions(grpc_port=0, rest_api_port=0)) as server:
    yield server


def test_a_running_server_is_checked_at_its_target_with_an_examples_file(
    trained, running_server, tmp_path):
  verdict = smoke_test.run_smoke_test(
      posixpath.dirname(trained.export_dir), "intent", str(tmp_path / "verdict"),
      target=f"localhost:{running_server.grpc_port}",
      rest_target=f"localhost:{running_server.rest_api_port}",
      examples_file=os.path.join(PROJECT_ROOT, "data", "eval.csv"), latency_requests=5)
  assert verdict.blessed, verdict.reason
  assert verdict.backend == smoke_test.TARGET_BACKEND
  assert verdict.probe_source == "examples file"
  assert {c.signature for c in verdict.checks} == set(SIGNATURES)


def test_a_server_answering_unlike_the_export_is_not_blessed(trained, running_server,
                                                              tmp_path):
  # Another model under the served version's number: every answer should differ.
  other = pipeline.run(small_config(tmp_path / "job", train_steps=30, seed=7))
  base = str(tmp_path / "models" / "intent")
  copy_version(other.export_dir, base, int(posixpath.basename(trained.export_dir)))
  verdict = smoke_test.run_smoke_test(
      base, "intent", str(tmp_path / "verdict"), target=f"127.0.0.1:{running_server.grpc_port}",
      rest_target=f"127.0.0.1:{running_server.rest_api_port}")
  assert not verdict.blessed
  assert "checks failed" in verdict.reason and "expected" in verdict.reason
  failed = {(c.signature, c.protocol) for c in verdict.checks if not c.ok}
  assert failed == {(s, p) for s in SIGNATURES for p in ("rest", "grpc")}
  assert verdict.latency_ms == {}


@pytest.mark.parametrize("content, expected, message", [
    (b'{"label": "oos", "threshold": 1.5, "target_precision": 0.95}', None,
     "'threshold' must be a number in [0, 1], got 1.5"),
    (b"{not json", None, "not JSON"),
    (b'{"label": "oos", "threshold": 0.5, "target_precision": 0.95}', 0.25,
     "expected the out-of-scope threshold 0.25, found threshold 0.5"),
])
def test_an_out_of_scope_threshold_file_must_be_valid_and_as_expected(
    trained, tmp_path, content, expected, message):
  base = _broken_copy(trained, tmp_path, out_of_scope.PATH, content)
  verdict = smoke_test.run_smoke_test(base, "intent", str(tmp_path / "verdict"),
                                      expected_oos_threshold=expected, log=lambda _: None)
  assert not verdict.blessed
  assert out_of_scope.PATH in verdict.reason and message in verdict.reason


def test_an_expected_threshold_that_the_version_lacks_is_not_blessed(trained, tmp_path):
  base = str(tmp_path / "models" / "intent")
  copy_version(trained.export_dir, base, 1)
  verdict = smoke_test.run_smoke_test(base, "intent", str(tmp_path / "verdict"),
                                      expected_oos_threshold=0.5, log=lambda _: None)
  assert not verdict.blessed and "found no such file" in verdict.reason
