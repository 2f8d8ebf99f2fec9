"""The training-step profile: step times, the pauses between steps, the traced op time."""

import time

import pytest
import tensorflow as tf

from trainer import step_profile


class PauseAfter(tf.compat.v1.train.SessionRunHook):
  """Stands in for a checkpoint save: sleeps after the given step."""

  def __init__(self, step, seconds):
    self._step, self._seconds, self._runs = step, seconds, 0

  def after_run(self, run_context, run_values):
    self._runs += 1
    if self._runs == self._step:
      time.sleep(self._seconds)


def run_steps(hooks, steps, work=lambda: tf.reduce_sum(tf.random.uniform([64, 64]))):
  with tf.Graph().as_default():
    counter = tf.compat.v1.get_variable("counter", initializer=0.0, use_resource=True)
    train_op = counter.assign_add(work())
    with tf.compat.v1.train.MonitoredSession(hooks=hooks) as session:
      for _ in range(steps):
        session.run(train_op)


def test_steps_pauses_and_traced_op_time_are_told_apart():
  profiler = step_profile.StepProfileHook(trace_from=5, traced_steps=3, pause_secs=0.05)
  run_steps([profiler, PauseAfter(step=8, seconds=0.2)], steps=12)
  summary = profiler.summary()
  assert summary["steps"] == 12
  assert summary["traced_steps"] == 3
  assert len(profiler.step_seconds) == 9, "traced steps are left out of the step times"
  assert [p.after_step for p in profiler.pauses] == [8]
  assert profiler.pauses[0].seconds >= 0.2
  assert summary["pauses"]["seconds"] >= 0.2
  ops = {entry["op"]: entry for entry in summary["top_ops"]}
  assert "RandomUniform" in ops and "AssignAddVariableOp" in ops
  assert sum(entry["share"] for entry in summary["top_ops"]) <= 1.001  # each share is rounded
  assert summary["step_ms"]["median"] > 0


def test_the_cores_a_step_keeps_busy_are_told():
  def sleepy(x):
    time.sleep(0.02)
    return x

  busy = step_profile.StepProfileHook(trace_from=1, traced_steps=0)
  run_steps([busy], steps=20, work=lambda: tf.reduce_sum(tf.matmul(
      tf.random.uniform([400, 400]), tf.random.uniform([400, 400]))))
  idle = step_profile.StepProfileHook(trace_from=1, traced_steps=0)
  run_steps([idle], steps=10, work=lambda: tf.numpy_function(sleepy, [tf.constant(1.0)],
                                                             tf.float32))
  assert busy.summary()["step_ms"]["cores_busy"] > 0.5
  assert idle.summary()["step_ms"]["cores_busy"] < 0.2, "a sleeping step keeps no core busy"


def test_no_trace_window_still_times_steps():
  profiler = step_profile.StepProfileHook(trace_from=1, traced_steps=0)
  run_steps([profiler], steps=4)
  summary = profiler.summary()
  assert summary["traced_steps"] == 0 and summary["top_ops"] == []
  assert len(profiler.step_seconds) == 4


@pytest.mark.parametrize("arguments", [{"trace_from": 0}, {"traced_steps": -1},
                                       {"pause_secs": 0}])
def test_a_meaningless_window_is_refused(arguments):
  with pytest.raises(ValueError, match="StepProfileHook needs"):
    step_profile.StepProfileHook(**arguments)


def test_the_input_pipeline_is_timed_alone():
  def input_fn():
    return tf.data.Dataset.range(10_000).map(lambda n: tf.strings.as_string(n)).batch(8)
  seconds = step_profile.input_batch_seconds(input_fn, batches=50, warmup=5)
  assert 0 < seconds < 1
