"""The batching experiment TF Serving's guide asks its users to run, run for them.

For each point of a small grid of `max_batch_size` x `batch_timeout_micros` x
`num_batch_threads` (and once with batching off, the baseline), a server is started on the
model with those parameters (`runners`: the real TF Serving when it can run, else the
embedded one) and loaded with batch-1 requests from `concurrency` connections for a fixed
time (`load.py`). The point with the most requests a second whose p99 latency is within the
budget and which failed no request wins; its parameters are written as a BatchingParameters
text file any TF Serving takes with `--enable_batching --batching_parameters_file`.

`num_batch_threads` is tried at TF Serving's advice for CPUs, the number of cores, and at 1:
the server's own request handling needs a core too, and on a 2-core host one batch thread
can answer more requests a second than two (while it runs, the queue fills, so batches are
fuller); the experiment decides. `max_enqueued_batches` holds every connection's request (a
queue that refuses requests at the tuned concurrency would fail the point).
"""

import dataclasses
import json
import math
import os
import posixpath
import tempfile
import time
from typing import Callable, Dict, List, Optional, Sequence

import tensorflow as tf

from export import artifact_io
from export import versions as versions_lib
from export.servable import SessionServable
from serving import clients
from serving import probes as probes_lib
from serving import runners
from serving.errors import ProbeError
from serving.model_server import config_files
from serving.tune_batching import load

DEFAULT_MAX_BATCH_SIZES = (8, 16, 32)
DEFAULT_BATCH_TIMEOUTS_MICROS = (0, 1000)
PARAMETERS_FILE = "batching_parameters.txt"
REPORT_FILE = "tuning_report.json"


class TuningError(RuntimeError):
  """No point of the grid met the budget, or the model cannot be asked."""


@dataclasses.dataclass(frozen=True)
class Point:
  """One configuration; `max_batch_size` None is batching off, which has no batch threads."""
  max_batch_size: Optional[int]
  batch_timeout_micros: int = 0
  num_batch_threads: Optional[int] = None

  @property
  def name(self) -> str:
    if self.max_batch_size is None:
      return "batching off"
    return f"max_batch_size {self.max_batch_size}, batch_timeout_micros " \
           f"{self.batch_timeout_micros}, num_batch_threads {self.num_batch_threads}"


@dataclasses.dataclass(frozen=True)
class Measured:
  point: Point
  requests_per_s: float
  p50_ms: float
  p99_ms: float
  requests: int
  failures: int
  first_failure: str = ""

  def within(self, p99_budget_ms: float) -> bool:
    return self.failures == 0 and self.p99_ms <= p99_budget_ms

  def as_dict(self) -> Dict:
    return {"max_batch_size": self.point.max_batch_size,
            "batch_timeout_micros": self.point.batch_timeout_micros,
            "num_batch_threads": self.point.num_batch_threads,
            "requests_per_s": round(self.requests_per_s, 1), "p50_ms": round(self.p50_ms, 3),
            "p99_ms": round(self.p99_ms, 3), "requests": self.requests,
            "failures": self.failures, "first_failure": self.first_failure}


@dataclasses.dataclass(frozen=True)
class TuningSettings:
  concurrency: int = 32
  p99_budget_ms: float = 50.0
  max_batch_sizes: Sequence[int] = DEFAULT_MAX_BATCH_SIZES
  batch_timeouts_micros: Sequence[int] = DEFAULT_BATCH_TIMEOUTS_MICROS
  seconds_per_point: float = 5.0
  num_batch_threads: Sequence[int] = ()  # (): 1 and the number of cores
  signature_name: str = "serving_default"
  examples_file: Optional[str] = None
  backend: str = "auto"
  deadline_secs: float = 300.0

  def check(self) -> None:
    if self.concurrency < 1:
      raise ValueError("concurrency must be at least 1")
    if self.p99_budget_ms <= 0 or self.seconds_per_point <= 0:
      raise ValueError("the p99 budget and the seconds per point must be positive")
    if not self.max_batch_sizes or min(self.max_batch_sizes) < 1:
      raise ValueError("max_batch_sizes must be positive numbers")
    if not self.batch_timeouts_micros or min(self.batch_timeouts_micros) < 0:
      raise ValueError("batch_timeouts_micros must be non-negative numbers")
    if self.num_batch_threads and min(self.num_batch_threads) < 1:
      raise ValueError("num_batch_threads must be positive numbers")

  @property
  def thread_counts(self) -> List[int]:
    return sorted(set(self.num_batch_threads or (1, os.cpu_count() or 1)))

  def grid(self) -> List[Point]:
    return [Point(size, timeout, threads) for size in self.max_batch_sizes
            for timeout in self.batch_timeouts_micros for threads in self.thread_counts]


