"""The one loader: where a run executes, and that its deadline holds wherever it does."""

import gc
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

from export import servable as servable_lib
from export.servable import SessionServable
from tests import tiny_models


def doubler(version_dir):
  """y = 2x, a graph without loops."""
  graph = tf.Graph()
  with graph.as_default():
    x = tf.compat.v1.placeholder(tf.float32, [None, 1], name="x")
    y = tf.multiply(x, 2.0, name="y")
    info = tf.compat.v1.saved_model.utils.build_tensor_info
    signature = tf.compat.v1.saved_model.signature_def_utils.build_signature_def(
        {"x": info(x)}, {"y": info(y)}, tf.saved_model.PREDICT_METHOD_NAME)
    with tf.compat.v1.Session(graph=graph) as session:
      builder = tf.compat.v1.saved_model.Builder(version_dir)
      builder.add_meta_graph_and_variables(session, [tf.saved_model.SERVING],
                                           signature_def_map={"serving_default": signature})
      builder.save()
  return version_dir


def test_one_row_runs_on_the_caller_thread_and_more_rows_go_to_the_pool():
  assert servable_lib.runs_on_caller_thread([np.zeros((1, 3))])
  assert servable_lib.runs_on_caller_thread([np.array(5)])
  assert not servable_lib.runs_on_caller_thread([np.zeros((1, 3)), np.zeros((2, 3))])


def test_either_thread_gives_the_same_answers(tmp_path):
  with SessionServable(doubler(str(tmp_path / "1"))) as servable:
    assert not servable.has_loops
    for rows in ([[1.5]], [[1.0], [2.0], [3.0]]):
      fed = np.array(rows, np.float32)
      inline = servable.callable("serving_default", ["x"], ["y"], 1000, caller_thread=True)
      pooled = servable.callable("serving_default", ["x"], ["y"], 1000)
      np.testing.assert_array_equal(inline(fed)[0], pooled(fed)[0])
      np.testing.assert_array_equal(servable.run("serving_default", {"x": rows})["y"],
                                    2 * fed)


def test_a_run_that_ends_past_its_deadline_fails_as_a_cancelled_one_would():
  def slow(*values):
    time.sleep(0.05)
    return values
  timed = servable_lib._past_deadline_fails(slow, timeout_ms=10)
  with pytest.raises(tf.errors.DeadlineExceededError, match="Timed out waiting for notification"):
    timed(1)
  assert servable_lib._past_deadline_fails(slow, timeout_ms=5000)(1) == (1,)


def test_a_graph_with_loops_keeps_the_pool_so_a_deadline_still_cancels_it(tmp_path):
  with SessionServable(tiny_models.half_plus_two(str(tmp_path / "1"), extras=True)) as servable:
    assert servable.has_loops
    run = servable.callable("count_to", ["n"], ["count"], 200, caller_thread=True)
    raised = []

    def endless():
      try:
        run(np.array(10**12, np.int64))
      except tf.errors.DeadlineExceededError as e:
        raised.append(e)
    worker = threading.Thread(target=endless, daemon=True)
    worker.start()
    worker.join(30)
    assert raised, "the run was not cancelled at its deadline"


@pytest.fixture
def collections_counted():
  """The garbage collections that start while the test runs, with the collector eager
  (a collection after every allocation) so that any unpaused stretch has some."""
  started = []

  def count(phase, info):
    if phase == "start":
      started.append(info["generation"])
  threshold = gc.get_threshold()
  gc.set_threshold(1)
  gc.callbacks.append(count)
  try:
    yield started
  finally:
    gc.callbacks.remove(count)
    gc.set_threshold(*threshold)


def test_no_garbage_collection_runs_while_a_version_loads(tmp_path, monkeypatch,
                                                          collections_counted):
  version_dir = doubler(str(tmp_path / "1"))
  load = tf.compat.v1.saved_model.load
  during_load = []

  def counted_load(*args, **kwargs):
    before = len(collections_counted)
    loaded = load(*args, **kwargs)
    during_load.append(len(collections_counted) - before)
    return loaded
  monkeypatch.setattr(tf.compat.v1.saved_model, "load", counted_load)
  with SessionServable(version_dir) as servable:
    assert gc.isenabled()
    loaded = len(collections_counted)
    servable.run("serving_default", {"x": [[1.0]]})
    assert len(collections_counted) > loaded  # the collector runs again once loaded
  assert during_load == [0]


def test_a_failed_load_leaves_the_collector_as_it_was(tmp_path):
  was = gc.isenabled()
  try:
    for enabled in (True, False):
      gc.enable() if enabled else gc.disable()
      with pytest.raises(servable_lib.ServableError):
        SessionServable(str(tmp_path / "missing"))
      assert gc.isenabled() == enabled
  finally:
    gc.enable() if was else gc.disable()
