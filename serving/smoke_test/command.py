"""The command line of `python -m serving.smoke_test`: flags, a run (recorded when given a
store), exit status 0 only when blessed.

    python -m serving.smoke_test --model_base_path DIR --model_name NAME \\
        [--backend auto|binary|docker|embedded] [--target host:8500 [--rest_target host:8501]] \\
        [--examples_file F] [--output_dir D]
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
from serving.model_server import config_files
from serving.model_server.status import ServingError
from serving.smoke_test import recorded
from serving.smoke_test.verdict import BLESSED, NOT_BLESSED, Verdict, run_smoke_test


def define_flags() -> None:
  flags.DEFINE_string("model_base_path", None, "Base path of the model: numeric version dirs.")
  flags.DEFINE_string("model_name", None, "Name the model is served under.")
  flags.DEFINE_enum("backend", "auto", ("auto",) + runners.BACKENDS,
                    "Server to start: the real TF Serving (binary, docker) or the embedded "
                    "one; auto takes the first that can run.")
  flags.DEFINE_string("target", None, "host:port of a running server's gRPC API to test "
                      "instead of starting one.")
  flags.DEFINE_string("rest_target", None, "host:port of its REST API (default: the gRPC port "
                      "+ 1, as the Docker image maps them).")
  flags.DEFINE_string("examples_file", None, "tf.Examples to build requests from (TFRecord, "
                      "JSON Lines of REST examples, or CSV); default: the version's warmup "
                      "records.")
  flags.DEFINE_string("output_dir", None, "Where verdict.json and the BLESSED / NOT_BLESSED "
                      "marker go (default: <model_base_path>_smoke_test).")
  flags.DEFINE_integer("batch_size", 8, "N of the batch-N requests.")
  flags.DEFINE_integer("latency_requests", 50, "Requests per latency figure.")
  flags.DEFINE_float("deadline_secs", 300, "Time the server has to make the model AVAILABLE.")
  flags.DEFINE_integer("num_tries", 5, "Server starts to try before giving up.")
  flags.DEFINE_string("batching_parameters_file", None, "Start the server with "
                      "--enable_batching and this BatchingParameters file (for example "
                      "serving/docker/batching_parameters.txt, or what serving.tune_batching "
                      "wrote).")
  flags.DEFINE_float("expected_oos_threshold", None, "Fail unless the version's "
                     "assets.extra/out_of_scope.json holds this threshold (a malformed file "
                     "fails the test anyway).")
  lineage_store.define_flags()
  flags.mark_flags_as_required(["model_base_path", "model_name"])


def main(argv: List[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unknown argument: {argv[1]}")
  values = flags.FLAGS
  if values.batching_parameters_file:
    try:
      config_files.read_batching_parameters(values.batching_parameters_file)
    except ServingError as e:
      raise app.UsageError(f"--batching_parameters_file: {e.message}") from None
  arguments = dict(backend=values.backend, target=values.target,
                   rest_target=values.rest_target, examples_file=values.examples_file,
                   batch_size=values.batch_size, latency_requests=values.latency_requests,
                   deadline_secs=values.deadline_secs, num_tries=values.num_tries,
                   batching_parameters_file=values.batching_parameters_file,
                   expected_oos_threshold=values.expected_oos_threshold)
  if values.metadata_db or values.mysql_host:
    verdict = _smoke_test_recorded(values, arguments)
  else:
    verdict = run_smoke_test(values.model_base_path, values.model_name, values.output_dir,
                             **arguments)
  where = verdict.grpc_target + (f" (REST {verdict.rest_target})" if verdict.rest_target else "")
  print(f"backend: {verdict.backend or 'none'}  server: {where or 'not started'}  model: "
        f"{verdict.model_name} version {verdict.version}")
  passed = sum(c.ok for c in verdict.checks)
  print(f"checks: {passed} of {len(verdict.checks)} passed")
  if verdict.out_of_scope:
    print(f"out-of-scope threshold: {verdict.out_of_scope['threshold']:.4f} (label "
          f"{verdict.out_of_scope['label']!r})")
  for name, figures in sorted(verdict.latency_ms.items()):
    if isinstance(figures, dict):
      print(f"latency {name}: p50 {figures['p50']} ms, p99 {figures['p99']} ms")
  if not verdict.blessed:
    print(f"reason: {verdict.reason}")
    if verdict.server_log_tail:
      print(f"server log (last lines):\n{verdict.server_log_tail}", file=sys.stderr)
  print(f"{BLESSED if verdict.blessed else NOT_BLESSED}: {verdict.verdict_path}")
  return 0 if verdict.blessed else 1


def _smoke_test_recorded(values, arguments) -> Verdict:
  """Records the run as a SmokeTest execution of the base path's newest version."""
  newest = versions.latest_version_dir(values.model_base_path)
  if newest is None:
    raise app.UsageError(f"{values.model_base_path} has no numeric version directory to test")
  store = lineage_store.open_store(lineage_store.config_from_flags(None, values))
  recorder = Recorder(store, experiment=values.model_base_path)
  servable = query.servable_at(store, newest, values.model_name)
  verdict, _ = recorded.smoke_test_version(recorder, servable, values.model_name,
                                           values.output_dir, **arguments)
  print(f"lineage {store.describe()}")
  return verdict


def run() -> None:
  define_flags()
  app.run(lambda argv: sys.exit(main(argv)))
