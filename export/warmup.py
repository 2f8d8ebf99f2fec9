"""Warmup records: the `PredictionLog` TFRecord TF Serving replays when it loads a version."""

from typing import Dict, List, Sequence

import tensorflow as tf
from tensorflow_serving.apis import classification_pb2
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_log_pb2

WARMUP_FILENAME = "tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000  # TF Serving fails the load of a version with more.


def text_example(text: str, feature: str) -> tf.train.Example:
  return tf.train.Example(features=tf.train.Features(feature={
      feature: tf.train.Feature(bytes_list=tf.train.BytesList(value=[text.encode("utf-8")]))}))


def classify_log(signature_name: str, texts: Sequence[str], feature: str):
  request = classification_pb2.ClassificationRequest()
  request.model_spec.signature_name = signature_name
  request.input.example_list.examples.extend(text_example(t, feature) for t in texts)
  return prediction_log_pb2.PredictionLog(
      classify_log=prediction_log_pb2.ClassifyLog(request=request))


def predict_log(signature_name: str, inputs: Dict[str, tf.Tensor]):
  request = predict_pb2.PredictRequest()
  request.model_spec.signature_name = signature_name
  for key, value in inputs.items():
    request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
  return prediction_log_pb2.PredictionLog(
      predict_log=prediction_log_pb2.PredictLog(request=request))


def batches(texts: Sequence[str], batch_sizes: Sequence[int]) -> List[List[str]]:
  """One batch per size, cycling through the texts so every size is filled."""
  if not texts:
    raise ValueError("warmup needs at least one text")
  result, position = [], 0
  for size in batch_sizes:
    result.append([texts[(position + i) % len(texts)] for i in range(size)])
    position += size
  return result


def write_warmup_file(path: str, logs: Sequence[prediction_log_pb2.PredictionLog]) -> None:
  if not 0 < len(logs) <= MAX_WARMUP_RECORDS:
    raise ValueError(f"TF Serving accepts 1 to {MAX_WARMUP_RECORDS} warmup records, "
                     f"got {len(logs)}")
  with tf.io.TFRecordWriter(path) as writer:
    for log in logs:
      writer.write(log.SerializeToString())


def read_warmup_file(path: str) -> List[prediction_log_pb2.PredictionLog]:
  logs = []
  for number, record in enumerate(tf.compat.v1.io.tf_record_iterator(path), start=1):
    log = prediction_log_pb2.PredictionLog()
    try:
      log.ParseFromString(record)
    except Exception as e:  # protobuf raises its own DecodeError type
      raise ValueError(f"{path}: record {number} is not a PredictionLog: {e}") from e
    logs.append(log)
  return logs
