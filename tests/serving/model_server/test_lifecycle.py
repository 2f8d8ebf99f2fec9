"""What the embedded server serves over time, as tensorflow_model_server does it: version dirs as
they are named, feeding by the runtime's rules, polling, unloading without dropping requests,
and config reloads."""

import gc
import os
import shutil
import threading
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.apis import model_management_pb2

from serving.model_server import config_files
from serving.model_server.core import CoreOptions, ServerCore
from serving.model_server.server import ModelServer, ServerOptions
from tests import tiny_models
from tests.serving.helpers import grpc_stubs, predict_request, rest

State = get_model_status_pb2.ModelVersionStatus.State


def status_of(stubs, name):
  request = get_model_status_pb2.GetModelStatusRequest()
  request.model_spec.name = name
  return {s.version: (State.Name(s.state), s.status.error_code)
          for s in stubs.model.GetModelStatus(request, timeout=10).model_version_status}


def predict_y(stubs, name, x=2.0, shape=(1,)):
  request = predict_request("serving_default", {"x": np.full(shape, x, np.float32)}, name=name)
  response = stubs.prediction.Predict(request, timeout=10)
  return response.model_spec.version.value, tf.make_ndarray(response.outputs["y"]).tolist()


def eventually(condition, timeout_secs=30.0, what="the condition"):
  deadline = time.monotonic() + timeout_secs
  while time.monotonic() < deadline:
    if condition():
      return
    time.sleep(0.1)
  raise AssertionError(f"{what} did not hold within {timeout_secs}s")


def add_version(base, version, offset):
  """A new version dir, made beside the base path and renamed in whole, as a push does."""
  staging = tiny_models.half_plus_two(f"{base}/.staging-{version}", offset=offset)
  os.rename(staging, f"{base}/{version}")


@pytest.fixture
def server_on(tmp_path):
  started = []

  def start(config, **core_options):
    server = ModelServer(config, ServerOptions(grpc_port=0, rest_api_port=0),
                         CoreOptions(max_num_load_retries=0, **core_options)).start()
    started.append(server)
    return server, grpc_stubs(server.grpc_port)

  yield start
  for server in started:
    server.stop()


def test_a_zero_padded_version_dir_is_that_version_and_feeding_follows_the_runtime(
    tmp_path, server_on):
  base = tmp_path / "half_plus_two"
  tiny_models.half_plus_two(str(base / "00000123"))
  server, stubs = server_on(config_files.single_model_config("half_plus_two", str(base)))
  assert status_of(stubs, "half_plus_two") == {123: ("AVAILABLE", 0)}
  # TF Serving's own tests feed shape [1] to x, whose static shape is [None, 1].
  assert predict_y(stubs, "half_plus_two") == (123, [3.0])
  status, answer = rest(server.rest_api_port, "POST", "/v1/models/half_plus_two:predict",
                        {"instances": [1.0, 2.0, 5.0]})
  assert (status, answer) == (200, {"predictions": [2.5, 3.0, 4.5]})
  wrong_type = predict_request("serving_default", {"x": np.array([[1]], np.int64)},
                               name="half_plus_two")
  with pytest.raises(grpc.RpcError) as raised:
    stubs.prediction.Predict(wrong_type, timeout=10)
  assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
  assert "to be float but int64 is provided" in raised.value.details()


def test_new_versions_load_and_removed_ones_unload_while_requests_keep_succeeding(
    tmp_path, server_on):
  base = str(tmp_path / "model")
  add_version(base, 1, offset=2.0)
  _, stubs = server_on(config_files.single_model_config("model", base),
                       file_system_poll_wait_seconds=1)
  failures, answers, stop = [], set(), threading.Event()

  def client():
    while not stop.is_set():
      try:
        version, y = predict_y(stubs, "model", x=1.0)
        answers.add((version, tuple(y)))
      except grpc.RpcError as e:
        failures.append(f"{e.code().name}: {e.details()}")

  threads = [threading.Thread(target=client) for _ in range(2)]
  for thread in threads:
    thread.start()
  try:
    add_version(base, 2, offset=3.0)
    eventually(lambda: status_of(stubs, "model").get(1, ("",))[0] == "END",
               what="version 1 unloading after version 2 loaded")
    assert predict_y(stubs, "model", x=1.0) == (2, [3.5])
    shutil.move(f"{base}/2", str(tmp_path / "removed"))
    eventually(lambda: status_of(stubs, "model").get(2, ("",))[0] == "END",
               what="version 2 unloading once its dir was removed")
    assert predict_y(stubs, "model", x=1.0) == (1, [2.5])
  finally:
    stop.set()
    for thread in threads:
      thread.join()
  assert not failures, failures[:5]
  assert {(1, (2.5,)), (2, (3.5,))} <= answers


