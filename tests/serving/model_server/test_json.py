"""TF Serving's REST JSON rules: what a request means, how an answer is written."""

import base64
import json

import numpy as np
import orjson
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2

from serving import clients
from serving.model_server import json_answers
from serving.model_server import json_requests
from serving.model_server import results
from serving.model_server.status import ServingError


def specs(**dtypes):
  return {name: meta_graph_pb2.TensorInfo(dtype=dtype.as_datatype_enum)
          for name, dtype in dtypes.items()}


@pytest.mark.parametrize("value, text", [
    (0.1, "0.1"), (1.0, "1.0"), (-3.0, "-3.0"), (1e-5, "0.00001"), (1e6, "1000000.0"),
    (0.123456789, "0.12345679"), (float("nan"), "NaN"), (float("inf"), "Infinity"),
    (float("-inf"), "-Infinity"), (0.999882, "0.999882")])
def test_float32_values_are_written_as_the_shortest_text_of_the_same_float32(value, text):
  # TF Serving can write longer text for the same float32 (0.123456791, 1e-05); a reader gets
  # the same float32 from both, and NaN / Infinity are TF Serving's own words.
  body = json_answers.predict_response({"y": np.array([value], dtype=np.float32)}, False)
  assert body.decode() == '{"outputs":[' + text + "]}"
  if np.isfinite(value):
    assert np.float32(json.loads(body)["outputs"][0]) == np.float32(value)


def test_written_floats_read_back_to_the_same_float32():
  values = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
  body = json_answers.predict_response({"y": values}, False)
  np.testing.assert_array_equal(np.array(json.loads(body)["outputs"], dtype=np.float32), values)


def test_row_answers_name_outputs_only_when_there_are_several():
  single = json_answers.predict_response({"y": np.array([[1, 2], [3, 4]], dtype=np.int64)}, True)
  assert json.loads(single) == {"predictions": [[1, 2], [3, 4]]}
  several = json_answers.predict_response(
      {"classes": np.array([[b"a"], [b"b"]], dtype=object),
       "ok": np.array([True, False])}, True)
  assert json.loads(several) == {"predictions": [{"classes": ["a"], "ok": True},
                                                 {"classes": ["b"], "ok": False}]}
  columnar = json_answers.predict_response(
      {"classes": np.array([[b"a"], [b"b"]], dtype=object),
       "ok": np.array([True, False])}, False)
  assert json.loads(columnar) == {"outputs": {"classes": [["a"], ["b"]], "ok": [True, False]}}


def test_outputs_named_bytes_travel_as_b64_and_other_strings_keep_their_bytes():
  raw = b"\xff\x00ok"
  body = json_answers.predict_response(
      {"image_bytes": np.array([raw], dtype=object), "label": np.array([raw], dtype=object)},
      False)
  assert json.loads(body.decode("utf-8", "surrogateescape"))["outputs"]["image_bytes"] == [
      {"b64": base64.b64encode(raw).decode()}]
  # Like TF Serving, a non-UTF-8 string output is written as the raw bytes it holds.
  assert b'"label":["\xff\\u0000ok"]' in body


def test_row_and_columnar_requests_give_the_same_tensors():
  text = specs(text=tf.string)
  rows, row_format = json_requests.predict_inputs(
      {"instances": ["a", {"b64": base64.b64encode(b"\xff").decode()}]}, text, "")
  columns, columnar = json_requests.predict_inputs({"inputs": {"text": ["a", "b"]}}, text, "")
  assert row_format and not columnar
  assert rows["text"].tolist() == [b"a", b"\xff"] and columns["text"].tolist() == [b"a", b"b"]
  several = specs(x=tf.float32, n=tf.int64)
  arrays, _ = json_requests.predict_inputs(
      {"instances": [{"x": [1, 2.5], "n": 3}, {"x": [0, 1], "n": 4}]}, several, "")
  assert arrays["x"].dtype == np.float32 and arrays["x"].shape == (2, 2)
  assert arrays["n"].tolist() == [3, 4]


