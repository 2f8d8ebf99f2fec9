"""The lineage types, their properties, and builders for the artifacts the stages produce.

Every property is declared here, with one of five kinds; `json` values (dicts, lists:
hyperparameters, metrics, transforms, per-step figures) are stored as JSON strings, so any
MLMD client (and `SELECT` on the database) can read them, and decoded again on the way out.
Executions accept only the keys their type declares: a misspelt result fails loudly rather
than vanishing into an undeclared property. Adding a key here is enough: opening a store
adds the field to the stored type.

Artifacts whose content can be fingerprinted (data sets, modules, SavedModels) carry an
external id derived from type, URI and content hash: recording the same data twice, from
two processes at once, yields one artifact, and a model directory whose content changed
after it was verified is a different artifact (the push gate relies on that).
"""

import hashlib
import json
import numbers
import posixpath
from typing import Any, Dict, Mapping, Optional

from ml_metadata.proto import metadata_store_pb2

from export import versions
from lineage import fingerprint as fingerprint_lib

INT, DOUBLE, STRING, BOOL, JSON = "int", "double", "string", "bool", "json"
STORED_TYPES = {INT: metadata_store_pb2.INT, DOUBLE: metadata_store_pb2.DOUBLE,
                STRING: metadata_store_pb2.STRING, BOOL: metadata_store_pb2.BOOLEAN,
                JSON: metadata_store_pb2.STRING}

DATASET = "Dataset"
HUB_MODULE = "HubModule"
MODEL = "Model"
EXPORTED_MODEL = "ExportedModel"
OPTIMIZED_MODEL = "OptimizedModel"
VERDICT = "Verdict"
PUSHED_MODEL = "PushedModel"
BATCHING_PARAMETERS = "BatchingParameters"
SERVABLES = (EXPORTED_MODEL, OPTIMIZED_MODEL)

TRAIN, EXPORT, OPTIMIZE, SMOKE_TEST, PUSH = "Train", "Export", "Optimize", "SmokeTest", "Push"
TUNE_BATCHING = "TuneBatching"
# The executions one pipeline run records, in order; TuneBatching runs on its own.
PIPELINE_EXECUTIONS = (TRAIN, EXPORT, OPTIMIZE, SMOKE_TEST, PUSH)

EXPERIMENT = "Experiment"
PIPELINE_RUN = "PipelineRun"

FAILURE_REASON = "failure_reason"

_SERVABLE = {"model_name": STRING, "version": INT, "fingerprint": STRING, "size_bytes": INT}

ARTIFACT_TYPES: Dict[str, Dict[str, str]] = {
    DATASET: {"split": STRING, "row_count": INT, "label_count": INT, "fingerprint": STRING,
              "file_count": INT},
    HUB_MODULE: {"fingerprint": STRING},
    MODEL: {"checkpoint": STRING, "global_step": INT},
    EXPORTED_MODEL: dict(_SERVABLE),
    OPTIMIZED_MODEL: dict(_SERVABLE),
    VERDICT: {"blessed": BOOL, "reason": STRING, "backend": STRING, "model_version": INT},
    PUSHED_MODEL: {"base_path": STRING, "version": INT, "fingerprint": STRING},
    BATCHING_PARAMETERS: {"max_batch_size": INT, "batch_timeout_micros": INT,
                          "num_batch_threads": INT, "max_enqueued_batches": INT,
                          "requests_per_s": DOUBLE, "p99_ms": DOUBLE, "concurrency": INT},
}

