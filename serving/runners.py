"""Starts a model server to test, as TFX's InfraValidator does: the real TF Serving when it
can run, the embedded server otherwise.

- `BinaryRunner`: `tensorflow_model_server` from PATH, as a child process.
- `DockerRunner`: the `tensorflow/serving:2.15.1` image, through the Docker SDK, when a Docker
  engine answers.
- `EmbeddedRunner`: `python -m serving.model_server`, a child process, the default when
  neither is present.

All three get the same TF Serving flags: free ports on 127.0.0.1, a `--model_config_file`
written here, optional `--enable_batching` with a `--batching_parameters_file`, and
`--max_num_load_retries=0` (a model that fails to load fails the check at once instead of
after the binary's five one-minute retries). Readiness is `wait_until_available`: gRPC
ModelService.GetModelStatus polled until every model is AVAILABLE, END (a failed load) or a
dead server failing it, within a deadline.
"""

import abc
import dataclasses
import os
import shutil
import subprocess
import sys
import time
import uuid
from typing import Callable, Dict, List, Optional, Sequence

import docker
import grpc
import portpicker
import tenacity
from docker import errors as docker_errors
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.apis import model_service_pb2_grpc

from serving.errors import ModelLoadError, ServerStartError
from serving.model_server import config_files

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
  return portpicker.pick_unused_port()


def binary_path() -> Optional[str]:
  return shutil.which(BINARY)


def docker_client(timeout_secs: float = 10.0) -> Optional[docker.DockerClient]:
  """A client of the Docker engine DOCKER_HOST (or the local socket) names, if it answers."""
  try:
    client = docker.from_env(timeout=timeout_secs)
    client.ping()
  except (docker_errors.DockerException, OSError):
    return None
  return client


def docker_engine_answers(timeout_secs: float = 10.0) -> bool:
  client = docker_client(timeout_secs)
  if client is None:
    return False
  client.close()
  return True


def choose_backend(requested: str = "auto") -> str:
  """`auto` picks the real TF Serving when it can run (binary, then Docker), else embedded."""
  if requested not in BACKENDS + ("auto",):
    raise ValueError(f"unknown backend {requested!r}; use auto or one of {BACKENDS}")
  if requested == "binary" and not binary_path():
    raise ServerStartError(f"--backend=binary, but {BINARY} is not on PATH")
  if requested == "docker" and not docker_engine_answers():
    raise ServerStartError("--backend=docker, but no Docker engine answers (DOCKER_HOST or the local socket)")
  if requested != "auto":
    return requested
  if binary_path():
    return "binary"
  if docker_engine_answers():
    return "docker"
  return "embedded"


def _absolute(path: str) -> str:
  """TF Serving takes only absolute base paths (or URIs)."""
  return path if "://" in path else os.path.abspath(path)


class Runner(abc.ABC):
  """One server: `start()`, then `grpc_target` / `rest_target`, then `stop()`."""

  backend = ""

  def __init__(self, models: Sequence[ServedModel], work_dir: str,
               batching_parameters=None, prometheus_path: Optional[str] = None):
    if not models:
      raise ValueError("a runner needs at least one model")
    self.models = list(models)
    self.work_dir = work_dir
    self.batching_parameters = batching_parameters  # a BatchingParameters message: batching on
    self.prometheus_path = prometheus_path  # metrics on the REST port at this path
    self.grpc_port = free_port()
    self.rest_port = free_port()
    while self.rest_port == self.grpc_port:
      self.rest_port = free_port()

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
    config = config_files.model_config(
        [(m.name, _absolute(model_dir(m))) for m in self.models],
        versions={m.name: m.versions for m in self.models if m.versions})
    seen_from = config_dir or self.work_dir
    with open(os.path.join(self.work_dir, "models.config"), "w") as f:
      f.write(config_files.to_text(config))
    flags = [f"--model_config_file={seen_from}/models.config"]
    if self.batching_parameters is not None:
      with open(os.path.join(self.work_dir, "batching_parameters.txt"), "w") as f:
        f.write(config_files.to_text(self.batching_parameters))
      flags += ["--enable_batching", f"--batching_parameters_file={seen_from}/"
                                     f"batching_parameters.txt"]
    if self.prometheus_path is not None:
      monitoring = config_files.MonitoringConfig()
      monitoring.prometheus_config.enable = True
      monitoring.prometheus_config.path = self.prometheus_path
      with open(os.path.join(self.work_dir, "monitoring.config"), "w") as f:
        f.write(config_files.to_text(monitoring))
      flags.append(f"--monitoring_config_file={seen_from}/monitoring.config")
    return flags

  @property
  def metrics_url(self) -> str:
    """The Prometheus page (with `prometheus_path`)."""
    return f"http://{self.rest_target}{self.prometheus_path}"

  @abc.abstractmethod
  def start(self) -> None:
    """Starts the server (writing its config files first); raises ServerStartError."""

  @abc.abstractmethod
  def exit_code(self) -> Optional[int]:
    """None while the server runs; its exit code once it stopped."""

  @abc.abstractmethod
  def stop(self) -> None:
    """Stops the server, if it runs."""

  @abc.abstractmethod
  def log_text(self) -> str:
    """Everything the server logged."""

  def check_alive(self) -> None:
    """Raises ServerStartError (or ModelLoadError) when the server has exited."""
    code = self.exit_code()
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

  def log_tail(self, lines: int = 60) -> str:
    return "\n".join(self.log_text().splitlines()[-lines:])

  def __enter__(self):
    self.start()
    return self

  def __exit__(self, *exc):
    self.stop()


