"""The pipeline: train -> export -> optimize -> smoke test -> push, each stage run here and
recorded in ML Metadata, each leaving an artifact on disk in the job dir.

Job dir layout (the census-sample convention, so TensorBoard points at the job dir):
  metadata.sqlite           ML Metadata lineage of every run (unless --metadata_db / MySQL)
  optimized/<model>/<version>/  the optimized servable (and its .report/)
  smoke_test/<version>/     the smoke test's verdict.json and BLESSED / NOT_BLESSED marker
  hub_module/               the text-embedding module built from the training corpus
  hub_module.ready          written once the module is complete; other cluster tasks wait for it
  checkpoint, model.ckpt-*  the estimator's checkpoints and summaries (eval/ for eval)
  eval_report.json          accuracy, macro-F1, per-intent precision/recall, confusions, and
                            calibration (expected calibration error, reliability bins)
  calibration.png           reliability diagram and confidence histograms of the eval set
  export/<model>/<version>/ the TF Serving servable
Vertex AI's AIP_* variables move parts of it elsewhere (see trainer/cloud.py).

On a TF_CONFIG cluster every task runs `run`: tf.estimator.train_and_evaluate's
between-graph parameter-server runtime does the distribution. Only the chief (or legacy
master) builds the hub module, writes the eval report, exports and reports the tuning
metric; workers, parameter servers and the evaluator wait for its module and then only
take their part in train_and_evaluate.
"""

import dataclasses
import functools
import itertools
import time
from typing import Callable, Dict, Optional, Sequence

import tenacity
import tensorflow as tf
from absl import logging

from export import artifact_io
from export import evaluation_sample as evaluation_sample_lib
from export import exporter
from export import out_of_scope
from lineage import push
from lineage import schema
from lineage import store
from lineage.record import Recorder
from optimize import guard
from optimize import optimizer
from optimize import recorded as recorded_optimize
from serving.smoke_test import recorded as recorded_smoke_test
from trainer import cached_tokens
from trainer import checkpoint_saver
from trainer import cloud
from trainer import evaluation
from trainer import inputs
from trainer import model
from trainer import resume
from trainer import text_module
from trainer import weight_averaging
from trainer.config import TrainerConfig

_WARMUP_TEXTS = 64
_CHIEF_POLL_SECS = 1.0


@dataclasses.dataclass(frozen=True)
class TrainResult:
  """What `train` left behind; the report fields are None on tasks other than the chief."""
  module_path: str
  checkpoint_path: Optional[str]
  eval_report_path: Optional[str]
  eval_report: Optional[Dict]
  train_examples: int
  train_seconds: float
  estimator: tf.estimator.Estimator


@dataclasses.dataclass(frozen=True)
class PipelineResult:
  """What the run left on disk; everything but `train` is None on tasks other than the chief."""
  train: TrainResult
  export_dir: Optional[str]
  optimized_dir: Optional[str] = None
  verdict_path: Optional[str] = None
  pushed_dir: Optional[str] = None


class StageError(RuntimeError):
  """A stage after training refused the model; its execution is recorded as such."""


def module_dir(config: TrainerConfig) -> str:
  # Beside the checkpoints: the directory every cluster task must share anyway.
  return artifact_io.join(config.model_dir, "hub_module")


def module_ready_marker(config: TrainerConfig) -> str:
  return module_dir(config) + ".ready"


def export_base(config: TrainerConfig) -> str:
  return config.export_dir or artifact_io.join(config.job_dir, "export", config.model_name)


def evaluation_sample(config: TrainerConfig, eval_examples, train_examples):
  """The real requests the export carries for the optimizer's guard (see
  export/evaluation_sample.py), as (text, intent or None): eval examples stratified by
  intent, labelled where the model can answer their intent (out-of-scope ones are not),
  then training texts unlabelled to fill the sample. Agreement between two models needs no
  label and no held-out data, and the bundled eval set alone (154 rows) is too small to
  vouch for 99.5 % agreement (598 rows are needed at 95 %)."""
  size = evaluation_sample_lib.DEFAULT_SIZE
  chosen = evaluation_sample_lib.stratified(eval_examples, lambda e: e.intent, size,
                                            seed=config.seed)
  rows, seen = [], set()
  for example, labelled in itertools.chain(
      ((e, e.intent != config.oos_label) for e in chosen),
      ((e, False) for e in train_examples)):
    if len(rows) == size:
      break
    if example.text not in seen:
      seen.add(example.text)
      rows.append((example.text, example.intent if labelled else None))
  return rows


