"""Recording through the API: the chain's events, properties and contexts; FAILED on errors."""

import json
import os

import pytest
from ml_metadata.proto import metadata_store_pb2

from lineage import fingerprint
from lineage import record
from lineage import schema
from lineage import store as store_lib
from tests.lineage import lineage_chain

Event = metadata_store_pb2.Event
Execution = metadata_store_pb2.Execution


@pytest.fixture
def store(tmp_path):
  return store_lib.open_store(store_lib.store_config(metadata_db=str(tmp_path / "m.sqlite")))


def _events(store, execution):
  """{(event type name, first path key): [artifact type name, ...]} of an execution."""
  found = {}
  for event in store.mlmd.get_events_by_execution_ids([execution.id]):
    [artifact] = store.mlmd.get_artifacts_by_id([event.artifact_id])
    key = (Event.Type.Name(event.type), event.path.steps[0].key)
    found.setdefault(key, []).append(store.type_name(artifact.type_id))
  return found


def test_the_full_chain_is_recorded_with_its_events_and_properties(store, tmp_path):
  recorder = record.Recorder(store, str(tmp_path / "job"))
  done = lineage_chain.record_chain(recorder, str(tmp_path), push_to=str(tmp_path / "serving"))
  executions = {store.type_name(e.type_id): e for e in store.mlmd.get_executions()}
  assert sorted(executions) == sorted(schema.PIPELINE_EXECUTIONS)
  assert {Execution.State.Name(e.last_known_state) for e in executions.values()} == {"COMPLETE"}

  assert _events(store, executions[schema.TRAIN]) == {
      ("INPUT", "train"): [schema.DATASET], ("INPUT", "eval"): [schema.DATASET],
      ("OUTPUT", "hub_module"): [schema.HUB_MODULE], ("OUTPUT", "model"): [schema.MODEL]}
  assert _events(store, executions[schema.EXPORT]) == {
      ("INPUT", "model"): [schema.MODEL], ("OUTPUT", "exported"): [schema.EXPORTED_MODEL]}
  assert _events(store, executions[schema.OPTIMIZE]) == {
      ("INPUT", "model"): [schema.EXPORTED_MODEL],
      ("OUTPUT", "optimized"): [schema.OPTIMIZED_MODEL]}
  assert _events(store, executions[schema.SMOKE_TEST]) == {
      ("INPUT", "model"): [schema.OPTIMIZED_MODEL], ("OUTPUT", "verdict"): [schema.VERDICT]}
  assert _events(store, executions[schema.PUSH]) == {
      ("INPUT", "model"): [schema.OPTIMIZED_MODEL], ("OUTPUT", "pushed"): [schema.PUSHED_MODEL]}

  train = schema.get_properties(executions[schema.TRAIN],
                                schema.EXECUTION_TYPES[schema.TRAIN])
  assert train["hyperparameters"] == lineage_chain.HYPERPARAMETERS
  assert train["metrics"] == lineage_chain.METRICS
  assert train["accuracy"] == 0.875 and train["global_step"] == 400
  optimize = schema.get_properties(executions[schema.OPTIMIZE],
                                   schema.EXECUTION_TYPES[schema.OPTIMIZE])
  assert optimize["transforms"] == lineage_chain.TRANSFORMS and optimize["agreement"] == 1.0

  [dataset] = [a for a in store.mlmd.get_artifacts_by_type(schema.DATASET)
               if a.properties["split"].string_value == "train"]
  assert dataset.properties["fingerprint"].string_value == fingerprint.fingerprint_files(
      dataset.uri)
  assert dataset.properties["row_count"].int_value == 1
  exported = done["exported"]
  assert exported.id and exported.properties["version"].int_value == 1700000001
  assert exported.properties["fingerprint"].string_value == fingerprint.fingerprint_dir(
      exported.uri).fingerprint
  [verdict] = store.mlmd.get_artifacts_by_type(schema.VERDICT)
  assert verdict.properties["blessed"].bool_value
  [pushed] = store.mlmd.get_artifacts_by_type(schema.PUSHED_MODEL)
  assert pushed.properties["version"].int_value == 1
  assert pushed.uri == str(tmp_path / "serving" / "1")

  # Every execution belongs to the run and the experiment; the run is the experiment's child.
  for context in recorder.contexts:
    assert len(store.mlmd.get_executions_by_context(context.id)) == len(executions)
    assert len(store.mlmd.get_artifacts_by_context(context.id)) == len(
        store.mlmd.get_artifacts())
  [parent] = store.mlmd.get_parent_contexts_by_context(recorder.pipeline_run.id)
  assert parent.id == recorder.experiment.id
  assert recorder.experiment.name == str(tmp_path / "job")


