"""The embedded model server: TF Serving's REST and gRPC answers, errors, versions, warmup."""

import base64
import os
import posixpath
import re
import subprocess
import sys

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import get_model_metadata_pb2
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.apis import inference_pb2

from export import warmup
from export.servable import SessionServable
from serving import runners
from serving.model_server import config_files
from serving.model_server.core import CoreOptions, ServerCore
from serving.model_server.server import ModelServer, ServerOptions
from serving.model_server.status import ServingError
from tests.helpers import PROJECT_ROOT
from tests.serving.helpers import (SIGNATURES, TEXTS, classify_answer, classify_request,
                                   copy_version, grpc_stubs, object_array, predict_request, rest,
                                   serialized)

MAX_BATCH = 16
MAX_BODY = 64 * 1024


@pytest.fixture(scope="module")
def base_path(trained):
  return posixpath.dirname(trained.export_dir)


@pytest.fixture(scope="module")
def version(trained):
  return int(posixpath.basename(trained.export_dir))


@pytest.fixture(scope="module")
def server(base_path):
  config = config_files.single_model_config("intent", base_path)
  options = ServerOptions(grpc_port=0, rest_api_port=0, max_request_body_bytes=MAX_BODY)
  batching = config_files.batching_parameters(MAX_BATCH)
  with ModelServer(config, options, CoreOptions(batching_parameters=batching)) as started:
    yield started


@pytest.fixture(scope="module")
def reference(trained):
  with SessionServable(trained.export_dir) as model:
    yield model


def assert_outputs_equal(answer, expected):
  assert sorted(answer) == sorted(expected)
  for key, value in expected.items():
    got = np.asarray(answer[key])
    if value.dtype == object:
      np.testing.assert_array_equal(got.astype(object), value)
    else:
      np.testing.assert_array_equal(got.astype(value.dtype), value)


def rest_strings(value):
  return np.vectorize(lambda s: s.encode(), otypes=[object])(np.array(value, dtype=object))


def test_rest_and_grpc_answer_every_signature_as_the_model_does_in_process(
    server, stubs, reference):
  assert sorted(reference.signatures) == SIGNATURES
  texts = TEXTS[:3]
  port = server.rest_api_port
  for name in SIGNATURES:
    signature = reference.signatures[name]
    if signature.method_name == "tensorflow/serving/classify":
      expected = reference.run(name, {"inputs": object_array(serialized(texts))})
      status, answer = rest(port, "POST", "/v1/models/intent:classify",
                            {"signature_name": name, "examples": [{"text": t} for t in texts]})
      assert status == 200
      labels = [[label for label, _ in item] for item in answer["results"]]
      scores = np.array([[score for _, score in item] for item in answer["results"]],
                        dtype=np.float32)
      np.testing.assert_array_equal(rest_strings(labels), expected["classes"])
      np.testing.assert_array_equal(scores, expected["scores"])
      labels, scores = classify_answer(stubs.prediction.Classify(
          classify_request(texts, name)).result)
      np.testing.assert_array_equal(rest_strings(labels), expected["classes"])
      np.testing.assert_array_equal(scores, expected["scores"])
      continue
    (key,) = signature.inputs
    values = object_array(texts if key == "text" else serialized(texts))
    expected = reference.run(name, {key: values})
    as_json = [t if key == "text" else {"b64": base64.b64encode(s).decode()}
               for t, s in zip(texts, values)]
    status, rows = rest(port, "POST", "/v1/models/intent:predict",
                        {"signature_name": name, "instances": as_json})
    assert status == 200
    by_output = {k: [row[k] for row in rows["predictions"]] for k in expected}
    status, columns = rest(port, "POST", "/v1/models/intent:predict",
                           {"signature_name": name, "inputs": {key: as_json}})
    assert status == 200
    for answer in (by_output, columns["outputs"]):
      assert_outputs_equal({k: rest_strings(v) if expected[k].dtype == object else v
                            for k, v in answer.items()}, expected)
    response = stubs.prediction.Predict(predict_request(name, {key: values}))
    assert_outputs_equal({k: tf.make_ndarray(v) for k, v in response.outputs.items()}, expected)
    assert response.model_spec.signature_name == name
    # TF Serving answers with typed fields (Tensor::AsProtoField), which clients read directly.
    assert list(response.outputs["probabilities"].float_val) == \
        expected["probabilities"].reshape(-1).tolist()


