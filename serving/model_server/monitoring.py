"""The server's metrics, under TF Serving's names, and their Prometheus text exposition
(`--monitoring_config_file` with `prometheus_config { enable: true path: ... }`).

Names and labels are TF Serving's (util.cc, prometheus_exporter.cc) and TensorFlow's SavedModel
loader's: request counts by model and status, request latency (µs) by model, API and entry
point, recorded for successful requests only as TF Serving does, the session runs' latency
(µs) by model, API and runtime (Classify, Regress and Predict; MultiInference's runs are not
counted, as TF Serving's are not), SavedModel load attempts
and latency by model path, and the batching session's runs, batch sizes, padding and queuing
latency. Exposition follows TF Serving's exporter: every character outside
[A-Za-z0-9_] in a name becomes ':', label-less metrics print `{}`, `# TYPE` lines, no HELP.
"""

import bisect
import re
import threading
from typing import Dict, List, Tuple

REQUEST_COUNT = "/tensorflow/serving/request_count"
REQUEST_LATENCY = "/tensorflow/serving/request_latency"
RUNTIME_LATENCY = "/tensorflow/serving/runtime_latency"
LOAD_ATTEMPT_COUNT = "/tensorflow/cc/saved_model/load_attempt_count"
LOAD_LATENCY = "/tensorflow/cc/saved_model/load_latency"
BATCHING_WRAPPED_RUN_COUNT = "/tensorflow/serving/batching_session/wrapped_run_count"
BATCHING_INPUT_BATCH_SIZE = "/tensorflow/serving/batching_session/input_batch_size"
BATCHING_PROCESSED_BATCH_SIZE = "/tensorflow/serving/batching_session/processed_batch_size"
BATCHING_PADDING_SIZE = "/tensorflow/serving/batching_session/padding_size"
BATCHING_QUEUING_LATENCY = "/tensorflow/serving/batching_session/queuing_latency"
DEFAULT_PATH = "/monitoring/prometheus/metrics"

# TF Serving's buckets: request and runtime latency Exponential(10, 1.8, 33) µs, batching
# queuing latency Exponential(100, 1.2, 52) µs, batch and padding sizes Exponential(1, 2, 14).
_LATENCY_BUCKETS = [10 * 1.8 ** i for i in range(33)]
_QUEUING_BUCKETS = [100 * 1.2 ** i for i in range(52)]
_SIZE_BUCKETS = [2.0 ** i for i in range(14)]
_BUCKETS = {REQUEST_LATENCY: _LATENCY_BUCKETS, RUNTIME_LATENCY: _LATENCY_BUCKETS,
            BATCHING_QUEUING_LATENCY: _QUEUING_BUCKETS,
            BATCHING_INPUT_BATCH_SIZE: _SIZE_BUCKETS, BATCHING_PROCESSED_BATCH_SIZE: _SIZE_BUCKETS,
            BATCHING_PADDING_SIZE: _SIZE_BUCKETS}
_Labels = Tuple[Tuple[str, str], ...]


def prometheus_name(name: str) -> str:
  name = re.sub(r"[^A-Za-z0-9_]", ":", name)
  return f"_{name}" if name[:1].isdigit() else name


def _label_text(labels: _Labels, extra: str = "") -> str:
  parts = [f'{re.sub(r"[^A-Za-z0-9]", "_", k)}="{_escape(v)}"' for k, v in labels]
  if extra:
    parts.append(extra)
  return "{" + ",".join(parts) + "}"


def _escape(value: str) -> str:
  return value.replace("\\", "\\\\").replace('"', '\\"')


class _Histogram:
  def __init__(self, buckets: List[float]):
    self.buckets = buckets
    self.counts = [0] * (len(buckets) + 1)
    self.total = 0.0

  def add(self, value: float) -> None:
    self.counts[bisect.bisect_left(self.buckets, value)] += 1
    self.total += value


class Metrics:
  """Counters and histograms keyed by metric and labels; safe to use from any thread."""

  def __init__(self):
    self._lock = threading.Lock()
    self._counters: Dict[str, Dict[_Labels, int]] = {
        REQUEST_COUNT: {}, LOAD_ATTEMPT_COUNT: {}, LOAD_LATENCY: {},
        BATCHING_WRAPPED_RUN_COUNT: {}}
    self._histograms: Dict[str, Dict[_Labels, _Histogram]] = {name: {} for name in _BUCKETS}

  def add(self, metric: str, amount: int = 1, **labels: str) -> None:
    key = tuple(labels.items())
    with self._lock:
      cells = self._counters[metric]
      cells[key] = cells.get(key, 0) + amount

  def observe(self, metric: str, value: float, **labels: str) -> None:
    key = tuple(labels.items())
    with self._lock:
      cells = self._histograms[metric]
      if key not in cells:
        cells[key] = _Histogram(_BUCKETS[metric])
      cells[key].add(value)

  def request(self, model_name: str, status: str, api: str, entrypoint: str,
              latency_micros: float) -> None:
    """One answered request: counted by status, and its latency when it succeeded."""
    self.add(REQUEST_COUNT, model_name=model_name, status=status)
    if status == "OK":
      self.observe(REQUEST_LATENCY, latency_micros, model_name=model_name, API=api,
                   entrypoint=entrypoint)

  def runtime(self, model_name: str, api: str, latency_micros: float) -> None:
    """One successful session run of an API, as TF Serving's TF1 runtime records it: with
    batching, from the queuing of the request to its batch's answer."""
    self.observe(RUNTIME_LATENCY, latency_micros, model_name=model_name, API=api, runtime="TF1")

  def load(self, model_path: str, ok: bool, latency_micros: float) -> None:
    self.add(LOAD_ATTEMPT_COUNT, model_path=model_path, status="success" if ok else "fail")
    self.add(LOAD_LATENCY, int(latency_micros), model_path=model_path)

  def value(self, metric: str, **labels: str) -> int:
    with self._lock:
      return self._counters[metric].get(tuple(labels.items()), 0)

  def prometheus_text(self) -> str:
    lines: List[str] = []
    with self._lock:
      for metric, cells in self._counters.items():
        if cells:
          name = prometheus_name(metric)
          lines.append(f"# TYPE {name} counter")
          lines.extend(f"{name}{_label_text(labels)} {value}" for labels, value in cells.items())
      for metric, cells in self._histograms.items():
        if cells:
          name = prometheus_name(metric)
          lines.append(f"# TYPE {name} histogram")
          for labels, histogram in cells.items():
            cumulative = 0
            for limit, count in zip(histogram.buckets + [None], histogram.counts):
              cumulative += count
              bound = "+Inf" if limit is None else f"{limit:g}"
              bucket = _label_text(labels, 'le="' + bound + '"')
              lines.append(f"{name}_bucket{bucket} {cumulative}")
            lines.append(f"{name}_sum{_label_text(labels)} {histogram.total:g}")
            lines.append(f"{name}_count{_label_text(labels)} {cumulative}")
    return "\n".join(lines) + "\n"
