"""Fixtures shared by the embedded server's test modules."""

import pytest

from serving.model_server import config_files
from serving.model_server.core import CoreOptions, ServerCore
from tests import tiny_models
from tests.serving.helpers import grpc_stubs


@pytest.fixture(scope="module")
def stubs(server):
  """gRPC stubs to the module's own `server` fixture."""
  result = grpc_stubs(server.grpc_port)
  yield result
  result.close()


@pytest.fixture
def core_with(tmp_path):
  """Makes a loaded ServerCore over half_plus_two, batching as the given parameters say
  (None: off), with the given warmup records and core options; closes them at the end."""
  made = []

  def make(batching_parameters=None, name="half_plus_two", warmup_logs=None, **options):
    base = tmp_path / f"{name}-{len(made)}"
    tiny_models.half_plus_two(str(base / "1"), warmup_logs=warmup_logs)
    core = ServerCore(config_files.single_model_config(name, str(base)),
                      CoreOptions(batching_parameters=batching_parameters,
                                  max_num_load_retries=0, **options))
    core.load()
    made.append(core)
    return core

  yield make
  for core in made:
    core.close()
