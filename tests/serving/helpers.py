"""Helpers for the serving tests: REST calls, gRPC stubs, requests for the intent model."""

import json
import shutil

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2
from tensorflow_serving.apis import classification_pb2
from tensorflow_serving.apis import predict_pb2

from export import warmup
from serving.clients import GrpcClient, RestClient

TEXTS = ["book a flight to rome", "what is the weather like in oslo tomorrow",
         "tell me a joke", "play some jazz", "move 50 dollars to savings",
         "where is my parcel", "set an alarm for 7am", "how do you say thanks in french"]
SIGNATURES = ["classification", "predict", "predict_text", "serving_default"]


def serialized(texts):
  return [warmup.text_example(t, "text").SerializeToString() for t in texts]


def object_array(values):
  array = np.empty(len(values), dtype=object)
  array[:] = list(values)
  return array


def rest(port, method, path, body=None, client=None):
  """(HTTP status, decoded JSON) of one request; `body` is a dict (sent as JSON) or bytes."""
  if isinstance(body, dict):
    body = json.dumps(body).encode("utf-8")
  own = client is None
  client = client or RestClient(f"127.0.0.1:{port}")
  try:
    status, payload = client.send(method, path, body)
    return status, json.loads(payload)
  finally:
    if own:
      client.close()


def grpc_stubs(port) -> GrpcClient:
  """gRPC stubs (`.prediction`, `.model`) on one channel to a server's port on loopback."""
  return GrpcClient(f"127.0.0.1:{port}")


def predict_request(signature, inputs, name="intent"):
  request = predict_pb2.PredictRequest()
  request.model_spec.name = name
  request.model_spec.signature_name = signature
  for key, value in inputs.items():
    request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
  return request


def classify_request(texts, signature="serving_default", name="intent"):
  request = classification_pb2.ClassificationRequest()
  request.model_spec.name = name
  request.model_spec.signature_name = signature
  request.input.example_list.examples.extend(warmup.text_example(t, "text") for t in texts)
  return request


def classify_answer(result):
  """A ClassificationResult as (labels, scores) arrays."""
  labels = [[c.label for c in item.classes] for item in result.classifications]
  scores = np.array([[c.score for c in item.classes] for item in result.classifications],
                    dtype=np.float32)
  return labels, scores


def copy_version(version_dir, base_path, version):
  """A copy of a version dir as `base_path/version`."""
  target = f"{base_path}/{version}"
  shutil.copytree(version_dir, target)
  return target


def tensor_proto(dtype, dims, **values) -> tensor_pb2.TensorProto:
  """A TensorProto built field by field, so a test can send what no well-behaved client makes."""
  proto = tensor_pb2.TensorProto(dtype=dtype)
  for size in dims:
    proto.tensor_shape.dim.add(size=size)
  for field, content in values.items():
    getattr(proto, field).extend(content)
  return proto


def rss_bytes(pid="self") -> int:
  """The resident memory of a process (this one by default)."""
  with open(f"/proc/{pid}/status") as f:
    for line in f:
      if line.startswith("VmRSS:"):
        return int(line.split()[1]) * 1024
  raise AssertionError(f"no VmRSS in /proc/{pid}/status")
