"""The trainer's typed configuration, validated once where the job starts."""

import dataclasses
import os
from typing import Optional

from trainer.model import ModelConfig
from trainer.text_module import TextModuleConfig

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
  num_epochs: float = 20.0
  batch_size: int = 64
  seed: int = 42
  save_checkpoints_steps: int = 500
  eval_throttle_secs: int = 60
  hub_module: Optional[str] = None
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
    if problems:
      raise ValueError("Invalid trainer config: " + "; ".join(problems))

  def steps_for(self, num_train_examples: int) -> int:
    if self.train_steps:
      return self.train_steps
    return max(1, int(-(-self.num_epochs * num_train_examples // self.batch_size)))