def load_data(config: TrainerConfig):
  """(training examples, eval examples): out-of-scope examples (--oos_label) are left out of
  training and kept, after the in-scope ones, for evaluation."""
  train = inputs.read_examples(config.train_files, config.data_format, config.train_split)
  train, left_out = inputs.split_out_of_scope(train, config.oos_label)
  if left_out:
    logging.info("Left %d out-of-scope (%s) examples out of training", len(left_out),
                 config.oos_label)
  if not train:
    raise inputs.DataError(f"{config.train_files}: no in-scope training example")
  in_scope, out_of_scope_examples = inputs.split_out_of_scope(
      inputs.read_examples(config.eval_files, config.data_format, config.eval_split),
      config.oos_label)
  in_scope, dropped = inputs.check_eval_labels(train, in_scope, config.drop_unseen_eval_labels)
  if dropped:
    logging.warning("Dropped %d eval examples whose labels never appear in training: %s",
                    sum(dropped.values()), dropped)
  return train, in_scope + out_of_scope_examples


def predict_top(estimator: tf.estimator.Estimator, examples, batch_size: int):
  """(top class, its probability) of each example."""
  if not examples:
    return []
  top = []
  for prediction in estimator.predict(
      inputs.make_input_fn(examples, batch_size, shuffle=False, num_epochs=1),
      predict_keys=["classes", "probabilities"]):
    top.append((prediction["classes"][0].decode("utf-8"), float(max(prediction["probabilities"]))))
  return top


def ensure_text_module(config: TrainerConfig, train_texts,
                       environment: Optional[cloud.JobEnvironment] = None) -> str:
  """The user's module, or ours built once per job by the chief (reused when a job resumes).

  `environment` defaults to this process's TF_CONFIG, which the estimator follows too.
  Other cluster tasks wait for the chief's ready marker rather than for the module's
  files: on gs:// a directory rename copies object by object, so files appear one by one.
  """
  if config.hub_module:
    return config.hub_module
  environment = environment or cloud.from_environ()
  path = module_dir(config)
  if not environment.is_chief:
    marker = module_ready_marker(config)
    _wait_for_chief(config, environment, "text module", marker,
                    lambda: tf.io.gfile.exists(marker))
    return path
  if tf.io.gfile.exists(artifact_io.join(path, "tfhub_module.pb")):
    logging.info("Reusing the text module in %s", path)
  else:
    started = time.time()
    text_module.build_text_module(train_texts, config.text_module, path, seed=config.seed)
    logging.info("Built the text module in %s (%.1fs)", path, time.time() - started)
  if not tf.io.gfile.exists(module_ready_marker(config)):
    artifact_io.write_atomic(module_ready_marker(config), "")
  return path


def _wait_for_chief(config: TrainerConfig, environment: cloud.JobEnvironment, what: str,
                    where: str, ready: Callable[[], bool]) -> None:
  logging.info("%s: waiting up to %ds for the chief's %s (%s)",
               environment.name, config.chief_wait_secs, what, where)
  try:
    tenacity.Retrying(retry=tenacity.retry_if_result(lambda done: not done),
                      wait=tenacity.wait_fixed(_CHIEF_POLL_SECS),
                      stop=tenacity.stop_after_delay(config.chief_wait_secs))(ready)
  except tenacity.RetryError:
    raise TimeoutError(
        f"{environment.name}: the chief's {what} did not appear within "
        f"{config.chief_wait_secs}s (waited for {where}). Is the chief running, and do "
        f"all tasks get the same --job-dir on storage they all can reach (gs://, not a "
        f"local path, across machines)?") from None


def make_estimator(config: TrainerConfig, module_path: str, labels,
                   train_steps: int) -> tf.estimator.Estimator:
  """The estimator; its RunConfig also reads TF_CONFIG, which is what makes it distributed."""
  run_config = tf.estimator.RunConfig(
      model_dir=config.model_dir,
      tf_random_seed=config.seed,
      save_checkpoints_steps=config.save_checkpoints_steps,
      keep_checkpoint_max=3,
      log_step_count_steps=100,
      experimental_max_worker_delay_secs=config.max_worker_delay_secs)
  run_config = model.training_session_config(run_config)
  return model.build_estimator(
      config.model, module_path, labels, run_config, train_steps,
      weighted=bool(config.class_balance),
      cached_ids_of=config.text_module if config.trains_on_cached_tokens() else None)


