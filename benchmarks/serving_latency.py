"""The bundled server under load: batch-1 latency and throughput with batching off, with the
project's batching file and with the tuner's, for the Banking77 model, original and optimized,
beside the in-process session time of the same model, all in one run.

    python benchmarks/serving_latency.py [--job-dir DIR | --original_dir V --optimized_dir V]
        [--seconds 5] [--rounds 3] [--p99_budget_ms 50]

Trains the default model on ../shared/datasets/banking77 and optimizes it (or takes the given
version dirs). Per model it runs `python -m serving.tune_batching` at concurrency 32, then
starts three embedded servers (batching off, serving/docker/batching_parameters.txt, the
tuner's file) side by side and measures them in interleaved rounds, so the VM's drift hits
each alike: REST batch-1 p50/p99 (wrk, one connection), gRPC batch-1 p50/p99 (a Python sync
stub, as a user's code calls it, and h2load, a C client like wrk, so the two protocols are
compared without Python's client cost), REST throughput at 1, 8 and 32 connections (wrk) and
gRPC throughput at 32 (grpc.aio and h2load), with
failures counted, and every server's answers to 64 distinct examples sent at once compared
with the in-process ones. The load is Classify of one evaluation example a request.

Where the batch-1 time goes inside a server comes from the server's own Prometheus page
(TF Serving's metrics): its mean Classify session run (`runtime_latency`) and request time
(`request_latency`, parse to answer) over the one-connection REST and gRPC figures, beside the
same run's mean in a loop in-process (`*_server_run_mean_over_caller_thread_mean`).

Whether the client is the bottleneck is measured, not assumed: the same clients against
servers that answer instantly (a trivial uvicorn app, and trivial gRPC servers: grpcio's
thread-pool and asyncio ones, and grpclib's, returning answers of the same size) give their
ceilings, with the CPU time each server stack spends on a request, its floor; the clients' own
CPU time per request is reported too. Each gRPC stack's one-connection p50 over uvicorn's says
whether any of them could let gRPC answer as fast as REST.

A shared VM's figures move with its neighbours, so each load figure under load also gives the
machine's idle share and its steal share (CPU time the hypervisor gave to other VMs), and
`machine_whole_run` gives them for the whole run. Prints JSON; needs `wrk` and `h2load` on
PATH (Debian packages wrk, nghttp2-client).

The servers run on tcmalloc when the system has it, as `python -m serving.model_server` does
(serving/model_server/memory.py; SERVING_MALLOC=system keeps the system's malloc), and the
report says which they ran on. The in-process baseline, and the targets' ratios, are of this
process, on the system's malloc as a user's Python is; the same baseline measured in a child
process on tcmalloc (`in_process_tcmalloc`) and the ratios to it (`*_over_in_process_tcmalloc`)
show how much of the servers' figures the allocator's own gain on the model explains.
"""

import asyncio
import dataclasses
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent import futures

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from tensorflow_serving.apis import classification_pb2  # noqa: E402
from tensorflow_serving.apis import prediction_service_pb2_grpc  # noqa: E402

import banking77  # noqa: E402  (beside this script)
from export import versions  # noqa: E402
from export.servable import SessionServable  # noqa: E402
from optimize import optimizer  # noqa: E402
from serving import clients  # noqa: E402
from serving import probes  # noqa: E402
from serving import runners  # noqa: E402
from serving.model_server import config_files  # noqa: E402
from serving.model_server import memory  # noqa: E402
from serving.model_server import monitoring  # noqa: E402
from serving.tune_batching import tuner  # noqa: E402
from trainer import command  # noqa: E402
from trainer import pipeline  # noqa: E402

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROJECT_BATCHING = os.path.join(PROJECT_ROOT, "serving", "docker", "batching_parameters.txt")
SIGNATURE = "serving_default"
MODEL_NAME = "intent"
REST_P50_TARGET, REST_P50_GOAL = 2.5, 2.0
THROUGHPUT_TARGET, THROUGHPUT_GOAL = 2.0, 3.0

banking77.define_trainer_flags()
flags.DEFINE_string("original_dir", None, "Version dir of the original export (default: train "
                    "one in --job-dir).")
flags.DEFINE_string("optimized_dir", None, "Version dir of its optimized export (default: "
                    "optimize it).")
flags.DEFINE_float("seconds", 5.0, "Seconds per throughput figure.")
flags.DEFINE_integer("rounds", 3, "Interleaved measurement rounds.")
flags.DEFINE_integer("latency_requests", 2000, "Requests per gRPC batch-1 latency figure.")
flags.DEFINE_float("p99_budget_ms", 50.0, "The tuner's p99 budget at concurrency 32.")
flags.DEFINE_string("in_process_only", None, "Only print the in-process baseline of this "
                    "version dir (the child that measures it on tcmalloc).")
