"""How the embedded server can be reached, as tensorflow_model_server's flags set it up: a Unix
socket, TLS, the health service, the Prometheus page, timeouts and channel arguments."""

import datetime

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2
from grpc_health.v1 import health_pb2_grpc
from tensorflow_serving.apis import prediction_service_pb2_grpc

from serving.model_server import config_files
from serving.model_server.core import CoreOptions
from serving.model_server.server import ModelServer, ServerOptions, parse_channel_arguments
from serving.model_server.status import ServingError
from tests import tiny_models
from tests.serving.helpers import grpc_stubs, predict_request, rest


@pytest.fixture(scope="module")
def base_path(tmp_path_factory):
  base = tmp_path_factory.mktemp("models") / "half_plus_two"
  tiny_models.half_plus_two(str(base / "1"), extras=True)
  return str(base)


def serve(base_path, **options):
  config = config_files.single_model_config("half_plus_two", base_path)
  settings = dict(grpc_port=0, rest_api_port=0)
  settings.update(options)
  return ModelServer(config, ServerOptions(**settings), CoreOptions(max_num_load_retries=0))


def half_plus_two(stub, x=2.0):
  request = predict_request("serving_default", {"x": np.array([x], np.float32)},
                            name="half_plus_two")
  return tf.make_ndarray(stub.Predict(request, timeout=10).outputs["y"]).tolist()


def test_grpc_also_answers_on_the_unix_socket_and_port_none_turns_tcp_off(base_path, tmp_path):
  socket_path = str(tmp_path / "tf-serving.sock")
  with serve(base_path, grpc_port=None, grpc_socket_path=socket_path) as server:
    assert server.grpc_port is None
    with grpc.insecure_channel(f"unix:{socket_path}") as channel:
      stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
      assert half_plus_two(stub) == [3.0]


def test_neither_a_port_nor_a_socket_is_refused_in_the_binarys_words(base_path):
  with pytest.raises(ServingError, match="At least one of server_options.grpc_port or "
                                         "server_options.grpc_socket_path must be set."):
    serve(base_path, grpc_port=None)


def _self_signed(common_name):
  key = ec.generate_private_key(ec.SECP256R1())
  name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
  now = datetime.datetime.now(datetime.timezone.utc)
  certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                 .public_key(key.public_key()).serial_number(x509.random_serial_number())
                 .not_valid_before(now - datetime.timedelta(minutes=5))
                 .not_valid_after(now + datetime.timedelta(days=1))
                 .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]),
                                critical=False)
                 .sign(key, hashes.SHA256()))
  return (key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode(),
          certificate.public_bytes(serialization.Encoding.PEM).decode())


@pytest.mark.parametrize("client_verify", [False, True])
def test_tls_serves_clients_that_trust_the_certificate_and_verifies_theirs_when_asked(
    base_path, tmp_path, client_verify):
  server_key, server_cert = _self_signed("localhost")
  client_key, client_cert = _self_signed("client")
  ssl_file = tmp_path / "ssl.config"
  ssl = config_files.SSLConfig(server_key=server_key, server_cert=server_cert,
                               custom_ca=client_cert if client_verify else "",
                               client_verify=client_verify)
  ssl_file.write_text(config_files.to_text(ssl))
  with serve(base_path, ssl_config=config_files.read_ssl_config(str(ssl_file))) as server:
    target = f"localhost:{server.grpc_port}"
    trusted = grpc.ssl_channel_credentials(
        root_certificates=server_cert.encode(),
        private_key=client_key.encode() if client_verify else None,
        certificate_chain=client_cert.encode() if client_verify else None)
    with grpc.secure_channel(target, trusted) as channel:
      assert half_plus_two(prediction_service_pb2_grpc.PredictionServiceStub(channel)) == [3.0]
    untrusted = [grpc.insecure_channel(target)]
    if client_verify:  # trusts the server, but shows no certificate of its own
      untrusted.append(grpc.secure_channel(target, grpc.ssl_channel_credentials(
          root_certificates=server_cert.encode())))
    for channel in untrusted:
      with channel, pytest.raises(grpc.RpcError) as raised:
        half_plus_two(prediction_service_pb2_grpc.PredictionServiceStub(channel))
      assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


