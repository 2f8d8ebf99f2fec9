"""Serving latency: batch-1 p50/p99 and throughput at concurrency 8, over REST and gRPC, for
the original export and (when given) an optimized one, measured in the same run, beside the
in-process session.run time of the same model as the floor.

    python benchmarks/serving_latency.py [--model_base_path jobs/intent/export/intent]
        [--model_name intent] [--optimized_dir VERSION_DIR] [--requests 1000] [--concurrency 8]

Each model is served in turn by the embedded server (its own process, as in production) and
asked the default signature's question (a Classify of one evaluation example from the
version's warmup records), with request bodies built once so the client does as little as it
can. Prints JSON; the target is embedded REST batch-1 p50 within 3x of in-process.
"""

import json
import os
import sys
import tempfile
import threading
import time
from concurrent import futures

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from tensorflow_serving.apis import classification_pb2  # noqa: E402

from export import versions  # noqa: E402
from export.servable import SessionServable  # noqa: E402
from serving import clients  # noqa: E402
from serving import probes  # noqa: E402
from serving import runners  # noqa: E402

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIGNATURE = "serving_default"
TARGET_RATIO = 3.0

flags.DEFINE_string("model_base_path", os.path.join(PROJECT_ROOT, "jobs", "intent", "export",
                                                    "intent"),
                    "Base path of the original export (its highest version is measured).")
flags.DEFINE_string("model_name", "intent", "Model name to serve it under.")
flags.DEFINE_string("optimized_dir", None, "Version dir of an optimized export to measure "
                    "beside the original.")
flags.DEFINE_integer("requests", 1000, "Requests per sequential figure; the concurrent figure "
                     "sends twice as many.")
flags.DEFINE_integer("concurrency", 8, "Concurrent clients for the throughput figure.")
FLAGS = flags.FLAGS


def highest_version(base_path):
  newest = versions.latest_version_dir(base_path)
  if newest is None:
    raise SystemExit(f"{base_path} has no numeric version dir; run `make demo` first or pass "
                     f"--model_base_path")
  return newest


def percentiles(seconds):
  millis = np.array(seconds) * 1e3
  return {"p50_ms": round(float(np.percentile(millis, 50)), 3),
          "p99_ms": round(float(np.percentile(millis, 99)), 3)}


def one_example(version_dir):
  """The first evaluation example the version's warmup records hold for the signature."""
  with SessionServable(version_dir) as model:
    probe = probes.build_probes(model)[SIGNATURE]
  return probe.batch(1)["inputs"][0]


def in_process(version_dir, serialized, requests):
  """session.run time (the floor the issue names), and the session-callable time of the
  path the server itself runs, which skips session.run's Python feed handling."""
  with SessionServable(version_dir) as model:
    feed = {"inputs": np.array([serialized], dtype=object)}
    run_callable = model.callable(SIGNATURE, ["inputs"], ["classes", "scores"])
    return {"session_run": sequential(lambda: model.run(SIGNATURE, feed), requests),
            "session_callable": sequential(lambda: run_callable(feed["inputs"]), requests)}


class Clients:
  """Per-thread REST connection and gRPC stub, each sending the one prepared request."""

  def __init__(self, runner, model_name, serialized):
    example = tf.train.Example.FromString(serialized)
    self._rest_body = json.dumps({"signature_name": SIGNATURE,
                                  "examples": [clients.example_to_json(example)]}).encode()
    self._rest_path = f"/v1/models/{model_name}:classify"
    self._request = classification_pb2.ClassificationRequest()
    self._request.model_spec.name = model_name
    self._request.model_spec.signature_name = SIGNATURE
    self._request.input.example_list.examples.append(example)
    self._runner = runner
    self._local = threading.local()
    self._opened = []
    self._lock = threading.Lock()

  def _own(self):
    if not hasattr(self._local, "rest"):
      self._local.rest = clients.RestClient(self._runner.rest_target)
      self._local.grpc = clients.GrpcClient(self._runner.grpc_target)
      with self._lock:
        self._opened.append((self._local.rest, self._local.grpc))
    return self._local

  def rest(self):
    status, body = self._own().rest.send("POST", self._rest_path, self._rest_body)
    if status != 200:
      raise RuntimeError(f"REST {status}: {body[:300]!r}")

  def grpc(self):
    self._own().grpc.prediction.Classify(self._request, timeout=60)

  def close(self):
    for rest, grpc_client in self._opened:
      rest.close()
      grpc_client.close()


