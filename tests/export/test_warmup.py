"""Warmup records: written within TF Serving's limit, read back by the one reader."""

import numpy as np
import pytest
import tensorflow as tf

from export import warmup


def write_records(version_dir, records):
  path = version_dir / warmup.WARMUP_PATH
  path.parent.mkdir(parents=True)
  with tf.io.TFRecordWriter(str(path)) as writer:
    for record in records:
      writer.write(record if isinstance(record, bytes) else record.SerializeToString())
  return str(version_dir)


def test_batches_fill_every_size_by_cycling_through_the_texts():
  assert warmup.batches(["a", "b", "c"], (1, 4)) == [["a"], ["b", "c", "a", "b"]]
  with pytest.raises(ValueError, match="at least one text"):
    warmup.batches([], (1,))


@pytest.mark.parametrize("count", [0, warmup.MAX_WARMUP_RECORDS + 1])
def test_writing_refuses_a_record_count_tf_serving_would_not_load(tmp_path, count):
  log = warmup.predict_log("predict", {"x": [1.0]})
  with pytest.raises(ValueError, match="accepts 1 to 1000 warmup records"):
    warmup.write_warmup_file(str(tmp_path / "w"), [log] * count)
  assert not (tmp_path / "w").exists()


def test_requests_come_back_by_kind_with_signature_names_resolved(tmp_path):
  context = tf.train.Example()
  context.features.feature["country"].bytes_list.value.append(b"uk")
  multi = warmup.prediction_log_pb2.PredictionLog()
  request = multi.multi_inference_log.request
  request.tasks.add().model_spec.signature_name = "a"
  request.tasks.add()
  listed = request.input.example_list_with_context
  listed.context.CopyFrom(context)
  listed.examples.add().CopyFrom(warmup.text_example("hello", "text"))
  version_dir = write_records(tmp_path, [
      warmup.classify_log("", ["book a flight"], "text"),
      warmup.predict_log("predict_text", {"text": ["one", "two"]}),
      multi])
  classify, predict, multi_request = warmup.read_requests(version_dir)
  assert (classify.kind, classify.signatures) == (warmup.CLASSIFY, ("serving_default",))
  assert classify.examples == (warmup.text_example("book a flight", "text").SerializeToString(),)
  assert (predict.kind, predict.signatures, predict.examples) == (
      warmup.PREDICT, ("predict_text",), ())
  np.testing.assert_array_equal(predict.inputs["text"], np.array([b"one", b"two"], object))
  assert multi_request.signatures == ("a", "serving_default")
  merged = tf.train.Example.FromString(multi_request.examples[0])
  assert merged.features.feature["country"].bytes_list.value == [b"uk"]
  assert merged.features.feature["text"].bytes_list.value == [b"hello"]


def test_a_version_without_warmup_records_has_none(tmp_path):
  assert warmup.read_requests(str(tmp_path)) == []


@pytest.mark.parametrize("records, error, message", [
    ([b"not a prediction log"], warmup.BadWarmupRecord, "Failed to parse warmup record 1"),
    ([warmup.predict_log("p", {"x": [1.0]})] * (warmup.MAX_WARMUP_RECORDS + 1),
     warmup.TooManyWarmupRecords, r"exceeds the maximum \(1000\)"),
])
def test_bad_warmup_files_raise_the_error_tf_serving_tells_apart(tmp_path, records, error,
                                                                 message):
  version_dir = write_records(tmp_path, records)
  with pytest.raises(error, match=message):
    warmup.read_records(version_dir)


def test_a_file_that_is_not_a_tfrecord_is_corrupt(tmp_path):
  path = tmp_path / warmup.WARMUP_PATH
  path.parent.mkdir(parents=True)
  path.write_bytes(b"\x00" * 40)
  with pytest.raises(warmup.CorruptWarmupFile, match="Please verify your warmup data"):
    warmup.read_records(str(tmp_path))
