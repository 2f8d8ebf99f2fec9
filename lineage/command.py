"""python -m lineage --job-dir DIR [--metadata_db PATH | --mysql_host ...] [--json]
                     [--model_version N]

Prints the chain behind the newest pushed (else exported) model of the job dir, or behind
the servable of version N: data -> train (hyperparameters, metrics) -> export -> optimize ->
verdict -> push. Without --job-dir, an explicit store is searched whole.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import sys  # noqa: E402
from typing import Optional  # noqa: E402

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from lineage import query  # noqa: E402
from lineage import store as store_lib  # noqa: E402

flags.DEFINE_string("job-dir", None, "The job dir whose lineage to show (its experiment); "
                    "the SQLite store defaults to <job-dir>/metadata.sqlite.")
flags.DEFINE_alias("job_dir", "job-dir")
flags.DEFINE_bool("json", False, "Print JSON instead of a table.")
flags.DEFINE_integer("model_version", None,
                     "Show the model pushed (else exported or optimized) as this version.")
store_lib.define_flags()
FLAGS = flags.FLAGS


def show(config: store_lib.StoreConfig, job_dir: Optional[str], as_json: bool = False,
         model_version: Optional[int] = None) -> str:
  """The plain function under the command: the chain as a table or JSON text."""
  store = store_lib.open_store(config, create=False)
  return query.report(store, job_dir, model_version, as_json)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  job_dir = FLAGS["job-dir"].value
  try:
    config = store_lib.config_from_flags(job_dir)
    sys.stdout.write(show(config, job_dir, FLAGS.json, FLAGS.model_version))
  except (store_lib.StoreError, LookupError) as e:
    sys.stderr.write(f"lineage: {e}\n")
    return 1
  return 0


if __name__ == "__main__":
  app.run(main)