def test_the_same_data_and_models_are_one_artifact_across_runs(store, tmp_path):
  first = record.Recorder(store, str(tmp_path / "job"))
  lineage_chain.record_chain(first, str(tmp_path))
  # A stage run alone later, in another run, on the export it did not make.
  later = record.Recorder(store, str(tmp_path / "job") + "/")
  assert later.experiment.id == first.experiment.id
  assert later.pipeline_run.id != first.pipeline_run.id
  export_dir = str(tmp_path / "job" / "export" / "intent" / "1700000001")
  with later.execution(schema.SMOKE_TEST, inputs={"model": schema.exported_model(export_dir)}):
    pass
  lineage_chain.record_chain(later, str(tmp_path))
  assert len(store.mlmd.get_artifacts_by_type(schema.DATASET)) == 2
  assert len(store.mlmd.get_artifacts_by_type(schema.EXPORTED_MODEL)) == 1
  assert len(store.mlmd.get_artifacts_by_type(schema.MODEL)) == 2  # each training is new
  [exported] = store.mlmd.get_artifacts_by_type(schema.EXPORTED_MODEL)
  consumers = [e for e in store.mlmd.get_events_by_artifact_ids([exported.id])
               if e.type == Event.INPUT]
  assert len(consumers) == 3  # two optimizations and the lone smoke test


@pytest.mark.parametrize("error, reason", [
    (ValueError("the accuracy guard refused: 0.91 < 0.995"),
     "ValueError: the accuracy guard refused: 0.91 < 0.995"),
    (KeyboardInterrupt(), "interrupted (KeyboardInterrupt)"),
])
def test_a_failing_stage_ends_failed_with_its_reason(store, tmp_path, error, reason):
  recorder = record.Recorder(store, str(tmp_path / "job"))
  export_dir = lineage_chain.fake_servable(str(tmp_path / "export" / "1"), "a")
  with pytest.raises(type(error)):
    with recorder.execution(schema.OPTIMIZE, inputs={"model": schema.exported_model(export_dir)},
                            params={"transforms": ["freeze"]}) as run:
      run.output("optimized", schema.optimized_model(export_dir))
      raise error
  [execution] = store.mlmd.get_executions()
  assert execution.last_known_state == Execution.FAILED
  assert execution.properties["failure_reason"].string_value == reason
  assert json.loads(execution.properties["transforms"].string_value) == ["freeze"]
  assert store.mlmd.get_artifacts_by_type(schema.OPTIMIZED_MODEL) == []
  assert [Event.Type.Name(e.type) for e in store.mlmd.get_events_by_execution_ids(
      [execution.id])] == ["INPUT"]


def test_an_execution_is_running_while_its_stage_runs(store, tmp_path):
  recorder = record.Recorder(store, str(tmp_path / "job"))
  with recorder.execution(schema.TRAIN) as run:
    [stored] = store.mlmd.get_executions_by_id([run.id])
    assert stored.last_known_state == Execution.RUNNING
  [stored] = store.mlmd.get_executions_by_id([run.id])
  assert stored.last_known_state == Execution.COMPLETE


def test_undeclared_or_mistyped_properties_are_refused(store, tmp_path):
  recorder = record.Recorder(store, str(tmp_path / "job"))
  with pytest.raises(ValueError, match="Train has no property 'acuracy'; declared: .*accuracy"):
    with recorder.execution(schema.TRAIN) as run:
      run.results(acuracy=0.9)
  [execution] = store.mlmd.get_executions()
  assert execution.last_known_state == Execution.FAILED
  with pytest.raises(ValueError, match="Train.train_examples is int, got str"):
    with recorder.execution(schema.TRAIN, params={"train_examples": "many"}):
      pass
  with pytest.raises(ValueError, match="unknown execution type 'Deploy'"):
    with recorder.execution("Deploy"):
      pass


def test_fingerprints_follow_content_not_names(tmp_path):
  a = lineage_chain.write(str(tmp_path / "a" / "train.csv"), "text,intent\nhi,greet\n")
  b = lineage_chain.write(str(tmp_path / "b" / "copy.csv"), "text,intent\nhi,greet\n")
  assert fingerprint.fingerprint_files(a) == fingerprint.fingerprint_files([b])
  glob = str(tmp_path / "*" / "*.csv")
  assert fingerprint.match_files(glob) == [a, b]
  assert fingerprint.fingerprint_files(f"{a},{b}") == fingerprint.fingerprint_files(glob)
  lineage_chain.write(b, "text,intent\nhi,bye\n")
  assert fingerprint.fingerprint_files(a) != fingerprint.fingerprint_files(b)
  with pytest.raises(FileNotFoundError, match="no file matches"):
    fingerprint.fingerprint_files(str(tmp_path / "missing-*.csv"))

  one = lineage_chain.fake_servable(str(tmp_path / "m" / "1"), "x")
  two = lineage_chain.fake_servable(str(tmp_path / "m" / "2"), "x")
  assert fingerprint.fingerprint_dir(one) == fingerprint.fingerprint_dir(two)
  os.rename(os.path.join(two, "assets"), os.path.join(two, "assets.extra"))
  assert fingerprint.fingerprint_dir(one).fingerprint != fingerprint.fingerprint_dir(
      two).fingerprint
