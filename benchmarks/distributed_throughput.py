"""Training throughput of one process vs a local chief + 1 worker + 1 ps, on this machine.

    python benchmarks/distributed_throughput.py [--steps 3000] [--batch_size 64] [-- trainer flags]

Runs `python -m trainer.task` alone, then `python -m trainer.local_cluster --workers 1 --ps 1`
with the same flags (bundled data and the default model unless trainer flags say otherwise),
each in a fresh job dir. Throughput is the chief's `global_step/sec` summary times the batch
size: tf.estimator's step counter reads the shared global step, so the worker's steps count
too. It is the median over the middle of the run (30% to 95% of the steps: the worker has
joined, no checkpoint or evaluation interrupts). CPU use comes from /proc over the same
window, per cluster task too, and so does the CPU other processes took meanwhile: the two
setups alternate for --rounds rounds and each is reported from its least disturbed round
(every round's figures are listed too). Prints one JSON object.
"""

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import tensorflow as tf

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SAMPLE_SECS = 0.5
_RUN_TIMEOUT_SECS = 3600
_WINDOW = (0.3, 0.95)
_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_jiffies():
  """(busy, total) jiffies of the whole machine."""
  with open("/proc/stat") as f:
    values = [int(v) for v in f.readline().split()[1:]]
  idle = values[3] + values[4]
  return sum(values) - idle, sum(values)


def _descendants(root: int):
  children = {}
  for entry in os.listdir("/proc"):
    if entry.isdigit():
      try:
        with open(f"/proc/{entry}/stat") as f:
          fields = f.read().rsplit(")", 1)[1].split()
      except OSError:
        continue
      children.setdefault(int(fields[1]), []).append(int(entry))
  found, stack = [], [root]
  while stack:
    for child in children.get(stack.pop(), []):
      found.append(child)
      stack.append(child)
  return found


def _task_name(pid: int) -> str:
  try:
    with open(f"/proc/{pid}/environ", "rb") as f:
      variables = dict(v.split(b"=", 1) for v in f.read().split(b"\0") if b"=" in v)
    with open(f"/proc/{pid}/cmdline", "rb") as f:
      command = f.read().replace(b"\0", b" ")
  except OSError:
    return "unknown"
  if b"TF_CONFIG" not in variables:
    return "launcher" if b"trainer.local_cluster" in command else "trainer"
  task = json.loads(variables[b"TF_CONFIG"])["task"]
  return task["type"] if task["type"] == "chief" else f"{task['type']}-{task['index']}"


def _cpu_seconds(pid: int) -> float:
  with open(f"/proc/{pid}/stat") as f:
    fields = f.read().rsplit(")", 1)[1].split()
  return (int(fields[11]) + int(fields[12])) / _TICKS


class CpuSampler(threading.Thread):
  """Samples machine-wide busy jiffies and each descendant's CPU seconds, by task name."""

  def __init__(self, root_pid: int):
    super().__init__(daemon=True)
    self._root = root_pid
    self._stop_event = threading.Event()
    self.samples = []  # (wall time, busy jiffies, total jiffies, {task: cpu seconds})

  def run(self):
    while not self._stop_event.is_set():
      per_task = {}
      for pid in [self._root] + _descendants(self._root):
        try:
          seconds = _cpu_seconds(pid)
        except OSError:
          continue
        # Named afresh each time: between fork and exec a task still looks like its parent.
        name = _task_name(pid)
        per_task[name] = per_task.get(name, 0.0) + seconds
      self.samples.append((time.time(), *_cpu_jiffies(), per_task))
      self._stop_event.wait(_SAMPLE_SECS)

  def stop(self):
    self._stop_event.set()
    self.join()

  def window(self, start: float, end: float):
    """Machine busy fraction and per-task cores used between two wall times."""
    inside = [s for s in self.samples if start <= s[0] <= end]
    if len(inside) < 2:
      raise RuntimeError("the measurement window is shorter than two CPU samples; "
                         "raise --steps")
    (t0, busy0, total0, tasks0), (t1, busy1, total1, tasks1) = inside[0], inside[-1]
    cores = {name: round((tasks1[name] - tasks0.get(name, 0.0)) / (t1 - t0), 2)
             for name in tasks1 if name not in ("unknown",)}
    return (busy1 - busy0) / (total1 - total0), {k: v for k, v in cores.items() if v > 0.01}


