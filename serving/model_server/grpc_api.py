"""TF Serving's gRPC services over a ServerCore: PredictionService (Predict, Classify, Regress,
MultiInference, GetModelMetadata) and ModelService (GetModelStatus, HandleReloadConfigRequest),
as the generated tensorflow-serving-api servicers, answering errors with TF Serving's status
codes and the client's deadline as the session's timeout."""

import functools
import time
from typing import Optional

from absl import logging
from tensorflow_serving.apis import classification_pb2
from tensorflow_serving.apis import model_management_pb2
from tensorflow_serving.apis import model_service_pb2_grpc
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc
from tensorflow_serving.apis import regression_pb2
from tensorflow_serving.apis import status_pb2

from export.warmup import serialized_input
from serving.model_server import memory
from serving.model_server.classify import classify
from serving.model_server.core import ServerCore
from serving.model_server.inference import answer
from serving.model_server.multi_inference import multi_inference, servable_spec
from serving.model_server.predict import predict
from serving.model_server.regress import regress
from serving.model_server.servable import session_timeout_ms
from serving.model_server.status import ServingError, invalid_argument, truncated
from serving.model_server.tensors import array_to_tensor_proto

_MAX_TIMEOUT_MS = 2**31


def _timeout_ms(context) -> Optional[int]:
  """The client's deadline as the session's timeout, as TF Serving turns it into RunOptions."""
  remaining = context.time_remaining()
  if remaining is None or remaining * 1000 >= _MAX_TIMEOUT_MS:
    return None
  return session_timeout_ms(remaining * 1000)


def _grpc_errors(api: Optional[str] = None):
  """Answers a ServingError with its status code and message, as TF Serving does, and counts
  Predict / Classify / Regress requests in the metrics as TF Serving counts them."""

  def decorate(method):
    @functools.wraps(method)
    def wrapper(self, request, context):
      started = time.perf_counter()
      status = "OK"
      try:
        return method(self, request, context)
      except ServingError as e:
        status = e.code.name
        context.abort(e.code, truncated(e.message))
      finally:
        if api:
          self._core.metrics.request(request.model_spec.name, status, api, "GRPC",
                                     (time.perf_counter() - started) * 1e6)
          memory.release_after(request.ByteSize())

    return wrapper

  return decorate


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
  """Each API on the version its ModelSpec asks for, held until the answer is built."""

  def __init__(self, core: ServerCore):
    self._core = core

  @_grpc_errors("Predict")
  def Predict(self, request, context):
    # The TensorProtos are decoded only once the request passed TF Serving's checks (model,
    # version, signature, aliases, dtypes) and the size limits.
    with self._core.servable(request.model_spec) as servable:
      spec, outputs = answer(predict(servable, request.model_spec.signature_name,
                                     dict(request.inputs), request.output_filter,
                                     self._core.checks), _timeout_ms(context))
    response = predict_pb2.PredictResponse(model_spec=spec)
    for alias, array in outputs.items():
      response.outputs[alias].CopyFrom(array_to_tensor_proto(array))
    return response

  @_grpc_errors("Classify")
  def Classify(self, request, context):
    with self._core.servable(request.model_spec) as servable:
      spec, result = answer(classify(servable, request.model_spec.signature_name,
                                     serialized_input(request.input), self._core.checks),
                            _timeout_ms(context))
    return classification_pb2.ClassificationResponse(model_spec=spec, result=result.to_proto())

  @_grpc_errors("Regress")
  def Regress(self, request, context):
    with self._core.servable(request.model_spec) as servable:
      spec, result = answer(regress(servable, request.model_spec.signature_name,
                                    serialized_input(request.input), self._core.checks),
                            _timeout_ms(context))
    return regression_pb2.RegressionResponse(model_spec=spec, result=result.to_proto())

  @_grpc_errors()
  def MultiInference(self, request, context):
    with self._core.servable(servable_spec(request)) as servable:
      return answer(multi_inference(servable, request, self._core.checks),
                    _timeout_ms(context))

  @_grpc_errors()
  def GetModelMetadata(self, request, context):
    return self._core.model_metadata(request)


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
  """GetModelStatus and HandleReloadConfigRequest (apply a new ModelServerConfig in full)."""

  def __init__(self, core: ServerCore):
    self._core = core

  @_grpc_errors()
  def GetModelStatus(self, request, context):
    return self._core.model_status(request)

  @_grpc_errors()
  def HandleReloadConfigRequest(self, request, context):
    if request.config.WhichOneof("config") != "model_config_list":
      raise invalid_argument("ServerModelConfig type not supported by "
                             "HandleReloadConfigRequest. Only ModelConfigList is currently "
                             "supported")
    for index, model in enumerate(request.config.model_config_list.config):
      logging.info("\nConfig entry\n\tindex : %d\n\tpath : %s\n\tname : %s\n\tplatform : %s",
                   index, model.base_path, model.name, model.model_platform)
    try:
      self._core.reload_config(request.config)
    except ServingError as e:
      logging.error("ReloadConfig failed: %s", e)
      raise
    return model_management_pb2.ReloadConfigResponse(status=status_pb2.StatusProto())