def _train_shard(run_config: tf.estimator.RunConfig) -> Dict[str, int]:
  """One training-input shard per chief/worker; ps and evaluator never read training data.

  Not `global_id_in_cluster`: that also counts an evaluator listed in the cluster.
  """
  if (run_config.task_type not in (cloud.CHIEF, cloud.MASTER, cloud.WORKER)
      or run_config.num_worker_replicas < 2):
    return {"num_shards": 1, "shard_index": 0}
  index = run_config.task_id + 1 if run_config.task_type == cloud.WORKER else 0
  return {"num_shards": run_config.num_worker_replicas, "shard_index": index}


def train_input_fn(config: TrainerConfig, train_examples,
                   run_config: tf.estimator.RunConfig, module_path: str):
  """The training input: this task's shard, shuffled, augmented and weighted, and
  tokenized once with the module's vocabulary when training reads cached ids."""
  tokenizer = None
  if config.trains_on_cached_tokens():
    vocabulary_files = text_module.module_vocabulary_files(module_path, config.text_module)
    tokenizer = functools.partial(cached_tokens.Tokenizer, model.TEXT_FEATURE,
                                  config.text_module, vocabulary_files)
  weights = None
  if config.class_balance:
    weights = inputs.class_balance_weights(train_examples, config.class_balance)
  # Each worker reads its own shard: with one shuffle seed they would all feed the same
  # batches in the same order.
  return inputs.make_input_fn(train_examples, config.batch_size, shuffle=True,
                              seed=config.seed, token_dropout=config.token_dropout,
                              weights=weights, tokenizer=tokenizer,
                              **_train_shard(run_config))


def train(config: TrainerConfig, train_examples, eval_examples,
          environment: Optional[cloud.JobEnvironment] = None,
          hooks: Sequence[tf.compat.v1.train.SessionRunHook] = ()) -> TrainResult:
  """Trains (resuming from the latest checkpoint); the chief also writes the eval report.
  `hooks` run first among the training hooks, on every task.

  A parameter server never returns from here: tf.estimator's `ps` task serves until it
  is killed.
  """
  environment = environment or cloud.from_environ()
  eval_examples, out_of_scope_examples = inputs.split_out_of_scope(eval_examples,
                                                                   config.oos_label)
  labels = inputs.label_vocabulary(train_examples)
  if environment.is_chief:
    resume.check_and_record(config, labels, module_dir(config))
  module_path = ensure_text_module(config, [e.text for e in train_examples], environment)
  steps = config.steps_for(len(train_examples))
  estimator = make_estimator(config, module_path, labels, steps)
  if environment.task_type == cloud.WORKER:
    # A worker that finds the variables on the ps uninitialized re-checks only every 30 s
    # (MonitoredTrainingSession's fixed recovery wait); the chief saves its first
    # checkpoint right after initializing them.
    _wait_for_chief(config, environment, "first checkpoint", config.model_dir,
                    lambda: bool(estimator.latest_checkpoint()))
  # Evaluation weighs every example alike: its loss and accuracy are the plain ones.
  eval_weights = [1.0] * len(eval_examples) if config.class_balance else None
  eval_input_fn = inputs.make_input_fn(eval_examples, config.batch_size, shuffle=False,
                                       num_epochs=1, weights=eval_weights)
  train_hooks = list(hooks)
  if config.tensorboard_dir and environment.is_chief:
    train_hooks.append(cloud.SummariesToDirHook(config.tensorboard_dir,
                                                every_steps=estimator.config.save_summary_steps))
  if config.weight_averaging_start and environment.is_chief:
    train_hooks.extend(weight_averaging.chief_hooks(
        config.model_dir, config.save_checkpoints_steps,
        start_step=int(config.weight_averaging_start * steps),
        every_steps=config.weight_averaging_steps, final_step=steps))
  elif environment.is_chief:
    train_hooks.append(checkpoint_saver.chief_saver_hook(config.model_dir,
                                                         config.save_checkpoints_steps))
  started = time.time()
  tf.estimator.train_and_evaluate(
      estimator,
      tf.estimator.TrainSpec(train_input_fn(config, train_examples, estimator.config,
                                            module_path),
                             max_steps=steps, hooks=train_hooks),
      tf.estimator.EvalSpec(eval_input_fn, steps=None, start_delay_secs=0,
                            throttle_secs=config.eval_throttle_secs))
  train_seconds = time.time() - started
  if not environment.is_chief:
    return TrainResult(module_path, None, None, None, len(train_examples), train_seconds,
                       estimator)

  if environment.task_type == cloud.CHIEF and not environment.has_evaluator:
    # A distributed chief never evaluates and no evaluator task will: evaluate the final
    # checkpoint once, so the tuning service finds the metric in the eval summaries.
    estimator.evaluate(eval_input_fn)
  predicted, confidences = zip(*predict_top(estimator, eval_examples, config.batch_size))
  report = evaluation.classification_report([e.intent for e in eval_examples], predicted,
                                            confidences=confidences)
  if config.oos_label:
    report["out_of_scope"] = {"label": config.oos_label, **evaluation.out_of_scope_threshold(
        [p == e.intent for p, e in zip(predicted, eval_examples)], confidences,
        [score for _, score in predict_top(estimator, out_of_scope_examples, config.batch_size)],
        config.oos_target_precision)}
  report_path = artifact_io.join(config.job_dir, "eval_report.json")
  chart_path = artifact_io.join(config.job_dir, "calibration.png")
  evaluation.write_calibration_chart(chart_path, report["calibration"])
  report["calibration"]["chart"] = chart_path
  evaluation.write_report(report_path, report)
  for line in evaluation.summary_lines(report):
    logging.info("%s", line)
  checkpoint_path = estimator.latest_checkpoint()
  global_step = int(checkpoint_path.rsplit("-", 1)[1])
  if config.tensorboard_dir:
    cloud.write_scalars(artifact_io.join(config.tensorboard_dir, "eval"), global_step,
                        {cloud.METRIC_TAG: report["accuracy"], "macro_f1": report["macro_f1"]})
  if cloud.report_tuning_metric(report["accuracy"], global_step):
    logging.info("Reported %s=%.4f to the tuning service", cloud.METRIC_TAG, report["accuracy"])
  return TrainResult(module_path, checkpoint_path, report_path, report,
                     len(train_examples), train_seconds, estimator)