EXECUTION_TYPES: Dict[str, Dict[str, str]] = {
    TRAIN: {"hyperparameters": JSON, "metrics": JSON, "accuracy": DOUBLE, "macro_f1": DOUBLE,
            "train_examples": INT, "eval_examples": INT, "train_seconds": DOUBLE,
            "global_step": INT, "expected_calibration_error": DOUBLE,
            "oos_threshold": DOUBLE, "oos_recall": DOUBLE, "in_scope_accuracy": DOUBLE},
    EXPORT: {"model_name": STRING, "export_base": STRING, "warmup_records": INT,
             "evaluation_sample_examples": INT, "evaluation_sample_labelled": INT},
    OPTIMIZE: {"transforms": JSON, "min_agreement": DOUBLE, "force": BOOL, "agreement": DOUBLE,
               "guard": JSON, "steps": JSON, "size_bytes_before": INT, "size_bytes_after": INT,
               "batch1_p50_ms_before": DOUBLE, "batch1_p50_ms_after": DOUBLE,
               "max_accuracy_drop": DOUBLE, "require_real_examples": INT, "fallback": STRING,
               "eval_data": STRING, "label_key": STRING, "guard_passed": BOOL,
               "guard_examples": INT, "guard_real_examples": INT,
               "guard_synthetic_examples": INT, "guard_real_sources": JSON,
               "guard_rule": JSON, "guard_metric": STRING,
               "guard_labelled_examples": INT, "accuracy_before": DOUBLE,
               "accuracy_after": DOUBLE, "mean_absolute_error_before": DOUBLE,
               "mean_absolute_error_after": DOUBLE, "kept_in_float": JSON},
    SMOKE_TEST: {"backend": STRING, "blessed": BOOL, "reason": STRING, "checks_passed": INT,
                 "checks_total": INT, "latency_ms": JSON, "model_version": INT},
    PUSH: {"push_to": STRING, "model_uri": STRING, "version": INT, "pushed_uri": STRING},
    TUNE_BATCHING: {"backend": STRING, "concurrency": INT, "p99_budget_ms": DOUBLE,
                    "seconds_per_point": DOUBLE, "baseline": JSON, "measured": JSON,
                    "best": JSON, "verdict": STRING, "speedup": DOUBLE},
}
for _properties in EXECUTION_TYPES.values():
  _properties[FAILURE_REASON] = STRING

CONTEXT_TYPES: Dict[str, Dict[str, str]] = {
    EXPERIMENT: {},  # named by its job dir
    PIPELINE_RUN: {"experiment": STRING},
}


def _jsonable(value):
  if hasattr(value, "tolist"):  # numpy scalars and arrays
    return value.tolist()
  raise TypeError(f"{type(value).__name__} is not JSON serializable")


def set_properties(message, type_name: str, declared: Mapping[str, str],
                   values: Mapping[str, Any]) -> None:
  """Sets declared properties on an artifact, execution or context; None values are skipped."""
  for key, value in values.items():
    if key not in declared:
      raise ValueError(f"{type_name} has no property {key!r}; declared: {sorted(declared)} "
                       f"(declare new ones in lineage/schema.py)")
    if value is None:
      continue
    kind, target = declared[key], message.properties[key]
    if kind == JSON:
      try:
        target.string_value = json.dumps(value, sort_keys=True, default=_jsonable)
      except (TypeError, ValueError) as e:
        raise ValueError(f"{type_name}.{key}: cannot store as JSON: {e}") from e
    elif kind == BOOL and isinstance(value, bool):
      target.bool_value = value
    elif kind == INT and isinstance(value, numbers.Integral) and not isinstance(value, bool):
      target.int_value = int(value)
    elif kind == DOUBLE and isinstance(value, numbers.Real) and not isinstance(value, bool):
      target.double_value = float(value)
    elif kind == STRING and isinstance(value, str):
      target.string_value = value
    else:
      raise ValueError(f"{type_name}.{key} is {kind}, got {type(value).__name__} {value!r}")


def get_properties(message, declared: Mapping[str, str]) -> Dict[str, Any]:
  """The stored properties as Python values (JSON ones decoded)."""
  values = {}
  for key, value in message.properties.items():
    field = value.WhichOneof("value")
    if field is None:
      continue
    decoded = getattr(value, field)
    if declared.get(key) == JSON:
      decoded = json.loads(decoded)
    values[key] = decoded
  return values


def external_id(type_name: str, uri: str, content_fingerprint: str) -> str:
  digest = hashlib.sha256(f"{type_name}\n{uri}\n{content_fingerprint}".encode()).hexdigest()
  return f"{type_name}:{digest[:48]}"


