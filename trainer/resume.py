"""What a job dir's checkpoints and text module were made with, so that a rerun with other
shapes is refused instead of mixed in.

tf.estimator resumes from any checkpoint in its model_dir, and its Saver restores a variable
without checking its shape: a job dir trained with 256 hidden units, rerun with 512, skips
training and exports a graph whose variables do not fit it. The text module in the job dir is
reused the same way. Settings that only steer training (rates, dropout, seed, steps) may change
between runs; those that shape a variable, a slot or the module may not.
"""

import dataclasses
import json
from typing import Dict, Sequence

import tensorflow as tf
from absl import logging

from export import artifact_io
from trainer.config import TrainerConfig

RECORD_NAME = "trainer_shapes.json"


class IncompatibleJobDirError(ValueError):
  """The job dir holds state made with other shaping settings."""


def shaping_settings(config: TrainerConfig, labels: Sequence[str]) -> Dict:
  """As JSON reads them back (tuples as lists), so a record compares equal to its run."""
  model = config.model
  return json.loads(json.dumps({
      "hidden_units": model.hidden_units, "batch_norm": model.batch_norm,
      "optimizer": model.optimizer, "train_embeddings": model.train_embeddings,
      "embedding_optimizer": model.embedding_optimizer, "hub_module": config.hub_module,
      "text_module": None if config.hub_module else dataclasses.asdict(config.text_module),
      "labels": list(labels)}))


def _describe(value) -> str:
  if isinstance(value, list) and len(value) > 6:
    return f"{len(value)} entries starting {value[:3]}"
  return json.dumps(value)


def check_and_record(config: TrainerConfig, labels: Sequence[str], module_dir: str) -> None:
  """Refuses a job dir made with other shaping settings; records them in a new one.
  `module_dir` is where the job keeps the text module it builds."""
  path = artifact_io.join(config.model_dir, RECORD_NAME)
  wanted = shaping_settings(config, labels)
  if tf.io.gfile.exists(path):
    with tf.io.gfile.GFile(path) as f:
      recorded = json.load(f)
    differences = [f"{key}: {_describe(recorded.get(key))} there, {_describe(value)} now"
                   for key, value in wanted.items() if recorded.get(key) != value]
    if differences:
      raise IncompatibleJobDirError(
          f"{config.model_dir} holds a model trained with other settings ("
          + "; ".join(differences) + f", recorded in {path}). Resuming would mix the two; "
          "give another --job-dir, or delete this one to start over.")
    return
  if tf.io.gfile.exists(config.model_dir) and (
      tf.train.latest_checkpoint(config.model_dir)
      or tf.io.gfile.exists(module_dir)):
    logging.warning("%s holds a checkpoint or text module but no %s (made by an older "
                    "trainer): its settings cannot be checked against this run's, and this "
                    "run's are recorded from now on", config.model_dir, RECORD_NAME)
  tf.io.gfile.makedirs(config.model_dir)
  artifact_io.write_atomic(path, json.dumps(wanted, indent=2, sort_keys=True) + "\n")
