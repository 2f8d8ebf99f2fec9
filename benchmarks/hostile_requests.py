"""Large requests against the embedded server, while a client keeps sending good ones.

    python benchmarks/hostile_requests.py [--model_base_path jobs/intent/export/intent]
        [--model_name intent] [--skip_64mib]

Serves the model's newest version with `python -m serving.model_server` (its own process, as
in production), keeps one client sending batch-1 `predict_text` requests over REST, and sends,
one at a time: 4 MiB of 40,000 texts, one 4 MiB text, the body limit's 64 MiB as one text
(REST), and 1,000,000 short texts over gRPC. For each: how long it took and its status, the
good requests' p50/p99 while it ran beside their p50/p99 before any large request, and the
server's resident memory before, at its peak while it ran, and 10 s after. Prints JSON.
Targets: good-request p99 under 250 ms while a 4 MiB body is served; memory 10 s after within
1.25x of before.
"""

import argparse
import json
import os
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from export import versions  # noqa: E402
from serving import clients  # noqa: E402
from serving import runners  # noqa: E402

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIB = 1 << 20
TEXT = "how do i top up my card with an international transfer"


def memory_kib(pid: int, field: str) -> int:
  with open(f"/proc/{pid}/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1])
  raise RuntimeError(f"no {field} for process {pid}")


def reset_peak(pid: int) -> None:
  with open(f"/proc/{pid}/clear_refs", "w") as f:
    f.write("5")  # resets VmHWM to the current resident size


class GoodClient:
  """Batch-1 predict_text over one keep-alive REST connection, latencies timestamped."""

  def __init__(self, target: str, model_name: str):
    self._rest = clients.RestClient(target)
    self._path = f"/v1/models/{model_name}:predict"
    self._body = json.dumps({"signature_name": "predict_text", "instances": [TEXT]}).encode()
    self.samples = []  # (end time, seconds)
    self.failures = 0
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._loop, daemon=True)

  def _loop(self):
    while not self._stop.is_set():
      started = time.perf_counter()
      status, _ = self._rest.send("POST", self._path, self._body)
      ended = time.perf_counter()
      if status != 200:
        self.failures += 1
      self.samples.append((ended, ended - started))
      time.sleep(0.002)

  def start(self):
    self._thread.start()

  def stop(self):
    self._stop.set()
    self._thread.join()
    self._rest.close()

  def between(self, start: float, end: float):
    millis = np.array([s for t, s in self.samples if start <= t <= end]) * 1e3
    if not millis.size:
      return {"requests": 0}
    return {"requests": int(millis.size), "p50_ms": round(float(np.percentile(millis, 50)), 2),
            "p99_ms": round(float(np.percentile(millis, 99)), 2)}


def large_cases(model_name: str, body_limit: int, skip_64mib: bool):
  texts = [TEXT] * (4 * MIB // (len(TEXT) + 3))
  cases = [("rest 4 MiB of 40,000 texts", "rest",
            json.dumps({"signature_name": "predict_text", "instances": texts}).encode()),
           ("rest one 4 MiB text", "rest",
            json.dumps({"signature_name": "predict_text",
                        "instances": [(TEXT + " ") * (4 * MIB // (len(TEXT) + 1))]}).encode())]
  if not skip_64mib:
    filler = "x" * (body_limit - len('{"signature_name": "predict_text", "instances": [""]}'))
    cases.append(("rest one text of the 64 MiB body limit", "rest",
                  json.dumps({"signature_name": "predict_text", "instances": [filler]}).encode()))
  cases.append(("grpc 1,000,000 short texts", "grpc", ["top up"] * 1_000_000))
  return cases


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model_base_path",
                      default=os.path.join(PROJECT_ROOT, "jobs", "intent", "export", "intent"))
  parser.add_argument("--model_name", default="intent")
  parser.add_argument("--skip_64mib", action="store_true", help="leave out the 64 MiB body")
  parser.add_argument("--settle_secs", type=float, default=10.0)
  args = parser.parse_args()
  if versions.latest_version_dir(args.model_base_path) is None:
    raise SystemExit(f"{args.model_base_path} has no version: run `make demo` first")
  body_limit = 64 * MIB
  runner = runners.EmbeddedRunner([runners.ServedModel(args.model_name, args.model_base_path)],
                                  tempfile.mkdtemp(prefix="hostile-"))
  results = {"model_base_path": args.model_base_path, "cases": []}
  with runner:
    runners.wait_until_available(runner.grpc_target, runner.model_names, 300,
                                 runner.check_alive)
    pid = runner.pid
    good = GoodClient(runner.rest_target, args.model_name)
    good.start()
    time.sleep(3)
    results["good_requests_alone"] = good.between(0, time.perf_counter())
    rest = clients.RestClient(runner.rest_target, timeout_secs=600)
    grpc_client = clients.GrpcClient(runner.grpc_target, max_receive_bytes=-1)
    for name, protocol, payload in large_cases(args.model_name, body_limit, args.skip_64mib):
      before = memory_kib(pid, "VmRSS")
      reset_peak(pid)
      started = time.perf_counter()
      if protocol == "rest":
        status, _ = rest.send("POST", f"/v1/models/{args.model_name}:predict", payload)
      else:
        request = clients.ModelClient(args.model_name, None, rest, grpc_client).spec(
            clients.predict_pb2.PredictRequest(), "predict_text")
        request.inputs["text"].CopyFrom(tf.make_tensor_proto(payload))
        try:
          grpc_client.prediction.Predict(request, timeout=600)
          status = "OK"
        except clients.grpc.RpcError as e:
          status = e.code().name
      ended = time.perf_counter()
      peak = memory_kib(pid, "VmHWM")
      time.sleep(args.settle_secs)
      after = memory_kib(pid, "VmRSS")
      results["cases"].append({
          "case": name, "bytes": len(payload) if protocol == "rest" else None,
          "status": status, "seconds": round(ended - started, 2),
          "good_requests_meanwhile": good.between(started, ended),
          "rss_mib": {"before": round(before / 1024), "peak": round(peak / 1024),
                      f"{args.settle_secs:g}s_after": round(after / 1024)},
          "rss_after_over_before": round(after / before, 3)})
    good.stop()
    rest.close()
    grpc_client.close()
  results["good_request_failures"] = good.failures
  print(json.dumps(results, indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())
