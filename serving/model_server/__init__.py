"""The embedded TF Serving: `python -m serving.model_server`, tensorflow_model_server's contract.

command.py       tensorflow_model_server's flags -> config and options; the process
server.py        ModelServer: a ServerCore behind gRPC and REST ports
core.py          ServerCore: models, version policy, loading, warmup, status, metadata
inference.py     Predict / Classify / Regress / MultiInference: TF Serving's checks and results
grpc_api.py      PredictionService and ModelService
rest.py          the REST API (ASGI, served by uvicorn in http_server.py)
json_requests.py JSON request bodies -> tensors and tf.Examples
json_answers.py  tensors and results -> JSON answers
tensors.py       TensorProto <-> numpy
config_files.py  ModelServerConfig and BatchingParameters text files
status.py        ServingError: TF Serving's statuses and their HTTP mapping
memory.py        the allocator (tcmalloc when installed) and memory given back after large requests
"""
