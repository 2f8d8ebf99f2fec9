"""Where this trainer process runs: its TF_CONFIG role, its tuning trial, Vertex AI's dirs.

Read once at the entry point (`from_environ`) and passed down. `tf.estimator.RunConfig`
reads the same TF_CONFIG to run the cluster; this module only decides what the project's
code does around that runtime: which task builds the hub module, evaluates for the report,
exports and reports the tuning metric, and where outputs go.

Output directories, highest precedence first:
  checkpoints, estimator summaries, hub module:  AIP_CHECKPOINT_DIR > <job-dir>
  export base (versions below it):               AIP_MODEL_DIR > <job-dir>/export/<model_name>
  TensorBoard:                                   AIP_TENSORBOARD_LOG_DIR (in addition to the
                                                 checkpoint dir, where tf.estimator always writes)
  eval_report.json:                              <job-dir>
where <job-dir> is --job-dir, plus /<trial> in an AI Platform hyperparameter-tuning trial
(TF_CONFIG task.trial). Vertex AI already puts the trial id into its AIP_* paths.
"""

import dataclasses
import json
import os
from typing import Mapping, Optional, Tuple

import tensorflow as tf

from export import artifact_io
from trainer.config import TrainerConfig

CHIEF = "chief"
MASTER = "master"  # the chief's name in AI Platform's older TF_CONFIG
WORKER = "worker"
PS = "ps"
EVALUATOR = "evaluator"
ROLES = (CHIEF, MASTER, WORKER, PS, EVALUATOR)

# The eval summary tag AI Platform's tuning service reads (hptuning_config.yaml names it)
# and the tag reported through cloudml-hypertune: the canned classifier's eval accuracy.
METRIC_TAG = "accuracy"


@dataclasses.dataclass(frozen=True)
class JobEnvironment:
  task_type: Optional[str] = None  # None: a single process, no cluster
  task_index: int = 0
  cluster_jobs: Tuple[str, ...] = ()
  trial: Optional[str] = None
  aip_model_dir: Optional[str] = None
  aip_checkpoint_dir: Optional[str] = None
  aip_tensorboard_log_dir: Optional[str] = None

  @property
  def is_chief(self) -> bool:
    return self.task_type in (None, CHIEF, MASTER)

  @property
  def has_evaluator(self) -> bool:
    """Vertex AI and AI Platform list the evaluator in the cluster; tf.estimator does not need it."""
    return EVALUATOR in self.cluster_jobs or self.task_type == EVALUATOR

  @property
  def name(self) -> str:
    return f"{self.task_type}-{self.task_index}" if self.task_type else "local"


def from_environ(environ: Mapping[str, str] = os.environ) -> JobEnvironment:
  """Parses TF_CONFIG and the AIP_* variables; raises ValueError naming what is wrong."""
  raw = environ.get("TF_CONFIG") or "{}"
  try:
    tf_config = json.loads(raw)
  except json.JSONDecodeError as e:
    raise ValueError(f"TF_CONFIG is not valid JSON ({e.msg}): {raw[:200]}") from e
  if not isinstance(tf_config, dict):
    raise ValueError(f"TF_CONFIG must be a JSON object, got {raw[:200]}")
  cluster = tf_config.get("cluster") or {}
  task = tf_config.get("task") or {}
  if not isinstance(cluster, dict) or not isinstance(task, dict):
    raise ValueError(f"TF_CONFIG cluster and task must be objects, got {raw[:200]}")
  task_type = task.get("type")
  if cluster and task_type not in ROLES:
    raise ValueError(f"TF_CONFIG task.type must be one of {', '.join(ROLES)}, got {task_type!r}")
  if cluster and not ({CHIEF, MASTER} & set(cluster)):
    raise ValueError(f"TF_CONFIG cluster has no chief (or master): {sorted(cluster)}")
  try:
    task_index = int(task.get("index", 0))
  except (TypeError, ValueError):
    task_index = -1
  if task_index < 0:
    raise ValueError(f"TF_CONFIG task.index must be an integer >= 0, got {task.get('index')!r}")
  trial = str(task.get("trial") or "") or None
  return JobEnvironment(
      task_type=task_type if cluster else None,
      task_index=task_index,
      cluster_jobs=tuple(sorted(cluster)),
      trial=trial,
      aip_model_dir=environ.get("AIP_MODEL_DIR") or None,
      aip_checkpoint_dir=environ.get("AIP_CHECKPOINT_DIR") or None,
      aip_tensorboard_log_dir=environ.get("AIP_TENSORBOARD_LOG_DIR") or None)


def resolve(config: TrainerConfig, environment: JobEnvironment) -> TrainerConfig:
  """The config with its output dirs placed as the module docstring's precedence says."""
  job_dir = config.job_dir
  if environment.trial:
    job_dir = artifact_io.join(job_dir, environment.trial)
  return dataclasses.replace(
      config,
      job_dir=job_dir,
      checkpoint_dir=environment.aip_checkpoint_dir or config.checkpoint_dir,
      export_dir=environment.aip_model_dir or config.export_dir,
      tensorboard_dir=environment.aip_tensorboard_log_dir or config.tensorboard_dir)


def report_tuning_metric(value: float, global_step: int) -> bool:
  """Reports through cloudml-hypertune (Vertex AI tuning reads only that); False without it."""
  try:
    import hypertune  # pylint: disable=import-outside-toplevel
  except ImportError:
    return False
  hypertune.HyperTune().report_hyperparameter_tuning_metric(
      hyperparameter_metric_tag=METRIC_TAG, metric_value=value, global_step=global_step)
  return True


class SummariesToDirHook(tf.estimator.SessionRunHook):
  """Writes the training graph's summaries to `output_dir` every `every_steps` steps.

  tf.estimator writes summaries only beside its checkpoints (and refuses subclasses that
  move them), while Vertex AI's TensorBoard uploads AIP_TENSORBOARD_LOG_DIR.
  """

  def __init__(self, output_dir: str, every_steps: int):
    self._output_dir = output_dir
    self._timer = tf.compat.v1.train.SecondOrStepTimer(every_steps=every_steps)
    self._due = True

  def begin(self):
    self._summary = tf.compat.v1.summary.merge_all()
    self._global_step = tf.compat.v1.train.get_global_step()
    self._writer = tf.compat.v1.summary.FileWriterCache.get(self._output_dir)

  def before_run(self, run_context):
    fetches = {"step": self._global_step}
    if self._due and self._summary is not None:
      fetches["summary"] = self._summary
    return tf.estimator.SessionRunArgs(fetches)

  def after_run(self, run_context, run_values):
    step = run_values.results["step"]
    if "summary" in run_values.results:
      self._writer.add_summary(run_values.results["summary"], step)
      self._timer.update_last_triggered_step(step)
    self._due = self._timer.should_trigger_for_step(step + 1)

  def end(self, session):
    self._writer.flush()


def write_scalars(directory: str, step: int, values: Mapping[str, float]) -> None:
  with tf.summary.create_file_writer(directory).as_default():
    for tag, value in values.items():
      tf.summary.scalar(tag, value, step=step)
