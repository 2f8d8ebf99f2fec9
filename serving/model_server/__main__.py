"""python -m serving.model_server [tensorflow_model_server's flags]: see command.py."""

import os


def main() -> None:
  # Before TensorFlow's first import, whose C++ start-up lines would bury the server's log;
  # users can still raise the level themselves.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  # oneDNN's own allocator keeps what its largest request needed (400 MB after a batch of
  # 40,000 texts, 14 GB after one 64 MB text) and never gives it back; with the system's,
  # serving/model_server/memory.py can return it.
  os.environ.setdefault("TF_ONEDNN_USE_SYSTEM_ALLOCATOR", "1")
  from serving.model_server import command  # pylint: disable=import-outside-toplevel
  command.run()


if __name__ == "__main__":
  main()
