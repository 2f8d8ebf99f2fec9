"""Train -> evaluate -> export, each step leaving an artifact on disk in the job dir.

Job dir layout (the census-sample convention, so TensorBoard points at the job dir):
  hub_module/               the text-embedding module built from the training corpus
  checkpoint, model.ckpt-*  the estimator's checkpoints and summaries (eval/ for eval)
  eval_report.json          accuracy, macro-F1, per-intent precision/recall, confusions
  export/<model>/<version>/ the TF Serving servable
"""

import dataclasses
import time
from typing import Dict

import tensorflow as tf
from absl import logging

from export import artifact_io
from export import servable
from trainer import evaluation
from trainer import inputs
from trainer import model
from trainer import text_module
from trainer.config import TrainerConfig

_WARMUP_TEXTS = 64


@dataclasses.dataclass(frozen=True)
class TrainResult:
  module_path: str
  checkpoint_path: str
  eval_report_path: str
  eval_report: Dict
  train_examples: int
  train_seconds: float
  estimator: tf.estimator.Estimator


@dataclasses.dataclass(frozen=True)
class PipelineResult:
  train: TrainResult
  export_dir: str


def module_dir(config: TrainerConfig) -> str:
  return artifact_io.join(config.job_dir, "hub_module")


def export_base(config: TrainerConfig) -> str:
  return artifact_io.join(config.job_dir, "export", config.model_name)


def load_data(config: TrainerConfig):
  train = inputs.read_examples(config.train_files, config.data_format, config.train_split)
  evaluation_examples = inputs.read_examples(
      config.eval_files, config.data_format, config.eval_split)
  evaluation_examples, dropped = inputs.check_eval_labels(
      train, evaluation_examples, config.drop_unseen_eval_labels)
  if dropped:
    logging.warning("Dropped %d eval examples whose labels never appear in training: %s",
                    sum(dropped.values()), dropped)
  return train, evaluation_examples


def ensure_text_module(config: TrainerConfig, train_texts) -> str:
  """The user's module, or ours built once per job dir (reused when a job resumes)."""
  if config.hub_module:
    return config.hub_module
  path = module_dir(config)
  if tf.io.gfile.exists(artifact_io.join(path, "tfhub_module.pb")):
    logging.info("Reusing the text module in %s", path)
    return path
  started = time.time()
  text_module.build_text_module(train_texts, config.text_module, path, seed=config.seed)
  logging.info("Built the text module in %s (%.1fs)", path, time.time() - started)
  return path


def make_estimator(config: TrainerConfig, module_path: str, labels) -> tf.estimator.Estimator:
  run_config = tf.estimator.RunConfig(
      model_dir=config.job_dir,
      tf_random_seed=config.seed,
      save_checkpoints_steps=config.save_checkpoints_steps,
      keep_checkpoint_max=3,
      log_step_count_steps=100)
  return model.build_estimator(config.model, module_path, labels, run_config)


def train(config: TrainerConfig, train_examples, eval_examples) -> TrainResult:
  """Trains (resuming from the job dir's latest checkpoint) and writes the eval report."""
  labels = inputs.label_vocabulary(train_examples)
  module_path = ensure_text_module(config, [e.text for e in train_examples])
  estimator = make_estimator(config, module_path, labels)
  steps = config.steps_for(len(train_examples))
  started = time.time()
  tf.estimator.train_and_evaluate(
      estimator,
      tf.estimator.TrainSpec(
          inputs.make_input_fn(train_examples, config.batch_size, shuffle=True,
                               seed=config.seed),
          max_steps=steps),
      tf.estimator.EvalSpec(
          inputs.make_input_fn(eval_examples, config.batch_size, shuffle=False, num_epochs=1),
          steps=None, start_delay_secs=0, throttle_secs=config.eval_throttle_secs))
  train_seconds = time.time() - started

  predictions = estimator.predict(
      inputs.make_input_fn(eval_examples, config.batch_size, shuffle=False, num_epochs=1),
      predict_keys=["classes"])
  predicted = [p["classes"][0].decode("utf-8") for p in predictions]
  report = evaluation.classification_report([e.intent for e in eval_examples], predicted)
  report_path = artifact_io.join(config.job_dir, "eval_report.json")
  evaluation.write_report(report_path, report)
  for line in evaluation.summary_lines(report):
    logging.info("%s", line)
  return TrainResult(module_path, estimator.latest_checkpoint(), report_path, report,
                     len(train_examples), train_seconds, estimator)


def export(config: TrainerConfig, result: TrainResult, warmup_texts) -> str:
  return servable.export_servable(result.estimator, export_base(config), warmup_texts,
                                  text_feature=model.TEXT_FEATURE,
                                  checkpoint_path=result.checkpoint_path)


def run(config: TrainerConfig) -> PipelineResult:
  train_examples, eval_examples = load_data(config)
  train_result = train(config, train_examples, eval_examples)
  export_dir = export(config, train_result, [e.text for e in eval_examples[:_WARMUP_TEXTS]])
  logging.info("Exported the servable to %s", export_dir)
  return PipelineResult(train_result, export_dir)