FLAGS = flags.FLAGS

WRK_SCRIPT = r"""
local bodies = {}
for line in io.lines(os.getenv("BODIES")) do bodies[#bodies + 1] = line end
local index = 0
request = function()
  index = index % #bodies + 1
  return wrk.format("POST", os.getenv("REQUEST_PATH"), {["Content-Type"] = "application/json"},
                    bodies[index])
end
done = function(summary, latency, requests)
  io.write(string.format(
      '{"requests": %d, "seconds": %f, "p50_ms": %f, "p99_ms": %f, "errors": %d, ' ..
      '"status_errors": %d}\n', summary.requests, summary.duration / 1e6,
      latency:percentile(50) / 1e3, latency:percentile(99) / 1e3,
      summary.errors.connect + summary.errors.read + summary.errors.write +
      summary.errors.timeout, summary.errors.status))
end
"""

TRIVIAL_HTTP = r"""
import sys, uvicorn
answer = open(sys.argv[2], "rb").read()
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(answer)).encode())]})
    await send({"type": "http.response.body", "body": answer})
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), loop="uvloop", http="httptools",
            log_level="warning", access_log=False)
"""

TRIVIAL_GRPC = r"""
import sys, time
from concurrent import futures
import grpc
answer = open(sys.argv[2], "rb").read()
handler = grpc.method_handlers_generic_handler("tensorflow.serving.PredictionService", {
    "Classify": grpc.unary_unary_rpc_method_handler(lambda request, context: answer)})
server = grpc.server(futures.ThreadPoolExecutor(8))
server.add_generic_rpc_handlers((handler,))
server.add_insecure_port(f"127.0.0.1:{sys.argv[1]}")
server.start()
server.wait_for_termination()
"""

# grpcio's asyncio server, the other server grpcio offers, measured beside the thread-pool one
# the model server uses.
TRIVIAL_GRPC_AIO = r"""
import asyncio, sys
import grpc
answer = open(sys.argv[2], "rb").read()
async def classify(request, context):
    return answer
async def main():
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "tensorflow.serving.PredictionService",
        {"Classify": grpc.unary_unary_rpc_method_handler(classify)}),))
    server.add_insecure_port(f"127.0.0.1:{sys.argv[1]}")
    await server.start()
    await server.wait_for_termination()
asyncio.run(main())
"""

# grpclib: the other Python gRPC server there is, asyncio on h2 (HTTP/2 in Python), on uvloop
# as the REST server runs; measured beside grpcio's to know whether serving gRPC with it
# would bring gRPC's per-request cost down to uvicorn's.
TRIVIAL_GRPCLIB = r"""
import sys, uvloop
from grpclib.const import Cardinality, Handler
from grpclib.server import Server
from tensorflow_serving.apis import classification_pb2
answer = classification_pb2.ClassificationResponse.FromString(open(sys.argv[2], "rb").read())
async def classify(stream):
    await stream.recv_message()
    await stream.send_message(answer)
class Service:
    def __mapping__(self):
        return {"/tensorflow.serving.PredictionService/Classify": Handler(
            classify, Cardinality.UNARY_UNARY, classification_pb2.ClassificationRequest,
            classification_pb2.ClassificationResponse)}
async def main():
    server = Server([Service()])
    await server.start("127.0.0.1", int(sys.argv[1]))
    await server.wait_closed()
uvloop.run(main())
"""


@dataclasses.dataclass
class Requests:
  """The load: REST bodies and gRPC requests of distinct evaluation examples."""
  bodies_file: str
  rest_path: str
  grpc_requests: list
  serialized: list


def requests_for(version_dir, scratch):
  with SessionServable(version_dir) as servable:
    probe = probes.build_probes(servable, signature_names=[SIGNATURE])[SIGNATURE]
  serialized = [probe.batch(1, i)["inputs"][0] for i in range(len(probe.rows))]
  examples = [tf.train.Example.FromString(s) for s in serialized]
  path = os.path.join(scratch, "bodies.jsonl")
  with open(path, "w") as f:
    for example in examples:
      f.write(json.dumps({"signature_name": SIGNATURE,
                          "examples": [clients.example_to_json(example)]}) + "\n")
  grpc_requests = []
  for example in examples:
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = MODEL_NAME
    request.model_spec.signature_name = SIGNATURE
    request.input.example_list.examples.append(example)
    grpc_requests.append(request)
  return Requests(path, f"/v1/models/{MODEL_NAME}:classify", grpc_requests, serialized)


