"""`python -m serving.model_server`: tensorflow_model_server 2.15.1's flags, defaults, start-up
checks and words."""

import subprocess
import sys

import pytest
from absl import flags
from tensorflow.core.protobuf import config_pb2

from serving import runners
from serving.model_server import command
from serving.model_server import config_files
from serving.model_server import flags as server_flags
from serving.model_server.status import ServingError
from tests import tiny_models
from tests.helpers import PROJECT_ROOT

CPUS = server_flags.CPUS
# tensorflow_model_server 2.15.1's flags and defaults (model_servers/main.cc, server.h).
BINARY_DEFAULTS = {
    "port": 8500, "grpc_socket_path": "", "rest_api_port": 0, "rest_api_num_threads": 4 * CPUS,
    "rest_api_timeout_in_ms": 30000, "rest_api_enable_cors_support": False,
    "enable_batching": False, "allow_version_labels_for_unavailable_models": False,
    "batching_parameters_file": "", "enable_per_model_batching_parameters": False,
    "model_config_file": "", "model_config_file_poll_wait_seconds": 0, "model_name": "default",
    "model_base_path": "", "num_load_threads": 0, "num_unload_threads": 0,
    "max_num_load_retries": 5, "load_retry_interval_micros": 60_000_000,
    "file_system_poll_wait_seconds": 1, "flush_filesystem_caches": True,
    "tensorflow_session_parallelism": 0, "tensorflow_session_config_file": "",
    "tensorflow_intra_op_parallelism": 0, "tensorflow_inter_op_parallelism": 0,
    "use_alts_credentials": False, "ssl_config_file": "", "platform_config_file": "",
    "per_process_gpu_memory_fraction": 0.0, "saved_model_tags": "serve",
    "grpc_channel_arguments": "", "grpc_max_threads": 4 * CPUS, "enable_model_warmup": True,
    "num_request_iterations_for_warmup": 0, "version": False, "monitoring_config_file": "",
    "remove_unused_fields_from_bundle_metagraph": True, "prefer_tflite_model": False,
    "num_tflite_pools": CPUS, "num_tflite_interpreters_per_pool": 1,
    "enable_signature_method_name_check": False, "xla_cpu_compilation_enabled": False,
    "enable_profiler": True, "thread_pool_factory_config_file": "", "mixed_precision": "",
    "skip_initialize_tpu": False, "enable_grpc_healthcheck_service": False,
}


@pytest.fixture
def parse(tmp_path):
  values = flags.FlagValues()
  command.define_flags(values)

  def parse_flags(*args):
    values.unparse_flags()
    values(["model_server", *args])
    return values
  return parse_flags


def test_every_flag_of_the_binary_is_accepted_with_its_default(parse):
  assert len(BINARY_DEFAULTS) == 46
  values = parse()
  for name, default in BINARY_DEFAULTS.items():
    assert values[name].value == default, name
  non_default = {bool: lambda v: f"--{'no' if v else ''}{{}}",
                 int: lambda v: f"--{{}}={v + 1}", float: lambda v: f"--{{}}={v + 0.5}",
                 str: lambda v: f"--{{}}={v}x"}
  for name, default in BINARY_DEFAULTS.items():
    parse(non_default[type(default)](default).format(name))


def test_flags_without_effect_here_are_accepted_and_named(parse):
  values = parse("--per_process_gpu_memory_fraction=0.5", "--noenable_profiler",
                 "--prefer_tflite_model", "--xla_cpu_compilation_enabled")
  assert server_flags.without_effect(values) == [
      "--per_process_gpu_memory_fraction=0.5", "--prefer_tflite_model=True",
      "--xla_cpu_compilation_enabled=True", "--enable_profiler=False"]
  assert server_flags.without_effect(parse("--port=9000", "--enable_batching")) == []


def test_the_flags_become_the_servers_options(parse, tmp_path):
  session_file = tmp_path / "session.config"
  session_file.write_text("intra_op_parallelism_threads: 7 allow_soft_placement: true")
  values = parse("--port=0", "--grpc_socket_path=/tmp/s.sock", "--rest_api_port=8601",
                 "--model_base_path=/models/m", "--saved_model_tags=serve,gpu",
                 "--tensorflow_session_config_file=" + str(session_file),
                 "--tensorflow_inter_op_parallelism=3", "--grpc_channel_arguments=a=1,b=x",
                 "--file_system_poll_wait_seconds=5", "--enable_signature_method_name_check",
                 "--num_request_iterations_for_warmup=3", "--rest_api_timeout_in_ms=1200")
  config, options, core = command.options_from_flags(values)
  assert config.model_config_list.config[0].base_path == "/models/m"
  assert config.model_config_list.config[0].name == "default"
  assert (options.grpc_port, options.grpc_socket_path, options.rest_api_port) == (
      None, "/tmp/s.sock", 8601)
  assert options.grpc_channel_arguments == (("a", 1), ("b", "x"))
  assert options.rest_api_timeout_in_ms == 1200
  assert core.saved_model_tags == ("serve", "gpu")
  # The flags win over the file's thread counts, as in the binary; the rest of it stays.
  assert (core.session_config.intra_op_parallelism_threads,
          core.session_config.inter_op_parallelism_threads) == (0, 3)
  assert core.session_config.allow_soft_placement
  assert core.file_system_poll_wait_seconds == 5 and core.enable_signature_method_name_check
  assert core.num_request_iterations_for_warmup == 3
  # Warmup makes the session callables of both timeouts the APIs run with.
  assert core.warmup_timeouts_ms == (None, 1200)


