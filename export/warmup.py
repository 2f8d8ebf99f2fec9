"""Warmup records: the `PredictionLog` TFRecord TF Serving replays when it loads a version.

Written by the exporter, replayed by the embedded server, and read back as requests by the
optimizer's guard and the smoke test's probes: this module is the one reader, so all of them
see the same records and the same limit.
"""

import dataclasses
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
from google.protobuf.message import Message
from tensorflow_serving.apis import classification_pb2
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_log_pb2

from export import artifact_io

WARMUP_FILENAME = "tf_serving_warmup_requests"
WARMUP_PATH = f"assets.extra/{WARMUP_FILENAME}"  # relative to the version dir
MAX_WARMUP_RECORDS = 1000  # TF Serving fails the load of a version with more.
# What an empty signature name in a request means.
DEFAULT_SIGNATURE = tf.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY

PREDICT, CLASSIFY, REGRESS, MULTI_INFERENCE = "predict", "classify", "regress", "multi_inference"


class WarmupError(ValueError):
  """The warmup file cannot be replayed; subclasses say why, as TF Serving tells them apart."""


class CorruptWarmupFile(WarmupError):
  """Not a readable TFRecord file (TF Serving: DATA_LOSS)."""


class BadWarmupRecord(WarmupError):
  """A record that is not a PredictionLog (TF Serving: INVALID_ARGUMENT)."""


class TooManyWarmupRecords(WarmupError):
  """More records than TF Serving replays (INVALID_ARGUMENT)."""


class UnsupportedWarmupRecord(WarmupError):
  """A record of a log type TF Serving does not replay (UNIMPLEMENTED)."""

  def __init__(self, log_type: str):
    super().__init__(f"Unsupported log_type for warmup: {log_type}")


# ------------------------------------------------------------------------------------ writing


def text_example(text: str, feature: str) -> tf.train.Example:
  return tf.train.Example(features=tf.train.Features(feature={
      feature: tf.train.Feature(bytes_list=tf.train.BytesList(value=[text.encode("utf-8")]))}))


def classify_log(signature_name: str, texts: Sequence[str], feature: str):
  request = classification_pb2.ClassificationRequest()
  request.model_spec.signature_name = signature_name
  request.input.example_list.examples.extend(text_example(t, feature) for t in texts)
  return prediction_log_pb2.PredictionLog(
      classify_log=prediction_log_pb2.ClassifyLog(request=request))


def predict_log(signature_name: str, inputs: Dict[str, object]):
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


# ------------------------------------------------------------------------------------ reading


def warmup_file(version_dir: str) -> str:
  return artifact_io.join(version_dir.rstrip("/"), WARMUP_PATH)


def has_warmup_file(version_dir: str) -> bool:
  return tf.io.gfile.exists(warmup_file(version_dir))


def iter_records(path: str) -> Iterator[Tuple[int, prediction_log_pb2.PredictionLog]]:
  """(record number from 1, PredictionLog) for each record of the warmup file at `path`.

  Raises the WarmupError subclass TF Serving's status would distinguish, naming the file and
  the record; the limit is checked as the records are read, so a huge file stops early.
  """
  number = 0
  try:
    for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
      number += 1
      if number > MAX_WARMUP_RECORDS:
        raise TooManyWarmupRecords(f"Number of warmup records exceeds the maximum "
                                   f"({MAX_WARMUP_RECORDS}) at {path}")
      log = prediction_log_pb2.PredictionLog()
      try:
        log.ParseFromString(record)
      except Exception as e:  # protobuf raises its own DecodeError type
        raise BadWarmupRecord(f"Failed to parse warmup record {number} from {path}: "
                              f"{e}") from None
      yield number, log
  except tf.errors.DataLossError as e:
    raise CorruptWarmupFile(f"{path}: {e.message}. Please verify your warmup data is in "
                            f"TFRecord format.") from None
  except tf.errors.OpError as e:
    raise CorruptWarmupFile(f"{path}: cannot read the warmup records: {e.message}") from None


def read_records(version_dir: str) -> List[prediction_log_pb2.PredictionLog]:
  """The version's warmup records; none when it has no warmup file."""
  if not has_warmup_file(version_dir):
    return []
  return [log for _, log in iter_records(warmup_file(version_dir))]


@dataclasses.dataclass(frozen=True)
class WarmupRequest:
  """One request of a warmup record, as inputs a signature can be run on.

  `signatures`: the signatures it asks for (one, or one per MultiInference task), empty names
  resolved to serving_default. `inputs`: a Predict request's tensors by input alias. `examples`:
  a Classify / Regress / MultiInference request's serialized tf.Examples (a context, when the
  request has one, merged into each as TF Serving feeds it).
  """
  kind: str
  signatures: Tuple[str, ...]
  inputs: Dict[str, np.ndarray]
  examples: Tuple[bytes, ...]


def serialized_input(request_input) -> List[bytes]:
  """An Input proto's examples, serialized, each prefixed with the context (a proto merge)."""
  kind = request_input.WhichOneof("kind")
  if kind == "example_list":
    return [e.SerializeToString() for e in request_input.example_list.examples]
  if kind == "example_list_with_context":
    listed = request_input.example_list_with_context
    context = listed.context.SerializeToString()
    return [context + e.SerializeToString() for e in listed.examples]
  return []


# The log types TF Serving replays, and the kind of request each holds.
_REPLAYED_LOG_TYPES = {"predict_log": PREDICT, "classify_log": CLASSIFY, "regress_log": REGRESS,
                       "multi_inference_log": MULTI_INFERENCE}


def logged_request(log: prediction_log_pb2.PredictionLog) -> Tuple[str, Optional[Message]]:
  """(kind, request) of a warmup record: PREDICT and its PredictRequest, CLASSIFY, REGRESS or
  MULTI_INFERENCE and theirs; ("", None) when the record holds none. Raises
  UnsupportedWarmupRecord for a log type TF Serving does not replay."""
  log_type = log.WhichOneof("log_type")
  if log_type is None:
    return "", None
  if log_type not in _REPLAYED_LOG_TYPES:
    raise UnsupportedWarmupRecord(log_type)
  return _REPLAYED_LOG_TYPES[log_type], getattr(log, log_type).request


def as_request(log: prediction_log_pb2.PredictionLog) -> WarmupRequest:
  """The request a warmup record holds; its kind is '' for a log type TF Serving cannot replay."""
  try:
    kind, request = logged_request(log)
  except UnsupportedWarmupRecord:
    return WarmupRequest("", (), {}, ())
  if kind == PREDICT:
    return WarmupRequest(PREDICT, (request.model_spec.signature_name or DEFAULT_SIGNATURE,),
                         {k: tf.make_ndarray(v) for k, v in request.inputs.items()}, ())
  if kind in (CLASSIFY, REGRESS):
    return WarmupRequest(kind, (request.model_spec.signature_name or DEFAULT_SIGNATURE,), {},
                         tuple(serialized_input(request.input)))
  if kind == MULTI_INFERENCE:
    return WarmupRequest(MULTI_INFERENCE,
                         tuple(t.model_spec.signature_name or DEFAULT_SIGNATURE
                               for t in request.tasks), {},
                         tuple(serialized_input(request.input)))
  return WarmupRequest("", (), {}, ())


def read_requests(version_dir: str) -> List[WarmupRequest]:
  """The version's warmup records as requests (none without a warmup file)."""
  return [request for request in map(as_request, read_records(version_dir)) if request.kind]