# -- clients ---------------------------------------------------------------------------------


def run_client(command, **kwargs):
  """Runs a load client to completion: its output, and the CPU seconds it used (it runs as
  our child)."""
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  completed = subprocess.run(command, capture_output=True, text=True, check=True, **kwargs)
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  return completed, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def wrk(target, requests, connections, seconds, scratch):
  """wrk's figures, with the CPU time it used per request."""
  script = os.path.join(scratch, "load.lua")
  if not os.path.exists(script):
    with open(script, "w") as f:
      f.write(WRK_SCRIPT)
  completed, cpu = run_client(
      ["wrk", "-t1", f"-c{connections}", f"-d{max(int(round(seconds)), 1)}s", "--timeout", "10s",
       "-s", script,
       f"http://{target}"],
      env=dict(os.environ, BODIES=requests.bodies_file, REQUEST_PATH=requests.rest_path))
  figures = json.loads(completed.stdout.strip().splitlines()[-1])
  figures["requests_per_s"] = figures["requests"] / figures["seconds"]
  figures["failures"] = figures.pop("errors") + figures.pop("status_errors")
  figures["client_cpu_us_per_request"] = cpu / max(figures["requests"], 1) * 1e6
  return figures


def h2load_grpc(target, requests, connections, seconds, scratch):
  """gRPC load from h2load (nghttp2's C HTTP/2 client): `connections` connections, one
  stream in flight on each, the same Classify request again and again. h2load reads no
  trailers, so a gRPC error (HTTP 200 with a grpc-status trailer and no message) is counted
  by the response bytes: every answered request must carry the full answer."""
  request = requests.grpc_requests[0]
  with grpc.insecure_channel(target) as channel:
    answer = prediction_service_pb2_grpc.PredictionServiceStub(channel).Classify(request,
                                                                                timeout=30)
  framed_answer = len(answer.SerializeToString()) + 5  # gRPC's 5-byte message prefix
  body = os.path.join(scratch, "grpc_request.bin")
  message = request.SerializeToString()
  with open(body, "wb") as f:
    f.write(b"\0" + len(message).to_bytes(4, "big") + message)
  log = os.path.join(scratch, f"h2load-{connections}.tsv")
  completed, cpu = run_client(
      ["h2load", "-t1", f"-c{connections}", "-m1", f"-D{max(int(round(seconds)), 1)}",
       f"--log-file={log}", "-H", "content-type: application/grpc", "-H", "te: trailers",
       "-d", body, f"http://{target}/tensorflow.serving.PredictionService/Classify"])
  with open(log) as f:
    rows = [line.split("\t") for line in f if line.strip()]
  os.remove(log)
  ok = [int(duration) for _, status, duration in rows if status == "200"]
  data_bytes = _h2load_data_bytes(completed.stdout)
  millis = np.array(ok) / 1e3
  return {"requests_per_s": len(ok) / seconds, "p50_ms": float(np.percentile(millis, 50)),
          "p99_ms": float(np.percentile(millis, 99)), "requests": len(ok),
          "failures": (len(rows) - len(ok)) + max(0, len(ok) - data_bytes // framed_answer),
          "client_cpu_us_per_request": cpu / max(len(ok), 1) * 1e6}


def _h2load_data_bytes(output):
  """The response body bytes of h2load's 'traffic:' line: '... 132.74KB (135926) data'."""
  (line,) = [l for l in output.splitlines() if l.startswith("traffic:")]
  return int(line.rsplit("(", 1)[1].split(")")[0])


def grpc_latency(target, requests, count):
  with grpc.insecure_channel(target) as channel:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    for i in range(50):
      stub.Classify(requests.grpc_requests[i % len(requests.grpc_requests)], timeout=30)
    seconds = []
    for i in range(count):
      started = time.perf_counter()
      stub.Classify(requests.grpc_requests[i % len(requests.grpc_requests)], timeout=30)
      seconds.append(time.perf_counter() - started)
  millis = np.array(seconds) * 1e3
  return {"p50_ms": float(np.percentile(millis, 50)), "p99_ms": float(np.percentile(millis, 99))}


async def _grpc_load(target, requests, connections, seconds):
  async with grpc.aio.insecure_channel(target) as channel:
    classify = channel.unary_unary(
        "/tensorflow.serving.PredictionService/Classify",
        request_serializer=classification_pb2.ClassificationRequest.SerializeToString,
        response_deserializer=classification_pb2.ClassificationResponse.FromString)
    latencies, failures = [], []
    stop_at = time.perf_counter() + seconds

    async def client(number):
      sent = number
      while time.perf_counter() < stop_at:
        started = time.perf_counter()
        try:
          await classify(requests.grpc_requests[sent % len(requests.grpc_requests)],
                         timeout=30)
          latencies.append(time.perf_counter() - started)
        except grpc.aio.AioRpcError as e:
          failures.append(e.code().name)
        sent += 1

    began = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(connections)))
    wall = time.perf_counter() - began
  millis = np.array(latencies) * 1e3
  return {"requests_per_s": len(latencies) / wall, "p50_ms": float(np.percentile(millis, 50)),
          "p99_ms": float(np.percentile(millis, 99)), "failures": len(failures),
          "requests": len(latencies)}


