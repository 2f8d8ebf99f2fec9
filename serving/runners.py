"""Starts a model server to test, as TFX's InfraValidator does: the real TF Serving when it
can run, the embedded server otherwise.

- `BinaryRunner`: `tensorflow_model_server` from PATH.
- `DockerRunner`: the `tensorflow/serving:2.15.1` image, when a Docker engine answers.
- `EmbeddedRunner`: `python -m serving.model_server`, the default when neither is present.

All three run as a child process with the same TF Serving flags: free ports on 127.0.0.1, a
`--model_config_file` written here, optional `--enable_batching` with a
`--batching_parameters_file`, and `--max_num_load_retries=0` (a model that fails to load
fails the check at once instead of after the binary's five one-minute retries). Readiness is
`wait_until_available`: gRPC ModelService.GetModelStatus polled until every model is
AVAILABLE, END (a failed load) or a dead process failing it, within a deadline.
"""

import abc
import dataclasses
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from typing import Callable, Dict, List, Optional, Sequence

import grpc
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.apis import model_service_pb2_grpc

from serving import server_config
from serving.errors import ModelLoadError, ServerStartError

BINARY = "tensorflow_model_server"
DOCKER_IMAGE = "tensorflow/serving:2.15.1"
BACKENDS = ("binary", "docker", "embedded")
LOOPBACK = "127.0.0.1"
_CONTAINER_GRPC_PORT, _CONTAINER_REST_PORT = 8500, 8501
_CONTAINER_MODELS, _CONTAINER_CONFIG = "/models", "/config"
_PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_State = get_model_status_pb2.ModelVersionStatus.State


@dataclasses.dataclass(frozen=True)
class ServedModel:
  """A model to serve: its name, base path, and (optionally) the versions to pin."""
  name: str
  base_path: str
  versions: Sequence[int] = ()


def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind((LOOPBACK, 0))
    return s.getsockname()[1]


def binary_path() -> Optional[str]:
  return shutil.which(BINARY)


def docker_engine_answers(timeout_secs: float = 10.0) -> bool:
  docker = shutil.which("docker")
  if not docker:
    return False
  try:
    completed = subprocess.run([docker, "info", "--format", "{{.ServerVersion}}"],
                               capture_output=True, timeout=timeout_secs, check=False)
  except (OSError, subprocess.TimeoutExpired):
    return False
  return completed.returncode == 0


def choose_backend(requested: str = "auto") -> str:
  """`auto` picks the real TF Serving when it can run (binary, then Docker), else embedded."""
  if requested not in BACKENDS + ("auto",):
    raise ValueError(f"unknown backend {requested!r}; use auto or one of {BACKENDS}")
  if requested == "binary" and not binary_path():
    raise ServerStartError(f"--backend=binary, but {BINARY} is not on PATH")
  if requested == "docker" and not docker_engine_answers():
    raise ServerStartError("--backend=docker, but no Docker engine answers `docker info`")
  if requested != "auto":
    return requested
  if binary_path():
    return "binary"
  if docker_engine_answers():
    return "docker"
  return "embedded"