@pytest.mark.parametrize("document, dtypes, message", [
    ({"instances": [1]}, dict(text=tf.string),
     "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: JSON Value: 1 "
     "Type: Number is not of expected type: string"),
    ({"instances": [[1, 2], [3]]}, dict(x=tf.int64),
     "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: Expecting "
     "tensor size: 2 but got: 1"),
    ({"instances": [{"x": 1}]}, dict(x=tf.int32, y=tf.int32),
     "Failed to process element: 0 of 'instances' list. JSON object: {\n    \"x\": 1\n} keys "
     "must be equal to: x,y"),
    ({"instances": ["a"]}, dict(x=tf.string, y=tf.string),
     "instances is a plain list, but expecting list of objects"),
    ({"inputs": {"x": ["a"]}}, dict(text=tf.string), "Missing named input: text in 'inputs'"),
    ({"inputs": [[1, 2], [3]]}, dict(x=tf.float32),
     "Encountered list at unexpected size: 1 at level: 1 expected size: 2"),
    ({"inputs": [True]}, dict(x=tf.float32),
     "JSON Value: true Type: True is not of expected type: float"),
    ({"inputs": [2**40]}, dict(x=tf.int32), "is not of expected type: int32"),
    ({"inputs": [{"b64": "!!"}]}, dict(x=tf.string), "Unable to base64 decode"),
    ({"instances": []}, dict(x=tf.string), "No values in 'instances' array"),
    ({"instances": [1], "inputs": [1]}, dict(x=tf.int64),
     "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist"),
    ({"signature_name": "x"}, dict(x=tf.int64), "Missing 'inputs' or 'instances' key"),
])
def test_bad_predict_requests_get_tf_serving_messages(document, dtypes, message):
  with pytest.raises(ServingError) as raised:
    json_requests.predict_inputs(document, specs(**dtypes), "")
  assert message in raised.value.message
  assert raised.value.http_status == 400


@pytest.mark.parametrize("body, message", [
    (b"", "JSON Parse error: The document is empty"),
    (b'{"instances": [', "JSON Parse error: "),
    (b'{"instances": ["\xff"]}', "JSON Parse error: Invalid encoding in string. at offset: 16"),
    (b"[1]", "Is not object"),
    (b'{"signature_name": 3}', "'signature_name' key must be a string value."),
])
def test_unparseable_bodies_are_invalid_arguments(body, message):
  with pytest.raises(ServingError) as raised:
    json_requests.signature_name(json_requests.parse_request(body))
  assert message in raised.value.message and raised.value.http_status == 400


def test_json_examples_become_tf_examples_with_tf_serving_feature_kinds():
  serialized = json_requests.serialized_examples({
      "context": {"lang": "en"},
      "examples": [{"text": "hi", "score": 0.5, "count": [1, 2], "flag": True,
                    "raw": {"b64": base64.b64encode(b"\x00\xff").decode()}, "none": []}]})
  example = tf.train.Example.FromString(serialized[0])
  feature = example.features.feature
  assert feature["lang"].bytes_list.value == [b"en"]  # merged from the context
  assert feature["text"].bytes_list.value == [b"hi"]
  assert feature["score"].float_list.value == [0.5]
  assert feature["count"].int64_list.value == [1, 2]
  assert feature["flag"].int64_list.value == [1]
  assert feature["raw"].bytes_list.value == [b"\x00\xff"]
  assert feature["none"].WhichOneof("kind") is None
  assert json_requests.example_from_json(clients.example_to_json(example)) == example


@pytest.mark.parametrize("document, message", [
    ({"examples": []}, "'examples' value is an empty array"),
    ({"examples": {}}, "Expecting 'examples' value to be an list/array"),
    ({}, "key 'examples' is expected and was not found"),
    ({"examples": [{"x": [1, "a"]}]}, "Unexpected element type in feature: x expecting type: "
                                      "int64"),
    ({"examples": [{"x": None}]}, "Feature: x has element with unexpected JSON type: Null"),
    ({"examples": [{"x": [[1]]}]}, "Feature: x has element with unexpected JSON type: Array"),
    ({"examples": [3]}, "Example must be JSON object but got JSON Number"),
    ({"examples": [{"x": 2**63}]}, "has uint64_t element. Only int64_t is supported."),
])
def test_bad_examples_get_tf_serving_messages(document, message):
  with pytest.raises(ServingError) as raised:
    json_requests.serialized_examples(document)
  assert message in raised.value.message