def grpc_load(target, requests, connections, seconds):
  started = time.process_time()
  figures = asyncio.run(_grpc_load(target, requests, connections, seconds))
  figures["client_cpu_us_per_request"] = (time.process_time() - started) / max(
      figures["requests"], 1) * 1e6
  return figures


# -- what the servers answer ------------------------------------------------------------------


# A server at one connection sits idle between requests (the client's turn): about this long.
IDLE_GAP_SECONDS = 0.0002


def in_process(version_dir, requests, count=2000):
  """Batch-1 session time of the same requests: through the inter-op pool, as TensorFlow's
  session.run and callables run by default (the in-process baseline), and on the calling
  thread, as the server runs one row (export/servable.py), for reference; that one also
  after an idle gap before each call, as a server at one connection runs it, which shows
  what the CPU's return from idle costs a run (caches, wake-up), apart from the server. The
  mean of the hot calling-thread runs is beside the servers' own mean run time."""
  with SessionServable(version_dir) as servable:
    run = servable.callable(SIGNATURE, ["inputs"], ["classes", "scores"])
    inline = servable.callable(SIGNATURE, ["inputs"], ["classes", "scores"], caller_thread=True)
    batches = [np.array([s], dtype=object) for s in requests.serialized]
    for batch in batches:
      run(batch)

    def millis(call, idle_gap=0.0):
      seconds = []
      for i in range(count):
        if idle_gap:
          time.sleep(idle_gap)
        started = time.perf_counter()
        call(batches[i % len(batches)])
        seconds.append(time.perf_counter() - started)
      return np.array(seconds) * 1e3

    answers = {i: run(batches[i % len(batches)]) for i in range(len(batches))}
    inline(batches[0])
    pooled, hot = millis(run), millis(inline)
    return {"session_callable_p50_ms": float(np.percentile(pooled, 50)),
            "caller_thread_p50_ms": float(np.percentile(hot, 50)),
            "caller_thread_mean_ms": float(hot.mean()),
            "caller_thread_after_idle_p50_ms": float(np.percentile(
                millis(inline, IDLE_GAP_SECONDS), 50))}, answers


def answers_agree(server, requests, expected, copies=4):
  """Sends every example `copies` times at once over REST and gRPC; the largest score
  difference from the in-process answer, and whether every label order matched."""
  rest = clients.RestClient(server.rest_target)
  model = clients.ModelClient(MODEL_NAME, None, rest, clients.GrpcClient(server.grpc_target))
  like = {"classes": expected[0][0], "scores": expected[0][1]}
  jobs = [(protocol, i) for protocol in ("rest", "grpc") for i in expected
          for _ in range(copies)]

  def ask(job):
    protocol, i = job
    inputs = {"inputs": np.array([requests.serialized[i]], dtype=object)}
    return job, model.ask(protocol, clients.CLASSIFY, SIGNATURE, inputs, like)

  worst, same_labels = 0.0, True
  with futures.ThreadPoolExecutor(32) as pool:
    for (protocol, i), answer in pool.map(ask, jobs):
      classes, scores = expected[i]
      same_labels &= bool(np.array_equal(answer["classes"], classes))
      worst = max(worst, float(np.max(np.abs(answer["scores"] - scores))))
  rest.close()
  model.grpc.close()
  return {"requests": len(jobs), "same_labels": same_labels, "max_score_difference": worst}


# -- servers ----------------------------------------------------------------------------------


