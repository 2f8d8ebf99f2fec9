"""The trainer's typed configuration, validated once where the job starts."""

import dataclasses
import os
from typing import Optional

from optimize import guard
from optimize import transforms
from trainer.model import ModelConfig
from trainer.text_module import TextModuleConfig

SMOKE_TEST_BACKENDS = ("auto", "binary", "docker", "embedded")

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLED_TRAIN = os.path.join(PROJECT_ROOT, "data", "train.csv")
BUNDLED_EVAL = os.path.join(PROJECT_ROOT, "data", "eval.csv")
DEFAULT_JOB_DIR = os.path.join("jobs", "intent")


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
  train_files: str = BUNDLED_TRAIN
  eval_files: str = BUNDLED_EVAL
  data_format: str = "auto"
  train_split: str = "train"
  eval_split: str = "val"
  drop_unseen_eval_labels: bool = False
  job_dir: str = DEFAULT_JOB_DIR
  model_name: str = "intent"
  train_steps: int = 0
  num_epochs: float = 40.0
  batch_size: int = 64
  seed: int = 42
  save_checkpoints_steps: int = 500
  eval_throttle_secs: int = 60
  hub_module: Optional[str] = None
  # Where the estimator keeps checkpoints, its summaries and the built hub module; None
  # means the job dir. Vertex AI sets it through AIP_CHECKPOINT_DIR.
  checkpoint_dir: Optional[str] = None
  # The export base (versions go below it); None means <job_dir>/export/<model_name>.
  # Vertex AI sets it through AIP_MODEL_DIR.
  export_dir: Optional[str] = None
  # Also receives the training summaries and the final eval metrics (AIP_TENSORBOARD_LOG_DIR);
  # None leaves TensorBoard on the checkpoint dir, where the estimator writes anyway.
  tensorboard_dir: Optional[str] = None
  # How long other cluster tasks wait for the chief's hub module (workers: and for its
  # first checkpoint).
  chief_wait_secs: int = 600
  # Caps tf.estimator's start-up delay of worker k ((k + 1) * 5 s); None keeps its cap (60 s).
  max_worker_delay_secs: Optional[int] = None
  # The stages after export: optimize, then the smoke test of the final servable, then a
  # push into a TF Serving base path when one is given.
  optimize: bool = True
  transforms: str = transforms.DEFAULT_TRANSFORMS
  min_agreement: float = guard.DEFAULT_MIN_AGREEMENT
  smoke_test: bool = True
  smoke_test_backend: str = "auto"
  push_to: Optional[str] = None
  model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
  text_module: TextModuleConfig = dataclasses.field(default_factory=TextModuleConfig)

  def __post_init__(self):
    problems = []
    for name in ("train_files", "eval_files", "job_dir", "model_name"):
      if not getattr(self, name):
        problems.append(f"{name} must not be empty")
    if self.model_name and not all(c.isalnum() or c in "-_." for c in self.model_name):
      problems.append(f"model_name may hold letters, digits, '-', '_' and '.', "
                      f"got {self.model_name!r}")
    if self.train_steps < 0:
      problems.append(f"train_steps must be >= 0, got {self.train_steps}")
    if self.train_steps == 0 and self.num_epochs <= 0:
      problems.append("set train_steps > 0 or num_epochs > 0")
    if self.batch_size < 1:
      problems.append(f"batch_size must be >= 1, got {self.batch_size}")
    if self.save_checkpoints_steps < 1:
      problems.append(f"save_checkpoints_steps must be >= 1, got {self.save_checkpoints_steps}")
    if self.chief_wait_secs < 1:
      problems.append(f"chief_wait_secs must be >= 1, got {self.chief_wait_secs}")
    if self.max_worker_delay_secs is not None and self.max_worker_delay_secs < 0:
      problems.append(f"max_worker_delay_secs must be >= 0, got {self.max_worker_delay_secs}")
    if not 0.0 <= self.min_agreement <= 1.0:
      problems.append(f"min_agreement must be in [0, 1], got {self.min_agreement}")
    if self.smoke_test_backend not in SMOKE_TEST_BACKENDS:
      problems.append(f"smoke_test_backend must be one of {SMOKE_TEST_BACKENDS}, "
                      f"got {self.smoke_test_backend!r}")
    if self.push_to and not self.smoke_test:
      problems.append("push_to needs the smoke test: only a blessed model is pushed")
    try:
      transforms.parse_transforms(self.transforms)
    except transforms.TransformError as e:
      problems.append(f"transforms: {e}")
    for name in ("checkpoint_dir", "export_dir", "tensorboard_dir", "push_to"):
      if getattr(self, name) == "":
        problems.append(f"{name} must be unset or a path, not empty")
    if problems:
      raise ValueError("Invalid trainer config: " + "; ".join(problems))

  @property
  def model_dir(self) -> str:
    """The estimator's model_dir."""
    return self.checkpoint_dir or self.job_dir

  def steps_for(self, num_train_examples: int) -> int:
    if self.train_steps:
      return self.train_steps
    return max(1, int(-(-self.num_epochs * num_train_examples // self.batch_size)))
