"""The command line of `python -m lineage` (see lineage/__main__.py)."""

import sys
from typing import Optional

from absl import app
from absl import flags

from lineage import query
from lineage import store as lineage_store

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string("job-dir", None, "The job dir whose lineage to show (its experiment); "
                      "the SQLite store defaults to <job-dir>/metadata.sqlite.")
  flags.DEFINE_alias("job_dir", "job-dir")
  flags.DEFINE_bool("json", False, "Print JSON instead of a table.")
  flags.DEFINE_integer("model_version", None,
                       "Show the model pushed (else exported or optimized) as this version.")
  lineage_store.define_flags()


def show(config: lineage_store.StoreConfig, job_dir: Optional[str], as_json: bool = False,
         model_version: Optional[int] = None) -> str:
  """The plain function under the command: the chain as a table or JSON text."""
  store = lineage_store.open_store(config, create=False)
  return query.report(store, job_dir, model_version, as_json)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  job_dir = FLAGS["job-dir"].value
  try:
    config = lineage_store.config_from_flags(job_dir)
    sys.stdout.write(show(config, job_dir, FLAGS.json, FLAGS.model_version))
  except (lineage_store.StoreError, LookupError) as e:
    sys.stderr.write(f"lineage: {e}\n")
    return 1
  return 0


def run() -> None:
  define_flags()
  app.run(main)