def oos_threshold(report: Dict) -> Optional[out_of_scope.OutOfScopeThreshold]:
  """The out-of-scope threshold of an eval report; None without --oos_label."""
  oos = report.get("out_of_scope") if report else None
  if not oos:
    return None
  return out_of_scope.OutOfScopeThreshold(oos["label"], oos["threshold"],
                                          oos["target_precision"])


def export(config: TrainerConfig, result: TrainResult, warmup_texts, sample=()) -> str:
  return exporter.export_servable(result.estimator, export_base(config), warmup_texts,
                                  text_feature=model.TEXT_FEATURE,
                                  checkpoint_path=result.checkpoint_path,
                                  oos_threshold=oos_threshold(result.eval_report),
                                  sample=sample,
                                  sample_sources=[config.eval_files, config.train_files])


def hyperparameters(config: TrainerConfig) -> Dict:
  return {"model": dataclasses.asdict(config.model),
          "text_module": dataclasses.asdict(config.text_module),
          "hub_module": config.hub_module, "batch_size": config.batch_size,
          "train_steps": config.train_steps, "num_epochs": config.num_epochs,
          "seed": config.seed, "token_dropout": config.token_dropout,
          "class_balance": config.class_balance,
          "weight_averaging_start": config.weight_averaging_start,
          "weight_averaging_steps": config.weight_averaging_steps}


