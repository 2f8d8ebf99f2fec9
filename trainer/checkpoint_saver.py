"""The chief's checkpoint saver, made here rather than left to the estimator."""

from typing import Sequence

import tensorflow as tf


def chief_saver_hook(model_dir: str, save_steps: int,
                     listeners: Sequence[tf.compat.v1.train.CheckpointSaverListener] = ()
                     ) -> tf.compat.v1.train.CheckpointSaverHook:
  """A saver every `save_steps` steps that reads the global step only when a save is due.

  Left at its default of a million steps per session run, the hook cannot trust the
  global step it fetched with the step, so it reads it again with a session run of its
  own after every step: a tenth of a Banking77 training step. Estimator training runs one
  step per session run; on a cluster the fetched step may trail the others' steps, which
  only delays a save until this task sees the step count reach it. The setter is private
  (distribution strategies call it); this is the one place that uses it.
  """
  saver = tf.compat.v1.train.CheckpointSaverHook(model_dir, save_steps=save_steps,
                                                 listeners=list(listeners))
  saver._set_steps_per_run(1)  # pylint: disable=protected-access
  return saver