def _step_rates(job_dir: str):
  """The chief's (wall time, step, global_step/sec) readings."""
  readings = []
  for path in glob.glob(os.path.join(job_dir, "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.tag == "global_step/sec":
          readings.append((event.wall_time, event.step, value.simple_value))
  return sorted(readings)


def measure(command, job_dir: str, steps: int, batch_size: int, log_path: str):
  started = time.time()
  with open(log_path, "w") as log:
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=PROJECT_ROOT)
    sampler = CpuSampler(process.pid)
    sampler.start()
    try:
      status = process.wait(timeout=_RUN_TIMEOUT_SECS)
    finally:
      if process.poll() is None:
        process.terminate()
        process.wait()
      sampler.stop()
  if status != 0:
    raise RuntimeError(f"{' '.join(command[:4])} ... failed ({status}); see {log_path}")
  window = [r for r in _step_rates(job_dir)
            if _WINDOW[0] * steps <= r[1] <= _WINDOW[1] * steps]
  if len(window) < 3:
    raise RuntimeError(f"only {len(window)} step-rate readings in the window; raise --steps")
  steps_per_sec = statistics.median(r[2] for r in window)
  busy, cores = sampler.window(window[0][0], window[-1][0])
  ours = sum(cores.values())
  trainer_cores = sum(v for k, v in cores.items() if k == "trainer" or k == "chief"
                      or k.startswith("worker"))
  return {"examples_per_sec": round(steps_per_sec * batch_size, 1),
          "global_steps_per_sec": round(steps_per_sec, 2),
          "cores_used_by_task": cores,
          "cores_used": round(ours, 2),
          # Separates "fewer cores left for training" from "each step costs more".
          "examples_per_sec_per_training_core": round(steps_per_sec * batch_size / trainer_cores),
          # Anything else running meanwhile (other jobs on a shared machine) skews the run.
          "cores_used_by_other_processes": round(max(0.0, busy * os.cpu_count() - ours), 2),
          "measured_secs": round(window[-1][0] - window[0][0], 1),
          "wall_secs": round(time.time() - started, 1)}


def explain(single, cluster, cpus: int) -> str:
  ours, ps = cluster["cores_used"], cluster["cores_used_by_task"].get("ps-0", 0.0)
  others = cluster["cores_used_by_other_processes"]
  cpu_per_example = ((ours / cluster["examples_per_sec"])
                     / (single["cores_used"] / single["examples_per_sec"]))
  if ours + others >= 0.9 * cpus:
    return (f"CPU: the cluster kept the {cpus} cores busy ({ours:.2f} cores, other processes "
            f"{others:.2f}) and spends {cpu_per_example:.2f}x the CPU per example of the lone "
            f"process ({single['cores_used']:.2f} cores), the ps alone {ps:.2f} cores for "
            f"gRPC gathers and updates; with no idle core left for the second trainer, "
            f"splitting the work only adds that overhead.")
  return (f"Not CPU ({ours + others:.2f} of {cpus} cores busy): steps wait on gRPC round "
          f"trips to the ps; the cluster spends {cpu_per_example:.2f}x the CPU per example.")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--steps", type=int, default=3000)
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("trainer_args", nargs=argparse.REMAINDER)
  args = parser.parse_args(argv)
  extra = args.trainer_args[1:] if args.trainer_args[:1] == ["--"] else args.trainer_args
  # One checkpoint, at the end: checkpoints and evaluations would pause the step counter.
  trainer_flags = [f"--train_steps={args.steps}", f"--batch_size={args.batch_size}",
                   f"--save_checkpoints_steps={args.steps}", "--max_worker_delay_secs=0",
                   *extra]
  scratch = tempfile.mkdtemp(prefix="distributed-throughput-")
  runs = {"single_process": [], "chief_worker_ps": []}
  for round_index in range(args.rounds):
    single_job = os.path.join(scratch, f"single-{round_index}")
    cluster_job = os.path.join(scratch, f"cluster-{round_index}")
    runs["single_process"].append(measure(
        [sys.executable, "-m", "trainer.task", f"--job-dir={single_job}", *trainer_flags],
        single_job, args.steps, args.batch_size, single_job + ".log"))
    runs["chief_worker_ps"].append(measure(
        [sys.executable, "-m", "trainer.local_cluster", "--workers", "1", "--ps", "1",
         "--timeout_secs", str(_RUN_TIMEOUT_SECS), "--", f"--job-dir={cluster_job}",
         *trainer_flags], cluster_job, args.steps, args.batch_size, cluster_job + ".log"))
  best = {setup: min(results, key=lambda r: r["cores_used_by_other_processes"])
          for setup, results in runs.items()}
  cpus = os.cpu_count()
  print(json.dumps({
      "cpus": cpus,
      "trainer_flags": trainer_flags,
      **best,
      "ratio": round(best["chief_worker_ps"]["examples_per_sec"]
                     / best["single_process"]["examples_per_sec"], 2),
      "limited_by": explain(best["single_process"], best["chief_worker_ps"], cpus),
      "all_rounds": {setup: [(r["examples_per_sec"], r["cores_used_by_other_processes"])
                             for r in results] for setup, results in runs.items()},
      "logs": scratch,
  }, indent=2))


if __name__ == "__main__":
  main()