def run(config: TrainerConfig, environment: Optional[cloud.JobEnvironment] = None,
        lineage_store: Optional[store.StoreConfig] = None) -> PipelineResult:
  """train -> export -> optimize -> smoke test -> push, each recorded in ML Metadata.

  Only the chief goes past training. Lineage goes to `lineage_store` (default: SQLite in
  the job dir); each stage is an execution that ends COMPLETE or FAILED with the reason.
  """
  environment = environment or cloud.from_environ()
  train_examples, eval_examples = load_data(config)
  if not environment.is_chief:
    return PipelineResult(train(config, train_examples, eval_examples, environment), None)
  recorder = Recorder(store.open_store(lineage_store or store.store_config(config.job_dir)),
                      experiment=config.job_dir)
  labels = len(inputs.label_vocabulary(train_examples))
  data = {"train_data": schema.dataset(config.train_files, "train", len(train_examples), labels),
          "eval_data": schema.dataset(config.eval_files, "eval", len(eval_examples),
                                      len(inputs.label_vocabulary(eval_examples)))}
  with recorder.execution(schema.TRAIN, inputs=data,
                          params={"hyperparameters": hyperparameters(config)}) as step:
    train_result = train(config, train_examples, eval_examples, environment)
    if tf.io.gfile.isdir(train_result.module_path):
      step.output("hub_module", schema.hub_module(train_result.module_path))
    global_step = int(train_result.checkpoint_path.rsplit("-", 1)[1])
    trained = step.output("model", schema.model(config.model_dir, train_result.checkpoint_path,
                                                global_step))
    report = train_result.eval_report
    calibration_error = report["calibration"]["expected_calibration_error"]
    oos = report.get("out_of_scope")
    oos_figures = {"oos_threshold": oos["threshold"], "oos_recall": oos["out_of_scope_recall"],
                   "in_scope_accuracy": oos["in_scope_accuracy"]} if oos else {}
    step.results(accuracy=report["accuracy"], macro_f1=report["macro_f1"],
                 metrics={**{k: report[k] for k in ("accuracy", "macro_f1", "confusion_pairs")},
                          "expected_calibration_error": calibration_error,
                          **({"out_of_scope": oos} if oos else {})},
                 expected_calibration_error=calibration_error,
                 train_examples=len(train_examples), eval_examples=len(eval_examples),
                 train_seconds=train_result.train_seconds, global_step=global_step,
                 **{k: v for k, v in oos_figures.items() if v is not None})

  warmup_texts = [e.text for e in eval_examples[:_WARMUP_TEXTS]]
  with recorder.execution(schema.EXPORT, inputs={"model": trained},
                          params={"model_name": config.model_name,
                                  "export_base": export_base(config)}) as step:
    sample = evaluation_sample(config, eval_examples, train_examples)
    export_dir = export(config, train_result, warmup_texts, sample)
    step.results(warmup_records=len(exporter.warmup_logs(warmup_texts)),
                 evaluation_sample_examples=len(sample),
                 evaluation_sample_labelled=sum(label is not None for _, label in sample))
    final = step.output("exported_model", schema.exported_model(export_dir, config.model_name))
  logging.info("Exported the servable to %s", export_dir)
  version = export_dir.rstrip("/").rsplit("/", 1)[1]

  optimized_dir = None
  if config.optimize:
    optimized_dir = artifact_io.join(config.job_dir, "optimized", config.model_name, version)
    try:
      # No evaluation file: the guard judges the sample the export carries, as it does for
      # anyone who optimizes this export later, anywhere.
      optimized, final = recorded_optimize.optimize(
          recorder, final, optimized_dir, optimizer.OptimizeSettings(
              transforms=config.transforms,
              guard=guard.GuardSettings(min_agreement=config.min_agreement)),
          config.model_name)
    except optimizer.OptimizeError as e:
      raise StageError(f"optimize: {e}") from e
    for line in optimizer.summary(optimized):
      logging.info("%s", line)
    logging.info("Optimized: %s", optimized_dir)

  verdict_path = None
  if config.smoke_test:
    verdict, _ = recorded_smoke_test.smoke_test_version(
        recorder, final, config.model_name,
        output_dir=artifact_io.join(config.job_dir, "smoke_test", version),
        backend=config.smoke_test_backend, log=lambda line: logging.info("smoke test: %s", line),
        expected_oos_threshold=report["out_of_scope"]["threshold"] if oos else None)
    verdict_path = verdict.verdict_path
    if not verdict.blessed:
      raise StageError(f"the smoke test did not bless {final.uri}: {verdict.reason} "
                       f"(verdict: {verdict_path})")

  pushed_dir = None
  if config.push_to:
    try:
      pushed_dir = push.push(recorder, final, config.push_to).version_dir
    except push.PushRefused as e:
      raise StageError(f"push: {e}") from e
  return PipelineResult(train_result, export_dir, optimized_dir, verdict_path, pushed_dir)
