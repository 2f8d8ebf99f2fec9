"""TF Serving's Regress (regressor.cc) over a servable handle: the signature's checks, one
session run on the serialized tf.Examples, and the checks of its values."""

from typing import Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import model_pb2

from serving.model_server.inference import REGRESS_METHOD, Checks, Steps
from serving.model_server.inference import examples_tensor, find_signature
from serving.model_server.inference import model_spec
from serving.model_server.results import Regressions
from serving.model_server.servable import Servable, SessionRun
from serving.model_server.status import invalid_argument
from serving.model_server.tensors import shape_text


def regress(servable: Servable, signature_name: str, examples: Sequence[bytes], checks: Checks,
            api: Optional[str] = "Regress"
            ) -> Steps[Tuple[model_pb2.ModelSpec, Regressions]]:
  """`api`: what the run's latency is counted under (MultiInference's runs are not)."""
  name, signature = find_signature(servable, signature_name, checks, REGRESS_METHOD, "regression")
  input_key, output_key = _keys(signature)
  batch = examples_tensor(examples)
  values = (yield SessionRun(servable, name, {input_key: batch}, [output_key], api))[output_key]
  return model_spec(servable, name), _result(len(batch), values)


def _keys(signature: meta_graph_pb2.SignatureDef):
  if len(signature.inputs) != 1:
    raise invalid_argument("Expected one input Tensor.")
  if len(signature.outputs) != 1:
    raise invalid_argument("Expected one output Tensor.")
  if "inputs" not in signature.inputs:
    raise invalid_argument(f"No regression inputs found in SignatureDef: {signature}")
  if "outputs" not in signature.outputs:
    raise invalid_argument(f"No regression outputs found in SignatureDef: {signature}")
  return "inputs", "outputs"


def _result(num_examples: int, values: np.ndarray) -> Regressions:
  if not (values.ndim == 1 or (values.ndim == 2 and values.shape[1] == 1)):
    raise invalid_argument(f"Expected output Tensor shape to be either [batch_size] or "
                           f"[batch_size, 1] but got {shape_text(values.shape)}")
  if values.shape[0] != num_examples:
    raise invalid_argument(f"Input batch size did not match output batch size: "
                           f"{num_examples} vs. {values.shape[0]}")
  if tf.as_dtype(values.dtype) != tf.float32:
    raise invalid_argument(f"Expected output Tensor of DT_FLOAT.  Got: "
                           f"DT_{tf.as_dtype(values.dtype).name.upper()}")
  return Regressions(values.reshape(-1))
