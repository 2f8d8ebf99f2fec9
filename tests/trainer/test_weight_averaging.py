"""Stochastic weight averaging: the final checkpoint holds the mean of the snapshots."""

import numpy as np
import pytest
import tensorflow as tf

from trainer import weight_averaging


def train_counter(model_dir, start_step, every_steps, final_step, save_steps):
  """A 'model' whose weight is the number of steps taken, trained to `final_step`."""
  with tf.Graph().as_default():
    global_step = tf.compat.v1.train.get_or_create_global_step()
    weight = tf.compat.v1.get_variable("weight", initializer=0.0)
    with tf.control_dependencies([weight.assign_add(1.0)]):
      train_op = global_step.assign_add(1)
    hooks = weight_averaging.chief_hooks(model_dir, save_steps, start_step, every_steps,
                                         final_step)
    hooks.append(tf.compat.v1.train.StopAtStepHook(last_step=final_step))
    with tf.compat.v1.train.MonitoredTrainingSession(
        checkpoint_dir=None, hooks=hooks, save_summaries_steps=None) as session:
      while not session.should_stop():
        session.run(train_op)
  return tf.train.load_checkpoint(model_dir)


@pytest.mark.parametrize("save_steps", [7, 10])  # final step off and on a save boundary
def test_final_checkpoint_holds_the_mean_of_the_snapshots(tmp_path, save_steps):
  reader = train_counter(str(tmp_path), start_step=10, every_steps=5, final_step=30,
                         save_steps=save_steps)
  assert reader.get_tensor("global_step") == 30
  # Snapshots after steps 10, 15, 20, 25 and 30, where the weight equals the step.
  assert reader.get_tensor("weight") == pytest.approx(np.mean([10, 15, 20, 25, 30]))


def test_checkpoints_before_the_final_step_are_not_averaged(tmp_path):
  train_counter(str(tmp_path), start_step=10, every_steps=5, final_step=30, save_steps=20)
  assert tf.train.load_checkpoint(str(tmp_path / "model.ckpt-20")).get_tensor("weight") == 20


def test_an_impossible_schedule_is_refused():
  with pytest.raises(ValueError, match="weight averaging"):
    weight_averaging.chief_hooks("unused", 10, start_step=40, every_steps=5, final_step=30)
