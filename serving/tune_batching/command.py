"""The command line of `python -m serving.tune_batching`: flags, a run (recorded when given a
lineage store), exit status 0 only when a point met the budget.

    python -m serving.tune_batching --model_base_path DIR --model_name NAME \\
        [--concurrency 32] [--p99_budget_ms 50] [--max_batch_sizes 8,16,32] \\
        [--batch_timeouts_micros 0,1000] [--seconds_per_point 5] [--output_dir D]

It writes D/batching_parameters.txt (the winner, for `--enable_batching
--batching_parameters_file`) and D/tuning_report.json (every point's figures); with no winner
only the report, and an earlier parameters file stays as it was.
"""

import sys
from typing import List

from absl import app
from absl import flags

from export import versions
from lineage import query
from lineage import store as lineage_store
from lineage.record import Recorder
from serving import runners
from serving.tune_batching import recorded
from serving.tune_batching import tuner


def define_flags() -> None:
  defaults = tuner.TuningSettings()
  flags.DEFINE_string("model_base_path", None, "Base path of the model: numeric version dirs; "
                      "the newest is tuned.")
  flags.DEFINE_string("model_name", None, "Name the model is served under.")
  flags.DEFINE_integer("concurrency", defaults.concurrency, "Connections sending batch-1 "
                       "requests at once: the load to tune for.")
  flags.DEFINE_float("p99_budget_ms", defaults.p99_budget_ms, "Highest p99 latency a point "
                     "may have to win.")
  flags.DEFINE_list("max_batch_sizes", [str(v) for v in defaults.max_batch_sizes],
                    "max_batch_size values to try.")
  flags.DEFINE_list("batch_timeouts_micros", [str(v) for v in defaults.batch_timeouts_micros],
                    "batch_timeout_micros values to try.")
  flags.DEFINE_float("seconds_per_point", defaults.seconds_per_point, "Load time per point, "
                     "after one second of warm-up.")
  flags.DEFINE_list("num_batch_threads", [str(v) for v in defaults.num_batch_threads],
                    "num_batch_threads values to try (default: 1 and the number of cores, "
                    "TF Serving's advice for CPUs).")
  flags.DEFINE_string("signature_name", defaults.signature_name, "Signature the requests ask.")
  flags.DEFINE_string("examples_file", None, "tf.Examples to build requests from (TFRecord, "
                      "JSON Lines of REST examples, or CSV); default: the version's warmup "
                      "records.")
  flags.DEFINE_enum("backend", defaults.backend, ("auto",) + runners.BACKENDS,
                    "Server to measure: the real TF Serving (binary, docker) or the embedded "
                    "one; auto takes the first that can run.")
  flags.DEFINE_string("output_dir", None, "Where batching_parameters.txt and "
                      "tuning_report.json go (default: <model_base_path>_tune_batching).")
  lineage_store.define_flags()
  flags.mark_flags_as_required(["model_base_path", "model_name"])


def _numbers(name: str, values: List[str]) -> List[int]:
  try:
    return [int(v) for v in values]
  except ValueError:
    raise app.UsageError(f"--{name} takes whole numbers separated by commas, got "
                         f"{','.join(values)!r}") from None


def settings_from_flags(values) -> tuner.TuningSettings:
  settings = tuner.TuningSettings(
      concurrency=values.concurrency, p99_budget_ms=values.p99_budget_ms,
      max_batch_sizes=_numbers("max_batch_sizes", values.max_batch_sizes),
      batch_timeouts_micros=_numbers("batch_timeouts_micros", values.batch_timeouts_micros),
      seconds_per_point=values.seconds_per_point,
      num_batch_threads=_numbers("num_batch_threads", values.num_batch_threads),
      signature_name=values.signature_name, examples_file=values.examples_file,
      backend=values.backend)
  try:
    settings.check()
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  return settings


def main(argv: List[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unknown argument: {argv[1]}")
  values = flags.FLAGS
  settings = settings_from_flags(values)
  output_dir = values.output_dir or f"{values.model_base_path.rstrip('/')}_tune_batching"
  try:
    if values.metadata_db or values.mysql_host:
      newest = versions.latest_version_dir(values.model_base_path)
      if newest is None:
        raise tuner.TuningError(f"{values.model_base_path} has no numeric version directory "
                                f"to tune")
      store = lineage_store.open_store(lineage_store.config_from_flags(None, values))
      servable = query.servable_at(store, newest, values.model_name)
      result, written = recorded.tune_version(
          Recorder(store, experiment=values.model_base_path), servable, values.model_name,
          output_dir, settings)
      print(f"lineage {store.describe()}")
    else:
      result = tuner.tune(values.model_base_path, values.model_name, settings)
      written = tuner.write_result(result, output_dir)
  except tuner.TuningError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(tuner.verdict(result))
  print(f"report: {output_dir}/{tuner.REPORT_FILE}")
  if not written:
    return 1
  print(f"batching parameters: {written}")
  return 0


def run() -> None:
  define_flags()
  app.run(lambda argv: sys.exit(main(argv)))