def test_status_and_metadata_are_tf_serving_json_and_protos(server, stubs, version):
  status, answer = rest(server.rest_api_port, "GET", "/v1/models/intent")
  assert status == 200
  assert answer == {"model_version_status": [{
      "version": str(version), "state": "AVAILABLE",
      "status": {"error_code": "OK", "error_message": ""}}]}
  status, metadata = rest(server.rest_api_port, "GET", "/v1/models/intent/metadata")
  assert status == 200
  assert metadata["model_spec"] == {"name": "intent", "signature_name": "",
                                    "version": str(version)}
  signatures = metadata["metadata"]["signature_def"]["signature_def"]
  assert sorted(signatures) == SIGNATURES
  assert signatures["predict_text"]["inputs"]["text"]["dtype"] == "DT_STRING"

  request = get_model_status_pb2.GetModelStatusRequest()
  request.model_spec.name = "intent"
  (version_status,) = stubs.model.GetModelStatus(request).model_version_status
  assert version_status.version == version
  assert version_status.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
  request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
  request.model_spec.name = "intent"
  response = stubs.prediction.GetModelMetadata(request)
  signature_map = get_model_metadata_pb2.SignatureDefMap()
  response.metadata["signature_def"].Unpack(signature_map)
  assert sorted(signature_map.signature_def) == SIGNATURES
  assert response.model_spec.version.value == version


def test_multi_inference_answers_each_classify_task_as_classify_does(stubs):
  request = inference_pb2.MultiInferenceRequest()
  for name in ("serving_default", "classification"):
    task = request.tasks.add(method_name="tensorflow/serving/classify")
    task.model_spec.name = "intent"
    task.model_spec.signature_name = name
  request.input.CopyFrom(classify_request(TEXTS[:2]).input)
  response = stubs.prediction.MultiInference(request)
  expected = classify_answer(stubs.prediction.Classify(classify_request(TEXTS[:2])).result)
  assert [r.model_spec.signature_name for r in response.results] == ["serving_default",
                                                                     "classification"]
  for result in response.results:
    labels, scores = classify_answer(result.classification_result)
    assert labels == expected[0]
    np.testing.assert_array_equal(scores, expected[1])
  request.tasks[1].model_spec.signature_name = "serving_default"
  with pytest.raises(grpc.RpcError, match="Duplicate evaluation of signature: serving_default"):
    stubs.prediction.MultiInference(request)


PREDICT = "/v1/models/intent:predict"
CLASSIFY = "/v1/models/intent:classify"


