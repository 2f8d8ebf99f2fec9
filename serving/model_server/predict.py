"""TF Serving's Predict (predict_util.cc) over a servable handle: its checks of the signature,
the inputs and the output filter, in the binary's order and words, then one session run."""

from typing import List, Mapping, Sequence, Tuple

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import model_pb2

from export.warmup import DEFAULT_SIGNATURE
from serving.model_server import tensors
from serving.model_server.inference import CLASSIFY_METHOD, PREDICT_METHOD, REGRESS_METHOD
from serving.model_server.inference import Checks, Steps, model_spec
from serving.model_server.servable import Outputs, Servable, SessionRun
from serving.model_server.status import ServingError, invalid_argument
from serving.model_server.tensors import type_name


def predict(servable: Servable, signature_name: str, inputs: Mapping[str, np.ndarray],
            output_filter: Sequence[str], checks: Checks
            ) -> Steps[Tuple[model_pb2.ModelSpec, Outputs]]:
  """`inputs` are arrays or TensorProtos, decoded only once they passed the checks."""
  name = signature_name or DEFAULT_SIGNATURE
  signatures = servable.signatures
  if name not in signatures:
    raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                       f'Serving signature key "{name}" not found.')
  signature = signatures[name]
  if checks.check_method_name and signature.method_name not in (
      PREDICT_METHOD, CLASSIFY_METHOD, REGRESS_METHOD):
    raise ServingError(grpc.StatusCode.INTERNAL,
                       f"Expected prediction signature method_name to be one of "
                       f"{{{PREDICT_METHOD}, {CLASSIFY_METHOD}, {REGRESS_METHOD}}}. Was: "
                       f"{signature.method_name}")
  _check_inputs(signature, inputs)
  output_keys = _output_keys(signature, output_filter)
  outputs = yield SessionRun(servable, name, tensors.decode_inputs(inputs, checks.limits),
                             output_keys, "Predict")
  return model_spec(servable, name), outputs


def _check_inputs(signature: meta_graph_pb2.SignatureDef, inputs: Mapping[str, object]) -> None:
  expected, sent = sorted(signature.inputs), sorted(inputs)
  if len(sent) != len(expected):
    extra = sorted(set(sent) - set(expected))
    missing = sorted(set(expected) - set(sent))
    raise invalid_argument(
        f"input size does not match signature: {len(sent)}!={len(expected)} "
        f"len({{{','.join(sent)}}}) != len({{{','.join(expected)}}}). Sent extra: "
        f"{{{','.join(extra)}}}. Missing but required: {{{','.join(missing)}}}.")
  for index, alias in enumerate(expected):
    info = signature.inputs[alias]
    if alias not in inputs:
      raise invalid_argument(
          f"Signature input alias: {alias}({info.name}) not found in request and no default "
          f"value provided. Inputs expected to be in the request {{{','.join(expected)}}}")
    want, got = tf.as_dtype(info.dtype), tensors.input_dtype(inputs[alias])
    if want != got:
      raise invalid_argument(f"Expects arg[{index}] to be {type_name(want)} but "
                             f"{type_name(got)} is provided")


def _output_keys(signature: meta_graph_pb2.SignatureDef, output_filter: Sequence[str]
                 ) -> List[str]:
  keys: List[str] = []
  for alias in output_filter:
    if alias not in signature.outputs:
      raise invalid_argument(
          f"output tensor alias not found in signature: {alias} Outputs expected to be in the "
          f"set {{{','.join(sorted(signature.outputs))}}}.")
    if alias in keys:
      raise invalid_argument(f"duplicate output tensor alias: {alias}")
    keys.append(alias)
  return keys or list(signature.outputs)
