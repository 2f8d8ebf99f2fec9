"""python -m optimize --input_dir EXPORT_VERSION_DIR --output_dir DIR [--transforms ...]"""

import os


def main() -> None:
  # Before TensorFlow's first import, whose C++ start-up lines would bury the optimizer's
  # output; users can still raise the level themselves.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  from optimize import command  # pylint: disable=import-outside-toplevel
  command.run()


if __name__ == "__main__":
  main()
