"""TF Serving's REST API (http_rest_api_handler.cc) as a WSGI application over a ServerCore:
`/v1/models/NAME[/versions/N | /labels/L][/metadata]` and `:predict`, `:classify`,
`:regress`, with TF Serving's `{"error": message}` answers and status-to-HTTP mapping."""

import json
import re
import time
from http import HTTPStatus
from typing import Optional, Tuple
from urllib.parse import unquote_to_bytes

import grpc
from absl import logging
from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.apis import model_pb2

from serving.model_server import json_answers
from serving.model_server import json_requests
from serving.model_server.core import SIGNATURE_DEF_FIELD, ServerCore
from serving.model_server.status import ServingError, invalid_argument

# TF Serving's http_rest_api_util.h patterns, matched against the raw (undecoded) path.
_REST_PATH = re.compile(r"/v1/.*", re.IGNORECASE)
_PREDICTION_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
    r":(classify|regress|predict)", re.IGNORECASE)
_STATUS_PATH = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
    r"(?:/(metadata))?", re.IGNORECASE)
_MAX_VERSION = 2**63 - 1
_CORS_HEADERS = [("Access-Control-Allow-Origin", "*"),
                 ("Access-Control-Allow-Methods", "POST, GET"),
                 ("Access-Control-Allow-Headers", "Content-Type")]



def _model_spec(name: str, version: Optional[str], label: Optional[str]) -> model_pb2.ModelSpec:
  """ParseModelInfo + FillModelSpecWithNameVersionAndLabel on the URL's parts."""
  spec = model_pb2.ModelSpec()
  try:
    spec.name = unquote_to_bytes(name).decode("utf-8") if name else ""
  except UnicodeDecodeError:
    raise invalid_argument(f"Failed to decode model name:{name}") from None
  if version:
    if int(version) > _MAX_VERSION:
      raise invalid_argument(f"Failed to convert version: {version} to numeric.")
    spec.version.value = int(version)
  if label:
    try:
      spec.version_label = unquote_to_bytes(label).decode("utf-8")
    except UnicodeDecodeError:
      raise invalid_argument(f"Failed to decode model version label:{label}") from None
  return spec


def _labels(method: str, path: str) -> Tuple[str, str]:
  """(model name, API) of a request, as TF Serving labels its REST metrics."""
  match = (_PREDICTION_PATH if method == "POST" else _STATUS_PATH).fullmatch(path)
  if not match or not match.group(1):
    return "", ""
  try:
    name = unquote_to_bytes(match.group(1)).decode("utf-8")
  except UnicodeDecodeError:
    name = ""
  return name, match.group(4) if method == "POST" else ""


