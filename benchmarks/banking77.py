"""Points the trainer's flags at Banking77, read in place from ../shared/datasets."""

import os

from absl import flags

from trainer import command

DATASET = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "..", "shared", "datasets", "banking77")


def define_trainer_flags() -> None:
  """The trainer's flags, defaulting to train on train.csv and evaluate on test.csv; an empty
  --job-dir means a fresh temp dir."""
  command.define_flags()
  flags.FLAGS.set_default("train_files", os.path.join(DATASET, "train.csv"))
  flags.FLAGS.set_default("eval_files", os.path.join(DATASET, "test.csv"))
  flags.FLAGS.set_default("job-dir", "")
