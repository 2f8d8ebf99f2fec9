"""Classify and Regress answers as gRPC writes them, and the label templates both answers'
writers keep."""

import numpy as np
import pytest
from tensorflow_serving.apis import classification_pb2

from serving.model_server import results
from serving.model_server.status import ServingError


def test_classifications_become_the_proto_grpc_answers_with():
  proto = results.Classifications(classes=np.array([[b"a", b"b"]], dtype=object),
                                  scores=np.array([[0.5, 0.25]], np.float32)).to_proto()
  assert [(c.label, c.score) for c in proto.classifications[0].classes] == [("a", 0.5),
                                                                            ("b", 0.25)]
  with pytest.raises(ServingError, match="not UTF-8"):
    results.Classifications(classes=np.array([[b"\xff"]], dtype=object), scores=None).to_proto()


def test_classifications_written_from_wire_templates_equal_the_proto_built_class_by_class():
  # Long and non-ASCII labels and 300 classes: lengths that take more than one varint byte.
  labels = [b"x" * 200, "d\u00e9j\u00e0".encode(), b""] + [b"c%d" % i for i in range(297)]
  classes = np.array([labels, labels[::-1]], dtype=object)
  scores = np.random.default_rng(3).random((2, len(labels))).astype(np.float32)
  scores[0, :3] = [0.0, float("nan"), -float("inf")]
  expected = classification_pb2.ClassificationResult()
  for row_labels, row_scores in zip(classes, scores):
    row = expected.classifications.add().classes
    for label, score in zip(row_labels, row_scores):
      row.add(label=label.decode("utf-8"), score=score)
  for _ in range(3):  # from the second answer on, from the templates
    proto = results.Classifications(classes=classes, scores=scores).to_proto()
    assert proto.SerializeToString(deterministic=True) == \
        expected.SerializeToString(deterministic=True)
  for _ in range(2):  # the second time, the template's build meets the label
    with pytest.raises(ServingError, match="class label of example 1 is not UTF-8"):
      results.Classifications(classes=np.array([[b"ok"], [b"\xff"]], dtype=object),
                              scores=np.array([[0.5], [0.5]], np.float32)).to_proto()


def test_label_templates_are_built_the_second_time_a_row_is_seen_and_kept_bounded():
  built = []
  templates = results.LabelTemplates(lambda labels: built.append(labels) or b"|".join(labels),
                                     size=2)
  assert templates.get((b"a", b"b")) is None
  assert built == []
  assert templates.get((b"a", b"b")) == b"a|b"
  assert templates.get((b"a", b"b")) == b"a|b"
  assert built == [(b"a", b"b")]  # built once
  for row in [(b"c",), (b"c",), (b"d",), (b"d",)]:
    templates.get(row)
  assert templates.get((b"a", b"b")) is None  # the oldest went when the third was kept
  failing = results.LabelTemplates(lambda labels: labels[0].decode("utf-8"))
  assert failing.get((b"\xff",)) is None
  for _ in range(2):
    with pytest.raises(UnicodeDecodeError):
      failing.get((b"\xff",))