class Runner(abc.ABC):
  """One server process: `start()`, then `grpc_target` / `rest_target`, then `stop()`."""

  backend = ""

  def __init__(self, models: Sequence[ServedModel], work_dir: str,
               max_batch_size: Optional[int] = None):
    if not models:
      raise ValueError("a runner needs at least one model")
    self.models = list(models)
    self.work_dir = work_dir
    self.max_batch_size = max_batch_size
    self.grpc_port = free_port()
    self.rest_port = free_port()
    while self.rest_port == self.grpc_port:
      self.rest_port = free_port()
    self.log_path = os.path.join(work_dir, f"{self.backend}-server.log")
    self._process: Optional[subprocess.Popen] = None

  @property
  def grpc_target(self) -> str:
    return f"{LOOPBACK}:{self.grpc_port}"

  @property
  def rest_target(self) -> str:
    return f"{LOOPBACK}:{self.rest_port}"

  @property
  def model_names(self) -> List[str]:
    return [m.name for m in self.models]

  def write_config_files(self, model_dir: Callable[[ServedModel], str] = lambda m: m.base_path,
                         config_dir: Optional[str] = None) -> List[str]:
    """Writes models.config (and batching_parameters.txt) into the work dir; returns the
    server flags naming them, as seen from `config_dir` (the server's view of the work dir)."""
    os.makedirs(self.work_dir, exist_ok=True)
    config = server_config.model_config(
        [(m.name, model_dir(m)) for m in self.models],
        versions={m.name: m.versions for m in self.models if m.versions})
    seen_from = config_dir or self.work_dir
    with open(os.path.join(self.work_dir, "models.config"), "w") as f:
      f.write(server_config.to_text(config))
    flags = [f"--model_config_file={seen_from}/models.config"]
    if self.max_batch_size is not None:
      with open(os.path.join(self.work_dir, "batching_parameters.txt"), "w") as f:
        f.write(server_config.to_text(server_config.batching_parameters(self.max_batch_size)))
      flags += ["--enable_batching", f"--batching_parameters_file={seen_from}/"
                                     f"batching_parameters.txt"]
    return flags

  @abc.abstractmethod
  def command(self) -> List[str]:
    """The command line that starts the server (writing its config files first)."""

  def environment(self) -> Dict[str, str]:
    return dict(os.environ)

  def start(self) -> None:
    command = self.command()
    log = open(self.log_path, "ab")
    log.write(f"$ {' '.join(command)}\n".encode())
    log.flush()
    try:
      self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, env=self.environment(),
                                       start_new_session=True)
    except OSError as e:
      raise ServerStartError(f"cannot start the {self.backend} server ({command[0]}): "
                             f"{e}") from e
    finally:
      log.close()

  def check_alive(self) -> None:
    """Raises ServerStartError when the server process has exited."""
    if self._process is None:
      raise ServerStartError(f"the {self.backend} server was never started")
    code = self._process.poll()
    if code is None:
      return
    lines = [l.strip() for l in self.log_text().splitlines() if l.strip()]
    # TF Serving (and the embedded server) log "Loading servable: {name: N version: V}
    # failed: ..." when a version cannot load, and name the servable when its base path has
    # no version: the model is at fault, and starting again cannot help.
    load_failures = [l for l in lines if ("Loading servable:" in l and "failed" in l)
                     or ("Failed to start server" in l and "servable" in l)]
    if load_failures:
      raise ModelLoadError(f"the {self.backend} server could not load the model and exited "
                           f"(code {code}): {load_failures[-1]}")
    failed = [l for l in lines if "failed" in l.lower()]
    raise ServerStartError(f"the {self.backend} server exited with code {code} before its "
                           f"models were AVAILABLE; "
                           f"{(failed or lines or ['its log is empty'])[-1]}")

  def stop(self) -> None:
    process, self._process = self._process, None
    if process is None or process.poll() is not None:
      return
    process.terminate()
    try:
      process.wait(timeout=15)
    except subprocess.TimeoutExpired:
      process.kill()
      process.wait(timeout=15)

  def log_text(self) -> str:
    try:
      with open(self.log_path, "rb") as f:
        return f.read().decode("utf-8", "replace")
    except FileNotFoundError:
      return ""

  def log_tail(self, lines: int = 60) -> str:
    return "\n".join(self.log_text().splitlines()[-lines:])

  def __enter__(self):
    self.start()
    return self

  def __exit__(self, *exc):
    self.stop()


class BinaryRunner(Runner):
  backend = "binary"

  def __init__(self, *args, binary: Optional[str] = None, **kwargs):
    super().__init__(*args, **kwargs)
    self.binary = binary or binary_path() or BINARY

  def command(self) -> List[str]:
    # The binary listens on every address (it has no bind flag); clients use 127.0.0.1.
    return [self.binary, f"--port={self.grpc_port}", f"--rest_api_port={self.rest_port}",
            "--max_num_load_retries=0", *self.write_config_files()]


class EmbeddedRunner(Runner):
  backend = "embedded"

  def command(self) -> List[str]:
    return [sys.executable, "-m", "serving.model_server", f"--port={self.grpc_port}",
            f"--rest_api_port={self.rest_port}", "--max_num_load_retries=0",
            *self.write_config_files()]

  def environment(self) -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PROJECT_ROOT, env.get("PYTHONPATH")) if p)
    return env


