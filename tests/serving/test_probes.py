"""Probes: a request for every signature, from warmup records or an examples file."""

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import regression_pb2

from export import warmup
from export.servable import SessionServable
from serving import probes
from serving.errors import ProbeError
from tests import tiny_models


def regress_log(values, signature="regress_x_to_y"):
  request = regression_pb2.RegressionRequest()
  request.model_spec.signature_name = signature
  request.input.example_list.examples.extend(tiny_models.x_example(v) for v in values)
  return warmup.prediction_log_pb2.PredictionLog(
      regress_log=warmup.prediction_log_pb2.RegressLog(request=request))


@pytest.fixture
def model(tmp_path):
  version_dir = tiny_models.half_plus_two(
      str(tmp_path / "1"),
      warmup_logs=[regress_log([1.0, 2.0]),
                   warmup.predict_log("predict_x", {"x": np.array([[4.0]], np.float32)})])
  with SessionServable(version_dir) as servable:
    yield servable


def test_every_signature_gets_rows_from_the_warmup_records_or_their_examples(model):
  built = probes.build_probes(model)
  assert sorted(built) == ["classify_x_to_y", "predict_x", "regress_x_to_y", "serving_default"]
  assert built["predict_x"].source == "warmup"
  np.testing.assert_array_equal(built["predict_x"].batch(1)["x"], [[4.0]])
  assert built["regress_x_to_y"].method == probes.REGRESS
  assert built["regress_x_to_y"].source == "warmup"
  # No warmup record asks these: they get the examples the regress record holds.
  assert built["classify_x_to_y"].source == built["serving_default"].source == "warmup examples"
  assert built["classify_x_to_y"].method == probes.CLASSIFY
  np.testing.assert_array_equal(built["serving_default"].batch(2)["x"], [[1.0], [2.0]])


def test_a_batch_cycles_through_the_rows(model):
  probe = probes.build_probes(model)["serving_default"]
  np.testing.assert_array_equal(probe.batch(3, offset=1)["x"], [[2.0], [1.0], [2.0]])


def test_an_examples_file_replaces_the_warmup_records_and_is_typed_by_the_model(model, tmp_path):
  path = tmp_path / "examples.csv"
  path.write_text("x\n3\n5\n")  # integers in the file; the model parses a float
  built = probes.build_probes(model, probes.read_examples_for(model, str(path)))
  assert {p.source for p in built.values()} == {"examples file"}
  np.testing.assert_array_equal(built["serving_default"].batch(2)["x"], [[3.0], [5.0]])
  serialized = built["regress_x_to_y"].batch(1)["inputs"][0]
  assert tf.train.Example.FromString(serialized).features.feature["x"].float_list.value == [3.0]


def test_a_signature_no_example_can_feed_is_refused_naming_it(model, tmp_path):
  path = tmp_path / "examples.jsonl"
  path.write_text('{"text": "hello"}\n')
  with pytest.raises(ProbeError, match="signature predict_x: input 'x' is not a feature"):
    probes.build_probes(model, probes.read_examples_for(model, str(path)))


def test_a_model_without_warmup_records_and_no_examples_asks_for_a_file(tmp_path):
  with SessionServable(tiny_models.half_plus_two(str(tmp_path / "1"))) as bare:
    with pytest.raises(ProbeError, match="pass an examples file"):
      probes.build_probes(bare)