def test_the_health_service_reports_serving_under_the_binarys_names(base_path):
  with serve(base_path, enable_grpc_healthcheck_service=True) as server:
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
      health = health_pb2_grpc.HealthStub(channel)
      for service in ("", "ModelService", "PredictionService"):
        answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING, service
      with pytest.raises(grpc.RpcError) as raised:
        health.Check(health_pb2.HealthCheckRequest(service="tensorflow.serving.Nope"))
      assert raised.value.code() == grpc.StatusCode.NOT_FOUND
  with serve(base_path) as server:
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
      with pytest.raises(grpc.RpcError) as raised:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
      assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_the_prometheus_page_counts_requests_under_tf_servings_names(base_path):
  path = "/monitoring/prometheus/metrics"
  with serve(base_path, prometheus_path=path) as server:
    stubs = grpc_stubs(server.grpc_port)
    try:
      for _ in range(3):
        half_plus_two(stubs.prediction)
      with pytest.raises(grpc.RpcError):
        stubs.prediction.Predict(predict_request("serving_default", {"x": [1.0]}, name="nope"))
    finally:
      stubs.close()
    rest(server.rest_api_port, "POST", "/v1/models/half_plus_two:predict",
         {"instances": [1.0]})
    page = requests.get(f"http://127.0.0.1:{server.rest_api_port}{path}", timeout=10)
  assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/plain")
  text = page.text
  assert "# TYPE :tensorflow:serving:request_count counter" in text
  assert ':tensorflow:serving:request_count{model_name="half_plus_two",status="OK"} 4' in text
  assert ':tensorflow:serving:request_count{model_name="nope",status="NOT_FOUND"} 1' in text
  assert "# TYPE :tensorflow:serving:request_latency histogram" in text
  assert (':tensorflow:serving:request_latency_count{model_name="half_plus_two",API="Predict",'
          'entrypoint="GRPC"} 3') in text
  # Every successful run, over gRPC and REST alike; the refused request never ran.
  assert (':tensorflow:serving:runtime_latency_count{model_name="half_plus_two",API="Predict",'
          'runtime="TF1"} 4') in text
  assert ':tensorflow:cc:saved_model:load_attempt_count{model_path="' in text


def test_a_rest_request_past_the_timeout_gets_deadline_exceeded_and_others_go_on(base_path):
  with serve(base_path, rest_api_timeout_in_ms=300) as server:
    status, answer = rest(server.rest_api_port, "POST", "/v1/models/half_plus_two:predict",
                          {"signature_name": "count_to", "inputs": 10**12})
    assert status == 504
    assert answer == {"error": "Timed out waiting for notification"}
    status, answer = rest(server.rest_api_port, "POST", "/v1/models/half_plus_two:predict",
                          {"signature_name": "count_to", "inputs": 1000})
    assert (status, answer) == (200, {"outputs": 1000})


def test_a_grpc_deadline_bounds_the_run_and_the_server_keeps_serving(base_path):
  with serve(base_path) as server:
    stubs = grpc_stubs(server.grpc_port)
    try:
      slow = predict_request("count_to", {"n": np.array(10**12, np.int64)}, name="half_plus_two")
      with pytest.raises(grpc.RpcError) as raised:
        stubs.prediction.Predict(slow, timeout=0.5)
      assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
      assert half_plus_two(stubs.prediction) == [3.0]
    finally:
      stubs.close()


def test_grpc_channel_arguments_parse_as_the_binary_parses_them(base_path):
  assert parse_channel_arguments("") == ()
  assert parse_channel_arguments(
      "grpc.max_connection_age_ms=2000,grpc.lb_policy_name=grpclb,big=99999999999") == (
          ("grpc.max_connection_age_ms", 2000), ("grpc.lb_policy_name", "grpclb"),
          ("big", "99999999999"))
  with pytest.raises(ServingError, match="'oops' is not key=value"):
    parse_channel_arguments("a=1,oops")
  arguments = parse_channel_arguments("grpc.max_connection_age_ms=2000")
  with serve(base_path, grpc_channel_arguments=arguments) as server:
    stubs = grpc_stubs(server.grpc_port)
    try:
      assert half_plus_two(stubs.prediction) == [3.0]
    finally:
      stubs.close()
