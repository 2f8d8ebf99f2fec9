"""The command line of `python -m optimize`: flags, a run (recorded when given a store), exit
status 1 with the failed step's message."""

from absl import app
from absl import flags

from lineage import query
from lineage import store as lineage_store
from lineage.record import Recorder
from optimize import fallback
from optimize import guard
from optimize import optimizer
from optimize import recorded
from optimize import transforms

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string("input_dir", None, "SavedModel version dir to optimize (never modified).")
  flags.DEFINE_string("output_dir", None, "Where the optimized SavedModel version goes.")
  flags.DEFINE_string("transforms", transforms.DEFAULT_TRANSFORMS,
                      "Transforms in order, Graph Transform Tool style, e.g. 'freeze "
                      "strip_unused_nodes remove_nodes(op=Identity) merge_duplicate_nodes "
                      "fold_constants fold_batch_norms quantize_weights(dtype=int8|float16)'. "
                      f"Known: {', '.join(transforms.names())}.")
  flags.DEFINE_string("eval_data", None,
                      "Real examples for the accuracy guard: a TFRecord of serialized "
                      "tf.Example, or a CSV / JSON Lines file whose columns are features. "
                      "Default: the export's own evaluation sample and warmup records, topped "
                      "up with synthetic examples made from the export where the guard's rule "
                      "needs more.")
  flags.DEFINE_string("label_key", None,
                      "The --eval_data feature holding each example's label: the guard then "
                      "scores both models against it (accuracy, or mean absolute error for "
                      "regressors). Rows without it count for agreement only.")
  flags.DEFINE_float("min_agreement", guard.DEFAULT_MIN_AGREEMENT,
                     "Top-1 agreement with the original, per signature, that the guard must "
                     "vouch for: the one-sided 95% bound on disagreement must be at most "
                     "1 - min_agreement (598 examples with none disagreeing at 0.995).")
  flags.DEFINE_float("max_accuracy_drop", guard.DEFAULT_MAX_ACCURACY_DROP,
                     "Most accuracy points the optimized model may lose against the labels "
                     "(regressors: percent of mean absolute error it may gain).")
  flags.DEFINE_integer("require_real_examples", 0,
                       "Strict proof: refuse unless the guard judged at least this many real "
                       "examples per signature (synthetic ones still top them up).",
                       lower_bound=0)
  flags.DEFINE_float("near_tie_margin", guard.DEFAULT_NEAR_TIE_MARGIN,
                     "Synthetic examples whose top two scores (in the original) are closer "
                     "than this do not count: they say nothing about a change.")
  flags.DEFINE_enum("fallback", fallback.DEFAULT_FALLBACK, fallback.FALLBACKS,
                    "When the int8 plan fails the guard: 'mixed' writes the smallest plan that "
                    "passes, keeping the weights that do harm in float16 or float32; 'none' "
                    "refuses.")
  flags.DEFINE_bool("force", False, "Write the optimized model even if the guard refuses it.")
  flags.DEFINE_bool("overwrite", False, "Replace a non-empty --output_dir.")
  flags.DEFINE_string("report_dir", None, "Report location (default: <output_dir>.report).")
  flags.DEFINE_bool("measure", True, "Measure size, load time and latency after every step.")
  flags.DEFINE_string("model_name", None, "Model name recorded with the lineage.")
  lineage_store.define_flags()
  flags.mark_flags_as_required(["input_dir", "output_dir"])


def settings_from_flags() -> optimizer.OptimizeSettings:
  return optimizer.OptimizeSettings(
      transforms=FLAGS.transforms, eval_data=FLAGS.eval_data, label_key=FLAGS.label_key,
      guard=guard.GuardSettings(min_agreement=FLAGS.min_agreement,
                                max_accuracy_drop=FLAGS.max_accuracy_drop,
                                near_tie_margin=FLAGS.near_tie_margin,
                                require_real_examples=FLAGS.require_real_examples),
      fallback=FLAGS.fallback, force=FLAGS.force, overwrite=FLAGS.overwrite,
      report_dir=FLAGS.report_dir, measure=FLAGS.measure)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  settings = settings_from_flags()
  if settings.problems():
    raise app.UsageError("; ".join(f"--{problem}" for problem in settings.problems()))
  try:
    if FLAGS.metadata_db or FLAGS.mysql_host:
      result = _optimize_recorded(settings)
    else:
      result = optimizer.optimize(FLAGS.input_dir, FLAGS.output_dir, settings)
  except optimizer.OptimizeError as e:
    print(f"optimize failed: {e}")
    raise SystemExit(1)
  for step in result.steps:
    print(f"{step.step:40s} nodes {step.nodes:5d}  {step.bytes_on_disk / 1e6:8.2f} MB  "
          f"batch-1 p50 {step.batch1_p50_ms:7.3f} ms  agreement {step.agreement:.4f}")
  for line in optimizer.summary(result):
    print(line)
  print(f"optimized {result.output_dir}")
  if result.report_paths:
    print(f"report {result.report_paths['markdown']}")


def _optimize_recorded(settings: optimizer.OptimizeSettings):
  """Records the run as an Optimize execution in the store the flags name."""
  store = lineage_store.open_store(lineage_store.config_from_flags(None))
  recorder = Recorder(store, experiment=FLAGS.input_dir.rstrip("/").rsplit("/", 1)[0])
  source = query.servable_at(store, FLAGS.input_dir, FLAGS.model_name)
  result, _ = recorded.optimize(recorder, source, FLAGS.output_dir, settings, FLAGS.model_name)
  print(f"lineage {store.describe()}")
  return result


def run() -> None:
  define_flags()
  app.run(main)