def new_artifact(type_name: str, uri: str, **properties) -> metadata_store_pb2.Artifact:
  """An artifact not yet in the store: `uri` is where it lives, `properties` as declared.

  Its type id is filled in by the recorder, which knows the store.
  """
  if type_name not in ARTIFACT_TYPES:
    raise ValueError(f"unknown artifact type {type_name!r}; known: {sorted(ARTIFACT_TYPES)}")
  if not uri:
    raise ValueError(f"{type_name}: the URI must not be empty")
  artifact = metadata_store_pb2.Artifact(uri=uri, state=metadata_store_pb2.Artifact.LIVE)
  set_properties(artifact, type_name, ARTIFACT_TYPES[type_name], properties)
  content = properties.get("fingerprint")
  if content:
    artifact.external_id = external_id(type_name, uri, content)
  # The recorder reads the type name from here before it knows the type id.
  artifact.type = type_name
  return artifact


def dataset(uri: str, split: str, row_count: int, label_count: int,
            content_fingerprint: Optional[str] = None) -> metadata_store_pb2.Artifact:
  """A data set: `uri` is the comma-separated files or globs as given to the trainer.

  The fingerprint (hash of every matching file's content) is computed when not given.
  """
  files = fingerprint_lib.match_files(uri)
  content = content_fingerprint or fingerprint_lib.fingerprint_files(files)
  artifact = new_artifact(DATASET, uri, split=split, row_count=row_count,
                          label_count=label_count, fingerprint=content, file_count=len(files))
  # One file can hold several splits (CLINC150's JSON holds train, val, test and their oos_
  # splits): what was read from it is part of which data set it is.
  artifact.external_id = external_id(DATASET, uri, f"{content}\n{split}\n{row_count}\n"
                                                   f"{label_count}")
  return artifact


def hub_module(module_dir: str) -> metadata_store_pb2.Artifact:
  return new_artifact(HUB_MODULE, module_dir.rstrip("/"),
                      fingerprint=fingerprint_lib.fingerprint_dir(module_dir).fingerprint)


def model(checkpoint_dir: str, checkpoint: Optional[str] = None,
          global_step: Optional[int] = None) -> metadata_store_pb2.Artifact:
  """The trained model; not fingerprinted: checkpoints are large and keep changing."""
  return new_artifact(MODEL, checkpoint_dir.rstrip("/"), checkpoint=checkpoint,
                      global_step=global_step)


def _servable(type_name: str, version_dir: str, model_name: Optional[str]):
  version_dir = version_dir.rstrip("/")
  digest = fingerprint_lib.fingerprint_dir(version_dir)
  return new_artifact(type_name, version_dir, model_name=model_name,
                      version=versions.parse_version(posixpath.basename(version_dir)),
                      fingerprint=digest.fingerprint, size_bytes=digest.size_bytes)


def exported_model(version_dir: str,
                   model_name: Optional[str] = None) -> metadata_store_pb2.Artifact:
  """A SavedModel version dir as exported; fingerprinted, so it must be complete."""
  return _servable(EXPORTED_MODEL, version_dir, model_name)


def optimized_model(version_dir: str,
                    model_name: Optional[str] = None) -> metadata_store_pb2.Artifact:
  return _servable(OPTIMIZED_MODEL, version_dir, model_name)


def verdict(uri: str, blessed: bool, reason: str = "", backend: str = "",
            model_version: Optional[int] = None) -> metadata_store_pb2.Artifact:
  """The smoke test's verdict; `uri` is its verdict.json (or the dir holding it)."""
  return new_artifact(VERDICT, uri, blessed=blessed, reason=reason, backend=backend,
                      model_version=model_version)


def pushed_model(version_dir: str, base_path: str, version: int,
                 content_fingerprint: str) -> metadata_store_pb2.Artifact:
  return new_artifact(PUSHED_MODEL, version_dir, base_path=base_path, version=version,
                      fingerprint=content_fingerprint)


def batching_parameters(uri: str, parameters, requests_per_s: float, p99_ms: float,
                        concurrency: int) -> metadata_store_pb2.Artifact:
  """A tuned BatchingParameters file; `parameters` is the message written to `uri`."""
  return new_artifact(BATCHING_PARAMETERS, uri,
                      max_batch_size=parameters.max_batch_size.value,
                      batch_timeout_micros=parameters.batch_timeout_micros.value,
                      num_batch_threads=parameters.num_batch_threads.value,
                      max_enqueued_batches=parameters.max_enqueued_batches.value,
                      requests_per_s=requests_per_s, p99_ms=p99_ms, concurrency=concurrency)
