"""Fixtures shared by every test package (helpers are in tests/helpers.py), and the test
process's logging: pytest is its entry point."""

import os

# Before TensorFlow's first import, whose C++ start-up lines would otherwise precede the
# test report; subprocesses the tests start inherit it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from tests.helpers import small_config  # noqa: E402
from trainer import pipeline  # noqa: E402

_SLOW_FIXTURES = {"trained"}


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
  """The pipeline's result (train + export) on the bundled data."""
  return pipeline.run(small_config(tmp_path_factory.mktemp("job")))


def pytest_collection_modifyitems(items):
  # A test that needs the trained model waits for training: it belongs to the slow tier.
  for item in items:
    if _SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
      item.add_marker(pytest.mark.slow)