class RestApi:
  """The WSGI application: TF Serving's HttpRestApiHandler, and the Prometheus page when
  monitoring is on (`metrics_path`). Inference past `timeout_ms` is DEADLINE_EXCEEDED."""

  def __init__(self, core: ServerCore, max_body_bytes: int, enable_cors: bool = False,
               timeout_ms: Optional[int] = None, metrics_path: Optional[str] = None):
    self._core = core
    self._max_body_bytes = max_body_bytes
    self._enable_cors = enable_cors
    self._timeout_ms = timeout_ms if timeout_ms and timeout_ms > 0 else None
    self._metrics_path = metrics_path

  def __call__(self, environ, start_response):
    method = environ["REQUEST_METHOD"]
    path = environ.get("REQUEST_URI") or environ.get("PATH_INFO", "")
    path = path.split("?", 1)[0]
    if self._metrics_path and path == self._metrics_path and method == "GET":
      body = self._core.metrics.prometheus_text().encode("utf-8")
      start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8"),
                                ("Content-Length", str(len(body)))])
      return [body]
    if not _REST_PATH.fullmatch(path):
      return self._reply(start_response, 404, json_answers.error_body(
          f"No handler for {method} {path}: TF Serving's REST API lives under /v1/"))
    try:
      length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
      return self._reply(start_response, 400, json_answers.error_body(
          f"Content-Length {environ.get('CONTENT_LENGTH')!r} is not a number"))
    if length > self._max_body_bytes:
      return self._reply(start_response, 413, json_answers.error_body(
          f"Request body of {length} bytes is larger than the server's limit of "
          f"{self._max_body_bytes} bytes (--max_request_body_bytes)"))
    body = environ["wsgi.input"].read(length) if length else b""
    started = time.perf_counter()
    code = "OK"
    try:
      output = self._process(method, path, body, environ)
      status = 200
    except ServingError as e:
      logging.vlog(1, "Error processing HTTP/REST request: %s %s Error: %s", method, path, e)
      output, status, code = json_answers.error_body(e.message), e.http_status, e.code.name
    except Exception as e:  # a bug must cost one request, in TF Serving's error format
      logging.exception("Internal error on %s %s", method, path)
      output, status, code = json_answers.error_body(f"Internal error: {e}"), 500, "INTERNAL"
    name, api = _labels(method, path)
    self._core.metrics.request(name, code, api, "REST", (time.perf_counter() - started) * 1e6)
    return self._reply(start_response, status, output)

  def _reply(self, start_response, status: int, body: bytes):
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    if self._enable_cors:
      headers.extend(_CORS_HEADERS)
    try:
      reason = HTTPStatus(status).phrase
    except ValueError:  # 499, TF Serving's CLIENT_CLOSED_REQUEST
      reason = "Client Closed Request"
    start_response(f"{status} {reason}", headers)
    return [body]

  def _process(self, method: str, path: str, body: bytes, environ) -> bytes:
    if method == "OPTIONS":
      if re.search(r"https?://", environ.get("HTTP_ORIGIN", "")):
        return b""
      raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                         "Origin header is missing in CORS preflight")
    malformed = invalid_argument(f"Malformed request: {method} {path}")
    if method == "POST":
      match = _PREDICTION_PATH.fullmatch(path)
      if not match:
        raise malformed
      name, version, label, verb = match.groups()
      spec = _model_spec(name, version, label)
      if verb == "predict":
        return self._predict(spec, body)
      if verb == "classify":
        return self._classify(spec, body)
      if verb == "regress":
        return self._regress(spec, body)
      raise malformed  # the path matches case-insensitively, the verb does not
    if method == "GET":
      match = _STATUS_PATH.fullmatch(path)
      if not match:
        raise malformed
      name, version, label, metadata = match.groups()
      if not name:
        raise invalid_argument("Missing model name in request.")
      spec = _model_spec(name, version, label)
      if metadata:
        return self._metadata(spec)
      return self._status(spec)
    raise malformed

  def _predict(self, spec: model_pb2.ModelSpec, body: bytes) -> bytes:
    document = json_requests.parse_request(body)
    spec.signature_name = json_requests.signature_name(document)
    specs = self._core.signature_inputs(spec, spec.signature_name)
    inputs, row_format = json_requests.predict_inputs(document, specs, spec.signature_name)
    _, outputs = self._core.predict(spec, inputs, timeout_ms=self._timeout_ms)
    return json_answers.predict_response(outputs, row_format)

  def _classify(self, spec: model_pb2.ModelSpec, body: bytes) -> bytes:
    document = json_requests.parse_request(body)
    spec.signature_name = json_requests.signature_name(document)
    examples = json_requests.serialized_examples(document)
    _, result = self._core.classify(spec, examples, self._timeout_ms)
    return json_answers.classify_response(result)

  def _regress(self, spec: model_pb2.ModelSpec, body: bytes) -> bytes:
    document = json_requests.parse_request(body)
    spec.signature_name = json_requests.signature_name(document)
    examples = json_requests.serialized_examples(document)
    _, result = self._core.regress(spec, examples, self._timeout_ms)
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
