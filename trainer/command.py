"""Trains the text-intent model and exports it for TF Serving.

    python -m trainer.task                       # bundled data, job dir jobs/intent
    python -m trainer.task --job-dir gs://bucket/job --train_files gs://.../train.csv ...

Accepts `--job-dir` as Cloud AI Platform passes it (and `--job_dir`). Rerunning the
same command resumes from the job dir's latest checkpoint.

On a cluster (TF_CONFIG with chief/master, worker, ps, evaluator tasks, as AI Platform and
Vertex AI set it, or `python -m trainer.local_cluster`) every task runs this same command;
see trainer/cloud.py for the output directories in cloud jobs.
"""

import os

# TensorFlow's C++ start-up chatter buries the trainer's own output; users can still
# raise it by setting the variable themselves.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

import tensorflow as tf  # noqa: E402

from lineage import store as lineage_store  # noqa: E402
from trainer import cloud  # noqa: E402
from trainer import config as config_lib  # noqa: E402
from trainer import inputs  # noqa: E402
from trainer import pipeline  # noqa: E402
from trainer import text_module  # noqa: E402
from trainer.model import ModelConfig  # noqa: E402

_DEFAULTS = config_lib.TrainerConfig()
_MODEL = _DEFAULTS.model
_TEXT = _DEFAULTS.text_module

FLAGS = flags.FLAGS

flags.DEFINE_string("train_files", _DEFAULTS.train_files,
                    "Training data: comma-separated files or globs (CSV, JSON Lines or "
                    "CLINC-style JSON; local, gs:// or any tf.io.gfile path).")
flags.DEFINE_string("eval_files", _DEFAULTS.eval_files, "Evaluation data, as --train_files.")
flags.DEFINE_enum("data_format", _DEFAULTS.data_format, ("auto",) + inputs.FORMATS,
                  "Data file format; auto goes by extension (.csv, .jsonl, .json).")
flags.DEFINE_string("train_split", _DEFAULTS.train_split,
                    "Split to train on in CLINC-style JSON files.")
flags.DEFINE_string("eval_split", _DEFAULTS.eval_split,
                    "Split to evaluate on in CLINC-style JSON files.")
flags.DEFINE_bool("drop_unseen_eval_labels", _DEFAULTS.drop_unseen_eval_labels,
                  "Drop eval examples whose label never appears in training (with a warning "
                  "and a count) instead of stopping with an error.")
flags.DEFINE_string("job-dir", _DEFAULTS.job_dir,
                    "Where checkpoints, summaries, the hub module, the eval report and the "
                    "export go (Cloud AI Platform passes --job-dir).")
flags.DEFINE_alias("job_dir", "job-dir")
flags.DEFINE_string("model_name", _DEFAULTS.model_name,
                    "Servable name: the export goes to <job-dir>/export/<model_name>/<version>.")
flags.DEFINE_integer("train_steps", _DEFAULTS.train_steps,
                     "Training steps; 0 derives them from --num_epochs.")
flags.DEFINE_float("num_epochs", _DEFAULTS.num_epochs,
                   "Passes over the training data, used when --train_steps is 0.")
flags.DEFINE_integer("batch_size", _DEFAULTS.batch_size, "Training batch size.")
flags.DEFINE_list("hidden_units", [str(u) for u in _MODEL.hidden_units],
                  "Sizes of the hidden layers, e.g. 256,128.")
flags.DEFINE_float("dropout", _MODEL.dropout, "Dropout rate of the hidden layers (0 = none).")
flags.DEFINE_bool("batch_norm", _MODEL.batch_norm, "Batch normalization after hidden layers.")
flags.DEFINE_enum("optimizer", _MODEL.optimizer, ("Adam", "Adagrad", "SGD", "RMSProp", "Ftrl"),
                  "Optimizer of the dense layers.")
flags.DEFINE_float("learning_rate", _MODEL.learning_rate, "Learning rate of the dense layers.")
flags.DEFINE_bool("train_embeddings", _MODEL.train_embeddings,
                  "Train the text module's embeddings too (the canned estimator alone "
                  "would leave them at their initial values).")
flags.DEFINE_enum("embedding_optimizer", _MODEL.embedding_optimizer, ("Adagrad", "SGD", "Ftrl"),
                  "Optimizer of the embedding table; all of these update only the rows a "
                  "batch touches.")
flags.DEFINE_float("embedding_learning_rate", _MODEL.embedding_learning_rate,
                   "Learning rate of the embedding table.")
flags.DEFINE_string("hub_module", None,
                    "A TF1-Hub-format text-embedding module (handle or path). Unset: build one "
                    "from the training corpus into <job-dir>/hub_module.")
flags.DEFINE_integer("embedding_dim", _TEXT.embedding_dim, "Embedding size of the built module.")
flags.DEFINE_list("word_ngrams", [str(n) for n in _TEXT.word_ngrams],
                  "Word n-gram widths of the built module, e.g. 1,2.")
flags.DEFINE_list("char_ngrams", [str(n) for n in _TEXT.char_ngrams],
                  "Character n-gram widths of the built module, e.g. 3,4 (empty = none).")
flags.DEFINE_enum("id_mode", _TEXT.id_mode, (text_module.VOCABULARY, text_module.HASHED),
                  "vocabulary: corpus vocabulary + OOV buckets; hashed: hash buckets only.")
flags.DEFINE_integer("max_vocabulary_size", _TEXT.max_vocabulary_size,
                     "Most frequent n-grams kept in the vocabulary.")
flags.DEFINE_integer("min_count", _TEXT.min_count, "Minimum count of a vocabulary n-gram.")
flags.DEFINE_integer("oov_buckets", _TEXT.oov_buckets,
                     "Hash buckets for n-grams outside the vocabulary.")