@dataclasses.dataclass(frozen=True)
class TuningResult:
  version_dir: str
  settings: TuningSettings
  baseline: Measured
  measured: List[Measured]
  best: Optional[Measured]
  backend: str

  @property
  def speedup(self) -> Optional[float]:
    if self.best is None or not self.baseline.requests_per_s:
      return None
    return self.best.requests_per_s / self.baseline.requests_per_s

  def as_dict(self) -> Dict:
    return {"version_dir": self.version_dir, "backend": self.backend,
            "concurrency": self.settings.concurrency,
            "p99_budget_ms": self.settings.p99_budget_ms,
            "seconds_per_point": self.settings.seconds_per_point,
            "num_batch_threads": self.settings.thread_counts,
            "baseline": self.baseline.as_dict(),
            "measured": [m.as_dict() for m in self.measured],
            "best": self.best.as_dict() if self.best else None,
            "speedup": round(self.speedup, 3) if self.speedup else None}


def parameters(point: Point, settings: TuningSettings):
  """The BatchingParameters of a grid point."""
  params = config_files.BatchingParameters()
  params.max_batch_size.value = point.max_batch_size
  params.batch_timeout_micros.value = point.batch_timeout_micros
  params.num_batch_threads.value = point.num_batch_threads
  params.max_enqueued_batches.value = (math.ceil(settings.concurrency / point.max_batch_size)
                                       + point.num_batch_threads)
  return params


def request_bodies(version_dir: str, model_name: str, signature_name: str,
                   examples_file: Optional[str] = None, count: int = 16) -> List[tuple]:
  """(path, body) of batch-1 REST requests of the signature, one per evaluation example (from
  the examples file, else the version's warmup records)."""
  with SessionServable(version_dir) as servable:
    if signature_name not in servable.signatures:
      raise TuningError(f"{version_dir} has no signature {signature_name!r}; it has "
                        f"{sorted(servable.signatures)}")
    try:
      examples = (probes_lib.read_examples_for(servable, examples_file)
                  if examples_file else None)
      probe = probes_lib.build_probes(servable, examples,
                                      signature_names=[signature_name])[signature_name]
    except ProbeError as e:
      raise TuningError(f"cannot build requests for {version_dir}: {e}") from None
  path = f"/v1/models/{model_name}:{probe.method}"
  bodies = []
  for offset in range(min(count, len(probe.rows))):
    inputs = probe.batch(1, offset)
    if probe.method == clients.PREDICT:
      document = {"signature_name": signature_name, **clients.predict_body(inputs, True)}
    else:
      examples = [clients.example_to_json(tf.train.Example.FromString(s))
                  for s in inputs["inputs"].reshape(-1)]
      document = {"signature_name": signature_name, "examples": examples}
    bodies.append((path, json.dumps(document).encode("utf-8")))
  return bodies


def measure_point(point: Point, model_name: str, model_base_path: str, work_dir: str,
                  bodies: Sequence[tuple], settings: TuningSettings, backend: str) -> Measured:
  """Starts a server with the point's parameters and measures it under the load."""
  batching = parameters(point, settings) if point.max_batch_size is not None else None
  runner = runners.make_runner(backend, [runners.ServedModel(model_name, model_base_path)],
                               work_dir, batching_parameters=batching)
  with runner:
    runners.wait_until_available(runner.grpc_target, runner.model_names,
                                 settings.deadline_secs, runner.check_alive)
    host, port = runner.rest_target.rsplit(":", 1)
    requests = [load.post_request(host, int(port), path, body) for path, body in bodies]
    result = load.run_load(host, int(port), requests, settings.concurrency,
                           settings.seconds_per_point)
  return Measured(point, result.requests_per_s, result.percentile_ms(50),
                  result.percentile_ms(99), result.requests, result.failures,
                  result.first_failure)


