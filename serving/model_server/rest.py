"""TF Serving's REST API (http_rest_api_handler.cc) over a ServerCore:
`/v1/models/NAME[/versions/N | /labels/L][/metadata]` and `:predict`, `:classify`,
`:regress`, with TF Serving's `{"error": message}` answers and status-to-HTTP mapping.

A request is answered as steps (`respond`, see inference.py), so the HTTP server can answer it
on a worker thread (`handle`) or in its event loop (`handle_async`), where a request waiting
for its batch holds no thread.
"""

import json
import re
import time
import traceback
from typing import List, Mapping, Optional, Tuple
from urllib.parse import unquote_to_bytes

import grpc
from absl import logging
from google.protobuf import json_format
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import get_model_metadata_pb2
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.apis import model_pb2

from export.warmup import DEFAULT_SIGNATURE
from serving.model_server import inference
from serving.model_server import json_answers
from serving.model_server import json_requests
from serving.model_server.classify import classify
from serving.model_server.core import SIGNATURE_DEF_FIELD, ServerCore
from serving.model_server.predict import predict
from serving.model_server.regress import regress
from serving.model_server.servable import Offload, Servable
from serving.model_server.status import ServingError, invalid_argument, not_found

# TF Serving's http_rest_api_util.h patterns, matched against the raw (undecoded) path.
_REST_PATH = re.compile(r"/v1/.*", re.IGNORECASE)
_PREDICTION_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
    r":(classify|regress|predict)", re.IGNORECASE)
_STATUS_PATH = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
    r"(?:/(metadata))?", re.IGNORECASE)
_MAX_VERSION = 2**63 - 1
_JSON = "application/json"
_CORS_HEADERS = [("Access-Control-Allow-Origin", "*"),
                 ("Access-Control-Allow-Methods", "POST, GET"),
                 ("Access-Control-Allow-Headers", "Content-Type")]



def _malformed(method: str, path: str) -> ServingError:
  return invalid_argument(f"Malformed request: {method} {path}")


def _model_spec(name: str, version: Optional[str], label: Optional[str]) -> model_pb2.ModelSpec:
  """ParseModelInfo + FillModelSpecWithNameVersionAndLabel on the URL's parts."""
  spec = model_pb2.ModelSpec()
  try:
    spec.name = unquote_to_bytes(name).decode("utf-8") if name else ""
  except UnicodeDecodeError:
    raise invalid_argument(f"Failed to decode model name:{name}") from None
  if version:
    if len(version) > len(str(_MAX_VERSION)) or int(version) > _MAX_VERSION:
      raise invalid_argument(f"Failed to convert version: {version} to numeric.")
    spec.version.value = int(version)
  if label:
    try:
      spec.version_label = unquote_to_bytes(label).decode("utf-8")
    except UnicodeDecodeError:
      raise invalid_argument(f"Failed to decode model version label:{label}") from None
  return spec


def _signature_inputs(servable: Servable, signature_name: str
                      ) -> Mapping[str, meta_graph_pb2.TensorInfo]:
  """The REST handler's GetInfoMap: the inputs of a signature, for decoding JSON."""
  name = signature_name or DEFAULT_SIGNATURE
  if name not in servable.signatures:
    raise invalid_argument(f'Serving signature name: "{name}" not found in signature def')
  return servable.signatures[name].inputs


def _labels(method: str, match: Optional[re.Match]) -> Tuple[str, str]:
  """(model name, API) of a request, as TF Serving labels its REST metrics."""
  if not match or not match.group(1):
    return "", ""
  try:
    name = unquote_to_bytes(match.group(1)).decode("utf-8")
  except UnicodeDecodeError:
    name = ""
  return name, match.group(4) if method == "POST" else ""


