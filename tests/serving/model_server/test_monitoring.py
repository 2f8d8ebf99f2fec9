"""TF Serving's runtime latency metric: each successful session run of Classify, Regress and
Predict counted under its model and API, batched or not; failed runs and MultiInference's
runs not counted, as the binary's classifier, regressor and predictor count them."""

import re
import threading
from concurrent import futures

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import inference_pb2
from tensorflow_serving.apis import model_pb2
from tensorflow_serving.apis import prediction_log_pb2

from serving.model_server import config_files
from serving.model_server.status import ServingError
from tests import tiny_models
from tests.serving.model_server import apis

_RUNTIME_COUNT = re.compile(r':tensorflow:serving:runtime_latency_count\{model_name="([^"]*)",'
                            r'API="([^"]*)",runtime="TF1"\} (\d+)')


def runtime_counts(core):
  """{(model, API): runs counted} from the Prometheus text."""
  return {(model, api): int(count)
          for model, api, count in _RUNTIME_COUNT.findall(core.metrics.prometheus_text())}


def spec(signature):
  return model_pb2.ModelSpec(name="half_plus_two", signature_name=signature)


def examples(*values):
  return [tiny_models.x_example(v).SerializeToString() for v in values]


def test_each_successful_run_is_counted_under_its_model_and_api(core_with):
  core = core_with()
  for _ in range(2):
    apis.predict(core, spec("predict_x"), {"x": np.array([[1.0]], np.float32)})
  apis.classify(core, spec("classify_x_to_y"), examples(1.0))
  for _ in range(3):
    apis.regress(core, spec("regress_x_to_y"), examples(1.0, 2.0))
  assert runtime_counts(core) == {("half_plus_two", "Predict"): 2,
                                  ("half_plus_two", "Classify"): 1,
                                  ("half_plus_two", "Regress"): 3}
  text = core.metrics.prometheus_text()
  assert "# TYPE :tensorflow:serving:runtime_latency histogram" in text
  # TF Serving's buckets, Exponential(10, 1.8, 33) µs.
  assert ('runtime_latency_bucket{model_name="half_plus_two",API="Predict",runtime="TF1",'
          'le="18"}') in text


def test_failed_runs_and_multi_inference_runs_are_not_counted(core_with):
  core = core_with()
  with pytest.raises(ServingError):  # refused before the run: no such signature
    apis.predict(core, spec("nope"), {"x": np.array([[1.0]], np.float32)})
  with pytest.raises(ServingError):  # fails in the runtime: not a tf.Example
    apis.regress(core, spec("regress_x_to_y"), [b"not a tf.Example"])
  request = inference_pb2.MultiInferenceRequest()
  for signature, method in (("classify_x_to_y", "tensorflow/serving/classify"),
                            ("regress_x_to_y", "tensorflow/serving/regress")):
    task = request.tasks.add(method_name=method)
    task.model_spec.CopyFrom(spec(signature))
  request.input.example_list.examples.add().CopyFrom(tiny_models.x_example(1.0))
  response = apis.multi_inference(core, request)
  assert len(response.results) == 2
  assert runtime_counts(core) == {}


def test_batched_requests_are_each_counted_once_with_their_wait_for_the_batch(core_with):
  # The batch runs only once full.
  core = core_with(config_files.batching_parameters(4, batch_timeout_micros=30_000_000))
  started = threading.Barrier(4)

  def ask(value):
    started.wait()
    return apis.predict(core, spec("predict_x"), {"x": np.array([[value]], np.float32)})

  with futures.ThreadPoolExecutor(4) as pool:
    answers = list(pool.map(ask, [1.0, 2.0, 3.0, 4.0]))
  assert [outputs["y"].tolist() for _, outputs in answers] == [[[2.5]], [[3.0]], [[3.5]],
                                                               [[4.0]]]
  assert runtime_counts(core) == {("half_plus_two", "Predict"): 4}


def test_warmup_runs_are_counted_as_the_binarys_warmup_counts_them(core_with):
  log = prediction_log_pb2.PredictionLog()
  log.predict_log.request.model_spec.CopyFrom(spec("predict_x"))
  log.predict_log.request.inputs["x"].CopyFrom(
      tf.make_tensor_proto(np.array([[1.0]], np.float32)))
  core = core_with(warmup_logs=[log, log])
  assert runtime_counts(core) == {("half_plus_two", "Predict"): 2}
