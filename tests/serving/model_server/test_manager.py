"""VersionManager on stand-in servables: which version a request gets, and unloading that
waits for the requests holding a version."""

import threading

import grpc
import pytest

from serving.model_server.manager import State, VersionManager
from serving.model_server.status import ServingError


class _Servable:
  def __init__(self, name, version):
    self.name = name
    self.version = version
    self.closed = threading.Event()

  def close(self):
    self.closed.set()


def _manager(*numbers):
  manager = VersionManager(lambda name, version, path: _Servable(name, version))
  assert manager.sync("m", {n: f"/models/m/{n}" for n in numbers}) == []
  return manager


def test_latest_is_the_highest_available_version_and_a_specific_one_is_that_one():
  manager = _manager(3, 7, 5)
  with manager.acquire("m", None, "Latest(m)") as servable:
    assert (servable.name, servable.version) == ("m", 7)
  with manager.acquire("m", 5, "Specific(m, 5)") as servable:
    assert servable.version == 5


@pytest.mark.parametrize("name, number, described", [
    ("m", 4, "Specific(m, 4)"), ("other", None, "Latest(other)")])
def test_a_version_or_model_not_served_is_not_found(name, number, described):
  manager = _manager(3)
  with pytest.raises(ServingError) as raised:
    with manager.acquire(name, number, described):
      pass
  assert raised.value.code == grpc.StatusCode.NOT_FOUND
  assert raised.value.message == f"Servable not found for request: {described}"


def test_unloading_waits_for_the_request_holding_the_version_then_closes_it():
  manager = _manager(1)
  with manager.acquire("m", 1, "Specific(m, 1)") as servable:
    unloading = threading.Thread(target=manager.unload_model, args=("m",), daemon=True)
    unloading.start()
    while manager.versions("m")[1].state != State.UNLOADING:
      unloading.join(0.01)
    assert not servable.closed.wait(0.2)  # held: not closed under the request
    with pytest.raises(ServingError):  # and no new request gets it
      with manager.acquire("m", 1, "Specific(m, 1)"):
        pass
  unloading.join(10)
  assert not unloading.is_alive()
  assert servable.closed.is_set()
  assert manager.versions("m")[1].state == State.END


def test_releasing_a_version_that_stays_loaded_leaves_it_available():
  manager = _manager(1)
  for _ in range(3):
    with manager.acquire("m", None, "Latest(m)"):
      pass
  assert manager.versions("m")[1].state == State.AVAILABLE
  assert manager.versions("m")[1].in_flight == 0
