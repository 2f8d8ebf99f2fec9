"""python -m lineage --job-dir DIR [--metadata_db PATH | --mysql_host ...] [--json]
                     [--model_version N]

Prints the chain behind the newest pushed (else exported) model of the job dir, or behind
the servable of version N: data -> train (hyperparameters, metrics) -> export -> optimize ->
verdict -> push. Without --job-dir, an explicit store is searched whole.
"""

import os


def main() -> None:
  # Before TensorFlow's first import (ML Metadata brings it in), whose C++ start-up lines
  # would bury the table; users can still raise the level themselves.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  from lineage import command  # pylint: disable=import-outside-toplevel
  command.run()


if __name__ == "__main__":
  main()
