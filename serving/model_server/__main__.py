"""python -m serving.model_server [tensorflow_model_server's flags]: see command.py."""

import os


def main() -> None:
  # Before TensorFlow's first import, whose C++ start-up lines would bury the server's log;
  # users can still raise the level themselves.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  from serving.model_server import command  # pylint: disable=import-outside-toplevel
  command.run()


if __name__ == "__main__":
  main()
