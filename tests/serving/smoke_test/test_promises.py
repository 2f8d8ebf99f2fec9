"""The smoke test's promises, each held to: a server that does not come up is started again, the
tolerance is what it says, examples files of every format drive it, the command's exit status
is the verdict, and the pipeline pushes nothing it did not bless."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import regression_pb2

from export import warmup
from serving import runners
from serving.smoke_test import checks
from serving.smoke_test import verdict as smoke_test
from tests import tiny_models
from tests.helpers import PROJECT_ROOT


def regress_log(values):
  request = regression_pb2.RegressionRequest()
  request.model_spec.signature_name = "regress_x_to_y"
  request.input.example_list.examples.extend(tiny_models.x_example(v) for v in values)
  return warmup.prediction_log_pb2.PredictionLog(
      regress_log=warmup.prediction_log_pb2.RegressLog(request=request))


@pytest.fixture
def base_path(tmp_path):
  base = tmp_path / "half_plus_two"
  tiny_models.half_plus_two(str(base / "00000005"), warmup_logs=[
      regress_log([1.0, 2.0, 3.0]),
      warmup.predict_log("predict_x", {"x": np.array([[4.0]], np.float32)})])
  return str(base)


@pytest.mark.slow
def test_a_server_that_does_not_come_up_is_started_again(base_path, tmp_path, monkeypatch):
  taken = socket.socket()
  taken.bind(("127.0.0.1", 0))
  taken.listen()
  ports = iter([taken.getsockname()[1]])
  real = runners.free_port
  monkeypatch.setattr(runners, "free_port", lambda: next(ports, None) or real())
  lines = []
  try:
    verdict = smoke_test.run_smoke_test(base_path, "half_plus_two", str(tmp_path / "verdict"),
                                        num_tries=2, latency_requests=3, log=lines.append)
  finally:
    taken.close()
  assert verdict.blessed, verdict.reason
  assert verdict.version == 5
  retries = [l for l in lines if l.startswith("attempt 1 of 2 failed, retrying")]
  assert retries and "Failed to BuildAndStart gRPC server" in retries[0]
  assert sorted(p.name for p in (tmp_path / "verdict").glob("server-*")) == [
      "server-1", "server-2"]


@pytest.mark.parametrize("answered, close", [
    (1.0 + 0.9e-4 + 0.9e-5, True), (1.0 + 1.1e-4 + 1.1e-5, False),
    (1.0 - 0.9e-4 - 0.9e-5, True), (1.0 - 1.1e-4 - 1.1e-5, False)])
def test_scores_pass_just_inside_the_tolerance_and_fail_just_outside(answered, close):
  want = {"scores": np.array([[1.0, 0.0]], np.float32)}
  got = {"scores": np.array([[answered, 0.0]], np.float64)}
  problem, gap = checks.compare(want, got, rtol=1e-4, atol=1e-5)
  assert (problem is None) == close
  assert gap == pytest.approx(abs(answered - 1.0), rel=1e-3)
  if not close:
    assert problem.startswith("output 'scores'[0,0]: ")


def test_classes_and_shapes_must_match_exactly():
  want = {"classes": np.array([[b"a", b"b"]], object)}
  assert checks.compare(want, {"classes": np.array([[b"a", b"c"]], object)}, 1e-4, 1e-5)[0] \
      == "output 'classes'[0,1]: b'c', expected b'b'"
  assert "shape [2], expected [1, 2]" in checks.compare(
      want, {"classes": np.array([b"a", b"b"], object)}, 1e-4, 1e-5)[0]
  assert "differ from the expected" in checks.compare(want, {}, 1e-4, 1e-5)[0]


def _write_tfrecord(path, values):
  with tf.io.TFRecordWriter(str(path)) as writer:
    for value in values:
      writer.write(tiny_models.x_example(value).SerializeToString())


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["jsonl", "tfrecord", "csv"])
def test_an_examples_file_of_any_format_drives_every_signature(base_path, tmp_path, kind):
  path = tmp_path / f"examples.{kind}"
  if kind == "jsonl":
    path.write_text('{"x": 6}\n{"x": [7.5]}\n')
  elif kind == "csv":
    path.write_text("x\n6\n7.5\n")
  else:
    _write_tfrecord(path, [6.0, 7.5])
  verdict = smoke_test.run_smoke_test(base_path, "half_plus_two", str(tmp_path / "verdict"),
                                      examples_file=str(path), latency_requests=3,
                                      log=lambda _: None)
  assert verdict.blessed, verdict.reason
  assert verdict.probe_source == "examples file"
  assert {c.signature for c in verdict.checks} == {
      "classify_x_to_y", "predict_x", "regress_x_to_y", "serving_default"}


def run_command(*args):
  return subprocess.run([sys.executable, "-m", "serving.smoke_test", *args], cwd=PROJECT_ROOT,
                        capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_the_command_exits_zero_only_when_it_blesses(base_path, tmp_path):
  blessed = run_command(f"--model_base_path={base_path}", "--model_name=half_plus_two",
                        f"--output_dir={tmp_path / 'good'}", "--latency_requests=3")
  assert blessed.returncode == 0, blessed.stdout[-2000:] + blessed.stderr[-2000:]
  assert f"BLESSED: {tmp_path / 'good'}/verdict.json" in blessed.stdout
  bad_examples = tmp_path / "examples.jsonl"
  bad_examples.write_text('{"text": "no x here"}\n')
  refused = run_command(f"--model_base_path={base_path}", "--model_name=half_plus_two",
                        f"--output_dir={tmp_path / 'bad'}", f"--examples_file={bad_examples}")
  assert refused.returncode == 1
  assert "NOT_BLESSED" in refused.stdout
  with open(tmp_path / "bad" / "verdict.json") as f:
    assert "is not a feature of the examples" in json.load(f)["reason"]


@pytest.mark.slow
def test_the_pipeline_exits_4_and_pushes_nothing_when_the_smoke_test_does_not_bless(tmp_path):
  push_to = tmp_path / "serving" / "intent"
  # A machine without the real TF Serving (nothing on PATH, no Docker engine) cannot run the
  # backend asked for, so the smoke test cannot bless the model.
  env = dict(os.environ, PATH=str(tmp_path / "empty-bin"), DOCKER_HOST="unix:///nonexistent")
  completed = subprocess.run(
      [sys.executable, "-m", "trainer.task", f"--job-dir={tmp_path / 'job'}",
       "--train_steps=20", "--hidden_units=8", "--embedding_dim=8", "--char_ngrams=",
       "--oov_buckets=10", "--nooptimize", "--smoke_test_backend=binary",
       f"--push_to={push_to}"], cwd=PROJECT_ROOT, capture_output=True, text=True,
      timeout=600, env=env)
  assert completed.returncode == 4, completed.stderr[-3000:]
  assert "the smoke test did not bless" in completed.stdout
  assert "--backend=binary, but tensorflow_model_server is not on PATH" in completed.stdout
  assert not push_to.exists()
