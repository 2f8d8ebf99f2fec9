"""The models a server serves, as TF Serving's ServerCore manages them: config, loading,
polling, reloading, version lookup, status and metadata. The APIs run on the versions it hands
out are predict.py, classify.py, regress.py and multi_inference.py.

Models come from a ModelServerConfig, checked as TF Serving's ServerCore checks it. Each is a
base path of numeric version dirs (`export.versions`) of which the version policy picks the
ones to serve (`loading.aspired_versions`); `manager.VersionManager` loads them (with
`loading.VersionLoader`: retries, batching, warmup) and unloads them. After start-up the base
paths are polled every --file_system_poll_wait_seconds, so new versions load and removed ones
unload, and a new config (HandleReloadConfigRequest, or the config file polled every
--model_config_file_poll_wait_seconds) is applied in full: models missing from it unload.

As the real server does at start-up, `load()` fails when any version fails to load. Unlike the
real server, a base path with no version to load fails at once instead of waiting forever for
one to appear, so a bad model dir gives an error, never a hang.
"""

import dataclasses
import threading
from typing import ContextManager, Dict, List, Optional, Sequence, Tuple

import grpc
from absl import logging
from tensorflow.core.protobuf import config_pb2
from tensorflow_serving.apis import get_model_metadata_pb2
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.apis import model_pb2
from tensorflow_serving.config import model_server_config_pb2

from export.servable import SERVE_TAG
from serving.model_server import batching
from serving.model_server import config_files
from serving.model_server import inference
from serving.model_server import loading
from serving.model_server import memory
from serving.model_server import tensors
from serving.model_server.manager import State, VersionManager, load_failure
from serving.model_server.monitoring import Metrics
from serving.model_server.servable import Servable
from serving.model_server.status import ServingError, invalid_argument, not_found

SIGNATURE_DEF_FIELD = "signature_def"
ModelConfig = model_server_config_pb2.ModelConfig


@dataclasses.dataclass(frozen=True)
class CoreOptions:
  """`batching_parameters` (a BatchingParameters message) is set when batching is on (TF
  Serving's --enable_batching); the rest are tensorflow_model_server's flags of the same
  names."""
  batching_parameters: Optional[object] = None
  enable_per_model_batching_parameters: bool = False
  enable_model_warmup: bool = True
  num_request_iterations_for_warmup: int = 0
  warmup_timeouts_ms: Tuple[Optional[int], ...] = (None,)
  max_num_load_retries: int = 5
  load_retry_interval_secs: float = 60.0
  file_system_poll_wait_seconds: int = 1
  model_config_file: str = ""
  model_config_file_poll_wait_seconds: int = 0
  saved_model_tags: Tuple[str, ...] = (SERVE_TAG,)
  session_config: Optional[config_pb2.ConfigProto] = None
  enable_signature_method_name_check: bool = False
  allow_version_labels_for_unavailable_models: bool = False
  num_load_threads: int = 0
  limits: tensors.Limits = tensors.Limits()