def tuned_file(version_dir, scratch, seconds):
  out = os.path.join(scratch, "tuned")
  completed = subprocess.run(
      [sys.executable, "-m", "serving.tune_batching",
       f"--model_base_path={os.path.dirname(version_dir)}", f"--model_name={MODEL_NAME}",
       "--concurrency=32", f"--p99_budget_ms={FLAGS.p99_budget_ms}",
       f"--seconds_per_point={seconds}", "--backend=embedded", f"--output_dir={out}"],
      cwd=PROJECT_ROOT, capture_output=True, text=True)
  with open(os.path.join(out, tuner.REPORT_FILE)) as f:
    report = json.load(f)
  if completed.returncode != 0:
    raise SystemExit(f"the tuner found no point within budget:\n{completed.stdout}")
  return os.path.join(out, tuner.PARAMETERS_FILE), report


def start_servers(version_dir, scratch, batching_files):
  servers = {}
  for name, path in batching_files.items():
    params = config_files.read_batching_parameters(path) if path else None
    runner = runners.EmbeddedRunner([runners.ServedModel(MODEL_NAME, os.path.dirname(
        version_dir))], os.path.join(scratch, f"server-{name}"), batching_parameters=params,
        prometheus_path=monitoring.DEFAULT_PATH)
    runner.start()
    servers[name] = runner
  for runner in servers.values():
    runners.wait_until_available(runner.grpc_target, runner.model_names, 600,
                                 runner.check_alive)
  return servers


def latency_totals(server):
  """The server's own (sum µs, count) of Classify's session runs (`runtime_latency`) and of
  its REST and gRPC requests (`request_latency`, parse to answer, without the HTTP/2 or HTTP
  stack), from its Prometheus page."""
  with urllib.request.urlopen(server.metrics_url, timeout=30) as page:
    text = page.read().decode()
  totals = {}
  for metric, part, labels, value in _LATENCY_LINE.findall(text):
    if 'API="Classify"' not in labels and 'API="classify"' not in labels:  # REST's verb
      continue
    key = "run" if metric == "runtime" else \
        ("rest_request" if 'entrypoint="REST"' in labels else "grpc_request")
    total, count = totals.get(key, (0.0, 0))
    totals[key] = (total + float(value), count) if part == "sum" else (total, count + int(value))
  return totals


_LATENCY_LINE = re.compile(r"^:tensorflow:serving:(runtime|request)_latency_(sum|count)"
                           r"\{([^}]*)\} (\S+)$", re.MULTILINE)


def with_server_means(server, measure):
  """`measure()`'s figures, with the server's own mean Classify run and request time (ms)
  over it: where the client's latency goes inside the server."""
  before = latency_totals(server)
  figures = measure()
  for key, (total, count) in latency_totals(server).items():
    total_before, count_before = before.get(key, (0.0, 0))
    if count > count_before:
      figures[f"server_{key}_mean_ms"] = (total - total_before) / (count - count_before) / 1e3
  return figures


def trivial_servers(scratch, rest_answer, grpc_answer):
  """Servers that answer at once: {name: (target, process)}."""
  files = []
  for name, content in (("rest_answer.json", rest_answer), ("grpc_answer.bin", grpc_answer)):
    files.append(os.path.join(scratch, name))
    with open(files[-1], "wb") as f:
      f.write(content)
  servers = {}
  for name, code, answer in (("uvicorn", TRIVIAL_HTTP, files[0]),
                             ("grpcio", TRIVIAL_GRPC, files[1]),
                             ("grpc_aio", TRIVIAL_GRPC_AIO, files[1]),
                             ("grpclib", TRIVIAL_GRPCLIB, files[1])):
    port = runners.free_port()
    servers[name] = (f"127.0.0.1:{port}",
                     subprocess.Popen([sys.executable, "-c", code, str(port), answer]))
  time.sleep(3)
  return servers


def in_process_on_tcmalloc(version_dir):
  """`in_process` in a child process on tcmalloc; None when the system has no tcmalloc."""
  environ = memory.tcmalloc_environment(os.environ)
  if environ is None:
    return None
  completed = subprocess.run([sys.executable, os.path.abspath(__file__),
                              f"--in_process_only={version_dir}"], env=environ, check=True,
                             capture_output=True, text=True)
  return json.loads(completed.stdout.strip().splitlines()[-1])


def allocator_of(pid):
  """"tcmalloc" when process `pid` has it mapped, else "system"."""
  with open(f"/proc/{pid}/maps") as f:
    return "tcmalloc" if "tcmalloc" in f.read() else "system"


