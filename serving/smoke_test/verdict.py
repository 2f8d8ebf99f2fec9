"""The last gate before deployment: serve the model, query every signature over REST and gRPC,
compare with in-process answers, and bless it or not.

    python -m serving.smoke_test --model_base_path DIR --model_name NAME \\
        [--backend auto|binary|docker|embedded] [--target host:8500 [--rest_target host:8501]] \\
        [--examples_file F] [--output_dir D]

Like TFX's InfraValidator, but stricter: the server (the real TF Serving when it can run,
else the embedded one; or a running server at `--target`) must report the model AVAILABLE
within a deadline (a slow start is retried, a failed load is not), then answer requests built
from evaluation examples for every signature, over both protocols, with the classes and (within
tolerance) the scores that the same version gives in-process. Batch-1 and batch-N latencies are
measured. The verdict is written as `verdict.json` plus a `BLESSED` or `NOT_BLESSED` marker;
the command exits 0 only when blessed.

`run_smoke_test` is the plain function under the command; it returns the Verdict.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import base64  # noqa: E402
import dataclasses  # noqa: E402
import http.client  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import Dict, List, Optional, Tuple  # noqa: E402

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from tensorflow_serving.apis import classification_pb2  # noqa: E402
from tensorflow_serving.apis import predict_pb2  # noqa: E402
from tensorflow_serving.apis import prediction_service_pb2_grpc  # noqa: E402
from tensorflow_serving.apis import regression_pb2  # noqa: E402

from export import artifact_io  # noqa: E402
from lineage import store as lineage_store  # noqa: E402
from serving import json_tensor  # noqa: E402
from serving import probe_requests  # noqa: E402
from serving import runners  # noqa: E402
from serving.errors import ServerStartError, SmokeTestError  # noqa: E402
from serving.probe_requests import CLASSIFY, PREDICT, REGRESS, Probe  # noqa: E402
from serving.servables import ServableError, SessionServable  # noqa: E402

VERDICT_FILE = "verdict.json"
BLESSED, NOT_BLESSED = "BLESSED", "NOT_BLESSED"
TARGET_BACKEND = "target"
_BATCH_1_CHECKS = 3
_WARM_CALLS = 5


@dataclasses.dataclass
class Check:
  """One request to the server and how its answer compared with the in-process one."""
  signature: str
  protocol: str  # "rest" or "grpc"
  api: str  # "predict (row)", "predict (columnar)", "classify", "regress"
  batch_size: int
  ok: bool
  detail: str = ""
  max_abs_diff: float = 0.0


@dataclasses.dataclass
class Verdict:
  blessed: bool
  model_name: str
  model_base_path: str
  backend: str
  reason: str = ""
  grpc_target: str = ""
  rest_target: str = ""
  version: Optional[int] = None
  probe_source: str = ""
  checks: List[Check] = dataclasses.field(default_factory=list)
  latency_ms: Dict = dataclasses.field(default_factory=dict)
  server_log_tail: str = ""
  elapsed_secs: float = 0.0
  output_dir: str = ""

  @property
  def verdict_path(self) -> str:
    return artifact_io.join(self.output_dir, VERDICT_FILE)

  @property
  def marker_path(self) -> str:
    return artifact_io.join(self.output_dir, BLESSED if self.blessed else NOT_BLESSED)

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"


def default_output_dir(model_base_path: str) -> str:
  """Beside the base path, not in it: a server would take any folder in it for a model."""
  return f"{model_base_path.rstrip('/')}_smoke_test"


# ---------------------------------------------------------------------------------------------
# Clients


class RestError(Exception):
  """A REST answer other than 200, with the server's error message."""

  def __init__(self, status: int, message: str):
    super().__init__(f"HTTP {status}: {message}")
    self.status = status


