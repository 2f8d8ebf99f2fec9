"""python -m serving.smoke_test --model_base_path DIR --model_name NAME [...]: see command.py."""

import os


def main() -> None:
  # Before TensorFlow's first import, whose C++ start-up lines would bury the verdict;
  # users can still raise the level themselves.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  from serving.smoke_test import command  # pylint: disable=import-outside-toplevel
  command.run()


if __name__ == "__main__":
  main()
