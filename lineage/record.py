"""Recording stages: each run of a stage is an execution with its inputs, outputs and figures.

    recorder = Recorder(store, experiment=job_dir)          # one per pipeline run
    with recorder.execution(schema.OPTIMIZE, inputs={"model": exported},
                            params={"transforms": specs}) as run:
      result = optimizer.optimize(...)
      run.output("optimized", schema.optimized_model(result.output_dir))
      run.results(agreement=result.guard.agreement)

The execution is stored as RUNNING, with its input events, before the block runs, so a
process killed outright leaves a RUNNING execution, never a COMPLETE one. It becomes
COMPLETE, atomically with its output artifacts and events, only when the block succeeds;
any exception (KeyboardInterrupt included) makes it FAILED with the reason in the
`failure_reason` property, records no outputs, and is re-raised.

Every execution is associated with two contexts, and its artifacts attributed to them: the
experiment (the job dir) and the pipeline run (one per `Recorder`; the run is a child of
the experiment).
"""

import contextlib
import os
import time
import uuid
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

from absl import logging
from ml_metadata import errors as mlmd_errors
from ml_metadata.proto import metadata_store_pb2

from lineage import schema
from lineage.store import LineageStore

Artifact = metadata_store_pb2.Artifact
Inputs = Mapping[str, Union[Artifact, Sequence[Artifact]]]

# MySQL keeps string properties in TEXT columns (64 KiB); a traceback-sized message fits.
_MAX_REASON_CHARS = 8000


def experiment_name(job_dir: str) -> str:
  """The experiment context's name: the job dir, absolute when local, so any spelling matches."""
  job_dir = job_dir.rstrip("/")
  return job_dir if "://" in job_dir else os.path.abspath(job_dir)


def new_run_name() -> str:
  return f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:8]}"


def failure_reason(error: BaseException) -> str:
  if isinstance(error, KeyboardInterrupt):
    return "interrupted (KeyboardInterrupt)"
  text = str(error).strip()
  reason = f"{type(error).__name__}: {text}" if text else type(error).__name__
  return reason[:_MAX_REASON_CHARS]


class ExecutionRun:
  """The handle a stage gets inside `Recorder.execution`."""

  def __init__(self, type_name: str, execution: metadata_store_pb2.Execution):
    self.type_name = type_name
    self._execution = execution
    self._outputs: List[Tuple[str, Artifact]] = []

  @property
  def id(self) -> int:
    return self._execution.id

  @property
  def outputs(self) -> List[Tuple[str, Artifact]]:
    return list(self._outputs)

  def output(self, key: str, artifact: Artifact) -> Artifact:
    """Declares a new artifact this execution produced; it is stored when the block succeeds.

    Returns the same object, which then carries its store id and can be an input of the
    next stage.
    """
    if artifact.id:
      raise ValueError(f"{self.type_name} output {key!r}: artifact {artifact.id} is already "
                       f"stored; outputs must be new artifacts")
    if not artifact.type:
      raise ValueError(f"{self.type_name} output {key!r}: build the artifact with a "
                       f"lineage.schema builder so its type is known")
    self._outputs.append((key, artifact))
    return artifact

  def results(self, **values: Any) -> None:
    """Sets result properties (as `schema.EXECUTION_TYPES` declares) on the execution."""
    schema.set_properties(self._execution, self.type_name,
                          schema.EXECUTION_TYPES[self.type_name], values)


