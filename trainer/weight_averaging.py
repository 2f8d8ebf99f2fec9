"""Stochastic weight averaging (Izmailov et al., 2018): the mean of the weights visited late in
training, taken every few steps, generalizes better than the last weights alone.

`checkpoint_saver_hook` returns the chief's checkpoint saver with a listener that writes the
average into the variables just before the final checkpoint is saved, so the last checkpoint,
the evaluation after it and the export all see the averaged model and nothing else changes.
Snapshots are kept in memory (the model's trainable variables, not the optimizer's slots), so
averaging costs no checkpoint writes.
"""

from typing import List, Optional

import numpy as np
import tensorflow as tf

from trainer import checkpoint_saver


class WeightAveragingHook(tf.compat.v1.train.SessionRunHook):
  """Averages the trainable variables every `every_steps` steps from `start_step` on;
  `assign_average` writes the mean into them."""

  def __init__(self, start_step: int, every_steps: int):
    self._start_step = start_step
    self._every_steps = every_steps
    self._sums: Optional[List[np.ndarray]] = None
    self.snapshots = 0
    self._last_snapshot_step = -1

  def begin(self):
    self._variables = tf.compat.v1.trainable_variables()
    self._global_step = tf.compat.v1.train.get_global_step()
    self._averages = [tf.compat.v1.placeholder(v.dtype.base_dtype, v.shape)
                      for v in self._variables]
    self._assign = tf.group(*[v.assign(a) for v, a in zip(self._variables, self._averages)])

  def after_create_session(self, session, coord):
    self._step = int(session.run(self._global_step))

  def after_run(self, run_context, run_values):
    # Counted, not read: a read per step costs a session run per step (a tenth of the step
    # rate), and a read fetched with the step is unordered with the step's increment. On a
    # cluster this counts the chief's own steps.
    self._step += 1
    step = self._step
    if step >= self._start_step and (step - self._start_step) % self._every_steps == 0:
      self._snapshot(run_context.session, step)

  def _snapshot(self, session, step: int) -> None:
    if step == self._last_snapshot_step:
      return
    values = session.run(self._variables)
    if self._sums is None:
      self._sums = [np.array(v, dtype=np.float64) for v in values]
    else:
      for total, value in zip(self._sums, values):
        total += value
    self.snapshots += 1
    self._last_snapshot_step = step

  def assign_average(self, session, step: int) -> None:
    self._snapshot(session, step)
    session.run(self._assign, dict(zip(
        self._averages, [total / self.snapshots for total in self._sums])))
    tf.compat.v1.logging.info("Weight averaging: saving the mean of %d snapshots from step %d",
                              self.snapshots, self._start_step)


class _AverageBeforeFinalSave(tf.compat.v1.train.CheckpointSaverListener):

  def __init__(self, averaging: WeightAveragingHook, final_step: int):
    self._averaging = averaging
    self._final_step = final_step

  def before_save(self, session, global_step_value):
    if global_step_value >= self._final_step:
      self._averaging.assign_average(session, global_step_value)


def chief_hooks(model_dir: str, save_steps: int, start_step: int, every_steps: int,
                final_step: int) -> List[tf.compat.v1.train.SessionRunHook]:
  """The averaging hook and the chief's checkpoint saver that applies it (the estimator then
  makes no saver of its own, and adds its evaluation listener after ours)."""
  if not 0 <= start_step <= final_step or every_steps < 1:
    raise ValueError(f"weight averaging needs 0 <= start step <= final step and a period "
                     f">= 1, got {start_step}, {final_step}, {every_steps}")
  averaging = WeightAveragingHook(start_step, every_steps)
  return [averaging, checkpoint_saver.chief_saver_hook(
      model_dir, save_steps, listeners=[_AverageBeforeFinalSave(averaging, final_step)])]