class ServerCore:
  """Loads the configured models, keeps them current, and hands out their loaded versions
  (thread-safe). `checks` are the settings of the APIs run on them."""

  def __init__(self, config: model_server_config_pb2.ModelServerConfig,
               options: CoreOptions = CoreOptions(), metrics: Optional[Metrics] = None):
    config_files.check_model_config(config)
    self.options = options
    self.metrics = metrics or Metrics()
    self._config = config
    self._labels: Dict[str, Dict[str, int]] = {}
    self._config_lock = threading.RLock()
    self._stopped = threading.Event()
    self._pollers: List[threading.Thread] = []
    self._batching = None
    if options.batching_parameters is not None:
      self._batching = batching.Batching(options.batching_parameters,
                                         options.enable_per_model_batching_parameters,
                                         self.metrics)
    self.checks = inference.Checks(options.enable_signature_method_name_check, options.limits)
    loader = loading.VersionLoader(
        loading.LoadOptions(
            tags=options.saved_model_tags, session_config=options.session_config,
            enable_model_warmup=options.enable_model_warmup,
            warmup_iterations=max(options.num_request_iterations_for_warmup, 1),
            warmup_timeouts_ms=options.warmup_timeouts_ms,
            max_num_load_retries=options.max_num_load_retries,
            load_retry_interval_secs=options.load_retry_interval_secs),
        self.checks, self.metrics, self._batching)
    self._manager = VersionManager(loader, options.num_load_threads,
                                   changed=memory.freeze_loaded)

  @property
  def model_names(self) -> List[str]:
    with self._config_lock:
      return [m.name for m in self._config.model_config_list.config]

  def _models(self) -> List[ModelConfig]:
    with self._config_lock:
      return list(self._config.model_config_list.config)

  # -- loading, polling, reloading -------------------------------------------------------------

  def load(self) -> None:
    """Loads every aspired version; raises the first failure, as TF Serving fails to start."""
    models = self._models()
    self._check_labels(models)
    aspired = {model.name: loading.aspired_versions(model) for model in models}
    failures = {}
    for model in models:
      for error in self._manager.sync(model.name, aspired[model.name]):
        failures[self._failed_version(model.name)] = error
    if failures:
      raise load_failure(failures)
    self._labels = {m.name: dict(m.version_labels) for m in models}

  def _failed_version(self, name: str) -> str:
    ended = [n for n, v in self._manager.versions(name).items()
             if v.state == State.END and v.error is not None]
    return f"{{name: {name} version: {max(ended) if ended else '?'}}}"

  def _check_labels(self, models: Sequence[ModelConfig]) -> None:
    """TF Serving assigns a label only to an available version, unless allowed otherwise;
    an allowed label may still not move to another version that is not available."""
    for model in models:
      available = set(self._manager.available(model.name))
      current = self._labels.get(model.name, {})
      for label, number in model.version_labels.items():
        if number in available:
          continue
        if (self.options.allow_version_labels_for_unavailable_models
            and current.get(label, number) == number):
          continue
        raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                           f"Request to assign label to version {number} of model "
                           f"{model.name}, which is not currently available for inference")

  def start_polling(self) -> None:
    """Polls the base paths (and the config file) as the flags say, until `close()`."""
    if self.options.file_system_poll_wait_seconds > 0:
      self._start_poller("file_system_poller", self.options.file_system_poll_wait_seconds,
                         self.poll_file_system)
    if self.options.model_config_file and self.options.model_config_file_poll_wait_seconds > 0:
      self._start_poller("model_config_file_poller",
                         self.options.model_config_file_poll_wait_seconds, self.poll_config_file)

  def _start_poller(self, name: str, interval_secs: float, poll) -> None:
    def loop():
      while not self._stopped.wait(interval_secs):
        poll()

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    self._pollers.append(thread)

  def poll_file_system(self) -> None:
    """One poll of every base path: new versions load, versions no longer aspired unload."""
    for model in self._models():
      try:
        aspired = loading.aspired_versions(model)
      except loading.NoVersions as e:
        if e.code == grpc.StatusCode.NOT_FOUND:
          aspired = {}  # the base path exists but holds none: TF Serving unloads them all
        else:
          logging.error("FileSystemStoragePathSource encountered a filesystem access error: "
                        "%s", e.message)
          continue
      for error in self._manager.sync(model.name, aspired):
        logging.error("Servable %s cannot be loaded: %s", model.name, error)

  def poll_config_file(self) -> None:
    try:
      config = config_files.read_model_config_file(self.options.model_config_file)
    except ServingError as e:
      logging.error("Failed to read ModelServerConfig file: %s", e.message)
      return
    with self._config_lock:
      unchanged = config == self._config
    if unchanged:
      return
    try:
      self.reload_config(config)
    except ServingError as e:
      logging.error("PollFilesystemAndReloadConfig failed to ReloadConfig: %s", e)

  def reload_config(self, config: model_server_config_pb2.ModelServerConfig) -> None:
    """Serves exactly the models of `config`: missing ones unload, new ones load (this waits
    for them), the others follow their new policy and labels."""
    if config.WhichOneof("config") is None:
      logging.info("Taking no action for empty config.")
      return
    if config.WhichOneof("config") != "model_config_list":
      raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                         "Cannot transition to requested config. It is only legal to "
                         "transition from one ModelConfigList to another.")
    config_files.check_model_config(config)
    with self._config_lock:
      old = {m.name for m in self._config.model_config_list.config}
      models = list(config.model_config_list.config)
      for model in models:
        logging.info(" (Re-)adding model: %s", model.name)
      added = [m for m in models if m.name not in old]
      failures = {}
      for model in models:
        try:
          aspired = loading.aspired_versions(model)
        except loading.NoVersions as e:
          if model in added:
            failures[f"{{name: {model.name}}}"] = e
          continue
        for error in self._manager.sync(model.name, aspired):
          if model in added:
            failures[self._failed_version(model.name)] = error
      for name in old - {m.name for m in models}:
        self._manager.unload_model(name)
      self._check_labels(models)
      self._config = config
      self._labels = {m.name: dict(m.version_labels) for m in models}
    if failures:
      raise ServingError(grpc.StatusCode.UNKNOWN,
                         load_failure(failures).message.replace("servable(s)", "model(s)", 1))

  def close(self) -> None:
    self._stopped.set()
    for thread in self._pollers:
      thread.join(timeout=60)
    self._manager.close()
    if self._batching is not None:
      self._batching.close()

  # -- lookup ----------------------------------------------------------------------------------

  def servable(self, spec: model_pb2.ModelSpec) -> ContextManager[Servable]:
    """The loaded version a ModelSpec asks for (ServerCore::GetServableHandle), held until
    the block ends, so it cannot unload under the request."""
    if not spec.name:
      raise invalid_argument("ModelSpec has no name specified.")
    choice = spec.WhichOneof("version_choice")
    if choice == "version_label":
      with self._config_lock:
        number = self._labels.get(spec.name, {}).get(spec.version_label)
      if number is None:
        raise invalid_argument(f"Unrecognized servable version label: {spec.version_label}")
      described = f"Specific({spec.name}, {number})"
    elif choice == "version":
      number, described = spec.version.value, f"Specific({spec.name}, {spec.version.value})"
    else:
      number, described = None, f"Latest({spec.name})"
    return self._manager.acquire(spec.name, number, described)

  # -- status and metadata ---------------------------------------------------------------------

  def model_status(self, request: get_model_status_pb2.GetModelStatusRequest
                   ) -> get_model_status_pb2.GetModelStatusResponse:
    if not request.HasField("model_spec"):
      raise invalid_argument("Missing ModelSpec")
    spec = request.model_spec
    versions = self._manager.versions(spec.name)
    if spec.HasField("version"):
      wanted = spec.version.value
      if wanted not in versions:
        raise not_found(f"Could not find version {wanted} of model {spec.name}")
      versions = {wanted: versions[wanted]}
    elif not versions:
      raise not_found(f"Could not find any versions of model {spec.name}")
    response = get_model_status_pb2.GetModelStatusResponse()
    for number in sorted(versions):
      version = versions[number]
      status = response.model_version_status.add(version=number, state=version.state)
      status.status.SetInParent()  # TF Serving always sends the status, OK included
      if version.error is not None:
        status.status.error_code = version.error.code.value[0]
        status.status.error_message = version.error.message
    return response

  def model_metadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest
                     ) -> get_model_metadata_pb2.GetModelMetadataResponse:
    if not request.HasField("model_spec"):
      raise invalid_argument("Missing ModelSpec")
    if not request.metadata_field:
      raise invalid_argument("GetModelMetadataRequest must specify at least one "
                             "metadata_field")
    for field in request.metadata_field:
      if field != SIGNATURE_DEF_FIELD:
        raise invalid_argument(f"Metadata field {field} is not supported")
    with self.servable(request.model_spec) as servable:
      response = get_model_metadata_pb2.GetModelMetadataResponse()
      response.model_spec.name = servable.name
      response.model_spec.version.value = servable.version
      signature_map = get_model_metadata_pb2.SignatureDefMap()
      for name, signature in servable.signatures.items():
        signature_map.signature_def[name].CopyFrom(signature)
    response.metadata[SIGNATURE_DEF_FIELD].Pack(signature_map)
    return response