flags.DEFINE_integer("hash_buckets", _TEXT.hash_buckets, "Embedding rows in hashed mode.")
flags.DEFINE_enum("combiner", _TEXT.combiner, ("sum", "mean", "sqrtn"),
                  "How the n-gram embeddings of one text are combined.")
flags.DEFINE_integer("seed", _DEFAULTS.seed, "Random seed of initialization and shuffling.")
flags.DEFINE_integer("save_checkpoints_steps", _DEFAULTS.save_checkpoints_steps,
                     "Save a checkpoint (and evaluate) every this many steps.")
flags.DEFINE_integer("eval_throttle_secs", _DEFAULTS.eval_throttle_secs,
                     "Evaluate at most once per this many seconds while training.")
flags.DEFINE_integer("chief_wait_secs", _DEFAULTS.chief_wait_secs,
                     "On a cluster: how long workers, parameter servers and the evaluator "
                     "wait for the chief's text module (workers also for its first "
                     "checkpoint) before giving up.")
flags.DEFINE_integer("max_worker_delay_secs", _DEFAULTS.max_worker_delay_secs,
                     "On a cluster: cap of tf.estimator's start-up delay of worker k "
                     "((k + 1) * 5 s; unset keeps its 60 s cap).")


flags.DEFINE_bool("optimize", _DEFAULTS.optimize,
                  "Optimize the export (python -m optimize) before the smoke test.")
flags.DEFINE_string("transforms", _DEFAULTS.transforms,
                    "Optimizer transforms, in order (see python -m optimize --help).")
flags.DEFINE_float("min_agreement", _DEFAULTS.min_agreement,
                   "The optimizer's accuracy guard: lowest top-1 agreement to accept.")
flags.DEFINE_bool("smoke_test", _DEFAULTS.smoke_test,
                  "Serve the final servable and check every signature over REST and gRPC.")
flags.DEFINE_enum("smoke_test_backend", _DEFAULTS.smoke_test_backend,
                  config_lib.SMOKE_TEST_BACKENDS,
                  "Server for the smoke test; auto takes the real TF Serving when it can run.")
flags.DEFINE_string("push_to", None,
                    "TF Serving model base path to push a blessed servable to, as its next "
                    "numeric version (nothing is pushed when unset).")
lineage_store.define_flags()


def _ints(values):
  return tuple(int(v) for v in values if str(v).strip())


def config_from_flags() -> config_lib.TrainerConfig:
  """Builds and validates the typed config; raises ValueError naming the bad setting."""
  try:
    hidden_units = _ints(FLAGS.hidden_units)
    word_ngrams = _ints(FLAGS.word_ngrams)
    char_ngrams = _ints(FLAGS.char_ngrams)
  except ValueError as e:
    raise ValueError(f"--hidden_units, --word_ngrams and --char_ngrams take integers: {e}")
  return config_lib.TrainerConfig(
      train_files=FLAGS.train_files,
      eval_files=FLAGS.eval_files,
      data_format=FLAGS.data_format,
      train_split=FLAGS.train_split,
      eval_split=FLAGS.eval_split,
      drop_unseen_eval_labels=FLAGS.drop_unseen_eval_labels,
      job_dir=FLAGS["job-dir"].value,
      model_name=FLAGS.model_name,
      train_steps=FLAGS.train_steps,
      num_epochs=FLAGS.num_epochs,
      batch_size=FLAGS.batch_size,
      seed=FLAGS.seed,
      save_checkpoints_steps=FLAGS.save_checkpoints_steps,
      eval_throttle_secs=FLAGS.eval_throttle_secs,
      chief_wait_secs=FLAGS.chief_wait_secs,
      max_worker_delay_secs=FLAGS.max_worker_delay_secs,
      hub_module=FLAGS.hub_module or None,
      optimize=FLAGS.optimize,
      transforms=FLAGS.transforms,
      min_agreement=FLAGS.min_agreement,
      smoke_test=FLAGS.smoke_test,
      smoke_test_backend=FLAGS.smoke_test_backend,
      push_to=FLAGS.push_to or None,
      model=ModelConfig(
          hidden_units=hidden_units,
          dropout=FLAGS.dropout,
          batch_norm=FLAGS.batch_norm,
          optimizer=FLAGS.optimizer,
          learning_rate=FLAGS.learning_rate,
          train_embeddings=FLAGS.train_embeddings,
          embedding_optimizer=FLAGS.embedding_optimizer,
          embedding_learning_rate=FLAGS.embedding_learning_rate),
      text_module=text_module.TextModuleConfig(
          embedding_dim=FLAGS.embedding_dim,
          word_ngrams=word_ngrams,
          char_ngrams=char_ngrams,
          id_mode=FLAGS.id_mode,
          max_vocabulary_size=FLAGS.max_vocabulary_size,
          min_count=FLAGS.min_count,
          oov_buckets=FLAGS.oov_buckets,
          hash_buckets=FLAGS.hash_buckets,
          combiner=FLAGS.combiner))


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
  print(f"accuracy {report['accuracy']:.4f}  macro-F1 {report['macro_f1']:.4f}  "
        f"report {result.train.eval_report_path}")
  print(f"servable {result.export_dir}")
  if result.optimized_dir:
    print(f"optimized {result.optimized_dir}")
  if result.verdict_path:
    print(f"verdict {result.verdict_path}")
  if result.pushed_dir:
    print(f"pushed {result.pushed_dir}")
  print(f"lineage {store.describe()}")


if __name__ == "__main__":
  app.run(main)
