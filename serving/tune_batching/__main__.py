"""python -m serving.tune_batching --model_base_path DIR --model_name NAME [...]: see
command.py."""

import os


def main() -> None:
  # Before TensorFlow's first import, whose C++ start-up lines would bury the figures.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  from serving.tune_batching import command  # pylint: disable=import-outside-toplevel
  command.run()


if __name__ == "__main__":
  main()
