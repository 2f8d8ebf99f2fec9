"""TF Serving's APIs answered on a ServerCore's versions, on this thread, as the gRPC service
answers them: the version the ModelSpec asks for, held while its API's steps run."""

from serving.model_server import classify as classify_api
from serving.model_server import multi_inference as multi_inference_api
from serving.model_server import predict as predict_api
from serving.model_server import regress as regress_api
from serving.model_server.inference import answer


def predict(core, spec, inputs, output_filter=(), timeout_ms=None):
  with core.servable(spec) as servable:
    return answer(predict_api.predict(servable, spec.signature_name, inputs, output_filter,
                                      core.checks), timeout_ms)


def classify(core, spec, examples, timeout_ms=None):
  with core.servable(spec) as servable:
    return answer(classify_api.classify(servable, spec.signature_name, examples, core.checks),
                  timeout_ms)


def regress(core, spec, examples, timeout_ms=None):
  with core.servable(spec) as servable:
    return answer(regress_api.regress(servable, spec.signature_name, examples, core.checks),
                  timeout_ms)


def multi_inference(core, request, timeout_ms=None):
  with core.servable(multi_inference_api.servable_spec(request)) as servable:
    return answer(multi_inference_api.multi_inference(servable, request, core.checks),
                  timeout_ms)