class DockerRunner(Runner):
  backend = "docker"

  def __init__(self, *args, image: str = DOCKER_IMAGE, **kwargs):
    super().__init__(*args, **kwargs)
    self.image = image
    self.container = f"smoke-test-{uuid.uuid4().hex[:12]}"

  def command(self) -> List[str]:
    flags = self.write_config_files(lambda m: f"{_CONTAINER_MODELS}/{m.name}",
                                    config_dir=_CONTAINER_CONFIG)
    mounts = []
    for model in self.models:
      mounts += ["-v", f"{os.path.abspath(model.base_path)}:{_CONTAINER_MODELS}/{model.name}:ro"]
    # The image's entrypoint adds --port=8500 --rest_api_port=8501; the config file then
    # overrides its --model_name / --model_base_path.
    return ["docker", "run", "--rm", "--name", self.container,
            "-p", f"{LOOPBACK}:{self.grpc_port}:{_CONTAINER_GRPC_PORT}",
            "-p", f"{LOOPBACK}:{self.rest_port}:{_CONTAINER_REST_PORT}",
            *mounts, "-v", f"{os.path.abspath(self.work_dir)}:{_CONTAINER_CONFIG}:ro",
            self.image, "--max_num_load_retries=0", *flags]

  def stop(self) -> None:
    if self._process is not None and self._process.poll() is None:
      subprocess.run(["docker", "stop", "--time", "5", self.container], capture_output=True,
                     timeout=60, check=False)
    super().stop()
    subprocess.run(["docker", "rm", "--force", self.container], capture_output=True,
                   timeout=60, check=False)


RUNNERS = {"binary": BinaryRunner, "docker": DockerRunner, "embedded": EmbeddedRunner}


def make_runner(backend: str, models: Sequence[ServedModel], work_dir: str,
                max_batch_size: Optional[int] = None) -> Runner:
  return RUNNERS[backend](models, work_dir, max_batch_size=max_batch_size)


def wait_until_available(grpc_target: str, model_names: Sequence[str], deadline_secs: float,
                         check_alive: Optional[Callable[[], None]] = None,
                         ) -> Dict[str, List[int]]:
  """Polls GetModelStatus until every model has an AVAILABLE version; returns them.

  A server that does not answer yet is polled again until the deadline (a slow start is not
  a failure); a version in END with an error status raises ModelLoadError; `check_alive`
  raises when the server process died.
  """
  deadline = time.monotonic() + deadline_secs
  last = "the server never answered"
  delay = 0.05
  with grpc.insecure_channel(grpc_target) as channel:
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    while True:
      if check_alive is not None:
        check_alive()
      available: Dict[str, List[int]] = {}
      for name in model_names:
        remaining = max(deadline - time.monotonic(), 0.1)
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = name
        try:
          response = stub.GetModelStatus(request, timeout=min(5.0, remaining))
        except grpc.RpcError as e:
          last = f"GetModelStatus({name}): {e.code().name}: {e.details()}"
          break
        for status in response.model_version_status:
          if status.state == _State.END and status.status.error_code != 0:
            raise ModelLoadError(
                f"model {name} version {status.version} failed to load (state END): "
                f"{_code_name(status.status.error_code)}: "
                f"{status.status.error_message}")
        ready = [s.version for s in response.model_version_status if s.state == _State.AVAILABLE]
        pending = [s for s in response.model_version_status
                   if s.state not in (_State.AVAILABLE, _State.END)]
        if ready and not pending:
          available[name] = sorted(ready)
        else:
          last = f"{name}: " + ", ".join(
              f"version {s.version} {_State.Name(s.state)}" for s in response.model_version_status)
          break
      if len(available) == len(model_names):
        return available
      if time.monotonic() >= deadline:
        raise ServerStartError(f"models {list(model_names)} not AVAILABLE at {grpc_target} "
                               f"within {deadline_secs:g}s; last status: {last}")
      time.sleep(min(delay, max(deadline - time.monotonic(), 0)))
      delay = min(delay * 1.5, 1.0)


def _code_name(number: int) -> str:
  return next((c.name for c in grpc.StatusCode if c.value[0] == number), f"code {number}")