def test_a_new_version_that_fails_to_load_leaves_the_old_one_serving(tmp_path, server_on):
  base = str(tmp_path / "model")
  add_version(base, 1, offset=2.0)
  _, stubs = server_on(config_files.single_model_config("model", base),
                       file_system_poll_wait_seconds=1)
  os.makedirs(f"{base}/.staging-2")
  with open(f"{base}/.staging-2/saved_model.pb", "wb") as f:
    f.write(b"not a SavedModel")
  os.rename(f"{base}/.staging-2", f"{base}/2")
  eventually(lambda: status_of(stubs, "model").get(2, ("",))[0] == "END",
             what="version 2 failing to load")
  state, code = status_of(stubs, "model")[2]
  assert code != 0
  assert status_of(stubs, "model")[1] == ("AVAILABLE", 0)
  assert predict_y(stubs, "model", x=1.0) == (1, [2.5])


def test_a_config_reload_serves_exactly_the_new_models(tmp_path, server_on):
  for name, offset in (("a", 2.0), ("b", 3.0), ("c", 4.0)):
    tiny_models.half_plus_two(str(tmp_path / name / "1"), offset=offset)
  config = config_files.model_config([("a", str(tmp_path / "a")), ("b", str(tmp_path / "b"))])
  _, stubs = server_on(config)
  request = model_management_pb2.ReloadConfigRequest()
  request.config.CopyFrom(config_files.model_config([("b", str(tmp_path / "b")),
                                                     ("c", str(tmp_path / "c"))]))
  response = stubs.model.HandleReloadConfigRequest(request, timeout=60)
  assert response.status.error_code == 0
  assert status_of(stubs, "a") == {1: ("END", 0)}
  with pytest.raises(grpc.RpcError) as raised:
    predict_y(stubs, "a")
  assert raised.value.code() == grpc.StatusCode.NOT_FOUND
  assert predict_y(stubs, "b") == (1, [4.0]) and predict_y(stubs, "c") == (1, [5.0])

  bad = model_management_pb2.ReloadConfigRequest()
  bad.config.CopyFrom(config_files.model_config([("d", "relative/path")]))
  with pytest.raises(grpc.RpcError) as raised:
    stubs.model.HandleReloadConfigRequest(bad, timeout=60)
  assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
  assert "Expected model d to have an absolute path or URI" in raised.value.details()
  assert predict_y(stubs, "c") == (1, [5.0])  # a refused config changes nothing


def test_the_config_file_is_polled_and_a_bad_read_keeps_what_is_served(tmp_path, server_on):
  for name, offset in (("two", 2.0), ("three", 3.0)):
    tiny_models.half_plus_two(str(tmp_path / name / "1"), offset=offset)
  config_file = tmp_path / "models.config"
  config_file.write_text(config_files.to_text(
      config_files.model_config([("two", str(tmp_path / "two"))])))
  _, stubs = server_on(config_files.read_model_config_file(str(config_file)),
                       model_config_file=str(config_file), model_config_file_poll_wait_seconds=1)
  config_file.write_text("improperly formatted file")
  time.sleep(2.5)
  assert predict_y(stubs, "two") == (1, [3.0])
  config_file.write_text(config_files.to_text(
      config_files.model_config([("three", str(tmp_path / "three"))])))
  eventually(lambda: status_of(stubs, "two") == {1: ("END", 0)},
             what="the model left out of the new config file unloading")
  assert predict_y(stubs, "three") == (1, [4.0])


def test_version_policies_pick_versions_as_tf_serving_does(tmp_path, server_on):
  base = str(tmp_path / "model")
  for version in (1, 2, 3):
    add_version(base, version, offset=float(version))
  config = config_files.single_model_config("model", base)
  config.model_config_list.config[0].model_version_policy.latest.num_versions = 2
  _, stubs = server_on(config)
  assert status_of(stubs, "model") == {2: ("AVAILABLE", 0), 3: ("AVAILABLE", 0)}
  config.model_config_list.config[0].model_version_policy.specific.versions.extend([1, 7])
  request = model_management_pb2.ReloadConfigRequest()
  request.config.CopyFrom(config)
  stubs.model.HandleReloadConfigRequest(request, timeout=60)
  assert {v: s for v, (s, _) in status_of(stubs, "model").items()} == {
      1: "AVAILABLE", 2: "END", 3: "END"}


def test_loaded_versions_stay_out_of_garbage_collections_and_unloaded_ones_are_freed(tmp_path):
  base = tmp_path / "model"
  tiny_models.half_plus_two(str(base / "1"))
  config = config_files.single_model_config("model", str(base))
  config.model_config_list.config[0].model_version_policy.all.SetInParent()
  core = ServerCore(config, CoreOptions(max_num_load_retries=0))
  try:
    core.load()
    one = gc.get_freeze_count()
    tiny_models.half_plus_two(str(base / "2"))
    core.poll_file_system()
    # Full collections would walk every loaded graph; frozen objects are not walked.
    both = gc.get_freeze_count()
    second_version = both - one
    assert second_version > 100
    shutil.rmtree(base / "2")
    core.poll_file_system()
    # The unloaded version's graph (reference cycles) was collected, not kept frozen. The
    # rest of the process (the test runner's own objects) moves the count a little, so the
    # bar is half of what the second version added rather than an absolute count.
    assert gc.get_freeze_count() < both - second_version // 2
  finally:
    core.close()
