"""The smoke test's checks: each signature asked over REST and gRPC, each answer compared with
what the same version answers in-process, and request latencies.

The comparison rule is strict on purpose, unlike the optimizer's guard (optimize/guard.py),
which counts how often two different models agree: here the server and the reference run the
same version, so classes must be equal and floats equal within the noise of writing float32 as
text (`RTOL` relative, `ATOL` absolute by default); any other difference is a serving bug.
"""

import dataclasses
import time
from typing import Dict, List, Optional, Tuple

import numpy as np

from export.servable import SessionServable
from serving.clients import CLASSIFY, PREDICT, REGRESS, REQUEST_ERRORS, ModelClient, error_text
from serving.probes import Probe

# The comparison rule's default tolerances (the noise of float32 written as text).
RTOL, ATOL = 1e-4, 1e-5
_BATCH_1_CHECKS = 3
_WARM_CALLS = 5


@dataclasses.dataclass
class Check:
  """One request to the server and how its answer compared with the in-process one."""
  signature: str
  protocol: str  # "rest" or "grpc"
  api: str  # "predict (row)", "predict (columnar)", "predict", "classify", "regress"
  batch_size: int
  ok: bool
  detail: str = ""
  max_abs_diff: float = 0.0


def expected(reference: SessionServable, probe: Probe,
             inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
  """What the version answers in-process, shaped as the server's API answers it."""
  signature = reference.signatures[probe.signature]
  if probe.method == CLASSIFY:
    keys = [k for k in ("classes", "scores") if k in signature.outputs]
    return reference.run(probe.signature, inputs, keys)
  if probe.method == REGRESS:
    outputs = reference.run(probe.signature, inputs, ["outputs"])
    return {"outputs": outputs["outputs"].reshape(-1)}
  return reference.run(probe.signature, inputs)


def compare(want: Dict[str, np.ndarray], got: Dict[str, np.ndarray], rtol: float,
            atol: float) -> Tuple[Optional[str], float]:
  """A description of the first difference (None when equal), and the largest float gap."""
  if sorted(want) != sorted(got):
    return f"outputs {sorted(got)} differ from the expected {sorted(want)}", 0.0
  largest = 0.0
  for key in sorted(want):
    expected_value, answered = np.asarray(want[key]), np.asarray(got[key])
    if expected_value.shape != answered.shape:
      return (f"output {key!r}: shape {list(answered.shape)}, expected "
              f"{list(expected_value.shape)}"), largest
    if expected_value.dtype.kind == "f":
      answered = answered.astype(expected_value.dtype)
      if expected_value.size:
        largest = max(largest, float(np.nanmax(np.abs(expected_value - answered))))
      close = np.isclose(answered, expected_value, rtol=rtol, atol=atol, equal_nan=True)
      if not close.all():
        index = tuple(int(i) for i in np.argwhere(~close)[0])
        return (f"output {key!r}[{','.join(map(str, index))}]: {answered[index]!r}, expected "
                f"{expected_value[index]!r} (rtol {rtol}, atol {atol})"), largest
    elif not np.array_equal(expected_value, answered):
      index = tuple(int(i) for i in np.argwhere(expected_value != answered)[0])
      return (f"output {key!r}[{','.join(map(str, index))}]: {answered[index]!r}, expected "
              f"{expected_value[index]!r}"), largest
  return None, largest


def api_name(probe: Probe, protocol: str, row_format: bool) -> str:
  if probe.method != PREDICT:
    return probe.method
  if protocol == "grpc":
    return "predict"
  return "predict (row)" if row_format else "predict (columnar)"


def _variants(probe: Probe, size: int, number: int) -> List[Tuple[str, bool]]:
  """(protocol, row format) pairs to send a batch with. REST predict alternates the row and
  columnar formats on batch-1 requests and uses both on batch N."""
  if probe.method != PREDICT:
    return [("rest", True), ("grpc", True)]
  if size > 1:
    return [("rest", True), ("rest", False), ("grpc", True)]
  return [("rest", number % 2 == 0), ("grpc", True)]


def run_checks(client: ModelClient, reference: SessionServable, probes: Dict[str, Probe],
               batch_size: int, rtol: float, atol: float) -> List[Check]:
  """Batch-1 requests for the first rows and one batch-N request, per signature and
  protocol, each compared with the in-process answer."""
  checks = []
  for name in sorted(probes):
    probe = probes[name]
    plan = [(1, offset) for offset in range(min(_BATCH_1_CHECKS, len(probe.rows)))]
    plan.append((batch_size, 0))
    for number, (size, offset) in enumerate(plan):
      inputs = probe.batch(size, offset)
      want = expected(reference, probe, inputs)
      for protocol, row_format in _variants(probe, size, number):
        api = api_name(probe, protocol, row_format)
        try:
          got = client.ask(protocol, probe.method, name, inputs, want, row_format)
        except REQUEST_ERRORS as e:
          checks.append(Check(name, protocol, api, size, False, error_text(e)))
          continue
        problem, gap = compare(want, got, rtol, atol)
        checks.append(Check(name, protocol, api, size, problem is None, problem or "", gap))
  return checks


def _percentiles(seconds: List[float]) -> Dict[str, float]:
  millis = np.array(seconds) * 1e3
  return {"p50": round(float(np.percentile(millis, 50)), 3),
          "p99": round(float(np.percentile(millis, 99)), 3),
          "mean": round(float(millis.mean()), 3), "requests": len(seconds)}


def measure_latency(client: ModelClient, reference: SessionServable, probe: Probe,
                    batch_size: int, requests: int) -> Dict:
  """Sequential request latency (ms) per protocol for batch 1 and batch N on one signature."""
  latency = {"signature": probe.signature}
  for protocol in ("rest", "grpc"):
    for size in (1, batch_size):
      inputs = probe.batch(size)
      want = expected(reference, probe, inputs)
      for _ in range(_WARM_CALLS):
        client.ask(protocol, probe.method, probe.signature, inputs, want)
      seconds = []
      for _ in range(requests):
        started = time.perf_counter()
        client.ask(protocol, probe.method, probe.signature, inputs, want)
        seconds.append(time.perf_counter() - started)
      latency[f"{protocol}_batch_{size}"] = _percentiles(seconds)
  return latency