class RestApi:
  """TF Serving's HttpRestApiHandler, and the Prometheus page when monitoring is on
  (`metrics_path`): `handle` answers one request, already read. Inference past `timeout_ms`
  is DEADLINE_EXCEEDED. Every refused request is one log line, never a traceback."""

  def __init__(self, core: ServerCore, enable_cors: bool = False,
               timeout_ms: Optional[int] = None, metrics_path: Optional[str] = None):
    self._core = core
    self._enable_cors = enable_cors
    self._timeout_ms = timeout_ms if timeout_ms and timeout_ms > 0 else None
    self._metrics_path = metrics_path

  def headers(self, content_type: str, body: bytes) -> List[Tuple[bytes, bytes]]:
    headers = [(b"content-type", content_type.encode()),
               (b"content-length", str(len(body)).encode())]
    if self._enable_cors:
      headers.extend((k.lower().encode(), v.encode()) for k, v in _CORS_HEADERS)
    return headers

  def refuse(self, method: str, path: str, error: ServingError, status: int) -> bytes:
    logging.info("Refused HTTP/REST request %s %s: %d %s", method, path[:200], status,
                 error.message[:200])
    return json_answers.error_body(error.message)

  def handle(self, method: str, path: str, body: bytes, origin: str = ""
             ) -> Tuple[int, str, bytes]:
    """(HTTP status, content type, body) of one request, answered on this thread."""
    return inference.answer(self.respond(method, path, body, origin), self._timeout_ms)

  async def handle_async(self, method: str, path: str, body: bytes, origin: str,
                         offload: Offload) -> Tuple[int, str, bytes]:
    """`handle` in the event loop: a batched session run is awaited without holding a
    thread; an unbatched one is made through `offload(function, *args)`."""
    return await inference.answer_async(self.respond(method, path, body, origin),
                                        self._timeout_ms, offload)

  def respond(self, method: str, path: str, body: bytes, origin: str = ""
              ) -> inference.Steps[Tuple[int, str, bytes]]:
    """The steps that answer one request: (HTTP status, content type, body)."""
    if self._metrics_path and path == self._metrics_path and method == "GET":
      return 200, "text/plain; charset=utf-8", \
          self._core.metrics.prometheus_text().encode("utf-8")
    if not _REST_PATH.fullmatch(path):
      error = not_found(f"No handler for {method} {path}: TF Serving's REST API lives under "
                        f"/v1/")
      return 404, _JSON, self.refuse(method, path, error, 404)
    started = time.perf_counter()
    code = "OK"
    match = (_PREDICTION_PATH if method == "POST" else _STATUS_PATH).fullmatch(path)
    try:
      output, status = (yield from self._process(method, path, match, body, origin)), 200
    except ServingError as e:
      status, code = e.http_status, e.code.name
      output = self.refuse(method, path, e, status)
    except Exception as e:  # a bug must cost one request, in TF Serving's error format
      where = traceback.extract_tb(e.__traceback__)[-1]
      logging.error("Internal error on %s %s: %s: %s (%s:%d)", method, path[:200],
                    type(e).__name__, str(e)[:200], where.filename, where.lineno)
      output, status, code = json_answers.error_body(f"Internal error: {e}"), 500, "INTERNAL"
    name, api = _labels(method, match)
    self._core.metrics.request(name, code, api, "REST", (time.perf_counter() - started) * 1e6)
    return status, _JSON, output

  def _process(self, method: str, path: str, match: Optional[re.Match], body: bytes,
               origin: str) -> inference.Steps[bytes]:
    """`match`: the path against the POST (prediction) or the GET (status) pattern."""
    if method == "OPTIONS":
      if re.search(r"https?://", origin):
        return b""
      raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                         "Origin header is missing in CORS preflight")
    if method == "POST":
      if not match:
        raise _malformed(method, path)
      name, version, label, verb = match.groups()
      spec = _model_spec(name, version, label)
      if verb == "predict":
        return (yield from self._predict(spec, body))
      if verb == "classify":
        return (yield from self._classify(spec, body))
      if verb == "regress":
        return (yield from self._regress(spec, body))
      raise _malformed(method, path)  # the path matches case-insensitively, the verb does not
    if method == "GET":
      if not match:
        raise _malformed(method, path)
      name, version, label, metadata = match.groups()
      if not name:
        raise invalid_argument("Missing model name in request.")
      spec = _model_spec(name, version, label)
      if metadata:
        return self._metadata(spec)
      return self._status(spec)
    raise _malformed(method, path)

  def _parse(self, body: bytes) -> dict:
    # Each list or object costs ~0.3 µs and ~60 bytes to parse, so a body of nothing but
    # them is bounded before it is parsed: a bound on what one request can make us do.
    nested = body.count(b"[") + body.count(b"{")
    limit = self._core.options.limits.max_elements // 16
    if nested > limit:
      raise invalid_argument(f"JSON Parse error: the body holds {nested} lists and objects; "
                             f"the server's limit is {limit} (--max_request_elements / 16)")
    return json_requests.parse_request(body)

  def _predict(self, spec: model_pb2.ModelSpec, body: bytes) -> inference.Steps[bytes]:
    document = self._parse(body)
    spec.signature_name = json_requests.signature_name(document)
    with self._core.servable(spec) as servable:
      inputs, row_format = json_requests.predict_inputs(
          document, _signature_inputs(servable, spec.signature_name), spec.signature_name,
          not json_requests.may_hold_booleans(body))
      _, outputs = yield from predict(servable, spec.signature_name, inputs, (),
                                      self._core.checks)
    return json_answers.predict_response(outputs, row_format)

  def _classify(self, spec: model_pb2.ModelSpec, body: bytes) -> inference.Steps[bytes]:
    document = self._parse(body)
    spec.signature_name = json_requests.signature_name(document)
    examples = json_requests.serialized_examples(document)
    with self._core.servable(spec) as servable:
      _, result = yield from classify(servable, spec.signature_name, examples,
                                      self._core.checks)
    return json_answers.classify_response(result)

  def _regress(self, spec: model_pb2.ModelSpec, body: bytes) -> inference.Steps[bytes]:
    document = self._parse(body)
    spec.signature_name = json_requests.signature_name(document)
    examples = json_requests.serialized_examples(document)
    with self._core.servable(spec) as servable:
      _, result = yield from regress(servable, spec.signature_name, examples,
                                     self._core.checks)
    return json_answers.regress_response(result)

  def _status(self, spec: model_pb2.ModelSpec) -> bytes:
    request = get_model_status_pb2.GetModelStatusRequest(model_spec=spec)
    response = self._core.model_status(request)
    return json_format.MessageToJson(response, including_default_value_fields=True,
                                     preserving_proto_field_name=True).encode("utf-8")

  def _metadata(self, spec: model_pb2.ModelSpec) -> bytes:
    request = get_model_metadata_pb2.GetModelMetadataRequest(
        model_spec=spec, metadata_field=[SIGNATURE_DEF_FIELD])
    response = self._core.model_metadata(request)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata[SIGNATURE_DEF_FIELD].Unpack(signature_map)

    def as_dict(message):
      return json_format.MessageToDict(message, including_default_value_fields=True,
                                       preserving_proto_field_name=True)

    document = {"model_spec": as_dict(response.model_spec),
                "metadata": {SIGNATURE_DEF_FIELD: as_dict(signature_map)}}
    return json.dumps(document, indent=1).encode("utf-8")