def with_server_cpu(pid, measure):
  """`measure()`'s figures, with the CPU time the server process `pid` used per request, and
  its busiest thread's: that thread's share of one core says whether one thread (the event
  loop, which holds every connection) caps the throughput."""
  server = psutil.Process(pid)
  before, threads_before = sum(server.cpu_times()[:2]), thread_cpu(server)
  machine_before = psutil.cpu_times()
  started = time.perf_counter()
  figures = measure()
  elapsed = time.perf_counter() - started
  figures.update(machine_shares(machine_before, psutil.cpu_times()))
  used, threads_after = sum(server.cpu_times()[:2]) - before, thread_cpu(server)
  busiest = max(threads_after[t] - threads_before.get(t, 0.0) for t in threads_after)
  requests = max(figures["requests"], 1)
  figures["server_cpu_us_per_request"] = used / requests * 1e6
  figures["server_busiest_thread_cpu_us_per_request"] = busiest / requests * 1e6
  figures["server_busiest_thread_core_share"] = busiest / elapsed
  return rounded(figures)


def machine_shares(before, after):
  """The shares of the machine's CPU time that were idle and that the hypervisor took from
  this VM for others (steal): how far the figures between `before` and `after`
  (psutil.cpu_times()) were the machine's own."""
  # Linux counts guest time inside user time already.
  spent = {field: getattr(after, field) - getattr(before, field) for field in after._fields
           if not field.startswith("guest")}
  total = sum(spent.values()) or 1.0
  return {"machine_idle_share": spent["idle"] / total,
          "machine_steal_share": spent.get("steal", 0.0) / total}


def thread_cpu(process):
  return {t.id: t.user_time + t.system_time for t in process.threads()}


# The trivial gRPC servers measured with h2load: (stack, `trivial_servers` name, report key).
GRPC_STACKS = (("grpcio", "grpcio", "grpc_h2load"),
               ("grpcio_aio", "grpc_aio", "grpc_aio_server_h2load"),
               ("grpclib", "grpclib", "grpclib_server_h2load"))


def client_ceilings(requests, scratch, seconds):
  """The clients against servers that answer at once with answers of the real size (77
  classes), with the CPU each server spends on a request: the floor of each protocol's
  server stack."""
  rest_answer = json.dumps({"results": [[["card_arrival", 0.5]] * 77]}).encode()
  response = classification_pb2.ClassificationResponse()
  classes = response.result.classifications.add().classes
  for _ in range(77):
    classes.add(label="card_arrival", score=0.5)
  servers = trivial_servers(scratch, rest_answer, response.SerializeToString())
  (rest_target, rest_process), (grpc_target, _) = servers["uvicorn"], servers["grpcio"]
  try:
    ceilings = {
        "rest_wrk_c32": with_server_cpu(rest_process.pid, lambda: wrk(
            rest_target, requests, 32, seconds, scratch)),
        "rest_wrk_c1": with_server_cpu(rest_process.pid, lambda: wrk(
            rest_target, requests, 1, seconds, scratch)),
        "grpc_aio_c32": rounded(grpc_load(grpc_target, requests, 32, seconds)),
        "grpc_sync_c1": rounded(grpc_latency(grpc_target, requests, FLAGS.latency_requests))}
    for _, server, key in GRPC_STACKS:
      target, process = servers[server]
      for connections in (1, 32):
        ceilings[f"{key}_c{connections}"] = with_server_cpu(process.pid, lambda: h2load_grpc(
            target, requests, connections, seconds, scratch))
    # Each gRPC server stack's own batch-1 p50 over uvicorn's: above 1, gRPC over that stack
    # cannot answer as fast as REST whatever the model server does.
    rest_p50 = ceilings["rest_wrk_c1"]["p50_ms"]
    ceilings["grpc_stack_c1_p50_over_rest_stack_c1_p50"] = {
        stack: round(ceilings[f"{key}_c1"]["p50_ms"] / rest_p50, 3)
        for stack, _, key in GRPC_STACKS}
    return ceilings
  finally:
    for _, process in servers.values():
      process.kill()


def rounded(figures):
  return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in figures.items()}


def median_of(rounds, key):
  return statistics.median(r[key] for r in rounds)