def test_session_parallelism_sets_both_counts_and_excludes_setting_all_three(parse):
  values = parse("--model_base_path=/m", "--tensorflow_session_parallelism=4")
  assert command._session_config(values) == config_pb2.ConfigProto(
      intra_op_parallelism_threads=4, inter_op_parallelism_threads=4)
  values = parse("--model_base_path=/m", "--tensorflow_session_parallelism=4",
                 "--tensorflow_intra_op_parallelism=2", "--tensorflow_inter_op_parallelism=2")
  with pytest.raises(ServingError, match="You cannot configure all."):
    command.options_from_flags(values)


@pytest.mark.parametrize("args, message", [
    (["--port=0"], "At least one of server_options.grpc_port or server_options.grpc_socket_path "
                   "must be set."),
    ([], "Both server_options.model_base_path and server_options.model_config_file are empty!"),
    (["--model_base_path=/m", "--batching_parameters_file=/b.txt"],
     "server_options.batching_parameters_file is set without setting "
     "server_options.enable_batching to true."),
    (["--model_base_path=/m", "--use_alts_credentials", "--ssl_config_file=/s"],
     "Either use_alts_credentials must be false or ssl_config_file must be empty."),
])
def test_start_up_checks_come_in_the_binarys_words(parse, args, message):
  with pytest.raises(ServingError) as raised:
    command.options_from_flags(parse(*args))
  assert raised.value.message == message


@pytest.mark.parametrize("base_path, platform, message", [
    ("relative/models/m", "tensorflow",
     "Expected model m to have an absolute path or URI; got base_path()=relative/models/m"),
    ("/models/m", "", "Illegal setting neither ModelServerConfig::model_type (deprecated) nor "
                      "ModelServerConfig::model_platform, model name is m"),
    ("/models/m", "pytorch", "Model m requests unsupported platform pytorch"),
])
def test_model_configs_are_checked_as_tf_servings_server_core_checks_them(base_path, platform,
                                                                          message):
  config = config_files.single_model_config("m", base_path)
  config.model_config_list.config[0].model_platform = platform
  with pytest.raises(ServingError) as raised:
    config_files.check_model_config(config)
  assert raised.value.message == message


def run_command(*args, timeout=120):
  return subprocess.run([sys.executable, "-m", "serving.model_server", *args], cwd=PROJECT_ROOT,
                        capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_version_prints_the_versions_and_exits_zero():
  completed = run_command("--version")
  assert completed.returncode == 0
  assert completed.stdout.splitlines() == ["TensorFlow ModelServer: 2.15.1-embedded",
                                           "TensorFlow Library: 2.15.1"]


@pytest.mark.slow
def test_a_config_file_that_does_not_parse_fails_the_start_in_the_binarys_words(tmp_path):
  config_file = tmp_path / "bad_model_config.txt"
  config_file.write_text("improperly formatted file")
  completed = run_command(f"--port={runners.free_port()}",
                          f"--model_config_file={config_file}")
  assert completed.returncode == 255
  assert ("Error parsing text-format tensorflow.serving.ModelServerConfig: 1:1: Message type "
          "\"tensorflow.serving.ModelServerConfig\" has no field named \"improperly\".") \
      in completed.stderr
  assert (f"Failed to start server. Error: INVALID_ARGUMENT: Invalid protobuf file: "
          f"'{config_file}'") in completed.stdout


@pytest.mark.slow
def test_flags_without_effect_are_reported_once_and_the_model_is_served(tmp_path):
  base = tmp_path / "m"
  tiny_models.half_plus_two(str(base / "00000007"))
  port = runners.free_port()
  process = subprocess.Popen(
      [sys.executable, "-m", "serving.model_server", f"--port={port}", "--model_name=m",
       f"--model_base_path={base}", "--prefer_tflite_model=true", "--noenable_profiler",
       "--mixed_precision=bfloat16", "--skip_initialize_tpu"],
      cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  try:
    versions = runners.wait_until_available(
        f"127.0.0.1:{port}", ["m"], 120,
        lambda: None if process.poll() is None else pytest.fail(process.stdout.read()))
    assert versions == {"m": [7]}
  finally:
    process.terminate()
    output = process.communicate(timeout=30)[0]
  for setting in ("--prefer_tflite_model=True", "--enable_profiler=False",
                  "--mixed_precision=bfloat16", "--skip_initialize_tpu=True"):
    assert output.count(f"{setting} has no effect in the embedded server") == 1, output[-3000:]