@pytest.mark.parametrize("method, path, body, status, message", [
    ("POST", PREDICT, b'{"instances": ["a"', 400, "JSON Parse error"),
    ("POST", PREDICT, b"", 400, "JSON Parse error: The document is empty"),
    ("POST", "/v1/models/nope:predict", {"instances": ["a"]}, 404,
     "Servable not found for request: Latest(nope)"),
    ("POST", "/v1/models/intent/versions/7:predict", {"instances": ["a"]}, 404,
     "Servable not found for request: Specific(intent, 7)"),
    ("GET", "/v1/models/intent/versions/7", None, 404, "Could not find version 7 of model "
                                                       "intent"),
    ("GET", "/v1/models/nope", None, 404, "Could not find any versions of model nope"),
    ("POST", "/v1/models/intent/labels/canary:predict", {"instances": ["a"]}, 400,
     "Unrecognized servable version label: canary"),
    ("POST", PREDICT, {"signature_name": "nope", "instances": ["a"]}, 400,
     'Serving signature name: "nope" not found in signature def'),
    ("POST", CLASSIFY, {"signature_name": "nope", "examples": [{"text": "a"}]}, 400,
     "No signature was found with the name: nope"),
    ("POST", PREDICT, {"signature_name": "predict_text", "instances": [3]}, 400,
     "JSON Value: 3 Type: Number is not of expected type: string"),
    ("POST", PREDICT, {"signature_name": "predict_text", "inputs": {"txt": ["a"]}}, 400,
     "Missing named input: text in 'inputs' object."),
    ("POST", CLASSIFY, {"examples": [{"txt": "a"}]}, 400,
     "Feature: text (data type: string) is required but could not be found."),
    ("POST", PREDICT, {"instances": ["a"], "inputs": ["a"]}, 400,
     "expecting only one of 'inputs' or 'instances' keys to exist"),
    ("POST", PREDICT, {"signature_name": "predict_text", "instances": []}, 400,
     "No values in 'instances' array"),
    ("POST", CLASSIFY, {"examples": []}, 400, "'examples' value is an empty array"),
    ("POST", PREDICT, {"signature_name": "predict_text", "instances": ["a"] * (MAX_BATCH + 1)},
     400, f"Task size {MAX_BATCH + 1} is larger than maximum input batch size {MAX_BATCH}"),
    ("POST", PREDICT, b'{"signature_name": "predict_text", "instances": ["caf\xe9"]}', 400,
     "JSON Parse error: Invalid encoding in string."),
    ("POST", PREDICT, {"signature_name": "predict_text", "instances": ["a" * MAX_BODY]}, 413,
     f"larger than the server's limit of {MAX_BODY} bytes"),
    ("POST", "/v1/models/intent:explain", {"instances": ["a"]}, 400,
     "Malformed request: POST /v1/models/intent:explain"),
    ("GET", "/v1/models", None, 400, "Missing model name in request."),
    ("POST", "/v1/models/intent:regress", {"examples": [{"text": "a"}]}, 400,
     "Expected one output Tensor."),
])
def test_bad_rest_requests_get_tf_serving_status_and_message_and_serving_goes_on(
    server, method, path, body, status, message):
  got_status, answer = rest(server.rest_api_port, method, path, body)
  assert got_status == status
  assert message in answer["error"]
  good = rest(server.rest_api_port, "POST", PREDICT,
              {"signature_name": "predict_text", "instances": [TEXTS[0]]})
  assert good[0] == 200 and good[1]["predictions"][0]["classes"] == ["book_flight"]


def _too_big():
  return {"text": object_array(["a" * MAX_BODY])}


