"""The embedded TF Serving: `python -m serving.model_server`, tensorflow_model_server's contract.

From the process down to a session run:

__main__.py        the entry point: the allocator (tcmalloc when installed), then command.py
command.py         tensorflow_model_server's flags -> config and options; the process
flags.py           every flag of the binary, its name, default and effect here
server.py          ModelServer: a ServerCore behind gRPC and REST ports
grpc_api.py        PredictionService and ModelService: protos and gRPC statuses
http_server.py     the REST API's HTTP server (uvicorn), where each request is answered
rest.py            the REST API (URLs, JSON bodies, HTTP statuses) over the same APIs
json_requests.py   JSON request bodies -> tensors and tf.Examples
json_answers.py    tensors and results -> JSON answers
core.py            ServerCore: config, loading, polling, reloading, lookup, status, metadata
loading.py         version policy; one version loaded, batched as configured, warmed up
manager.py         VersionManager: versions' states, and the requests holding them
predict.py         Predict over a loaded version: TF Serving's checks and words
classify.py        Classify, likewise
regress.py         Regress, likewise
multi_inference.py MultiInference: its tasks' Classify and Regress
inference.py       what the APIs share, and the one driver of their steps
results.py         Classify and Regress answers, as arrays and as protos
servable.py        Servable: a loaded version and its one `run`
batching.py        BatchingSession around a version's session, and the shared scheduler
tensors.py         TensorProto <-> numpy, dtype and shape names, request limits
config_files.py    ModelServerConfig, BatchingParameters and the other text config files
monitoring.py      TF Serving's metrics and their Prometheus text
memory.py          the allocator, memory given back after large requests, the collector
status.py          ServingError: TF Serving's statuses, their HTTP mapping, message cuts
"""
