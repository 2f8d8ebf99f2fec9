"""The command line of `python -m trainer.task` (see trainer/task.py): the flags, derived from
the typed config, and the pipeline run with its exit statuses (2 bad data, 3 a cluster task
timed out, 4 a stage refused the model)."""

import sys

import tensorflow as tf
from absl import app
from absl import flags
from absl import logging

from lineage import store as lineage_store
from trainer import cloud
from trainer import evaluation
from trainer import inputs
from trainer import pipeline
from trainer import resume
from trainer import settings
from trainer import config as config_lib

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  # Listed under the main module, which is what absl's --help prints.
  settings.define_flags(config_lib.TrainerConfig, flag_values, module_name=sys.argv[0])
  lineage_store.define_flags(flag_values)


def config_from_flags(flag_values: flags.FlagValues = FLAGS) -> config_lib.TrainerConfig:
  """Builds and validates the typed config; raises ValueError naming the bad setting."""
  return settings.from_flags(config_lib.TrainerConfig, flag_values)


def _check_bundled_data(config: config_lib.TrainerConfig) -> None:
  for flag, path, bundled in (("--train_files", config.train_files, config_lib.BUNDLED_TRAIN),
                              ("--eval_files", config.eval_files, config_lib.BUNDLED_EVAL)):
    if path == bundled and not tf.io.gfile.exists(path):
      raise app.UsageError(
          f"{flag} defaults to the data set bundled with the source tree ({path}), which "
          f"is not there: an installed package (wheel or sdist, as training jobs install "
          f"it) does not ship data/. Pass {flag} explicitly, e.g. gs://bucket/data/...")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  # TensorFlow's logger has a handler of its own and also hands every record to absl's:
  # without this each estimator line (steps, loss, checkpoints) is printed twice.
  tf.get_logger().propagate = False
  try:
    environment = cloud.from_environ()
    config = cloud.resolve(config_from_flags(), environment)
    store = lineage_store.config_from_flags(config.job_dir)
  except (ValueError, lineage_store.StoreError) as e:
    raise app.UsageError(str(e))
  _check_bundled_data(config)
  try:
    result = pipeline.run(config, environment, store)
  except inputs.DataError as e:
    logging.error("Bad input data: %s", e)
    raise SystemExit(2)
  except resume.IncompatibleJobDirError as e:
    logging.error("%s", e)
    raise SystemExit(2)
  except TimeoutError as e:
    logging.error("%s", e)
    raise SystemExit(3)
  except pipeline.StageError as e:
    logging.error("%s", e)
    print(f"failed: {e}")
    raise SystemExit(4)
  report = result.train.eval_report
  if report is None:
    print(f"{environment.name} done")
    return
  print(f"accuracy {report['accuracy']:.4f}  balanced {report['balanced_accuracy']:.4f}  "
        f"macro-F1 {report['macro_f1']:.4f}  ECE "
        f"{report['calibration']['expected_calibration_error']:.4f}  "
        f"report {result.train.eval_report_path}")
  if report.get("out_of_scope"):
    print(evaluation.out_of_scope_line(report["out_of_scope"]))
  print(f"servable {result.export_dir}")
  if result.optimized_dir:
    print(f"optimized {result.optimized_dir}")
  if result.verdict_path:
    print(f"verdict {result.verdict_path}")
  if result.pushed_dir:
    print(f"pushed {result.pushed_dir}")
  print(f"lineage {store.describe()}")


def run() -> None:
  define_flags()
  app.run(main)