class Recorder:
  """Records the executions of one pipeline run of one experiment into a store."""

  def __init__(self, store: LineageStore, experiment: str, run_name: Optional[str] = None):
    self.store = store
    self.experiment = self._ensure_context(schema.EXPERIMENT, experiment_name(experiment), {})
    self.pipeline_run = self._ensure_context(schema.PIPELINE_RUN, run_name or new_run_name(),
                                    {"experiment": self.experiment.name},
                                    parent=self.experiment)

  @property
  def contexts(self) -> List[metadata_store_pb2.Context]:
    return [self.experiment, self.pipeline_run]

  def _ensure_context(self, type_name: str, name: str, properties: Mapping[str, Any],
                      parent: Optional[metadata_store_pb2.Context] = None):
    client = self.store.mlmd
    existing = client.get_context_by_type_and_name(type_name, name)
    if existing is not None:
      return existing
    context = metadata_store_pb2.Context(type_id=self.store.type_id(type_name), name=name)
    schema.set_properties(context, type_name, schema.CONTEXT_TYPES[type_name], properties)
    try:
      [context.id] = client.put_contexts([context])
    except mlmd_errors.AlreadyExistsError:
      # Another process created it after our look-up.
      return client.get_context_by_type_and_name(type_name, name)
    if parent is not None:
      client.put_parent_contexts([metadata_store_pb2.ParentContext(
          child_id=context.id, parent_id=parent.id)])
    return context

  def resolve(self, artifact: Artifact) -> Artifact:
    """The stored artifact `artifact` stands for, or a copy ready to be stored.

    With an id: that stored artifact. With an external id (content-fingerprinted): the
    artifact stored under it, if any. Otherwise the newest stored artifact of its type
    at its URI. A stage that runs alone on artifacts another process made thus links to
    them; one it has never seen is stored along with the execution.
    """
    client = self.store.mlmd
    if artifact.id:
      found = client.get_artifacts_by_id([artifact.id])
      if not found:
        raise ValueError(f"artifact {artifact.id} ({artifact.uri}) is not in the store "
                         f"{self.store.describe()}")
      return found[0]
    if not artifact.type:
      raise ValueError(f"artifact at {artifact.uri!r} has no type: build it with a "
                       f"lineage.schema builder")
    type_id = self.store.type_id(artifact.type)
    if artifact.external_id:
      try:
        found = client.get_artifacts_by_external_ids([artifact.external_id])
      except mlmd_errors.NotFoundError:
        found = []
    else:
      found = sorted((a for a in client.get_artifacts_by_uri(artifact.uri)
                      if a.type_id == type_id),
                     key=lambda a: (a.create_time_since_epoch, a.id))[-1:]
    if found:
      return found[0]
    fresh = Artifact()
    fresh.CopyFrom(artifact)
    fresh.type_id = type_id
    return fresh

  def _artifact_events(self, artifacts: Mapping[str, Union[Artifact, Sequence[Artifact]]],
                       event_type) -> List[Tuple[Artifact, metadata_store_pb2.Event]]:
    pairs = []
    for key, value in artifacts.items():
      for index, artifact in enumerate([value] if isinstance(value, Artifact) else value):
        event = metadata_store_pb2.Event(type=event_type)
        event.path.steps.add().key = key
        event.path.steps.add().index = index
        pairs.append((artifact, event))
    return pairs

  def _put(self, execution, pairs) -> List[int]:
    execution_id, artifact_ids, _ = self.store.mlmd.put_execution(
        execution, pairs, self.contexts,
        reuse_artifact_if_already_exist_by_external_id=True, force_reuse_context=True)
    execution.id = execution_id
    return artifact_ids

  @contextlib.contextmanager
  def execution(self, type_name: str, inputs: Optional[Inputs] = None,
                params: Optional[Mapping[str, Any]] = None) -> Iterator[ExecutionRun]:
    """Records one run of a stage; see the module docstring."""
    if type_name not in schema.EXECUTION_TYPES:
      raise ValueError(f"unknown execution type {type_name!r}; known: "
                       f"{sorted(schema.EXECUTION_TYPES)}")
    execution = metadata_store_pb2.Execution(
        type_id=self.store.type_id(type_name),
        last_known_state=metadata_store_pb2.Execution.RUNNING)
    schema.set_properties(execution, type_name, schema.EXECUTION_TYPES[type_name], params or {})
    resolved = {key: [self.resolve(a) for a in ([v] if isinstance(v, Artifact) else v)]
                for key, v in (inputs or {}).items()}
    self._put(execution, self._artifact_events(resolved, metadata_store_pb2.Event.INPUT))
    run = ExecutionRun(type_name, execution)
    try:
      yield run
    except BaseException as error:
      self._fail(execution, type_name, failure_reason(error))
      raise
    # Outputs and the COMPLETE state land in one transaction: never one without the other.
    grouped: Dict[str, List[Tuple[Artifact, Artifact]]] = {}
    for key, artifact in run.outputs:
      ready = Artifact()
      ready.CopyFrom(artifact)
      ready.type_id = self.store.type_id(artifact.type)
      grouped.setdefault(key, []).append((artifact, ready))
    execution.last_known_state = metadata_store_pb2.Execution.COMPLETE
    try:
      ids = self._put(execution, self._artifact_events(
          {key: [ready for _, ready in pairs] for key, pairs in grouped.items()},
          metadata_store_pb2.Event.OUTPUT))
    except BaseException as error:
      self._fail(execution, type_name, f"recording the outputs failed: {failure_reason(error)}")
      raise
    declared = [artifact for pairs in grouped.values() for artifact, _ in pairs]
    for artifact, artifact_id in zip(declared, ids):
      artifact.id = artifact_id

  def _fail(self, execution, type_name: str, reason: str) -> None:
    failed = metadata_store_pb2.Execution()
    failed.CopyFrom(execution)
    failed.last_known_state = metadata_store_pb2.Execution.FAILED
    failed.properties[schema.FAILURE_REASON].string_value = reason
    try:
      self._put(failed, [])
    except Exception as e:  # noqa: BLE001 -- never hide the stage's own error behind ours
      logging.error("Could not mark %s execution %d FAILED (%s) in %s: %s", type_name,
                    execution.id, reason, self.store.describe(), e)