def measure_model(version_dir, scratch):
  requests = requests_for(version_dir, scratch)
  floor, expected = in_process(version_dir, requests)
  floor_tcmalloc = in_process_on_tcmalloc(version_dir)
  tuned, tuning_report = tuned_file(version_dir, scratch, FLAGS.seconds)
  files = {"off": None, "project": PROJECT_BATCHING, "tuned": tuned}
  servers = start_servers(version_dir, scratch, files)
  allocators = sorted({allocator_of(server.pid) for server in servers.values()})
  samples = {name: [] for name in files}
  try:
    for _ in range(FLAGS.rounds):
      for name, server in servers.items():
        figures = {}
        rest_c1 = with_server_means(server, lambda: wrk(server.rest_target, requests, 1,
                                                        FLAGS.seconds, scratch))
        figures["rest_batch1_p50_ms"] = rest_c1["p50_ms"]
        figures["rest_batch1_p99_ms"] = rest_c1["p99_ms"]
        figures["rest_c1_requests_per_s"] = rest_c1["requests_per_s"]
        figures["rest_c1_server_request_mean_ms"] = rest_c1["server_rest_request_mean_ms"]
        figures["rest_c1_server_run_mean_ms"] = rest_c1["server_run_mean_ms"]
        grpc_c1 = grpc_latency(server.grpc_target, requests, FLAGS.latency_requests)
        figures["grpc_batch1_p50_ms"] = grpc_c1["p50_ms"]
        figures["grpc_batch1_p99_ms"] = grpc_c1["p99_ms"]
        h2load_c1 = with_server_means(server, lambda: h2load_grpc(
            server.grpc_target, requests, 1, FLAGS.seconds, scratch))
        figures["grpc_h2load_batch1_p50_ms"] = h2load_c1["p50_ms"]
        figures["grpc_h2load_batch1_p99_ms"] = h2load_c1["p99_ms"]
        figures["grpc_h2load_c1_server_request_mean_ms"] = \
            h2load_c1["server_grpc_request_mean_ms"]
        figures["grpc_h2load_c1_server_run_mean_ms"] = h2load_c1["server_run_mean_ms"]
        h2load_c32 = h2load_grpc(server.grpc_target, requests, 32, FLAGS.seconds, scratch)
        figures["grpc_h2load_c32_requests_per_s"] = h2load_c32["requests_per_s"]
        figures["grpc_h2load_c32_p99_ms"] = h2load_c32["p99_ms"]
        failures = rest_c1["failures"] + h2load_c1["failures"] + h2load_c32["failures"]
        for connections in (8, 32):
          load = with_server_cpu(server.pid, lambda: wrk(
              server.rest_target, requests, connections, FLAGS.seconds, scratch))
          figures[f"rest_c{connections}_requests_per_s"] = load["requests_per_s"]
          figures[f"rest_c{connections}_p99_ms"] = load["p99_ms"]
          for figure in ("client_cpu_us_per_request", "server_cpu_us_per_request",
                         "server_busiest_thread_cpu_us_per_request",
                         "server_busiest_thread_core_share", "machine_idle_share",
                         "machine_steal_share"):
            figures[f"rest_c{connections}_{figure}"] = load[figure]
          failures += load["failures"]
        grpc_c32 = grpc_load(server.grpc_target, requests, 32, FLAGS.seconds)
        figures["grpc_c32_requests_per_s"] = grpc_c32["requests_per_s"]
        figures["grpc_c32_p99_ms"] = grpc_c32["p99_ms"]
        figures["grpc_c32_client_cpu_us_per_request"] = grpc_c32["client_cpu_us_per_request"]
        figures["failures"] = failures + grpc_c32["failures"]
        samples[name].append(figures)
    agreement = {name: answers_agree(server, requests, expected)
                 for name, server in servers.items()}
  finally:
    for server in servers.values():
      server.stop()
  configs = {}
  for name, rounds in samples.items():
    configs[name] = rounded({key: median_of(rounds, key) for key in rounds[0]})
    configs[name]["failures"] = sum(r["failures"] for r in rounds)
    configs[name]["answers"] = agreement[name]
  floor_ms = floor["session_callable_p50_ms"]
  off = samples["off"]
  ratios = {
      "rest_batch1_p50_over_in_process": round(configs["off"]["rest_batch1_p50_ms"] / floor_ms,
                                               3),
      "rest_batch1_p50_over_caller_thread_run": round(
          configs["off"]["rest_batch1_p50_ms"] / floor["caller_thread_p50_ms"], 3),
      "rest_batch1_p50_over_caller_thread_run_after_idle": round(
          configs["off"]["rest_batch1_p50_ms"] / floor["caller_thread_after_idle_p50_ms"], 3),
      "grpc_batch1_p50_over_in_process": round(configs["off"]["grpc_batch1_p50_ms"] / floor_ms,
                                               3),
      "grpc_h2load_batch1_p50_over_rest_wrk_batch1_p50": round(
          configs["off"]["grpc_h2load_batch1_p50_ms"] / configs["off"]["rest_batch1_p50_ms"],
          3)}
  for protocol, key in (("rest", "rest_c1_server_run_mean_ms"),
                        ("grpc", "grpc_h2load_c1_server_run_mean_ms")):
    ratios[f"{protocol}_c1_server_run_mean_over_caller_thread_mean"] = round(
        configs["off"][key] / floor["caller_thread_mean_ms"], 3)
  if floor_tcmalloc is not None:
    for protocol in ("rest", "grpc"):
      ratios[f"{protocol}_batch1_p50_over_in_process_tcmalloc"] = round(
          configs["off"][f"{protocol}_batch1_p50_ms"]
          / floor_tcmalloc["session_callable_p50_ms"], 3)
  for name in ("project", "tuned"):
    for protocol in ("rest", "grpc"):
      key = f"{protocol}_c32_requests_per_s"
      per_round = [on[key] / base[key] for on, base in zip(samples[name], off)]
      ratios[f"{name}_over_off_{protocol}_c32_throughput"] = {
          "median": round(statistics.median(per_round), 3),
          "min": round(min(per_round), 3), "max": round(max(per_round), 3)}
  return {"version_dir": version_dir, "server_allocator": ",".join(allocators),
          "in_process": rounded(floor), "in_process_tcmalloc": floor_tcmalloc,
          "tuner": {"best": tuning_report["best"], "speedup": tuning_report["speedup"]},
          "configs": configs, "ratios": ratios}


