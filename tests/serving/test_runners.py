"""Runners: the command lines and config files each backend gets, backend choice, readiness."""

import os
import posixpath
import sys

import pytest
from absl import flags

from serving import runners
from serving.errors import ModelLoadError, ServerStartError
from serving.model_server import batching
from serving.model_server import command as model_server_command
from serving.model_server import config_files
from serving.smoke_test import verdict as smoke_test

NO_BINARY = f"{runners.BINARY} is not on PATH"
NO_DOCKER = "no Docker engine answers (DOCKER_HOST or the local socket)"
METRICS_PATH = "/monitoring/prometheus/metrics"


def models(base):
  return [runners.ServedModel("intent", f"{base}/intent"),
          runners.ServedModel("other", f"{base}/other", versions=(3, 5))]


def flag_map(command):
  return {a.split("=", 1)[0]: (a.split("=", 1)[1] if "=" in a else True)
          for a in command if a.startswith("--")}


def test_every_process_runner_passes_tf_serving_flags_and_the_same_config(tmp_path):
  batching = config_files.batching_parameters(16, batch_timeout_micros=500)
  binary = runners.BinaryRunner(models("/data"), str(tmp_path / "b"),
                                batching_parameters=batching, prometheus_path=METRICS_PATH,
                                binary="/opt/tfs/tensorflow_model_server")
  embedded = runners.EmbeddedRunner(models("/data"), str(tmp_path / "e"),
                                    batching_parameters=batching, prometheus_path=METRICS_PATH)
  binary_command, embedded_command = binary.command(), embedded.command()
  assert binary_command[0] == "/opt/tfs/tensorflow_model_server"
  assert embedded_command[:3] == [sys.executable, "-m", "serving.model_server"]
  for runner, command in ((binary, binary_command), (embedded, embedded_command)):
    given = flag_map(command)
    assert given["--port"] == str(runner.grpc_port)
    assert given["--rest_api_port"] == str(runner.rest_port)
    assert runner.grpc_port != runner.rest_port
    assert given["--max_num_load_retries"] == "0"
    assert given["--enable_batching"] is True
    config = config_files.read_model_config_file(given["--model_config_file"])
    entries = {m.name: m for m in config.model_config_list.config}
    assert entries["intent"].base_path == "/data/intent"
    assert list(entries["other"].model_version_policy.specific.versions) == [3, 5]
    assert all(m.model_platform == "tensorflow" for m in entries.values())
    params = config_files.read_batching_parameters(given["--batching_parameters_file"])
    assert params == batching
    monitoring = config_files.read_monitoring_config(given["--monitoring_config_file"])
    assert monitoring.prometheus_config.enable
    assert monitoring.prometheus_config.path == METRICS_PATH
    assert runner.grpc_target == f"127.0.0.1:{runner.grpc_port}"
    assert runner.metrics_url == f"http://127.0.0.1:{runner.rest_port}{METRICS_PATH}"
  assert set(flag_map(binary_command)) == set(flag_map(embedded_command))


def test_the_embedded_server_accepts_exactly_what_its_runner_passes(tmp_path):
  runner = runners.EmbeddedRunner(models("/data"), str(tmp_path),
                                  batching_parameters=config_files.batching_parameters(8),
                                  prometheus_path=METRICS_PATH)
  values = flags.FlagValues()
  model_server_command.define_flags(values)
  values(["model_server", *runner.command()[3:]])
  config, options, core_options = model_server_command.options_from_flags(values)
  assert [m.name for m in config.model_config_list.config] == ["intent", "other"]
  assert options.grpc_port == runner.grpc_port and options.rest_api_port == runner.rest_port
  assert options.bind_address == "127.0.0.1"
  assert core_options.batching_parameters.max_batch_size.value == 8
  assert core_options.max_num_load_retries == 0
  assert options.prometheus_path == METRICS_PATH


def test_the_docker_runner_maps_loopback_ports_and_mounts_models_read_only(tmp_path):
  runner = runners.DockerRunner(models(str(tmp_path)), str(tmp_path / "work"))
  spec = runner.container_spec()
  assert runners.DOCKER_IMAGE == "tensorflow/serving:2.15.1" and spec["image"] == runners.DOCKER_IMAGE
  assert spec["ports"] == {"8500/tcp": ("127.0.0.1", runner.grpc_port),
                           "8501/tcp": ("127.0.0.1", runner.rest_port)}
  assert spec["volumes"] == {
      f"{tmp_path}/intent": {"bind": "/models/intent", "mode": "ro"},
      f"{tmp_path}/other": {"bind": "/models/other", "mode": "ro"},
      f"{tmp_path}/work": {"bind": "/config", "mode": "ro"}}
  assert flag_map(spec["command"]) == {"--max_num_load_retries": "0",
                                       "--model_config_file": "/config/models.config"}
  assert spec["detach"] and spec["name"] == runner.container_name
  config = config_files.read_model_config_file(str(tmp_path / "work" / "models.config"))
  assert [m.base_path for m in config.model_config_list.config] == ["/models/intent",
                                                                    "/models/other"]


