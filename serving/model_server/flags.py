"""tensorflow_model_server 2.15.1's command-line flags: every one, with the binary's names,
types and defaults (tensorflow_serving/model_servers/main.cc), and two of the embedded
server's own.

Each flag says what it does here: `IMPLEMENTED` flags change the embedded server's behaviour;
`NO_EFFECT` flags configure what a CPU-only TensorFlow server in Python has no use for (TPU,
GPU memory, TF Lite, XLA, the profiler, ALTS, ...): they are accepted, so a deployment command
for the binary runs unchanged, and a value other than the default is reported once at start-up.
"""

import dataclasses
import os
from typing import Any, List

from absl import flags

CPUS = os.cpu_count() or 1
DEFAULT_BIND_ADDRESS = "127.0.0.1"
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_ELEMENTS = 1 << 24
DEFAULT_THREADS = 4 * CPUS  # TF Serving's default for gRPC and REST

IMPLEMENTED, NO_EFFECT, OWN = "implemented", "no effect here", "embedded server only"


@dataclasses.dataclass(frozen=True)
class Flag:
  name: str
  kind: type  # int, float, bool or str
  default: Any
  help: str
  effect: str = IMPLEMENTED


FLAGS_OF_THE_BINARY: List[Flag] = [
    Flag("port", int, 8500, "TCP port to listen on for gRPC/HTTP API. Disabled if port set to "
         "zero."),
    Flag("grpc_socket_path", str, "", "If non-empty, listen to a UNIX socket for gRPC API on "
         "the given path. Can be either relative or absolute path."),
    Flag("rest_api_port", int, 0, "Port to listen on for HTTP/REST API. If set to zero HTTP/REST "
         "API will not be exported. This port must be different than the one specified in "
         "--port."),
    Flag("rest_api_num_threads", int, DEFAULT_THREADS, "Number of threads for HTTP/REST API "
         "processing. If not set, will be auto set based on number of CPUs."),
    Flag("rest_api_timeout_in_ms", int, 30000, "Timeout for HTTP/REST API calls."),
    Flag("rest_api_enable_cors_support", bool, False, "Enable CORS headers in response"),
    Flag("enable_batching", bool, False, "enable batching"),
    Flag("allow_version_labels_for_unavailable_models", bool, False, "If true, allows "
         "assigning unused version labels to models that are not available yet."),
    Flag("batching_parameters_file", str, "", "If non-empty, read an ascii BatchingParameters "
         "protobuf from the supplied file name and use the contained values instead of the "
         "defaults."),
    Flag("enable_per_model_batching_parameters", bool, False, "Enables model specific batching "
         "params like batch sizes, timeouts, batching feature flags to be read from "
         "`batching_params.pbtxt` file present in SavedModel dir of the model. Associated "
         "params in the global config from --batching_parameters_file are *ignored*. Only "
         "applicable when --enable_batching flag is set."),
    Flag("model_config_file", str, "", "If non-empty, read an ascii ModelServerConfig protobuf "
         "from the supplied file name, and serve the models in that file. This config file can "
         "be used to specify multiple models to serve and other advanced parameters including "
         "non-default version policy. (If used, --model_name, --model_base_path are ignored.)"),
    Flag("model_config_file_poll_wait_seconds", int, 0, "Interval in seconds between each poll "
         "of the filesystem for model_config_file. If unset or set to zero, poll will be done "
         "exactly once and not periodically. Setting this to negative is reserved for testing "
         "purposes only."),
    Flag("model_name", str, "default", "name of model (ignored if --model_config_file flag is "
         "set)"),
    Flag("model_base_path", str, "", "path to export (ignored if --model_config_file flag is "
         "set, otherwise required)"),
    Flag("num_load_threads", int, 0, "The number of threads in the thread-pool used to load "
         "servables. If set as 0, we don't use a thread-pool, and servable loads are performed "
         "serially in the manager's main work loop, may cause the Serving request to be "
         "delayed. Default: 0"),
    Flag("num_unload_threads", int, 0, "The number of threads in the thread-pool used to "
         "unload servables. If set as 0, we don't use a thread-pool. Default: 0"),
    Flag("max_num_load_retries", int, 5, "maximum number of times it retries loading a model "
         "after the first failure, before giving up. If set to 0, a load is attempted only "
         "once. Default: 5"),
    Flag("load_retry_interval_micros", int, 60 * 1000 * 1000, "The interval, in microseconds, "
         "between each servable load retry. If set negative, it doesn't wait. Default: 1 "
         "minute"),
    Flag("file_system_poll_wait_seconds", int, 1, "Interval in seconds between each poll of the "
         "filesystem for new model version. If set to zero poll will be exactly done once and "
         "not periodically. Setting this to negative value will disable polling entirely "
         "causing ModelServer to indefinitely wait for a new model at startup. Negative values "
         "are reserved for testing purposes only."),
    Flag("flush_filesystem_caches", bool, True, "If true (the default), filesystem caches will "
         "be flushed after the initial load of all servables, and after each subsequent "
         "individual servable reload (if the number of load threads is 1).", NO_EFFECT),
    Flag("tensorflow_session_parallelism", int, 0, "Number of threads to use for running a "
         "Tensorflow session. Auto-configured by default. Note that this option is ignored if "
         "--platform_config_file is non-empty."),
    Flag("tensorflow_session_config_file", str, "", "If non-empty, read an ascii TensorFlow "
         "Session ConfigProto protobuf from the supplied file name. Note, parts of the session "
         "config (threads, parallelism etc.) can be overridden if needed, via corresponding "
         "command line flags."),
    Flag("tensorflow_intra_op_parallelism", int, 0, "Number of threads to use to parallelize "
         "the execution of an individual op. Auto-configured by default. Note that this option "
         "is ignored if --platform_config_file is non-empty."),
    Flag("tensorflow_inter_op_parallelism", int, 0, "Controls the number of operators that can "
         "be executed simultaneously. Auto-configured by default. Note that this option is "
         "ignored if --platform_config_file is non-empty."),
    Flag("use_alts_credentials", bool, False, "Use Google ALTS credentials", NO_EFFECT),
    Flag("ssl_config_file", str, "", "If non-empty, read an ascii SSLConfig protobuf from the "
         "supplied file name and set up a secure gRPC channel"),
    Flag("platform_config_file", str, "", "If non-empty, read an ascii PlatformConfigMap "
         "protobuf from the supplied file name, and use that platform config instead of the "
         "Tensorflow platform. (If used, --enable_batching is ignored.)", NO_EFFECT),
    Flag("per_process_gpu_memory_fraction", float, 0.0, "Fraction that each process occupies "
         "of the GPU memory space the value is between 0.0 and 1.0 (with 0.0 as the default) "
         "If 1.0, the server will allocate all the memory when the server starts, If 0.0, "
         "Tensorflow will automatically select a value.", NO_EFFECT),
    Flag("saved_model_tags", str, "serve", "Comma-separated set of tags corresponding to the "
         "meta graph def to load from SavedModel."),
    Flag("grpc_channel_arguments", str, "", "A comma separated list of arguments to be passed "
         "to the grpc server. (e.g. grpc.max_connection_age_ms=2000)"),
    Flag("grpc_max_threads", int, DEFAULT_THREADS, "Max grpc server threads to handle grpc "
         "messages."),
    Flag("enable_model_warmup", bool, True, "Enables model warmup, which triggers lazy "
         "initializations (such as TF optimizations) at load time, to reduce first request "
         "latency."),
    Flag("num_request_iterations_for_warmup", int, 0, "Number of times a request is iterated "
         "during warmup replay. This value is used only if > 0."),
    Flag("version", bool, False, "Display version"),
    Flag("monitoring_config_file", str, "", "If non-empty, read an ascii MonitoringConfig "
         "protobuf from the supplied file name"),
    Flag("remove_unused_fields_from_bundle_metagraph", bool, True, "Removes unused fields from "
         "MetaGraphDef proto message to save memory.", NO_EFFECT),
    Flag("prefer_tflite_model", bool, False, "EXPERIMENTAL; CAN BE REMOVED ANYTIME! Prefer "
         "TensorFlow Lite model from `model.tflite` file in SavedModel directory, instead of "
         "the TensorFlow model from `saved_model.pb` file. If no TensorFlow Lite model found, "
         "fallback to TensorFlow model.", NO_EFFECT),
    Flag("num_tflite_pools", int, CPUS, "EXPERIMENTAL; CAN BE REMOVED ANYTIME! Number of TFLite "
         "interpreters in an interpreter pool of TfLiteSession.", NO_EFFECT),
    Flag("num_tflite_interpreters_per_pool", int, 1, "EXPERIMENTAL; CAN BE REMOVED ANYTIME! "
         "Number of TFLite interpreters in an interpreter pool of TfLiteSession.", NO_EFFECT),
    Flag("enable_signature_method_name_check", bool, False, "Enable method_name check for "
         "SignatureDef. Disable this if serving native TF2 regression/classification models."),
    Flag("xla_cpu_compilation_enabled", bool, False, "EXPERIMENTAL; CAN BE REMOVED ANYTIME! "
         "Enable XLA:CPU JIT (default is disabled).", NO_EFFECT),
    Flag("enable_profiler", bool, True, "Enable profiler service.", NO_EFFECT),
    Flag("thread_pool_factory_config_file", str, "", "If non-empty, read an ascii "
         "ThreadPoolConfig protobuf from the supplied file name.", NO_EFFECT),
    Flag("mixed_precision", str, "", "specify mixed_precision mode", NO_EFFECT),
    Flag("skip_initialize_tpu", bool, False, "Whether to skip auto initializing TPU.",
         NO_EFFECT),
    Flag("enable_grpc_healthcheck_service", bool, False, "Enable the standard gRPC healthcheck "
         "service."),
]