def main(argv):
  del argv
  if FLAGS.in_process_only:
    requests = requests_for(FLAGS.in_process_only, tempfile.mkdtemp(prefix="in-process-"))
    print(json.dumps({"allocator": memory.allocator(),
                      **in_process(FLAGS.in_process_only, requests)[0]}))
    return
  for tool, package in (("wrk", "wrk"), ("h2load", "nghttp2-client")):
    if shutil.which(tool) is None:
      raise SystemExit(f"this benchmark needs {tool} on PATH (apt-get install {package})")
  if not FLAGS.original_dir:
    if not FLAGS["job-dir"].value:
      FLAGS["job-dir"].value = tempfile.mkdtemp(prefix="banking77-serving-")
    config = dataclasses.replace(command.config_from_flags(), optimize=False, smoke_test=False)
    FLAGS.original_dir = (versions.latest_version_dir(os.path.join(config.job_dir, "export",
                                                                   FLAGS.model_name))
                          or pipeline.run(config).export_dir)
  if not FLAGS.optimized_dir:
    FLAGS.optimized_dir = os.path.join(tempfile.mkdtemp(prefix="optimized-"), MODEL_NAME, "1")
    optimizer.optimize(FLAGS.original_dir, FLAGS.optimized_dir,
                       optimizer.OptimizeSettings(transforms=FLAGS.transforms))
  report = {"cpus": os.cpu_count(), "seconds_per_figure": FLAGS.seconds,
            "rounds": FLAGS.rounds, "load": "Classify, one Banking77 test example a request",
            "targets": {"rest_batch1_p50_over_in_process": f"<= {REST_P50_TARGET} "
                                                           f"(goal {REST_P50_GOAL})",
                        "batching_over_off_c32_throughput": f">= {THROUGHPUT_TARGET} "
                                                            f"(goal {THROUGHPUT_GOAL})"}}
  machine_before = psutil.cpu_times()
  with tempfile.TemporaryDirectory(prefix="serving-latency-") as scratch:
    for name, version_dir in (("original", FLAGS.original_dir),
                              ("optimized", FLAGS.optimized_dir)):
      os.makedirs(os.path.join(scratch, name))
      report[name] = measure_model(os.path.abspath(version_dir), os.path.join(scratch, name))
    requests = requests_for(FLAGS.original_dir, scratch)
    report["client_ceilings"] = client_ceilings(requests, scratch, FLAGS.seconds)
  report["machine_whole_run"] = rounded(machine_shares(machine_before, psutil.cpu_times()))
  report["targets_met"] = {
      name: {"rest_batch1_p50": report[name]["ratios"]["rest_batch1_p50_over_in_process"]
                                <= REST_P50_TARGET,
             "batching_c32_throughput": report[name]["ratios"][
                 "tuned_over_off_rest_c32_throughput"]["median"] >= THROUGHPUT_TARGET,
             "grpc_no_slower_than_rest_batch1": report[name]["ratios"][
                 "grpc_h2load_batch1_p50_over_rest_wrk_batch1_p50"] <= 1.0,
             "zero_failures": all(c["failures"] == 0 for c in report[name]["configs"].values()),
             "answers_equal": all(c["answers"]["same_labels"]
                                  for c in report[name]["configs"].values())}
      for name in ("original", "optimized")}
  print(json.dumps(report, indent=2))


if __name__ == "__main__":
  app.run(main)