class _ProcessRunner(Runner):
  """A server run as a child process of this one, logging to a file in the work dir."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.log_path = os.path.join(self.work_dir, f"{self.backend}-server.log")
    self._process: Optional[subprocess.Popen] = None

  @abc.abstractmethod
  def command(self) -> List[str]:
    """The command line that starts the server (writing its config files first)."""

  def environment(self) -> Dict[str, str]:
    return dict(os.environ)

  def start(self) -> None:
    command = self.command()
    with open(self.log_path, "ab") as log:
      log.write(f"$ {' '.join(command)}\n".encode())
      log.flush()
      try:
        self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=self.environment(),
                                         start_new_session=True)
      except OSError as e:
        raise ServerStartError(f"cannot start the {self.backend} server ({command[0]}): "
                               f"{e}") from e

  def exit_code(self) -> Optional[int]:
    if self._process is None:
      raise ServerStartError(f"the {self.backend} server was never started")
    return self._process.poll()

  @property
  def pid(self) -> int:
    """The server process's id (for benchmarks that read its memory)."""
    if self._process is None:
      raise ServerStartError(f"the {self.backend} server was never started")
    return self._process.pid

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


class BinaryRunner(_ProcessRunner):
  backend = "binary"

  def __init__(self, *args, binary: Optional[str] = None, **kwargs):
    super().__init__(*args, **kwargs)
    self.binary = binary or binary_path() or BINARY

  def command(self) -> List[str]:
    # The binary listens on every address (it has no bind flag); clients use 127.0.0.1.
    return [self.binary, f"--port={self.grpc_port}", f"--rest_api_port={self.rest_port}",
            "--max_num_load_retries=0", *self.write_config_files()]


class EmbeddedRunner(_ProcessRunner):
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
  """The TF Serving image in a container of the Docker engine, with the models mounted
  read-only and the ports published on 127.0.0.1 only."""

  backend = "docker"

  def __init__(self, *args, image: str = DOCKER_IMAGE, **kwargs):
    super().__init__(*args, **kwargs)
    self.image = image
    self.container_name = f"smoke-test-{uuid.uuid4().hex[:12]}"
    self._client: Optional[docker.DockerClient] = None
    self._container = None
    self._last_log = ""

  def container_spec(self) -> Dict:
    """The arguments of `containers.run` (writing the config files first)."""
    flags = self.write_config_files(lambda m: f"{_CONTAINER_MODELS}/{m.name}",
                                    config_dir=_CONTAINER_CONFIG)
    volumes = {os.path.abspath(m.base_path): {"bind": f"{_CONTAINER_MODELS}/{m.name}",
                                              "mode": "ro"} for m in self.models}
    volumes[os.path.abspath(self.work_dir)] = {"bind": _CONTAINER_CONFIG, "mode": "ro"}
    # The image's entrypoint adds --port=8500 --rest_api_port=8501; the config file then
    # overrides its --model_name / --model_base_path.
    return {"image": self.image, "command": ["--max_num_load_retries=0", *flags],
            "name": self.container_name, "detach": True, "volumes": volumes,
            "ports": {f"{_CONTAINER_GRPC_PORT}/tcp": (LOOPBACK, self.grpc_port),
                      f"{_CONTAINER_REST_PORT}/tcp": (LOOPBACK, self.rest_port)}}

  def start(self) -> None:
    spec = self.container_spec()
    self._client = docker_client()
    if self._client is None:
      raise ServerStartError("no Docker engine answers (DOCKER_HOST or the local socket)")
    try:
      self._container = self._client.containers.run(**spec)
    except docker_errors.DockerException as e:
      raise ServerStartError(f"cannot start the {self.image} container: {e}") from e

  def exit_code(self) -> Optional[int]:
    if self._container is None:
      raise ServerStartError("the docker server was never started")
    try:
      self._container.reload()
    except docker_errors.NotFound:
      return -1
    if self._container.status in ("created", "running", "restarting"):
      return None
    return int(self._container.attrs["State"]["ExitCode"])

  def log_text(self) -> str:
    if self._container is not None:
      try:
        self._last_log = self._container.logs().decode("utf-8", "replace")
      except docker_errors.DockerException:
        pass
    return self._last_log

  def stop(self) -> None:
    container, self._container = self._container, None
    if container is not None:
      try:
        self._last_log = container.logs().decode("utf-8", "replace")
        container.stop(timeout=5)
      except docker_errors.DockerException:
        pass
      try:
        container.remove(force=True)
      except docker_errors.DockerException:
        pass
    if self._client is not None:
      self._client.close()
      self._client = None


