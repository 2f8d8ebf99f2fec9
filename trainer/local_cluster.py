"""Runs `trainer.task` as a TF_CONFIG cluster of local processes on 127.0.0.1.

    python -m trainer.local_cluster --workers 2 --ps 1 --evaluator -- --job-dir jobs/dist ...

Like `gcloud ai-platform local train --distributed`: one chief, N workers, M parameter
servers and optionally an evaluator, each a separate process with its own TF_CONFIG and
a free port; every line they print comes out prefixed with its task (`[worker-0] ...`).
tf.estimator's parameter servers never exit on their own, so they are stopped once the
chief and every worker have finished. The first task to fail stops the whole cluster, and
every child is stopped whatever way the launcher ends. Exit status: 0, or the failed
task's status (124 on --timeout_secs).
"""

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional, Sequence, TextIO

import portpicker

CHIEF, WORKER, PS, EVALUATOR = "chief", "worker", "ps", "evaluator"
TIMEOUT_STATUS = 124
_POLL_SECS = 0.2
_STOP_GRACE_SECS = 10.0
DEFAULT_COMMAND = (sys.executable, "-m", "trainer.task")


@dataclasses.dataclass
class Task:
  type: str
  index: int
  process: subprocess.Popen
  streamer: threading.Thread

  @property
  def name(self) -> str:
    return CHIEF if self.type == CHIEF else f"{self.type}-{self.index}"


def free_ports(count: int) -> List[int]:
  """`count` distinct ports that are free now."""
  ports: List[int] = []
  while len(ports) < count:
    port = portpicker.pick_unused_port()
    if port not in ports:
      ports.append(port)
  return ports


def cluster_spec(workers: int, ps: int, evaluator: bool) -> Dict[str, List[str]]:
  """The evaluator is listed as Vertex AI lists it, so the chief knows one will evaluate."""
  ports = iter(free_ports(1 + workers + ps + int(evaluator)))
  spec = {CHIEF: [f"127.0.0.1:{next(ports)}"]}
  if workers:
    spec[WORKER] = [f"127.0.0.1:{next(ports)}" for _ in range(workers)]
  if ps:
    spec[PS] = [f"127.0.0.1:{next(ports)}" for _ in range(ps)]
  if evaluator:
    spec[EVALUATOR] = [f"127.0.0.1:{next(ports)}"]
  return spec


def tf_config(spec: Dict[str, List[str]], task_type: str, index: int) -> str:
  return json.dumps({"cluster": spec, "task": {"type": task_type, "index": index},
                     "environment": "cloud"})


class _Output:
  """Serializes the tasks' lines onto one stream."""

  def __init__(self, stream: TextIO):
    self._stream = stream
    self._lock = threading.Lock()

  def line(self, prefix: str, text: str) -> None:
    with self._lock:
      self._stream.write(f"[{prefix}] {text.rstrip()}\n")
      self._stream.flush()


def _stream(pipe, prefix: str, output: _Output) -> None:
  for raw in iter(pipe.readline, b""):
    output.line(prefix, raw.decode("utf-8", errors="replace"))
  pipe.close()


def _start(task_type: str, index: int, spec, command: Sequence[str], env: Dict[str, str],
           output: _Output) -> Task:
  task_env = dict(env, TF_CONFIG=tf_config(spec, task_type, index), PYTHONUNBUFFERED="1")
  # Own session: a Ctrl-C in the terminal reaches only the launcher, which then stops
  # every task in order instead of leaving parameter servers behind.
  process = subprocess.Popen(list(command), env=task_env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, start_new_session=True)
  name = CHIEF if task_type == CHIEF else f"{task_type}-{index}"
  streamer = threading.Thread(target=_stream, args=(process.stdout, name, output), daemon=True)
  streamer.start()
  output.line("local_cluster", f"started {name} pid {process.pid}")
  return Task(task_type, index, process, streamer)