class RestClient:
  """A keep-alive HTTP/1.1 connection to TF Serving's REST API."""

  def __init__(self, target: str, timeout_secs: float = 60.0):
    host, port = target.rsplit(":", 1)
    self._connection = http.client.HTTPConnection(host, int(port), timeout=timeout_secs)

  def call(self, method: str, path: str, document: Optional[dict] = None) -> dict:
    body = None if document is None else json.dumps(document).encode("utf-8")
    for attempt in (1, 2):
      try:
        self._connection.request(method, path, body=body,
                                 headers={"Content-Type": "application/json"})
        response = self._connection.getresponse()
        payload = response.read()
        break
      except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
        # A server may close an idle keep-alive connection; one fresh try is safe here.
        self._connection.close()
        if attempt == 2:
          raise
    try:
      answer = json.loads(payload.decode("utf-8", "surrogateescape"))
    except json.JSONDecodeError as e:
      raise RestError(response.status, f"answer is not JSON ({e}): {payload[:200]!r}") from None
    if response.status != 200:
      raise RestError(response.status, answer.get("error", payload[:200]) if
                      isinstance(answer, dict) else payload[:200])
    return answer

  def close(self) -> None:
    self._connection.close()


def _rest_inputs(inputs: Dict[str, np.ndarray], row_format: bool) -> dict:
  if not row_format:
    return {"inputs": {k: json_tensor.array_to_json_value(a) for k, a in inputs.items()}}

  def row(array, i):  # a slice keeps a string item an array
    return json_tensor.array_to_json_value(array[i:i + 1].reshape(array.shape[1:]))

  size = next(iter(inputs.values())).shape[0]
  if len(inputs) == 1:
    (array,) = inputs.values()
    return {"instances": [row(array, i) for i in range(size)]}
  return {"instances": [{k: row(a, i) for k, a in inputs.items()} for i in range(size)]}


def _from_json(value, like: np.ndarray) -> np.ndarray:
  """A JSON tensor from an answer as an array of the expected dtype."""
  if like.dtype != object:
    return np.array(value, dtype=like.dtype)
  flat: list = []

  def walk(item):
    if isinstance(item, list):
      for element in item:
        walk(element)
    elif isinstance(item, dict):
      flat.append(base64.b64decode(item["b64"]))
    else:
      flat.append(item.encode("utf-8", "surrogateescape"))

  walk(value)
  array = np.empty(len(flat), dtype=object)
  array[:] = flat
  return array.reshape(json_tensor.dense_shape(value))


def _examples(inputs: Dict[str, np.ndarray]) -> List[bytes]:
  return list(inputs["inputs"].reshape(-1))


# ---------------------------------------------------------------------------------------------
# Asking the server, and what the same version answers in-process


