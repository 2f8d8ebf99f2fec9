"""The chief's checkpoint saver saves on schedule without a session run of its own per step."""

import pytest
import tensorflow as tf
from tensorflow.python.client import session as session_lib

from trainer import checkpoint_saver


def train_counting_session_runs(model_dir, saver, steps, monkeypatch):
  """Trains `steps` steps with `saver`; returns how many session runs happened in all."""
  runs = []
  original = session_lib.BaseSession.run

  def counted(self, *args, **kwargs):
    runs.append(1)
    return original(self, *args, **kwargs)

  with tf.Graph().as_default():
    global_step = tf.compat.v1.train.get_or_create_global_step()
    weight = tf.compat.v1.get_variable("weight", initializer=0.0)
    with tf.control_dependencies([weight.assign_add(1.0)]):
      train_op = global_step.assign_add(1)
    with tf.compat.v1.train.MonitoredTrainingSession(
        hooks=[saver(), tf.compat.v1.train.StopAtStepHook(last_step=steps)],
        save_summaries_steps=None, log_step_count_steps=None) as session:
      monkeypatch.setattr(session_lib.BaseSession, "run", counted)
      while not session.should_stop():
        session.run(train_op)
      monkeypatch.setattr(session_lib.BaseSession, "run", original)
  return len(runs)


def saved_steps(model_dir):
  state = tf.train.get_checkpoint_state(model_dir)
  return [int(p.rsplit("-", 1)[1]) for p in state.all_model_checkpoint_paths]


def test_saves_every_n_steps_with_one_session_run_per_step(tmp_path, monkeypatch):
  model_dir = str(tmp_path / "ours")
  runs = train_counting_session_runs(
      model_dir, lambda: checkpoint_saver.chief_saver_hook(model_dir, save_steps=10), 40,
      monkeypatch)
  stock_dir = str(tmp_path / "stock")
  stock_runs = train_counting_session_runs(
      stock_dir, lambda: tf.compat.v1.train.CheckpointSaverHook(stock_dir, save_steps=10), 40,
      monkeypatch)
  # Saving adds a few runs (the step read and the save) at steps 10, 20, 30 and 40.
  assert runs <= 40 + 4 * 3
  assert stock_runs >= 2 * 40, "the stock hook's extra read per step is what this avoids"
  assert saved_steps(model_dir)[-3:] == saved_steps(stock_dir)[-3:] == [20, 30, 40]


@pytest.mark.parametrize("save_steps", [7, 10])
def test_the_last_step_is_saved_on_and_off_a_save_boundary(tmp_path, monkeypatch, save_steps):
  model_dir = str(tmp_path)
  train_counting_session_runs(
      model_dir, lambda: checkpoint_saver.chief_saver_hook(model_dir, save_steps), 30,
      monkeypatch)
  assert saved_steps(model_dir)[-1] == 30
