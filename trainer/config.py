"""The trainer's typed configuration: every setting declared once (its flag derives from it,
see trainer/settings.py) and validated once, where the job starts."""

import dataclasses
import os
from typing import Optional

from optimize import guard
from optimize import transforms as transforms_lib
from serving import runners
from trainer import cached_tokens
from trainer import inputs
from trainer import settings
from trainer.model import ModelConfig
from trainer.settings import setting
from trainer.text_module import TextModuleConfig

SMOKE_TEST_BACKENDS = ("auto",) + runners.BACKENDS

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLED_TRAIN = os.path.join(PROJECT_ROOT, "data", "train.csv")
BUNDLED_EVAL = os.path.join(PROJECT_ROOT, "data", "eval.csv")
DEFAULT_JOB_DIR = os.path.join("jobs", "intent")


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
  train_files: str = setting(
      BUNDLED_TRAIN, "Training data: comma-separated files or globs (CSV, JSON Lines or "
      "CLINC-style JSON; local, gs:// or any tf.io.gfile path).")
  eval_files: str = setting(BUNDLED_EVAL, "Evaluation data, as --train_files.")
  data_format: str = setting("auto", "Data file format; auto goes by extension (.csv, .jsonl, "
                             ".json).", choices=("auto",) + inputs.FORMATS)
  train_split: str = setting("train", "Split(s) to train on in CLINC-style JSON files, "
                             "comma-separated (e.g. train,oos_train).")
  eval_split: str = setting("val", "Split(s) to evaluate on in CLINC-style JSON files, "
                            "comma-separated (e.g. val,oos_val).")
  oos_label: Optional[str] = setting(
      None, "The label of out-of-scope examples (CLINC150: oos). They are kept out of "
      "training; on the eval set the trainer picks the score threshold below which an answer "
      "becomes out-of-scope, reports it and ships it in the export's "
      "assets.extra/out_of_scope.json.")
  oos_target_precision: float = setting(
      0.95, "With --oos_label: the threshold is the lowest score at which the answers given "
      "(score >= threshold) are right this often on the eval set, an out-of-scope text "
      "answered with an intent counting as wrong.")
  drop_unseen_eval_labels: bool = setting(
      False, "Drop eval examples whose label never appears in training (with a warning and a "
      "count) instead of stopping with an error.")
  job_dir: str = setting(
      DEFAULT_JOB_DIR, "Where checkpoints, summaries, the hub module, the eval report and the "
      "export go (Cloud AI Platform passes --job-dir).", flag="job-dir", aliases=("job_dir",))
  model_name: str = setting("intent", "Servable name: the export goes to "
                            "<job-dir>/export/<model_name>/<version>.")
  train_steps: int = setting(0, "Training steps; 0 derives them from --num_epochs.")
  num_epochs: float = setting(40.0, "Passes over the training data, used when --train_steps "
                              "is 0.")
  batch_size: int = setting(96, "Training batch size.")
  seed: int = setting(42, "Random seed of initialization and shuffling.")
  token_dropout: float = setting(
      0.1, "Augmentation: the chance that each word of a training text is left out of it, "
      "drawn afresh every epoch (0 = none; a text keeps at least one word).")
  class_balance: float = setting(
      0.5, "Each training example weighs its intent's share of the training set to the power "
      "-class_balance in the loss, the weights scaled to a mean of 1 (0 = every example "
      "alike, 1 = every intent alike), so intents with few examples are not outvoted by "
      "common ones.")
  weight_averaging_start: float = setting(
      0.75, "Stochastic weight averaging: from this fraction of the training steps on (e.g. "
      "0.5), the weights are averaged every --weight_averaging_steps steps, and the average "
      "is what is checkpointed, evaluated and exported last (0 = off; chief only, and a "
      "resumed job averages from where it resumed).")
  weight_averaging_steps: int = setting(100, "Steps between the snapshots weight averaging "
                                        "takes.")
  # Each save writes the whole embedding table and its optimizer slots (about 0.8 s for
  # Banking77's 80 MB): every 500 steps that was a sixth of the training time.
  save_checkpoints_steps: int = setting(2000, "Save a checkpoint (and evaluate, at most every "
                                        "--eval_throttle_secs) every this many steps.")
  eval_throttle_secs: int = setting(60, "Evaluate at most once per this many seconds while "
                                    "training.")
  hub_module: Optional[str] = setting(
      None, "A TF1-Hub-format text-embedding module (handle or path). Unset: build one from "
      "the training corpus into <job-dir>/hub_module.")
  cache_tokens: bool = setting(
      True, "Train on the n-gram ids of each training text, tokenized once as training starts "
      "with the built module's own functions (false: the module tokenizes every batch's text "
      "in the training step). Evaluation, prediction and the export always take raw text.")
  # Where the estimator keeps checkpoints, its summaries and the built hub module; None
  # means the job dir. Vertex AI sets it through AIP_CHECKPOINT_DIR.
  checkpoint_dir: Optional[str] = setting(None, command_line=False)
  # The export base (versions go below it); None means <job_dir>/export/<model_name>.
  # Vertex AI sets it through AIP_MODEL_DIR.
  export_dir: Optional[str] = setting(None, command_line=False)
  # Also receives the training summaries and the final eval metrics (AIP_TENSORBOARD_LOG_DIR);
  # None leaves TensorBoard on the checkpoint dir, where the estimator writes anyway.
  tensorboard_dir: Optional[str] = setting(None, command_line=False)
  chief_wait_secs: int = setting(
      600, "On a cluster: how long workers, parameter servers and the evaluator wait for the "
      "chief's text module (workers also for its first checkpoint) before giving up.")
  max_worker_delay_secs: Optional[int] = setting(
      None, "On a cluster: cap of tf.estimator's start-up delay of worker k ((k + 1) * 5 s; "
      "unset keeps its 60 s cap).")
  # The stages after export: optimize, then the smoke test of the final servable, then a
  # push into a TF Serving base path when one is given.
  optimize: bool = setting(True, "Optimize the export (python -m optimize) before the smoke "
                           "test.")
  transforms: str = setting(transforms_lib.DEFAULT_TRANSFORMS,
                            "Optimizer transforms, in order (see python -m optimize --help).")
  min_agreement: float = setting(guard.DEFAULT_MIN_AGREEMENT,
                                 "The optimizer's accuracy guard: lowest top-1 agreement to "
                                 "accept.")
  smoke_test: bool = setting(True, "Serve the final servable and check every signature over "
                             "REST and gRPC.")
  smoke_test_backend: str = setting("auto", "Server for the smoke test; auto takes the real TF "
                                    "Serving when it can run.", choices=SMOKE_TEST_BACKENDS)
  push_to: Optional[str] = setting(
      None, "TF Serving model base path to push a blessed servable to, as its next numeric "
      "version (nothing is pushed when unset).")
  model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
  text_module: TextModuleConfig = dataclasses.field(default_factory=TextModuleConfig)

  def __post_init__(self):
    problems = settings.choice_problems(self)
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
    if self.oos_label == "":
      problems.append("oos_label must be unset or a label, not empty")
    if not 0.0 < self.oos_target_precision <= 1.0:
      problems.append(f"oos_target_precision must be in (0, 1], got "
                      f"{self.oos_target_precision}")
    if not 0.0 <= self.token_dropout < 1.0:
      problems.append(f"token_dropout must be in [0, 1), got {self.token_dropout}")
    if not 0.0 <= self.class_balance <= 1.0:
      problems.append(f"class_balance must be in [0, 1], got {self.class_balance}")
    if not 0.0 <= self.weight_averaging_start < 1.0:
      problems.append(f"weight_averaging_start must be in [0, 1), got "
                      f"{self.weight_averaging_start}")
    if self.weight_averaging_steps < 1:
      problems.append(f"weight_averaging_steps must be >= 1, got {self.weight_averaging_steps}")
    if self.save_checkpoints_steps < 1:
      problems.append(f"save_checkpoints_steps must be >= 1, got {self.save_checkpoints_steps}")
    if self.chief_wait_secs < 1:
      problems.append(f"chief_wait_secs must be >= 1, got {self.chief_wait_secs}")
    if self.max_worker_delay_secs is not None and self.max_worker_delay_secs < 0:
      problems.append(f"max_worker_delay_secs must be >= 0, got {self.max_worker_delay_secs}")
    problems += guard.GuardSettings(min_agreement=self.min_agreement).problems()
    if self.push_to and not self.smoke_test:
      problems.append("push_to needs the smoke test: only a blessed model is pushed")
    try:
      transforms_lib.parse_transforms(self.transforms)
    except transforms_lib.TransformError as e:
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

  def trains_on_cached_tokens(self) -> bool:
    """Whether training reads cached n-gram ids: only of a module this job builds, whose
    tokenization is known (see trainer/cached_tokens.py)."""
    return (self.cache_tokens and not self.hub_module
            and cached_tokens.supported(self.text_module))

  def steps_for(self, num_train_examples: int) -> int:
    if self.train_steps:
      return self.train_steps
    return max(1, int(-(-self.num_epochs * num_train_examples // self.batch_size)))