@pytest.mark.parametrize("has_binary, has_docker, chosen", [
    (True, True, "binary"), (True, False, "binary"), (False, True, "docker"),
    (False, False, "embedded")])
def test_auto_prefers_the_binary_then_docker_then_the_embedded_server(
    monkeypatch, has_binary, has_docker, chosen):
  monkeypatch.setattr(runners, "binary_path",
                      lambda: "/opt/tfs/tensorflow_model_server" if has_binary else None)
  monkeypatch.setattr(runners, "docker_engine_answers", lambda timeout_secs=10.0: has_docker)
  assert runners.choose_backend("auto") == chosen
  for backend, available in (("binary", has_binary), ("docker", has_docker)):
    if available:
      assert runners.choose_backend(backend) == backend
    else:
      with pytest.raises(ServerStartError):
        runners.choose_backend(backend)
  assert runners.choose_backend("embedded") == "embedded"


@pytest.mark.skipif(runners.binary_path() is not None or runners.docker_engine_answers(),
                    reason="the real TF Serving can run here, so auto does not fall back")
def test_auto_falls_back_to_the_embedded_server_and_named_backends_must_be_able_to_run():
  assert runners.choose_backend("auto") == "embedded"
  assert runners.choose_backend("embedded") == "embedded"
  with pytest.raises(ServerStartError, match=NO_BINARY):
    runners.choose_backend("binary")
  with pytest.raises(ServerStartError, match="no Docker engine answers"):
    runners.choose_backend("docker")
  with pytest.raises(ValueError, match="unknown backend 'kubernetes'"):
    runners.choose_backend("kubernetes")


def test_readiness_fails_at_its_deadline_when_nothing_answers():
  target = f"127.0.0.1:{runners.free_port()}"
  with pytest.raises(ServerStartError, match=r"not AVAILABLE at .* within 0.5s; last status: "
                                              r"GetModelStatus\(intent\): UNAVAILABLE"):
    runners.wait_until_available(target, ["intent"], 0.5)


def test_a_server_that_cannot_load_its_model_fails_readiness_at_once(tmp_path):
  empty_base = tmp_path / "intent"
  empty_base.mkdir()
  runner = runners.EmbeddedRunner([runners.ServedModel("intent", str(empty_base))],
                                  str(tmp_path / "work"))
  with runner:
    with pytest.raises(ModelLoadError, match="No versions of servable intent found"):
      runners.wait_until_available(runner.grpc_target, ["intent"], 120, runner.check_alive)
  assert "Failed to start server" in runner.log_text()


def _smoke_test_on(backend, trained, tmp_path):
  verdict = smoke_test.run_smoke_test(posixpath.dirname(trained.export_dir), "intent",
                                      str(tmp_path / "verdict"), backend=backend,
                                      latency_requests=5)
  assert verdict.backend == backend
  assert verdict.blessed, (verdict.reason, verdict.server_log_tail)


@pytest.mark.skipif(runners.binary_path() is None, reason=NO_BINARY)
def test_the_real_tf_serving_binary_blesses_the_export(trained, tmp_path):
  _smoke_test_on("binary", trained, tmp_path)


@pytest.mark.skipif(not runners.docker_engine_answers(), reason=NO_DOCKER)
def test_tf_serving_in_docker_blesses_the_export(trained, tmp_path):
  _smoke_test_on("docker", trained, tmp_path)
  assert os.path.exists(tmp_path / "verdict" / "BLESSED")


def test_the_docker_deployment_files_are_valid_tf_serving_configs():
  docker_dir = os.path.join(os.path.dirname(os.path.abspath(runners.__file__)), "docker")
  config = config_files.read_model_config_file(os.path.join(docker_dir, "models.config"))
  (model,) = config.model_config_list.config
  params = config_files.read_batching_parameters(
      os.path.join(docker_dir, "batching_parameters.txt"))
  assert batching.QueueOptions.from_params(params).max_batch_size == 32
  with open(os.path.join(docker_dir, "Dockerfile")) as f:
    dockerfile = f.read()
  assert f"FROM {runners.DOCKER_IMAGE}\n" in dockerfile
  assert f"ARG MODEL_NAME={model.name}\n" in dockerfile
  assert "COPY model /models/${MODEL_NAME}/${MODEL_VERSION}" in dockerfile
  assert model.base_path == f"/models/{model.name}"
  for name in ("/models/models.config", "/models/batching_parameters.txt"):
    assert name in dockerfile