def tune(model_base_path: str, model_name: str, settings: TuningSettings = TuningSettings(),
         log: Callable[[str], None] = print) -> TuningResult:
  """Runs the grid on the base path's newest version; the result names the best point."""
  settings.check()
  version_dir = versions_lib.latest_version_dir(model_base_path)
  if version_dir is None:
    raise TuningError(f"{model_base_path} has no numeric version directory to tune")
  backend = runners.choose_backend(settings.backend)
  bodies = request_bodies(version_dir, model_name, settings.signature_name,
                          settings.examples_file)
  grid = settings.grid()
  measured: List[Measured] = []
  with tempfile.TemporaryDirectory(prefix="tune-batching-") as scratch:
    for number, point in enumerate([Point(None)] + grid):
      started = time.monotonic()
      figures = measure_point(point, model_name, posixpath.dirname(version_dir),
                              os.path.join(scratch, f"server-{number}"), bodies, settings,
                              backend)
      log(f"{point.name}: {figures.requests_per_s:.0f} requests/s, p50 {figures.p50_ms:.2f} "
          f"ms, p99 {figures.p99_ms:.2f} ms, {figures.failures} failed "
          f"({time.monotonic() - started:.0f} s)")
      measured.append(figures)
  baseline, points = measured[0], measured[1:]
  return TuningResult(version_dir, settings, baseline, points,
                      best_point(points, settings.p99_budget_ms), backend)


def best_point(measured: Sequence[Measured], p99_budget_ms: float) -> Optional[Measured]:
  """The most requests a second among the points within budget and without failures; of
  equals, the lower p99."""
  feasible = [m for m in measured if m.within(p99_budget_ms)]
  return max(feasible, key=lambda m: (m.requests_per_s, -m.p99_ms)) if feasible else None


def parameters_text(result: TuningResult) -> str:
  """The winning BatchingParameters, headed by the figures that chose them."""
  best, baseline = result.best, result.baseline
  header = [
      "# Written by python -m serving.tune_batching for",
      f"# {result.version_dir} ({result.backend} server):",
      f"# at concurrency {result.settings.concurrency}, {best.requests_per_s:.0f} requests/s "
      f"with p99 {best.p99_ms:.2f} ms (budget {result.settings.p99_budget_ms:g} ms);",
      f"# batching off: {baseline.requests_per_s:.0f} requests/s, p99 {baseline.p99_ms:.2f} "
      f"ms.",
  ]
  chosen = parameters(best.point, result.settings)
  fields = ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches",
            "num_batch_threads")
  lines = [f"{field} {{ value: {getattr(chosen, field).value} }}" for field in fields]
  return "\n".join(header + lines) + "\n"


def write_result(result: TuningResult, output_dir: str) -> Optional[str]:
  """Writes the report (always) and the parameters file (when a point won); returns the
  parameters file's path, or None."""
  artifact_io.write_atomic(artifact_io.join(output_dir, REPORT_FILE),
                           json.dumps(result.as_dict(), indent=2) + "\n")
  if result.best is None:
    return None
  path = artifact_io.join(output_dir, PARAMETERS_FILE)
  artifact_io.write_atomic(path, parameters_text(result))
  return path


def verdict(result: TuningResult) -> str:
  """One line: what won and by how much, or why nothing did."""
  if result.best is None:
    closest = min(result.measured, key=lambda m: (m.failures > 0, m.p99_ms))
    return (f"no point met the p99 budget of {result.settings.p99_budget_ms:g} ms without "
            f"failures; the closest was {closest.point.name} with p99 {closest.p99_ms:.2f} ms "
            f"and {closest.failures} failed requests")
  return (f"{result.best.point.name}: {result.best.requests_per_s:.0f} requests/s at "
          f"concurrency {result.settings.concurrency}, p99 {result.best.p99_ms:.2f} ms, "
          f"{result.speedup:.2f}x batching off")