def _stop(tasks: Sequence[Task], output: _Output) -> None:
  running = [t for t in tasks if t.process.poll() is None]
  for task in running:
    output.line("local_cluster", f"stopping {task.name} pid {task.process.pid}")
    task.process.terminate()
  deadline = time.monotonic() + _STOP_GRACE_SECS
  for task in running:
    try:
      task.process.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
      task.process.kill()
      task.process.wait()
  for task in tasks:
    task.streamer.join(timeout=_STOP_GRACE_SECS)


def run(trainer_args: Sequence[str], workers: int = 1, ps: int = 1, evaluator: bool = False,
        timeout_secs: float = 24 * 3600, command: Sequence[str] = DEFAULT_COMMAND,
        stream: TextIO = sys.stdout, env: Optional[Dict[str, str]] = None) -> int:
  """Runs the cluster to completion; returns 0 or the first failing task's exit status."""
  if workers < 0 or ps < 0:
    raise ValueError(f"--workers and --ps must be >= 0, got {workers} and {ps}")
  output = _Output(stream)
  spec = cluster_spec(workers, ps, evaluator)
  base_env = dict(os.environ if env is None else env)
  full_command = list(command) + list(trainer_args)
  tasks: List[Task] = []
  try:
    # Parameter servers first: the chief's session waits for them anyway.
    for task_type, count in ((PS, ps), (CHIEF, 1), (WORKER, workers), (EVALUATOR, int(evaluator))):
      for index in range(count):
        tasks.append(_start(task_type, index, spec, full_command, base_env, output))
    return _supervise(tasks, timeout_secs, output)
  finally:
    _stop(tasks, output)


def _supervise(tasks: Sequence[Task], timeout_secs: float, output: _Output) -> int:
  deadline = time.monotonic() + timeout_secs
  servers = [t for t in tasks if t.type == PS]
  trainers = [t for t in tasks if t.type in (CHIEF, WORKER)]
  reported = set()
  while time.monotonic() < deadline:
    for task in tasks:
      status = task.process.poll()
      if status is None or task.name in reported:
        continue
      reported.add(task.name)
      output.line("local_cluster", f"{task.name} exited with status {status}")
      if status != 0 or task.type == PS:
        output.line("local_cluster", f"{task.name} failed: stopping the cluster")
        return status or 1
    if servers and all(t.process.poll() == 0 for t in trainers):
      output.line("local_cluster", "chief and workers are done: stopping the parameter servers")
      _stop(servers, output)
      reported.update(t.name for t in servers)
      servers = []
    if all(t.process.poll() is not None for t in tasks):
      return 0
    time.sleep(_POLL_SECS)
  output.line("local_cluster", f"timed out after {timeout_secs:g}s: stopping the cluster")
  return TIMEOUT_STATUS


def _parse(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog="python -m trainer.local_cluster",
      description="Run trainer.task as a local TF_CONFIG cluster (chief, workers, ps, "
                  "evaluator) on 127.0.0.1. Trainer flags go after --.")
  parser.add_argument("--workers", type=int, default=1, help="worker tasks besides the chief")
  parser.add_argument("--ps", type=int, default=1, help="parameter server tasks")
  parser.add_argument("--evaluator", action="store_true", help="add an evaluator task")
  parser.add_argument("--timeout_secs", type=float, default=24 * 3600,
                      help="stop everything and fail after this long")
  parser.add_argument("trainer_args", nargs=argparse.REMAINDER,
                      help="-- then the flags every task passes to trainer.task")
  args = parser.parse_args(argv)
  if args.trainer_args[:1] == ["--"]:
    args.trainer_args = args.trainer_args[1:]
  return args


def _raise_on_sigterm(signum, frame):
  raise SystemExit(128 + signum)


def main(argv: Sequence[str] = None) -> int:
  args = _parse(sys.argv[1:] if argv is None else argv)
  signal.signal(signal.SIGTERM, _raise_on_sigterm)
  return run(args.trainer_args, workers=args.workers, ps=args.ps, evaluator=args.evaluator,
             timeout_secs=args.timeout_secs)


if __name__ == "__main__":
  sys.exit(main())
