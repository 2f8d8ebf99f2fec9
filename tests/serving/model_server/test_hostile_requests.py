"""What one bad request costs: TF Serving's status and a small, valid JSON error for every
malformed request, checks before any tensor is built, a bound on what a request may decode
to, a 413 before an oversized body is read, and memory given back after large requests."""

import json
import socket
import time

import grpc
import pytest
from tensorflow.core.framework import types_pb2

from serving.model_server import config_files
from serving.model_server.core import CoreOptions
from serving.model_server.server import ModelServer, ServerOptions
from serving.model_server.tensors import Limits
from tests import tiny_models
from tests.serving.helpers import predict_request, rss_bytes, tensor_proto

MAX_BODY = 8 * 1024 * 1024
MODEL = "half_plus_two"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
  base = tmp_path_factory.mktemp("models") / MODEL
  tiny_models.half_plus_two(str(base / "1"), extras=True)
  config = config_files.single_model_config(MODEL, str(base))
  with ModelServer(config, ServerOptions(grpc_port=0, rest_api_port=0,
                                         max_request_body_bytes=MAX_BODY),
                   CoreOptions(max_num_load_retries=0,
                               limits=Limits(max_elements=1 << 22, max_bytes=1 << 26))) as started:
    yield started


def post(server, path, body: bytes):
  """(status, raw body) of a POST sent as bytes, whatever they hold."""
  with socket.create_connection(("127.0.0.1", server.rest_api_port), timeout=60) as connection:
    connection.sendall(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: "
                       + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
    return _response(connection)


def _response(connection):
  raw = b""
  while True:
    chunk = connection.recv(1 << 16)
    if not chunk:
      break
    raw += chunk
  head, _, body = raw.partition(b"\r\n\r\n")
  return int(head.split(b" ", 2)[1]), body


def assert_good_request_still_answered(server):
  status, body = post(server, f"/v1/models/{MODEL}:predict", b'{"instances": [2.0]}')
  assert (status, json.loads(body)) == (200, {"predictions": [3.0]})


PREDICT = f"/v1/models/{MODEL}:predict"
CLASSIFY = f"/v1/models/{MODEL}:classify"


def _nested(depth):
  return "[" * depth + "1.0" + "]" * depth


@pytest.mark.parametrize("path, body, message", [
    (PREDICT, b'{"instances": [' + b"1" * 5000 + b"]}", "Number too big to be stored in double"),
    (CLASSIFY, b'{"signature_name": "classify_x_to_y", "examples": [{"x": ' + b"9" * 5000
     + b"}]}", "Number too big to be stored in double"),
    (PREDICT, b'{"instances": [1e400]}', "Number too big to be stored in double"),
    (f"/v1/models/{MODEL}/versions/{'7' * 5000}:predict", b'{"instances": [1.0]}',
     "Failed to convert version"),
    (PREDICT, b'{"signature_name": "text_length", "instances": ["\\ud800"]}',
     "The surrogate pair in string is invalid"),
    (CLASSIFY, b'{"signature_name": "classify_x_to_y", "examples": [{"\\udfff": 1.0}]}',
     "The surrogate pair in string is invalid"),
    (PREDICT, b'{"signature_name": "\\ud800", "instances": [1.0]}',
     "The surrogate pair in string is invalid"),
    (PREDICT, b'{"instances": ' + _nested(40).encode() + b"}",
     "a tensor can have at most 32 dimensions"),
    (PREDICT, b'{"instances": ["\xff\xfe"]}', "Invalid encoding in string"),
    (PREDICT, b'{"instances": [' + b"[]," * 300_000 + b"[]]}",
     "lists and objects; the server's limit is 262144"),
])
def test_malformed_requests_get_400_with_a_small_valid_json_error(server, path, body, message):
  status, answer = post(server, path, body)
  assert status == 400
  error = json.loads(answer.decode("utf-8"))["error"]  # valid UTF-8 and valid JSON
  assert message in error
  assert len(answer) < 2048
  assert_good_request_still_answered(server)


def test_an_error_that_echoes_the_request_stays_small(server):
  body = b'{"signature_name": "text_length", "instances": ' + _nested(30).encode() + b"}"
  status, answer = post(server, PREDICT, body)
  assert status == 400 and len(answer) <= len(body) + 1100


def test_the_first_of_duplicate_keys_wins_as_in_rapidjson(server):
  status, answer = post(server, PREDICT, b'{"instances": [4.0], "instances": "not a list"}')
  assert (status, json.loads(answer)) == (200, {"predictions": [4.0]})


def test_a_body_announced_over_the_limit_gets_413_before_it_is_sent(server):
  with socket.create_connection(("127.0.0.1", server.rest_api_port), timeout=10) as connection:
    connection.sendall(b"POST " + PREDICT.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                       b"Content-Length: 100000000\r\n\r\n")
    started = time.monotonic()
    connection.settimeout(5)
    head = connection.recv(1 << 16)
  assert time.monotonic() - started < 5
  status_line, _, rest = head.partition(b"\r\n")
  assert b" 413 " in status_line
  assert b"larger than the server's limit" in rest
  assert_good_request_still_answered(server)


def _predict(stubs, signature, **protos):
  request = predict_request(signature, {}, name=MODEL)
  for alias, proto in protos.items():
    request.inputs[alias].CopyFrom(proto)
  return stubs.prediction.Predict(request, timeout=30)


@pytest.mark.parametrize("signature, inputs, message", [
    ("serving_default", {"x": tensor_proto(types_pb2.DT_RESOURCE, [1])},
     "Expects arg[0] to be float but resource is provided"),
    ("serving_default", {"x": tensor_proto(types_pb2.DT_VARIANT, [1])},
     "Expects arg[0] to be float but variant is provided"),
    ("text_length", {"text": tensor_proto(types_pb2.DT_STRING, [-5], string_val=[b"a"])},
     "Dimension -5 must be >= 0"),
    ("serving_default", {"x": tensor_proto(types_pb2.DT_FLOAT, [805306368], float_val=[1.0])},
     "the server's limit is 4194304 elements"),
    # The alias is checked before the claimed 3 GiB: nothing is built for a request that
    # names an input the signature does not have.
    ("serving_default", {"nope": tensor_proto(types_pb2.DT_FLOAT, [805306368], float_val=[1.0])},
     "Signature input alias: x(x:0) not found in request"),
    ("text_length", {"text": tensor_proto(types_pb2.DT_STRING, [3],
                                          string_val=[b"a", b"b", b"c", b"d"])},
     "tensor parsing error: text"),
])
def test_bad_tensor_protos_are_invalid_argument_and_cost_nothing(stubs, signature, inputs,
                                                                  message):
  started = time.monotonic()
  with pytest.raises(grpc.RpcError) as raised:
    _predict(stubs, signature, **inputs)
  assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
  assert message in raised.value.details()
  assert time.monotonic() - started < 2
  answer = _predict(stubs, "serving_default",
                    x=tensor_proto(types_pb2.DT_FLOAT, [1], float_val=[2.0]))
  assert list(answer.outputs["y"].float_val) == [3.0]


@pytest.mark.slow
def test_memory_goes_back_after_large_requests(server, stubs):
  strings = tensor_proto(types_pb2.DT_STRING, [1_000_000], string_val=[b"book"] * 1_000_000)
  _predict(stubs, "text_length", text=strings)  # the first one also warms up allocator pools
  before = rss_bytes()
  for _ in range(3):
    started = time.monotonic()
    answer = _predict(stubs, "text_length", text=strings)
    assert time.monotonic() - started < 30
    assert len(answer.outputs["length"].int_val) == 1_000_000
    body = json.dumps({"signature_name": "text_length",
                       "instances": ["x" * (MAX_BODY - 100)]}).encode()
    status, answer = post(server, PREDICT, body)
    assert (status, json.loads(answer)) == (200, {"predictions": [MAX_BODY - 100]})
  assert rss_bytes() < before * 1.25 + 64 * 1024 * 1024