def test_classify_and_regress_results_are_written_under_results():
  classified = results.Classifications(
      classes=np.array([[b"book_flight", b"cancel"], [b"cancel", b"book_flight"]], dtype=object),
      scores=np.array([[0.75, 0.25], [0.5, 0.125]], dtype=np.float32))
  assert json.loads(json_answers.classify_response(classified)) == {
      "results": [[["book_flight", 0.75], ["cancel", 0.25]],
                  [["cancel", 0.5], ["book_flight", 0.125]]]}
  scores_only = results.Classifications(classes=None,
                                        scores=np.array([[0.5, float("nan")]], np.float32))
  assert json_answers.classify_response(scores_only) == b'{"results":[[["",0.5],["",NaN]]]}'
  regressed = results.Regressions(np.array([1.0, 0.1], dtype=np.float32))
  assert json_answers.regress_response(regressed) == b'{"results":[1.0,0.1]}'
  with pytest.raises(ServingError, match="Cannot convert empty RegressionResults to JSON"):
    json_answers.regress_response(results.Regressions(np.zeros([0], np.float32)))
  with pytest.raises(ServingError, match="Cannot convert empty ClassificationResults to JSON"):
    json_answers.classify_response(results.Classifications(None, np.zeros([0, 2], np.float32)))


def assert_reads_back_as(answer, classes, scores):
  """The answer, read back, holds these labels and these float32 scores, pair by pair."""
  rows = json.loads(answer)["results"]
  assert [[label for label, _ in row] for row in rows] == \
      [[label.decode("utf-8") for label in labels] for labels in classes]
  np.testing.assert_array_equal(
      np.array([[score for _, score in row] for row in rows], np.float32), scores)


def test_classify_answers_from_cached_label_templates_equal_the_answer_written_pair_by_pair():
  rng = np.random.default_rng(7)
  # Labels that JSON or the template's own %-formatting must escape, and rows whose labels
  # differ (a top-k classifier), each row with scores from tiny to huge.
  labels = [b'say "hi"', b"100%s", b"back\\slash", "caf\u00e9 \u2028".encode(), b"tab\there",
            b"%%", b""]
  classes = np.array([labels, labels[::-1], labels], dtype=object)
  scores = np.stack([rng.random(len(labels)), rng.random(len(labels)) * 1e-30,
                     rng.standard_normal(len(labels)) * 1e30]).astype(np.float32)
  scores[0, 0], scores[0, 1] = 1.0, -0.0
  result = results.Classifications(classes=classes, scores=scores)

  def written_pair_by_pair(classes, scores):
    # Each score is the shortest text of its float32, as orjson writes a float32.
    return orjson.dumps({"results": [list(zip([l.decode() for l in row], scores[i]))
                                     for i, row in enumerate(classes)]},
                        option=orjson.OPT_SERIALIZE_NUMPY)

  first = json_answers.classify_response(result)
  assert first == written_pair_by_pair(classes, scores)
  assert_reads_back_as(first, classes, scores)
  # Later answers with the same labels (new bytes objects, as each run makes) and other
  # scores come from the templates built at the second.
  for factor in (0.5, 0.25):
    again = np.array([[bytes(bytearray(l)) for l in row] for row in classes], dtype=object)
    other = (scores * factor).astype(np.float32)
    answer = json_answers.classify_response(results.Classifications(classes=again,
                                                                    scores=other))
    assert answer == written_pair_by_pair(again, other)
    assert_reads_back_as(answer, again, other)


def test_classify_answers_with_a_score_that_is_not_finite_or_a_label_not_utf8_skip_templates():
  classes = np.array([[b"a", b"b"]], dtype=object)
  nan = results.Classifications(classes=classes,
                                scores=np.array([[float("nan"), float("-inf")]], np.float32))
  assert json_answers.classify_response(nan) == b'{"results":[[["a",NaN],["b",-Infinity]]]}'
  not_utf8 = results.Classifications(classes=np.array([[b"ok", b"\xff"]], dtype=object),
                                     scores=np.array([[0.5, 0.5]], np.float32))
  for _ in range(2):  # the second time, the template's build meets the label
    with pytest.raises(ServingError, match="class label of example 0 is not UTF-8"):
      json_answers.classify_response(not_utf8)
