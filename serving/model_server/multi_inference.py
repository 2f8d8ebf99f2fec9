"""TF Serving's MultiInference (multi_inference.cc) over a servable handle: the checks of its
tasks, then each task's Classify or Regress on the request's examples."""

import grpc
from tensorflow_serving.apis import inference_pb2
from tensorflow_serving.apis import model_pb2

from export.warmup import DEFAULT_SIGNATURE, serialized_input
from serving.model_server.classify import classify
from serving.model_server.inference import CLASSIFY_METHOD, REGRESS_METHOD, Checks, Steps
from serving.model_server.regress import regress
from serving.model_server.servable import Servable
from serving.model_server.status import ServingError, invalid_argument


def servable_spec(request: inference_pb2.MultiInferenceRequest) -> model_pb2.ModelSpec:
  """The ModelSpec whose servable answers the request: its first task's."""
  if not request.tasks:
    raise invalid_argument("MultiInferenceRequest has no tasks")
  return request.tasks[0].model_spec


def multi_inference(servable: Servable, request: inference_pb2.MultiInferenceRequest,
                    checks: Checks) -> Steps[inference_pb2.MultiInferenceResponse]:
  seen = set()
  for task in request.tasks:
    if not task.model_spec.name:
      raise invalid_argument("Found ModelSpec with an empty model name.")
    if task.model_spec.name != request.tasks[0].model_spec.name:
      raise invalid_argument("All ModelSpecs in a MultiInferenceRequest must access the "
                             "same model name.")
    signature_name = task.model_spec.signature_name or DEFAULT_SIGNATURE
    if signature_name in seen:
      raise invalid_argument(f"Duplicate evaluation of signature: {signature_name}")
    seen.add(signature_name)
    if signature_name not in servable.signatures:
      raise invalid_argument(
          f"Requested signature not found in model graph: {signature_name}")
  examples = serialized_input(request.input)
  response = inference_pb2.MultiInferenceResponse()
  for task in request.tasks:
    result = response.results.add()
    # TF Serving counts no runtime latency for MultiInference's runs.
    if task.method_name == CLASSIFY_METHOD:
      spec, answer = yield from classify(servable, task.model_spec.signature_name, examples,
                                         checks, api=None)
      result.classification_result.CopyFrom(answer.to_proto())
    elif task.method_name == REGRESS_METHOD:
      spec, answer = yield from regress(servable, task.model_spec.signature_name, examples,
                                        checks, api=None)
      result.regression_result.CopyFrom(answer.to_proto())
    else:
      raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                         f"Unsupported signature method_name: {task.method_name}")
    result.model_spec.CopyFrom(spec)
  return response
