"""Points the trainer's flags at Banking77, read in place from ../shared/datasets."""

import os

from absl import flags

from trainer import task  # noqa: F401  (defines the flags whose defaults change here)

DATASET = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "..", "shared", "datasets", "banking77")


def use_as_default_data() -> None:
  """Train on train.csv, evaluate on test.csv; an empty --job-dir means a fresh temp dir."""
  flags.FLAGS.set_default("train_files", os.path.join(DATASET, "train.csv"))
  flags.FLAGS.set_default("eval_files", os.path.join(DATASET, "test.csv"))
  flags.FLAGS.set_default("job-dir", "")