RUNNERS = {"binary": BinaryRunner, "docker": DockerRunner, "embedded": EmbeddedRunner}


def make_runner(backend: str, models: Sequence[ServedModel], work_dir: str,
                batching_parameters=None) -> Runner:
  return RUNNERS[backend](models, work_dir, batching_parameters=batching_parameters)


class _NotAvailableYet(Exception):
  """A model has no AVAILABLE version yet (or the server does not answer yet)."""


def wait_until_available(grpc_target: str, model_names: Sequence[str], deadline_secs: float,
                         check_alive: Optional[Callable[[], None]] = None,
                         ) -> Dict[str, List[int]]:
  """Polls GetModelStatus until every model has an AVAILABLE version; returns them.

  A server that does not answer yet is polled again until the deadline (a slow start is not
  a failure); a version in END with an error status raises ModelLoadError; `check_alive`
  raises when the server died.
  """
  deadline = time.monotonic() + deadline_secs
  with grpc.insecure_channel(grpc_target) as channel:
    stub = model_service_pb2_grpc.ModelServiceStub(channel)

    def poll() -> Dict[str, List[int]]:
      if check_alive is not None:
        check_alive()
      return {name: _available_versions(stub, name, max(deadline - time.monotonic(), 0.1))
              for name in model_names}

    try:
      return tenacity.Retrying(
          retry=tenacity.retry_if_exception_type(_NotAvailableYet),
          wait=tenacity.wait_exponential(multiplier=0.05, exp_base=1.5, max=1.0),
          stop=tenacity.stop_before_delay(deadline_secs), reraise=True)(poll)
    except _NotAvailableYet as last:
      raise ServerStartError(f"models {list(model_names)} not AVAILABLE at {grpc_target} "
                             f"within {deadline_secs:g}s; last status: {last}") from None


def _available_versions(stub, name: str, remaining_secs: float) -> List[int]:
  request = get_model_status_pb2.GetModelStatusRequest()
  request.model_spec.name = name
  try:
    response = stub.GetModelStatus(request, timeout=min(5.0, remaining_secs))
  except grpc.RpcError as e:
    raise _NotAvailableYet(f"GetModelStatus({name}): {e.code().name}: {e.details()}") from None
  for status in response.model_version_status:
    if status.state == _State.END and status.status.error_code != 0:
      raise ModelLoadError(
          f"model {name} version {status.version} failed to load (state END): "
          f"{_code_name(status.status.error_code)}: {status.status.error_message}")
  ready = [s.version for s in response.model_version_status if s.state == _State.AVAILABLE]
  pending = [s for s in response.model_version_status
             if s.state not in (_State.AVAILABLE, _State.END)]
  if not ready or pending:
    raise _NotAvailableYet(f"{name}: " + ", ".join(
        f"version {s.version} {_State.Name(s.state)}" for s in response.model_version_status))
  return sorted(ready)


def _code_name(number: int) -> str:
  return next((c.name for c in grpc.StatusCode if c.value[0] == number), f"code {number}")
