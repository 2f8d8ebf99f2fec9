"""Clients of a TF Serving server, REST and gRPC, as a user's code would call it.

`RestClient` is a `requests` session (keep-alive, one retry of a request whose pooled
connection the server had closed); `ModelClient` asks one version of one model over either
protocol and returns the answer as numpy arrays shaped like the in-process outputs, so the
smoke test, the benchmarks and the tests compare like with like. Request bodies follow TF
Serving's REST rules: strings as text (or `{"b64": ...}` when not UTF-8), examples as JSON
features.
"""

import base64
import json
from typing import Dict, List, Optional, Tuple

import grpc
import numpy as np
import requests
import tensorflow as tf
from requests.adapters import HTTPAdapter
from tensorflow_serving.apis import classification_pb2
from tensorflow_serving.apis import model_service_pb2_grpc
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc
from tensorflow_serving.apis import regression_pb2
from urllib3.util.retry import Retry

from serving.model_server import json_requests

CLASSIFY, REGRESS, PREDICT = "classify", "regress", "predict"
_B64 = "b64"


class RestError(Exception):
  """A REST answer other than 200, with the server's error message."""

  def __init__(self, status: int, message: str):
    super().__init__(f"HTTP {status}: {message}")
    self.status = status
    self.message = message


class RestClient:
  """A keep-alive HTTP/1.1 session to TF Serving's REST API at `host:port`."""

  def __init__(self, target: str, timeout_secs: float = 60.0):
    self.base_url = f"http://{target}"
    self._timeout = timeout_secs
    self._session = requests.Session()
    # A server may close an idle keep-alive connection just as a request goes out; inference
    # requests have no side effects, so sending it once more on a fresh connection is safe.
    retry = Retry(total=1, connect=1, read=1, status=0, allowed_methods=None,
                  raise_on_status=False)
    self._session.mount("http://", HTTPAdapter(max_retries=retry))

  def send(self, method: str, path: str, body: Optional[bytes] = None) -> Tuple[int, bytes]:
    """(HTTP status, body) of one request, whatever the status."""
    response = self._session.request(method, self.base_url + path, data=body,
                                     headers={"Content-Type": "application/json"},
                                     timeout=self._timeout)
    return response.status_code, response.content

  def call(self, method: str, path: str, document: Optional[dict] = None) -> dict:
    """The decoded JSON answer; RestError for any status but 200."""
    body = None if document is None else json.dumps(document).encode("utf-8")
    status, payload = self.send(method, path, body)
    try:
      answer = json.loads(payload.decode("utf-8", "surrogateescape"))
    except json.JSONDecodeError as e:
      raise RestError(status, f"answer is not JSON ({e}): {payload[:200]!r}") from None
    if status != 200:
      raise RestError(status, answer.get("error", payload[:200]) if isinstance(answer, dict)
                      else payload[:200])
    return answer

  def close(self) -> None:
    self._session.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


class GrpcClient:
  """PredictionService and ModelService stubs on one channel to `host:port`."""

  def __init__(self, target: str, max_receive_bytes: int = 4 << 20):
    self.channel = grpc.insecure_channel(
        target, options=[("grpc.max_receive_message_length", max_receive_bytes)])
    self.prediction = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
    self.model = model_service_pb2_grpc.ModelServiceStub(self.channel)

  def close(self) -> None:
    self.channel.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


# ------------------------------------------------------------------------- request bodies


def _bytes_json_value(value: bytes):
  try:
    return value.decode("utf-8")
  except UnicodeDecodeError:
    return {_B64: base64.b64encode(value).decode("ascii")}


def array_to_json_value(array: np.ndarray):
  """A tensor as a JSON-able value a client sends: strings as text, or b64 when not UTF-8."""
  if array.dtype != object:
    return array.tolist()
  if not array.ndim:
    return _bytes_json_value(array.item())
  return np.frompyfunc(_bytes_json_value, 1, 1)(array).tolist()


def example_to_json(example: tf.train.Example) -> dict:
  """A tf.Example as a REST `examples` entry."""
  result = {}
  for name, feature in example.features.feature.items():
    kind = feature.WhichOneof("kind")
    if kind == "bytes_list":
      result[name] = [_bytes_json_value(v) for v in feature.bytes_list.value]
    elif kind == "float_list":
      result[name] = [float(v) for v in feature.float_list.value]
    elif kind == "int64_list":
      result[name] = list(feature.int64_list.value)
    else:
      result[name] = []
  return result