@pytest.mark.parametrize("call, code, message", [
    (lambda s: s.Predict(predict_request("predict_text", {"text": ["a"]}, name="nope")),
     grpc.StatusCode.NOT_FOUND, "Servable not found for request: Latest(nope)"),
    (lambda s: s.Predict(predict_request("nope", {"text": ["a"]})),
     grpc.StatusCode.FAILED_PRECONDITION, 'Serving signature key "nope" not found.'),
    (lambda s: s.Classify(classify_request(["a"], "nope")), grpc.StatusCode.INVALID_ARGUMENT,
     "No signature was found with the name: nope"),
    (lambda s: s.Predict(predict_request("predict_text", {"text": [1.0]})),
     grpc.StatusCode.INVALID_ARGUMENT, "Expects arg[0] to be string but float is provided"),
    (lambda s: s.Predict(predict_request("predict_text", {"txt": ["a"]})),
     grpc.StatusCode.INVALID_ARGUMENT, "Signature input alias: text(text:0) not found"),
    (lambda s: s.Predict(predict_request("predict_text", {"text": ["a"], "x": ["b"]})),
     grpc.StatusCode.INVALID_ARGUMENT, "input size does not match signature: 2!=1"),
    (lambda s: s.Classify(classify_request([])), grpc.StatusCode.INVALID_ARGUMENT,
     "Input is empty."),
    (lambda s: s.Classify(classify_request(["a"] * (MAX_BATCH + 1))),
     grpc.StatusCode.INVALID_ARGUMENT, f"Task size {MAX_BATCH + 1} is larger than maximum"),
    (lambda s: s.Predict(predict_request("predict_text", _too_big())),
     grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max"),
])
def test_bad_grpc_requests_get_tf_serving_status_codes_and_serving_goes_on(
    stubs, call, code, message):
  with pytest.raises(grpc.RpcError) as raised:
    call(stubs.prediction)
  assert raised.value.code() == code
  assert message in raised.value.details()
  labels, _ = classify_answer(stubs.prediction.Classify(classify_request([TEXTS[0]])).result)
  assert len(labels[0]) > 1


@pytest.fixture(scope="module")
def two_versions(trained, tmp_path_factory):
  base = str(tmp_path_factory.mktemp("versions") / "intent")
  copy_version(trained.export_dir, base, 1)
  copy_version(trained.export_dir, base, 2)
  os.makedirs(f"{base}/not-a-version")
  return base


def _served_versions(server):
  status, answer = rest(server.rest_api_port, "GET", "/v1/models/intent")
  assert status == 200
  return [(int(s["version"]), s["state"]) for s in answer["model_version_status"]]


def _predicted_by(server, suffix=""):
  status, answer = rest(server.rest_api_port, "GET", f"/v1/models/intent{suffix}/metadata")
  return status, answer.get("model_spec", {}).get("version")


def test_the_highest_version_is_served_and_others_are_not_found_by_default(two_versions):
  config = config_files.single_model_config("intent", two_versions)
  with ModelServer(config, ServerOptions(grpc_port=0, rest_api_port=0)) as server:
    assert _served_versions(server) == [(2, "AVAILABLE")]
    assert _predicted_by(server) == (200, "2")
    assert _predicted_by(server, "/versions/2") == (200, "2")
    assert _predicted_by(server, "/versions/1")[0] == 404


def test_pinned_versions_labels_and_several_models_are_addressable(two_versions, base_path,
                                                                    version, tmp_path):
  config = config_files.model_config([("intent", two_versions), ("other", base_path)],
                                      versions={"intent": [1, 2]},
                                      labels={"intent": {"stable": 1, "canary": 2}})
  config_file = tmp_path / "models.config"
  config_file.write_text(config_files.to_text(config))
  config = config_files.read_model_config_file(str(config_file))
  # As in the binary, labels in the first config name versions that are not loaded yet.
  with pytest.raises(ServingError, match="Request to assign label to version 1 of model intent, "
                                         "which is not currently available for inference"):
    ModelServer(config, ServerOptions(grpc_port=0, rest_api_port=0)).start()
  with ModelServer(config, ServerOptions(grpc_port=0, rest_api_port=0),
                   CoreOptions(allow_version_labels_for_unavailable_models=True)) as server:
    assert _served_versions(server) == [(1, "AVAILABLE"), (2, "AVAILABLE")]
    assert _predicted_by(server) == (200, "2")
    assert _predicted_by(server, "/versions/1") == (200, "1")
    assert _predicted_by(server, "/labels/stable") == (200, "1")
    assert _predicted_by(server, "/labels/canary") == (200, "2")
    stubs = grpc_stubs(server.grpc_port)
    try:
      request = predict_request("predict_text", {"text": [TEXTS[0]]})
      request.model_spec.version_label = "stable"
      assert stubs.prediction.Predict(request).model_spec.version.value == 1
      other = stubs.prediction.Predict(predict_request("predict_text", {"text": [TEXTS[0]]},
                                                       name="other"))
      assert other.model_spec.version.value == version
    finally:
      stubs.close()


def _version_with_warmup(trained, base, records):
  version_dir = copy_version(trained.export_dir, base, 1)
  path = f"{version_dir}/assets.extra/{warmup.WARMUP_FILENAME}"
  with tf.io.TFRecordWriter(path) as writer:
    for record in records:
      writer.write(record if isinstance(record, bytes) else record.SerializeToString())
  return base


@pytest.mark.parametrize("records, code, message", [
    ([warmup.predict_log("predict_text", {"text": ["hi"]})] * 1001,
     grpc.StatusCode.INVALID_ARGUMENT, r"Number of warmup records exceeds the maximum \(1000\)"),
    ([warmup.predict_log("predict_text", {"text": ["hi"]}),
      warmup.predict_log("no_such_signature", {"text": ["hi"]})],
     grpc.StatusCode.FAILED_PRECONDITION,
     'warmup record 2 of .* failed: Serving signature key "no_such_signature" not found.'),
    ([b"not a prediction log"], grpc.StatusCode.INVALID_ARGUMENT,
     "Failed to parse warmup record 1"),
])
def test_a_failing_warmup_record_fails_the_load_as_in_tf_serving(
    trained, tmp_path, records, code, message):
  base = _version_with_warmup(trained, str(tmp_path / "intent"), records)
  core = ServerCore(config_files.single_model_config("intent", base),
                    CoreOptions(max_num_load_retries=0))
  with pytest.raises(ServingError) as raised:
    core.load()
  # The binary's start-up error, wrapping the version's own status.
  assert raised.value.code == grpc.StatusCode.UNKNOWN
  assert raised.value.message.startswith("1 servable(s) did not become available: "
                                         "{{{name: intent version: 1} due to error: "
                                         f"{code.name}: ")
  assert re.search(message, raised.value.message)
  request = get_model_status_pb2.GetModelStatusRequest()
  request.model_spec.name = "intent"
  (status,) = core.model_status(request).model_version_status
  assert status.state == get_model_status_pb2.ModelVersionStatus.END
  assert status.status.error_code == code.value[0]


def test_exactly_1000_warmup_records_load(trained, tmp_path):
  records = [warmup.predict_log("predict_text", {"text": ["hi"]})] * 1000
  base = _version_with_warmup(trained, str(tmp_path / "intent"), records)
  core = ServerCore(config_files.single_model_config("intent", base))
  core.load()
  core.close()


@pytest.mark.slow
def test_model_server_command_starts_answers_and_stops(base_path, tmp_path):
  grpc_port, rest_port = runners.free_port(), runners.free_port()
  log = open(tmp_path / "server.log", "wb")
  process = subprocess.Popen(
      [sys.executable, "-m", "serving.model_server", f"--port={grpc_port}",
       f"--rest_api_port={rest_port}", "--model_name=intent", f"--model_base_path={base_path}"],
      cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT)
  try:
    def alive():
      if process.poll() is not None:
        raise AssertionError((tmp_path / "server.log").read_text())

    runners.wait_until_available(f"127.0.0.1:{grpc_port}", ["intent"], 120, alive)
    status, answer = rest(rest_port, "POST", "/v1/models/intent:predict",
                          {"signature_name": "predict_text", "instances": [TEXTS[0]]})
    assert status == 200 and answer["predictions"][0]["classes"] == ["book_flight"]
  finally:
    process.terminate()
    assert process.wait(timeout=30) == 0
    log.close()
  assert "gRPC on 127.0.0.1" in (tmp_path / "server.log").read_text()


@pytest.mark.slow
def test_model_server_command_fails_fast_on_a_base_path_without_versions(tmp_path):
  completed = subprocess.run(
      [sys.executable, "-m", "serving.model_server", f"--port={runners.free_port()}",
       "--model_name=intent", f"--model_base_path={tmp_path}"],
      cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
  assert completed.returncode != 0
  assert "Failed to start server. Error: NOT_FOUND: No versions of servable intent found " \
         f"under base path {tmp_path}" in completed.stdout
