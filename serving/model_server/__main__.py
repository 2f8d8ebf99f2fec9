"""python -m serving.model_server [tensorflow_model_server's flags]: see command.py."""

import os
import sys


def main() -> None:
  # Before TensorFlow's first import, whose C++ start-up lines would bury the server's log;
  # users can still raise the level themselves.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  # oneDNN's own allocator keeps what its largest request needed (400 MB after a batch of
  # 40,000 texts, 14 GB after one 64 MB text) and never gives it back; with the process's,
  # serving/model_server/memory.py can return it.
  os.environ.setdefault("TF_ONEDNN_USE_SYSTEM_ALLOCATOR", "1")
  from serving.model_server import memory  # pylint: disable=import-outside-toplevel
  environ = memory.tcmalloc_environment(os.environ)
  if environ is not None:
    # The allocator is chosen when a process starts: the same command again, as the same
    # process (its pid stays, for whoever started it), with tcmalloc preloaded.
    arguments = getattr(sys, "orig_argv", [sys.executable, "-m", __spec__.name, *sys.argv[1:]])
    os.execve(sys.executable, [sys.executable, *arguments[1:]], environ)
  from serving.model_server import command  # pylint: disable=import-outside-toplevel
  command.run()


if __name__ == "__main__":
  main()
