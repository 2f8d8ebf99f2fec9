"""TF Serving's Classify (classifier.cc) over a servable handle: the signature's checks, one
session run on the serialized tf.Examples, and the checks of its classes and scores."""

from typing import Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import model_pb2

from serving.model_server.inference import CLASSIFY_METHOD, Checks, Steps
from serving.model_server.inference import examples_tensor, find_signature
from serving.model_server.inference import model_spec
from serving.model_server.results import Classifications
from serving.model_server.servable import Servable, SessionRun
from serving.model_server.status import invalid_argument
from serving.model_server.tensors import shape_text


def classify(servable: Servable, signature_name: str, examples: Sequence[bytes], checks: Checks,
             api: Optional[str] = "Classify"
             ) -> Steps[Tuple[model_pb2.ModelSpec, Classifications]]:
  """`api`: what the run's latency is counted under (MultiInference's runs are not)."""
  name, signature = find_signature(servable, signature_name, checks, CLASSIFY_METHOD,
                                   "classification")
  input_key, classes_key, scores_key = _keys(signature)
  batch = examples_tensor(examples)
  keys = [k for k in (classes_key, scores_key) if k]
  outputs = yield SessionRun(servable, name, {input_key: batch}, keys, api)
  classes = outputs.get(classes_key) if classes_key else None
  scores = outputs.get(scores_key) if scores_key else None
  return model_spec(servable, name), _result(len(batch), classes, scores)


def _keys(signature: meta_graph_pb2.SignatureDef):
  if len(signature.inputs) != 1:
    raise invalid_argument("Expected one input Tensor.")
  if len(signature.outputs) not in (1, 2):
    raise invalid_argument(
        f"Expected one or two output Tensors, found {len(signature.outputs)}")
  if "inputs" not in signature.inputs:
    raise invalid_argument(f"No classification inputs found in SignatureDef: {signature}")
  classes = "classes" if "classes" in signature.outputs else None
  scores = "scores" if "scores" in signature.outputs else None
  if not classes and not scores:
    raise invalid_argument(
        f'Expected classification signature outputs to contain at least one of "classes" or '
        f'"scores". Signature was: {signature}')
  return "inputs", classes, scores


def _result(num_examples: int, classes: Optional[np.ndarray], scores: Optional[np.ndarray]
            ) -> Classifications:
  for name, tensor, dtype in (("classes", classes, tf.string), ("scores", scores, tf.float32)):
    if tensor is None:
      continue
    if tensor.ndim != 2:
      raise invalid_argument(f"Expected Tensor shape: [batch_size num_classes] but got "
                             f"{shape_text(tensor.shape)}")
    if tf.as_dtype(tensor.dtype) != dtype:
      raise invalid_argument(f"Expected {name} Tensor of DT_{dtype.name.upper()}. Got: "
                             f"DT_{tf.as_dtype(tensor.dtype).name.upper()}")
    if tensor.shape[0] != num_examples:
      raise invalid_argument(f"Expected {name} output batch size of {num_examples}. Got: "
                             f"{tensor.shape[0]}")
  if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
    raise invalid_argument(f"Tensors class and score should match in dim_size(1). Got "
                           f"{classes.shape[1]} vs. {scores.shape[1]}")
  return Classifications(classes, scores)
