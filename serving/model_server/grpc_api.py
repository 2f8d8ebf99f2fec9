"""TF Serving's gRPC services over a ServerCore: PredictionService (Predict, Classify, Regress,
MultiInference, GetModelMetadata) and ModelService (GetModelStatus), as the generated
tensorflow-serving-api servicers, answering errors with TF Serving's status codes."""

import functools

from tensorflow_serving.apis import classification_pb2
from tensorflow_serving.apis import model_service_pb2_grpc
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc
from tensorflow_serving.apis import regression_pb2

from export.warmup import serialized_input
from serving.model_server.core import ServerCore
from serving.model_server.status import ServingError
from serving.model_server.tensors import array_to_tensor_proto, tensor_protos_to_arrays


def _grpc_errors(method):
  """Answers a ServingError with its status code and message, as TF Serving does."""

  @functools.wraps(method)
  def wrapper(self, request, context):
    try:
      return method(self, request, context)
    except ServingError as e:
      context.abort(e.code, e.message)

  return wrapper


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):

  def __init__(self, core: ServerCore):
    self._core = core

  @_grpc_errors
  def Predict(self, request, context):
    inputs = tensor_protos_to_arrays(request.inputs)
    spec, outputs = self._core.predict(request.model_spec, inputs, request.output_filter)
    response = predict_pb2.PredictResponse(model_spec=spec)
    for alias, array in outputs.items():
      response.outputs[alias].CopyFrom(array_to_tensor_proto(array))
    return response

  @_grpc_errors
  def Classify(self, request, context):
    spec, result = self._core.classify(request.model_spec, serialized_input(request.input))
    return classification_pb2.ClassificationResponse(model_spec=spec, result=result)

  @_grpc_errors
  def Regress(self, request, context):
    spec, result = self._core.regress(request.model_spec, serialized_input(request.input))
    return regression_pb2.RegressionResponse(model_spec=spec, result=result)

  @_grpc_errors
  def MultiInference(self, request, context):
    return self._core.multi_inference(request)

  @_grpc_errors
  def GetModelMetadata(self, request, context):
    return self._core.model_metadata(request)


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
  """GetModelStatus; HandleReloadConfigRequest stays UNIMPLEMENTED (no reloading here)."""

  def __init__(self, core: ServerCore):
    self._core = core

  @_grpc_errors
  def GetModelStatus(self, request, context):
    return self._core.model_status(request)