def sequential(call, requests):
  for _ in range(20):
    call()
  seconds = []
  for _ in range(requests):
    started = time.perf_counter()
    call()
    seconds.append(time.perf_counter() - started)
  return percentiles(seconds)


def concurrent(call, clients, total):
  per_client = total // clients

  def client(_):
    seconds = []
    for _ in range(per_client):
      started = time.perf_counter()
      call()
      seconds.append(time.perf_counter() - started)
    return seconds

  with futures.ThreadPoolExecutor(clients) as pool:
    for _ in pool.map(lambda _: [call() for _ in range(5)], range(clients)):
      pass
    started = time.perf_counter()
    results = list(pool.map(client, range(clients)))
    wall = time.perf_counter() - started
  figures = percentiles([s for r in results for s in r])
  figures["requests_per_s"] = round(per_client * clients / wall, 1)
  return figures


def measure(version_dir, model_name, serialized, requests, concurrency):
  figures = {"version_dir": version_dir,
             "in_process": in_process(version_dir, serialized, requests)}
  with tempfile.TemporaryDirectory(prefix="serving-latency-") as scratch:
    base = os.path.join(scratch, model_name)
    os.makedirs(base)
    os.symlink(os.path.abspath(version_dir), os.path.join(base, "1"))
    runner = runners.EmbeddedRunner([runners.ServedModel(model_name, base)],
                                    os.path.join(scratch, "server"))
    with runner:
      runners.wait_until_available(runner.grpc_target, runner.model_names, 300,
                                   runner.check_alive)
      clients = Clients(runner, model_name, serialized)
      try:
        for protocol in ("rest", "grpc"):
          call = getattr(clients, protocol)
          figures[f"{protocol}_batch_1"] = sequential(call, requests)
          figures[f"{protocol}_concurrency_{concurrency}"] = concurrent(call, concurrency,
                                                                        2 * requests)
      finally:
        clients.close()
  for floor in ("session_run", "session_callable"):
    for protocol in ("rest", "grpc"):
      figures[f"{protocol}_p50_over_{floor}_p50"] = round(
          figures[f"{protocol}_batch_1"]["p50_ms"] / figures["in_process"][floor]["p50_ms"], 2)
  return figures


def main(argv):
  del argv
  original = highest_version(FLAGS.model_base_path)
  serialized = one_example(original)
  report = {"model_name": FLAGS.model_name, "signature": SIGNATURE, "api": "classify",
            "server": "embedded (python -m serving.model_server)", "cpus": os.cpu_count(),
            "requests": FLAGS.requests, "concurrency": FLAGS.concurrency,
            "target": f"embedded REST batch-1 p50 within {TARGET_RATIO:g}x of in-process "
                      f"session.run",
            "original": measure(original, FLAGS.model_name, serialized, FLAGS.requests,
                                FLAGS.concurrency)}
  if FLAGS.optimized_dir:
    report["optimized"] = measure(FLAGS.optimized_dir.rstrip("/"), FLAGS.model_name,
                                  serialized, FLAGS.requests, FLAGS.concurrency)
  report["target_met"] = all(
      report[k]["rest_p50_over_session_run_p50"] <= TARGET_RATIO
      for k in ("original", "optimized") if k in report)
  print(json.dumps(report, indent=2))


if __name__ == "__main__":
  app.run(main)