@dataclasses.dataclass
class _Session:
  model_name: str
  version: int
  reference: SessionServable
  rest: RestClient
  grpc_stub: prediction_service_pb2_grpc.PredictionServiceStub

  def path(self, verb: str) -> str:
    return f"/v1/models/{self.model_name}/versions/{self.version}:{verb}"

  def spec(self, request, signature: str):
    request.model_spec.name = self.model_name
    request.model_spec.version.value = self.version
    request.model_spec.signature_name = signature
    return request

  def expected(self, probe: Probe, inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    signature = self.reference.signatures[probe.signature]
    if probe.method == CLASSIFY:
      keys = [k for k in ("classes", "scores") if k in signature.outputs]
      return self.reference.run(probe.signature, inputs, keys)
    if probe.method == REGRESS:
      outputs = self.reference.run(probe.signature, inputs, ["outputs"])
      return {"outputs": outputs["outputs"].reshape(-1)}
    return self.reference.run(probe.signature, inputs)

  def ask(self, protocol: str, api: str, probe: Probe, inputs: Dict[str, np.ndarray],
          like: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    if protocol == "rest":
      return self._ask_rest(api, probe, inputs, like)
    return self._ask_grpc(probe, inputs, like)

  def _ask_rest(self, api, probe, inputs, like):
    if probe.method in (CLASSIFY, REGRESS):
      examples = [json_tensor.example_to_json(tf.train.Example.FromString(s))
                  for s in _examples(inputs)]
      answer = self.rest.call("POST", self.path(probe.method),
                              {"signature_name": probe.signature, "examples": examples})
      results = answer["results"]
      if probe.method == REGRESS:
        return {"outputs": np.array(results, dtype=np.float32)}
      return _classification_arrays(
          [[(label, score) for label, score in item] for item in results], like)
    row_format = api.endswith("(row)")
    document = {"signature_name": probe.signature, **_rest_inputs(inputs, row_format)}
    answer = self.rest.call("POST", self.path("predict"), document)
    if row_format:
      rows = answer["predictions"]
      if len(like) == 1:
        (key,) = like
        return {key: _from_json(rows, like[key])}
      return {k: _from_json([row[k] for row in rows], like[k]) for k in like}
    outputs = answer["outputs"]
    if len(like) == 1:
      (key,) = like
      return {key: _from_json(outputs, like[key])}
    return {k: _from_json(outputs[k], like[k]) for k in outputs}

  def _ask_grpc(self, probe, inputs, like):
    if probe.method in (CLASSIFY, REGRESS):
      request_type = (classification_pb2.ClassificationRequest if probe.method == CLASSIFY
                      else regression_pb2.RegressionRequest)
      request = self.spec(request_type(), probe.signature)
      request.input.example_list.examples.extend(
          tf.train.Example.FromString(s) for s in _examples(inputs))
      if probe.method == REGRESS:
        result = self.grpc_stub.Regress(request, timeout=60).result
        return {"outputs": np.array([r.value for r in result.regressions], dtype=np.float32)}
      result = self.grpc_stub.Classify(request, timeout=60).result
      return _classification_arrays(
          [[(c.label, c.score) for c in item.classes] for item in result.classifications], like)
    request = self.spec(predict_pb2.PredictRequest(), probe.signature)
    for key, array in inputs.items():
      request.inputs[key].CopyFrom(tf.make_tensor_proto(array))
    response = self.grpc_stub.Predict(request, timeout=60)
    return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}


def _classification_arrays(items: List[List[Tuple[str, float]]],
                           like: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
  answer = {}
  if "classes" in like:
    answer["classes"] = _from_json([[label for label, _ in item] for item in items],
                                   like["classes"])
  if "scores" in like:
    answer["scores"] = np.array([[score for _, score in item] for item in items],
                                dtype=np.float32)
  return answer


def compare(expected: Dict[str, np.ndarray], got: Dict[str, np.ndarray], rtol: float,
            atol: float) -> Tuple[Optional[str], float]:
  """A description of the first difference (None when equal), and the largest float gap."""
  if sorted(expected) != sorted(got):
    return f"outputs {sorted(got)} differ from the expected {sorted(expected)}", 0.0
  largest = 0.0
  for key in sorted(expected):
    want, have = np.asarray(expected[key]), np.asarray(got[key])
    if want.shape != have.shape:
      return f"output {key!r}: shape {list(have.shape)}, expected {list(want.shape)}", largest
    if want.dtype.kind == "f":
      have = have.astype(want.dtype)
      if want.size:
        largest = max(largest, float(np.nanmax(np.abs(want - have))))
      close = np.isclose(have, want, rtol=rtol, atol=atol, equal_nan=True)
      if not close.all():
        index = tuple(int(i) for i in np.argwhere(~close)[0])
        return (f"output {key!r}[{','.join(map(str, index))}]: {have[index]!r}, expected "
                f"{want[index]!r} (rtol {rtol}, atol {atol})"), largest
    elif not np.array_equal(want, have):
      index = tuple(int(i) for i in np.argwhere(want != have)[0])
      return f"output {key!r}[{','.join(map(str, index))}]: {have[index]!r}, expected " \
             f"{want[index]!r}", largest
  return None, largest


def _error_text(error: Exception) -> str:
  if isinstance(error, grpc.RpcError):
    return f"gRPC {error.code().name}: {error.details()}"
  return str(error)


_REQUEST_ERRORS = (grpc.RpcError, RestError, OSError, http.client.HTTPException, KeyError,
                   TypeError, ValueError)


def _api(probe: Probe, protocol: str, row_format: bool) -> str:
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


def run_checks(session: _Session, probes: Dict[str, Probe], batch_size: int, rtol: float,
               atol: float) -> List[Check]:
  """Batch-1 requests for the first rows and one batch-N request, per signature and
  protocol, each compared with the in-process answer."""
  checks = []
  for name in sorted(probes):
    probe = probes[name]
    plan = [(1, offset) for offset in range(min(_BATCH_1_CHECKS, len(probe.rows)))]
    plan.append((batch_size, 0))
    for number, (size, offset) in enumerate(plan):
      inputs = probe.batch(size, offset)
      expected = session.expected(probe, inputs)
      for protocol, row_format in _variants(probe, size, number):
        api = _api(probe, protocol, row_format)
        try:
          got = session.ask(protocol, api, probe, inputs, expected)
        except _REQUEST_ERRORS as e:
          checks.append(Check(name, protocol, api, size, False, _error_text(e)))
          continue
        problem, gap = compare(expected, got, rtol, atol)
        checks.append(Check(name, protocol, api, size, problem is None, problem or "", gap))
  return checks


def _percentiles(seconds: List[float]) -> Dict[str, float]:
  millis = np.array(seconds) * 1e3
  return {"p50": round(float(np.percentile(millis, 50)), 3),
          "p99": round(float(np.percentile(millis, 99)), 3),
          "mean": round(float(millis.mean()), 3), "requests": len(seconds)}


def measure_latency(session: _Session, probe: Probe, batch_size: int, requests: int) -> Dict:
  """Sequential request latency (ms) per protocol for batch 1 and batch N on one signature."""
  latency = {"signature": probe.signature}
  for protocol in ("rest", "grpc"):
    api = _api(probe, protocol, True)
    for size in (1, batch_size):
      inputs = probe.batch(size)
      expected = session.expected(probe, inputs)
      for _ in range(_WARM_CALLS):
        session.ask(protocol, api, probe, inputs, expected)
      seconds = []
      for _ in range(requests):
        started = time.perf_counter()
        session.ask(protocol, api, probe, inputs, expected)
        seconds.append(time.perf_counter() - started)
      latency[f"{protocol}_batch_{size}"] = _percentiles(seconds)
  return latency


# ---------------------------------------------------------------------------------------------
# The smoke test


def _start(backend: str, model_name: str, model_base_path: str, output_dir: str,
           max_batch_size: Optional[int], deadline_secs: float, num_tries: int, log):
  """A started runner and the model's AVAILABLE versions; retries a server that does not come
  up (a port taken meanwhile, a slow machine), never a model that fails to load."""
  for attempt in range(1, num_tries + 1):
    runner = runners.make_runner(
        backend, [runners.ServedModel(model_name, model_base_path)],
        os.path.join(output_dir, f"server-{attempt}"), max_batch_size=max_batch_size)
    try:
      runner.start()
      versions = runners.wait_until_available(runner.grpc_target, runner.model_names,
                                              deadline_secs, runner.check_alive)
      return runner, versions[model_name]
    except ServerStartError as e:
      runner.stop()
      e.server_log_tail = runner.log_tail()
      if attempt == num_tries:
        raise
      log(f"attempt {attempt} of {num_tries} failed, retrying: {e}")
    except SmokeTestError as e:
      runner.stop()
      e.server_log_tail = runner.log_tail()
      raise
    except BaseException:
      runner.stop()
      raise


def run_smoke_test(model_base_path: str, model_name: str, output_dir: Optional[str] = None,
                   backend: str = "auto", target: Optional[str] = None,
                   rest_target: Optional[str] = None, examples_file: Optional[str] = None,
                   batch_size: int = 8, latency_requests: int = 50,
                   deadline_secs: float = 300.0, num_tries: int = 5,
                   max_batch_size: Optional[int] = None, rtol: float = 1e-4,
                   atol: float = 1e-5, expected_version: Optional[int] = None,
                   log=print) -> Verdict:
  """Serves (or reaches) the model, checks every signature, writes and returns the verdict.

  With `expected_version`, a server that serves any other version does not bless it.
  """
  if batch_size < 1 or latency_requests < 1 or num_tries < 1:
    raise ValueError("batch_size, latency_requests and num_tries must be >= 1")
  for name, value in (("target", target), ("rest_target", rest_target)):
    if value and not value.rsplit(":", 1)[-1].isdigit():
      raise ValueError(f"{name} must be host:port, got {value!r}")
  started = time.monotonic()
  output_dir = output_dir or default_output_dir(model_base_path)
  verdict = Verdict(False, model_name, model_base_path, TARGET_BACKEND if target else "",
                    output_dir=output_dir)
  runner = None
  try:
    examples = probe_requests.load_examples(examples_file) if examples_file else None
    if target:
      verdict.grpc_target = target
      host, port = target.rsplit(":", 1)
      # The Docker image's convention: REST on the port after gRPC (8500 -> 8501).
      verdict.rest_target = rest_target or f"{host}:{int(port) + 1}"
      versions = runners.wait_until_available(target, [model_name], deadline_secs)[model_name]
    else:
      verdict.backend = runners.choose_backend(backend)
      log(f"backend: {verdict.backend}")
      runner, versions = _start(verdict.backend, model_name, model_base_path, output_dir,
                                max_batch_size, deadline_secs, num_tries, log)
      verdict.grpc_target, verdict.rest_target = runner.grpc_target, runner.rest_target
    verdict.version = max(versions)
    if expected_version is not None and verdict.version != expected_version:
      raise SmokeTestError(f"the server serves version {verdict.version} of {model_name}, not "
                           f"the version {expected_version} under test")
    version_dir = artifact_io.join(model_base_path, str(verdict.version))
    if not tf.io.gfile.isdir(version_dir):
      raise SmokeTestError(f"the server serves version {verdict.version} of {model_name}, but "
                           f"{model_base_path} has no such version to compare with")
    try:
      reference = SessionServable(version_dir)
    except ServableError as e:
      raise SmokeTestError(f"cannot load {version_dir} in-process: {e}") from None
    rest = RestClient(verdict.rest_target)
    channel = grpc.insecure_channel(verdict.grpc_target)
    try:
      session = _Session(model_name, verdict.version, reference, rest,
                         prediction_service_pb2_grpc.PredictionServiceStub(channel))
      probes = probe_requests.build_probes(reference, examples)
      verdict.probe_source = ", ".join(sorted({p.source for p in probes.values()}))
      verdict.checks = run_checks(session, probes, batch_size, rtol, atol)
      failed = [c for c in verdict.checks if not c.ok]
      if failed:
        verdict.reason = f"{len(failed)} of {len(verdict.checks)} checks failed; first: " \
                         f"{failed[0].signature} over {failed[0].protocol} " \
                         f"({failed[0].api}, batch {failed[0].batch_size}): {failed[0].detail}"
      else:
        probe = probes.get("serving_default") or probes[sorted(probes)[0]]
        try:
          verdict.latency_ms = measure_latency(session, probe, batch_size, latency_requests)
          verdict.blessed = True
        except _REQUEST_ERRORS as e:
          verdict.reason = f"a latency request failed: {_error_text(e)}"
    finally:
      rest.close()
      channel.close()
      reference.close()
  except SmokeTestError as e:
    verdict.reason = str(e)
    verdict.server_log_tail = e.server_log_tail
  finally:
    if runner is not None:
      if not verdict.blessed and not verdict.server_log_tail:
        verdict.server_log_tail = runner.log_tail()
      runner.stop()
  verdict.elapsed_secs = round(time.monotonic() - started, 3)
  write_verdict(verdict)
  return verdict


def write_verdict(verdict: Verdict) -> None:
  tf.io.gfile.makedirs(verdict.output_dir)
  for marker in (BLESSED, NOT_BLESSED):
    stale = artifact_io.join(verdict.output_dir, marker)
    if tf.io.gfile.exists(stale):
      tf.io.gfile.remove(stale)
  artifact_io.write_atomic(verdict.verdict_path, verdict.to_json())
  artifact_io.write_atomic(verdict.marker_path, "")


# ---------------------------------------------------------------------------------------------
# Command line


def _define_flags() -> None:
  flags.DEFINE_string("model_base_path", None, "Base path of the model: numeric version dirs.")
  flags.DEFINE_string("model_name", None, "Name the model is served under.")
  flags.DEFINE_enum("backend", "auto", ("auto",) + runners.BACKENDS,
                    "Server to start: the real TF Serving (binary, docker) or the embedded "
                    "one; auto takes the first that can run.")
  flags.DEFINE_string("target", None, "host:port of a running server's gRPC API to test "
                      "instead of starting one.")
  flags.DEFINE_string("rest_target", None, "host:port of its REST API (default: the gRPC port "
                      "+ 1, as the Docker image maps them).")
  flags.DEFINE_string("examples_file", None, "tf.Examples to build requests from (TFRecord, "
                      "JSON Lines of REST examples, or CSV); default: the version's warmup "
                      "records.")
  flags.DEFINE_string("output_dir", None, "Where verdict.json and the BLESSED / NOT_BLESSED "
                      "marker go (default: <model_base_path>_smoke_test).")
  flags.DEFINE_integer("batch_size", 8, "N of the batch-N requests.")
  flags.DEFINE_integer("latency_requests", 50, "Requests per latency figure.")
  flags.DEFINE_float("deadline_secs", 300, "Time the server has to make the model AVAILABLE.")
  flags.DEFINE_integer("num_tries", 5, "Server starts to try before giving up.")
  flags.DEFINE_integer("max_batch_size", 0, "When > 0, start the server with batching on and "
                       "this max_batch_size.")
  lineage_store.define_flags()
  flags.mark_flags_as_required(["model_base_path", "model_name"])


def main(argv: List[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unknown argument: {argv[1]}")
  values = flags.FLAGS
  arguments = dict(backend=values.backend, target=values.target,
                   rest_target=values.rest_target, examples_file=values.examples_file,
                   batch_size=values.batch_size, latency_requests=values.latency_requests,
                   deadline_secs=values.deadline_secs, num_tries=values.num_tries,
                   max_batch_size=values.max_batch_size or None)
  if values.metadata_db or values.mysql_host:
    verdict = _smoke_test_recorded(values, arguments)
  else:
    verdict = run_smoke_test(values.model_base_path, values.model_name, values.output_dir,
                             **arguments)
  where = verdict.grpc_target + (f" (REST {verdict.rest_target})" if verdict.rest_target else "")
  print(f"backend: {verdict.backend or 'none'}  server: {where or 'not started'}  model: "
        f"{verdict.model_name} version {verdict.version}")
  passed = sum(c.ok for c in verdict.checks)
  print(f"checks: {passed} of {len(verdict.checks)} passed")
  for name, figures in sorted(verdict.latency_ms.items()):
    if isinstance(figures, dict):
      print(f"latency {name}: p50 {figures['p50']} ms, p99 {figures['p99']} ms")
  if not verdict.blessed:
    print(f"reason: {verdict.reason}")
    if verdict.server_log_tail:
      print(f"server log (last lines):\n{verdict.server_log_tail}", file=sys.stderr)
  print(f"{BLESSED if verdict.blessed else NOT_BLESSED}: {verdict.verdict_path}")
  return 0 if verdict.blessed else 1


def _smoke_test_recorded(values, arguments) -> Verdict:
  """Records the run as a SmokeTest execution of the base path's newest version."""
  from lineage import stages  # Imported here: lineage.stages imports this module.
  from lineage.record import Recorder
  versions = [int(n.rstrip("/")) for n in tf.io.gfile.listdir(values.model_base_path)
              if n.rstrip("/").isdigit()] if tf.io.gfile.isdir(values.model_base_path) else []
  if not versions:
    raise app.UsageError(f"{values.model_base_path} has no numeric version directory to test")
  store = lineage_store.open_store(lineage_store.config_from_flags(None, values))
  recorder = Recorder(store, experiment=values.model_base_path)
  servable = stages.recorded_servable(
      recorder, artifact_io.join(values.model_base_path, str(max(versions))), values.model_name)
  verdict, _ = stages.smoke_test_version(recorder, servable, values.model_name,
                                         values.output_dir, **arguments)
  print(f"lineage {store.describe()}")
  return verdict


if __name__ == "__main__":
  _define_flags()
  app.run(lambda argv: sys.exit(main(argv)))
