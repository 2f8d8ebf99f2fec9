"""Fixtures shared by the embedded server's test modules."""

import pytest

from tests.serving.helpers import grpc_stubs


@pytest.fixture(scope="module")
def stubs(server):
  """gRPC stubs to the module's own `server` fixture."""
  result = grpc_stubs(server.grpc_port)
  yield result
  result.close()
