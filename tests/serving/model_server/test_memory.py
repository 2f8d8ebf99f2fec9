"""The server's allocator: `python -m serving.model_server` re-executes itself on tcmalloc when
the system has it (as TF Serving's binary is built with it), unless SERVING_MALLOC=system, and
still gives memory back to the system after large requests."""

import os
import subprocess
import sys
import time

import grpc
import pytest
from tensorflow.core.framework import types_pb2

from serving import runners
from serving.model_server import memory
from tests import tiny_models
from tests.serving.helpers import grpc_stubs, predict_request, rss_bytes, tensor_proto

MODEL = "half_plus_two"


def test_the_server_is_re_executed_with_tcmalloc_preloaded_before_what_was_there(monkeypatch):
  monkeypatch.setattr(memory, "tcmalloc_library", lambda: "libtcmalloc_minimal.so.4")
  environ = memory.tcmalloc_environment({"LD_PRELOAD": "libmine.so", "HOME": "/root"})
  assert environ["LD_PRELOAD"] == "libtcmalloc_minimal.so.4 libmine.so"
  assert environ["HOME"] == "/root"
  assert int(environ["TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"]) >= 1 << 40
  assert memory.tcmalloc_environment({})["LD_PRELOAD"] == "libtcmalloc_minimal.so.4"


def test_a_user_setting_for_tcmalloc_is_kept(monkeypatch):
  monkeypatch.setattr(memory, "tcmalloc_library", lambda: "libtcmalloc.so.4")
  environ = memory.tcmalloc_environment({"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": "100"})
  assert environ["TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"] == "100"


@pytest.mark.parametrize("environ", [
    {memory.ALLOCATOR_VARIABLE: "system"},  # the user keeps the system's malloc
    {"LD_PRELOAD": "/usr/lib/libtcmalloc_minimal.so.4"},  # already re-executed: once only
])
def test_no_re_execution_when_asked_not_to_or_already_done(monkeypatch, environ):
  monkeypatch.setattr(memory, "tcmalloc_library", lambda: "libtcmalloc_minimal.so.4")
  assert memory.tcmalloc_environment(environ) is None


def test_no_re_execution_without_tcmalloc_installed(monkeypatch):
  monkeypatch.setattr(memory, "tcmalloc_library", lambda: None)
  assert memory.tcmalloc_environment({"PATH": "/bin"}) is None


def _allocator_of_a_process_in(environ):
  return subprocess.run(
      [sys.executable, "-c", "from serving.model_server import memory; print(memory.allocator())"],
      env=environ, check=True, capture_output=True, text=True).stdout.strip()


def test_a_process_knows_which_allocator_it_runs_on():
  plain = {k: v for k, v in os.environ.items()
           if k not in ("LD_PRELOAD", memory.ALLOCATOR_VARIABLE)}
  assert _allocator_of_a_process_in(plain) == "system"
  preloaded = memory.tcmalloc_environment(plain)
  if preloaded is None:
    pytest.skip("no tcmalloc on this machine (Debian: apt-get install libtcmalloc-minimal4)")
  assert _allocator_of_a_process_in(preloaded) == "tcmalloc"


def _mapped_libraries(pid):
  with open(f"/proc/{pid}/maps") as f:
    return f.read()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
  """`python -m serving.model_server` as a user starts it: (process, gRPC port, log path)."""
  base = tmp_path_factory.mktemp("models") / MODEL
  tiny_models.half_plus_two(str(base / "1"), extras=True)
  port = runners.free_port()
  log = tmp_path_factory.mktemp("log") / "server.log"
  with open(log, "wb") as out:
    process = subprocess.Popen(
        [sys.executable, "-m", "serving.model_server", f"--port={port}",
         f"--model_name={MODEL}", f"--model_base_path={base}", "--max_num_load_retries=0",
         f"--max_request_elements={1 << 22}"],
        stdout=out, stderr=subprocess.STDOUT)

  def check_alive():
    if process.poll() is not None:
      raise AssertionError(f"the server exited: {log.read_text()[-2000:]}")

  try:
    runners.wait_until_available(f"127.0.0.1:{port}", [MODEL], 120, check_alive)
    yield process, port, log
  finally:
    process.terminate()
    process.wait(timeout=30)


@pytest.mark.slow
def test_the_server_runs_on_tcmalloc_when_the_system_has_it(served):
  process, _, log = served
  if memory.tcmalloc_library() is None:
    pytest.skip("no tcmalloc on this machine (Debian: apt-get install libtcmalloc-minimal4)")
  if os.environ.get(memory.ALLOCATOR_VARIABLE) == "system":
    pytest.skip(f"{memory.ALLOCATOR_VARIABLE}=system keeps the system's malloc")
  assert "tcmalloc" in _mapped_libraries(process.pid)
  assert "Memory allocator: tcmalloc" in log.read_text()


@pytest.mark.slow
def test_the_server_process_gives_memory_back_after_large_requests(served):
  process, port, _ = served
  stubs = grpc_stubs(port)
  request = predict_request("text_length", {}, name=MODEL)
  request.inputs["text"].CopyFrom(
      tensor_proto(types_pb2.DT_STRING, [1_000_000], string_val=[b"book"] * 1_000_000))
  stubs.prediction.Predict(request, timeout=60)  # the first one also warms up allocator pools
  before = rss_bytes(process.pid)
  for _ in range(3):
    started = time.monotonic()
    answer = stubs.prediction.Predict(request, timeout=60)
    assert time.monotonic() - started < 30
    assert len(answer.outputs["length"].int_val) == 1_000_000
  assert rss_bytes(process.pid) < before * 1.25 + 64 * 1024 * 1024
  with pytest.raises(grpc.RpcError) as raised:  # and it still answers, as the binary would
    stubs.prediction.Predict(predict_request("no_such_signature", {}, name=MODEL), timeout=10)
  assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
