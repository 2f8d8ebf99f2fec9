"""8 concurrent clients x 500 requests, mixed REST and gRPC, against the embedded server run
as TF Serving would be (its own process), batching off and on: no error, every answer the
in-process one."""

import os
import posixpath
from concurrent import futures

import numpy as np
import pytest
import tensorflow as tf

from export.servable import SessionServable
from serving import runners
from serving.clients import RestClient
from serving.model_server import config_files
from serving.smoke_test import checks
from tests.serving.helpers import (TEXTS, classify_answer, classify_request, grpc_stubs,
                                   object_array, predict_request, rest, serialized)

# Trains a model or starts processes: the slow tier.
pytestmark = pytest.mark.slow

CLIENTS = 8
REQUESTS_PER_CLIENT = 500
KINDS = ("rest_predict", "rest_classify", "grpc_classify", "grpc_predict")


@pytest.fixture(scope="module", params=["unbatched", "batched"])
def running(request, trained, tmp_path_factory):
  """The server as deployed: on its own, and batching as the Docker deployment's file says."""
  batching_parameters = None
  if request.param == "batched":
    batching_parameters = config_files.read_batching_parameters(
        os.path.join(os.path.dirname(os.path.abspath(runners.__file__)), "docker",
                     "batching_parameters.txt"))
  runner = runners.EmbeddedRunner(
      [runners.ServedModel("intent", posixpath.dirname(trained.export_dir))],
      str(tmp_path_factory.mktemp("concurrency")), batching_parameters=batching_parameters)
  runner.start()
  try:
    runners.wait_until_available(runner.grpc_target, ["intent"], 120, runner.check_alive)
    yield runner
  finally:
    runner.stop()


@pytest.fixture(scope="module")
def expected(trained):
  """Per text: predict_text's classes and probabilities, and classify's labels and scores."""
  answers = {}
  with SessionServable(trained.export_dir) as model:
    for text in TEXTS:
      predicted = model.run("predict_text", {"text": object_array([text])})
      classified = model.run("serving_default", {"inputs": object_array(serialized([text]))})
      answers[text] = {
          "classes": [c.decode() for c in predicted["classes"][0]],
          "probabilities": predicted["probabilities"][0],
          "labels": [c.decode() for c in classified["classes"][0]],
          "scores": classified["scores"][0]}
  return answers


def _same(want, labels_key, scores_key, labels, scores):
  """The smoke test's comparison rule: labels equal, scores within its tolerances. A batch
  is one matrix product for all its rows, whose float sums TensorFlow does not promise to
  round as the product of one row does (on AVX2 they differ by an ulp)."""
  expected = {labels_key: np.array(want[labels_key]), scores_key: want[scores_key]}
  answered = {labels_key: np.array(labels), scores_key: np.array(scores, dtype=np.float32)}
  return checks.compare(expected, answered, checks.RTOL, checks.ATOL)[0] is None


def _client(number, rest_port, grpc_port, expected):
  """Sends this client's requests; returns a description of each error or wrong answer."""
  problems = []
  client = RestClient(f"127.0.0.1:{rest_port}")
  stubs = grpc_stubs(grpc_port)
  try:
    for i in range(REQUESTS_PER_CLIENT):
      kind = KINDS[(number + i) % len(KINDS)]
      text = TEXTS[(number * 7 + i) % len(TEXTS)]
      want = expected[text]
      try:
        if kind == "rest_predict":
          body = {"signature_name": "predict_text", "instances": [text]}
          status, answer = rest(rest_port, "POST", "/v1/models/intent:predict", body, client)
          assert status == 200, answer
          row = answer["predictions"][0]
          same = _same(want, "classes", "probabilities", row["classes"], row["probabilities"])
        elif kind == "rest_classify":
          body = {"examples": [{"text": text}]}
          status, answer = rest(rest_port, "POST", "/v1/models/intent:classify", body, client)
          assert status == 200, answer
          (result,) = answer["results"]
          same = _same(want, "labels", "scores", [label for label, _ in result],
                       [score for _, score in result])
        elif kind == "grpc_classify":
          labels, scores = classify_answer(
              stubs.prediction.Classify(classify_request([text]), timeout=60).result)
          same = _same(want, "labels", "scores", labels[0], scores[0])
        else:
          response = stubs.prediction.Predict(
              predict_request("predict", {"examples": serialized([text])}), timeout=60)
          classes = [c.decode() for c in tf.make_ndarray(response.outputs["classes"])[0]]
          same = _same(want, "classes", "probabilities", classes,
                       tf.make_ndarray(response.outputs["probabilities"])[0])
        if not same:
          problems.append(f"client {number} request {i} ({kind}, {text!r}): wrong answer")
      except Exception as e:  # every failure is a finding, whatever its type
        problems.append(f"client {number} request {i} ({kind}): {type(e).__name__}: {e}")
  finally:
    client.close()
    stubs.close()
  return problems


def test_concurrent_mixed_rest_and_grpc_clients_get_no_error_and_the_in_process_answers(
    running, expected):
  with futures.ThreadPoolExecutor(CLIENTS) as pool:
    results = list(pool.map(lambda n: _client(n, running.rest_port, running.grpc_port,
                                               expected), range(CLIENTS)))
  problems = [p for client in results for p in client]
  assert not problems, f"{len(problems)} problems, first: {problems[:5]}"
  running.check_alive()