EMBEDDED_FLAGS: List[Flag] = [
    Flag("bind_address", str, DEFAULT_BIND_ADDRESS, "Address to listen on (not a "
         "tensorflow_model_server flag: the binary listens on every address).", OWN),
    Flag("max_request_body_bytes", int, DEFAULT_MAX_BODY_BYTES, "Largest REST body / gRPC "
         "message accepted (not a tensorflow_model_server flag).", OWN),
    Flag("max_request_elements", int, DEFAULT_MAX_ELEMENTS, "Most tensor elements one request "
         "may decode to (a small TensorProto can claim any shape), its numeric tensors at most "
         "4 x --max_request_body_bytes, and a JSON body at most 1/16 as many lists and objects, "
         "which cost far more to parse than numbers (not a tensorflow_model_server flag).",
         OWN),
]

_DEFINE = {int: flags.DEFINE_integer, float: flags.DEFINE_float, bool: flags.DEFINE_boolean,
           str: flags.DEFINE_string}


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  for flag in FLAGS_OF_THE_BINARY + EMBEDDED_FLAGS:
    help_text = flag.help if flag.effect != NO_EFFECT else f"{flag.help} [{NO_EFFECT}]"
    _DEFINE[flag.kind](flag.name, flag.default, help_text, flag_values=flag_values)


def without_effect(values) -> List[str]:
  """The flags set to something else than their default that do nothing here."""
  return [f"--{f.name}={getattr(values, f.name)}" for f in FLAGS_OF_THE_BINARY
          if f.effect == NO_EFFECT and getattr(values, f.name) != f.default]