def predict_body(inputs: Dict[str, np.ndarray], row_format: bool) -> dict:
  """`{"instances": ...}` (row format) or `{"inputs": ...}` (columnar) for these tensors."""
  if not row_format:
    return {"inputs": {k: array_to_json_value(a) for k, a in inputs.items()}}

  def row(array, i):  # a slice keeps a string item an array
    return array_to_json_value(array[i:i + 1].reshape(array.shape[1:]))

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
      flat.append(base64.b64decode(item[_B64]))
    else:
      flat.append(item.encode("utf-8", "surrogateescape"))

  walk(value)
  array = np.empty(len(flat), dtype=object)
  array[:] = flat
  return array.reshape(json_requests.dense_shape(value))


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


def _serialized_examples(inputs: Dict[str, np.ndarray]) -> List[bytes]:
  return list(inputs["inputs"].reshape(-1))


# ------------------------------------------------------------------------- one model version


class ModelClient:
  """Asks one version of one model, over REST or gRPC, and decodes the answer like `like`."""

  def __init__(self, model_name: str, version: Optional[int], rest: RestClient,
               grpc_client: GrpcClient, timeout_secs: float = 60.0):
    self.model_name = model_name
    self.version = version
    self.rest = rest
    self.grpc = grpc_client
    self._timeout = timeout_secs

  def path(self, verb: str) -> str:
    version = f"/versions/{self.version}" if self.version is not None else ""
    return f"/v1/models/{self.model_name}{version}:{verb}"

  def spec(self, request, signature: str):
    request.model_spec.name = self.model_name
    if self.version is not None:
      request.model_spec.version.value = self.version
    request.model_spec.signature_name = signature
    return request

  def ask(self, protocol: str, method: str, signature: str, inputs: Dict[str, np.ndarray],
          like: Dict[str, np.ndarray], row_format: bool = True) -> Dict[str, np.ndarray]:
    """`method` (classify, regress or predict) of `signature` on `inputs`; for REST predict,
    `row_format` picks `instances` or `inputs`."""
    if protocol == "rest":
      return self._ask_rest(method, signature, inputs, like, row_format)
    return self._ask_grpc(method, signature, inputs, like)

  def _ask_rest(self, method, signature, inputs, like, row_format):
    if method in (CLASSIFY, REGRESS):
      examples = [example_to_json(tf.train.Example.FromString(s))
                  for s in _serialized_examples(inputs)]
      answer = self.rest.call("POST", self.path(method),
                              {"signature_name": signature, "examples": examples})
      results = answer["results"]
      if method == REGRESS:
        return {"outputs": np.array(results, dtype=np.float32)}
      return _classification_arrays(
          [[(label, score) for label, score in item] for item in results], like)
    document = {"signature_name": signature, **predict_body(inputs, row_format)}
    answer = self.rest.call("POST", self.path(PREDICT), document)
    outputs = answer["predictions"] if row_format else answer["outputs"]
    if len(like) == 1:
      (key,) = like
      return {key: _from_json(outputs, like[key])}
    if row_format:
      return {k: _from_json([row[k] for row in outputs], like[k]) for k in like}
    return {k: _from_json(outputs[k], like[k]) for k in outputs}

  def _ask_grpc(self, method, signature, inputs, like):
    if method in (CLASSIFY, REGRESS):
      request_type = (classification_pb2.ClassificationRequest if method == CLASSIFY
                      else regression_pb2.RegressionRequest)
      request = self.spec(request_type(), signature)
      request.input.example_list.examples.extend(
          tf.train.Example.FromString(s) for s in _serialized_examples(inputs))
      if method == REGRESS:
        result = self.grpc.prediction.Regress(request, timeout=self._timeout).result
        return {"outputs": np.array([r.value for r in result.regressions], dtype=np.float32)}
      result = self.grpc.prediction.Classify(request, timeout=self._timeout).result
      return _classification_arrays(
          [[(c.label, c.score) for c in item.classes] for item in result.classifications], like)
    request = self.spec(predict_pb2.PredictRequest(), signature)
    for key, array in inputs.items():
      request.inputs[key].CopyFrom(tf.make_tensor_proto(array))
    response = self.grpc.prediction.Predict(request, timeout=self._timeout)
    return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}


def error_text(error: Exception) -> str:
  """A failed request's reason in one line, whichever protocol it used."""
  if isinstance(error, grpc.RpcError):
    return f"gRPC {error.code().name}: {error.details()}"
  return str(error)


REQUEST_ERRORS = (grpc.RpcError, RestError, requests.RequestException, OSError, KeyError,
                  TypeError, ValueError)

