"""The versions a server holds, as TF Serving's AspiredVersionsManager keeps them: which are
aspired (asked for by a model's version policy over its base path), loading, available,
unloading or gone, and who is using them.

`sync` brings one model to a set of aspired versions the way TF Serving's
availability-preserving policy does: new versions load first (while the old keep serving),
then versions no longer aspired unload, unless that would leave the model with nothing
available. A version that failed to load is not retried while it stays aspired; it must leave
the base path and come back. Unloading waits for the requests in flight on that version: a
request holds its version through `acquire`, and a version is closed only once the last one
let go of it, so no request in flight fails because of a reload.
"""

import contextlib
import dataclasses
import threading
from concurrent import futures
from typing import Callable, Dict, Iterator, List, Mapping, Optional

import grpc
from absl import logging
from tensorflow_serving.apis import get_model_status_pb2

from serving.model_server.servable import Servable
from serving.model_server.status import ServingError, not_found

State = get_model_status_pb2.ModelVersionStatus.State
Loader = Callable[[str, int, str], Servable]  # (model name, version, dir) -> loaded


@dataclasses.dataclass
class Version:
  version: int
  path: str
  state: int = State.START
  error: Optional[ServingError] = None
  servable: Optional[Servable] = None
  in_flight: int = 0
  aspired: bool = True


class VersionManager:
  """Loads, serves and unloads versions of named models; thread-safe."""

  def __init__(self, loader: Loader, num_load_threads: int = 0,
               changed: Callable[[bool], None] = lambda unloaded: None):
    """`changed(unloaded)` is called after a sync or unload that loaded or unloaded a
    version."""
    self._loader = loader
    self._changed = changed
    self._num_load_threads = num_load_threads
    self._lock = threading.Condition()
    # One sync or unload of the versions at a time, so a poll and a reload never load the
    # same version twice; lookups only take `_lock`.
    self._changing = threading.Lock()
    self._models: Dict[str, Dict[int, Version]] = {}

  # -- loading and unloading -------------------------------------------------------------------

  def sync(self, name: str, aspired: Mapping[int, str]) -> List[ServingError]:
    """Makes `aspired` (version -> dir) the versions model `name` should serve; returns the
    errors of the versions that failed to load."""
    with self._changing:
      return self._sync(name, aspired)

  def _sync(self, name: str, aspired: Mapping[int, str]) -> List[ServingError]:
    with self._lock:
      versions = self._models.setdefault(name, {})
      to_load = []
      for number, path in aspired.items():
        known = versions.get(number)
        if known is None or (not known.aspired and known.state == State.END):
          versions[number] = known = Version(number, path)
          to_load.append(known)
        known.aspired = True
      for number, known in versions.items():
        if number not in aspired:
          known.aspired = False
    errors = self._load_all(name, sorted(to_load, key=lambda v: -v.version))
    unloaded = self._unload_unaspired(name)
    if unloaded or len(errors) < len(to_load):
      self._changed(unloaded > 0)
    return errors

  def _load_all(self, name: str, versions: List[Version]) -> List[ServingError]:
    if self._num_load_threads > 0 and len(versions) > 1:
      with futures.ThreadPoolExecutor(self._num_load_threads) as pool:
        results = list(pool.map(lambda v: self._load(name, v), versions))
    else:
      results = [self._load(name, v) for v in versions]
    return [error for error in results if error is not None]

  def _load(self, name: str, version: Version) -> Optional[ServingError]:
    self._set(version, State.LOADING)
    try:
      servable = self._loader(name, version.version, version.path)
    except ServingError as error:
      self._set(version, State.END, error)
      return error
    with self._lock:
      version.servable, version.state, version.error = servable, State.AVAILABLE, None
      self._lock.notify_all()
    return None

  def _unload_unaspired(self, name: str) -> int:
    with self._lock:
      versions = self._models.get(name, {})
      loaded = [v for v in versions.values() if v.state == State.AVAILABLE]
      keep_one = (any(v.aspired for v in versions.values())
                  and not any(v.aspired for v in loaded))
      leaving = sorted((v for v in loaded if not v.aspired), key=lambda v: v.version)
      if keep_one and leaving:
        # Nothing aspired is available (a new version failed to load): the newest old one
        # keeps serving, as TF Serving's availability-preserving policy keeps it.
        leaving = leaving[:-1]
    for version in leaving:
      self._unload(name, version)
    return len(leaving)

  def unload_model(self, name: str, closing: bool = False) -> None:
    """Unloads every version of `name`; its states stay for GetModelStatus."""
    with self._changing:
      with self._lock:
        versions = list(self._models.get(name, {}).values())
        for version in versions:
          version.aspired = False
        loaded = [v for v in versions if v.state == State.AVAILABLE]
      for version in loaded:
        self._unload(name, version)
      if loaded and not closing:
        self._changed(True)

  def _unload(self, name: str, version: Version) -> None:
    with self._lock:
      version.state = State.UNLOADING
      # New requests no longer see it; the ones holding it finish first.
      while version.in_flight:
        self._lock.wait()
      servable, version.servable = version.servable, None
    if servable is not None:
      servable.close()
    self._set(version, State.END)
    logging.info("Done unloading servable version {name: %s version: %d}", name,
                 version.version)

  def _set(self, version: Version, state: int, error: Optional[ServingError] = None) -> None:
    with self._lock:
      version.state, version.error = state, error
      self._lock.notify_all()

  def close(self) -> None:
    for name in list(self._models):
      self.unload_model(name, closing=True)

  # -- lookup ----------------------------------------------------------------------------------

  @contextlib.contextmanager
  def acquire(self, name: str, number: Optional[int], described: str) -> Iterator[Servable]:
    """The available version `number` (the highest when None) of `name`, held until the
    block ends; NOT_FOUND `Servable not found for request: <described>` otherwise."""
    with self._lock:
      versions = self._models.get(name, {})
      if number is None:
        version = max((v for v in versions.values() if v.state == State.AVAILABLE),
                      key=lambda v: v.version, default=None)
      else:
        version = versions.get(number)
      if version is None or version.state != State.AVAILABLE:
        raise not_found(f"Servable not found for request: {described}")
      version.in_flight += 1
      servable = version.servable
    try:
      yield servable
    finally:
      with self._lock:
        version.in_flight -= 1
        if version.state == State.UNLOADING:  # `_unload` waits for the last one out
          self._lock.notify_all()

  def versions(self, name: str) -> Dict[int, Version]:
    """A snapshot of every version of `name` the manager knows, gone ones included."""
    with self._lock:
      return {n: dataclasses.replace(v) for n, v in self._models.get(name, {}).items()}

  def available(self, name: str) -> List[int]:
    return sorted(n for n, v in self.versions(name).items() if v.state == State.AVAILABLE)


def load_failure(errors: Mapping[str, ServingError]) -> ServingError:
  """TF Serving's start-up error when servables did not become available."""
  described = "".join(f"{{{key} due to error: {error}}}, " for key, error in errors.items())
  return ServingError(grpc.StatusCode.UNKNOWN,
                      f"{len(errors)} servable(s) did not become available: {{{described}}}")
