"""The push gate: only a blessed, unchanged servable reaches the serving base path."""

import os

import pytest
from ml_metadata.proto import metadata_store_pb2

from lineage import fingerprint
from lineage import record
from lineage import schema
from lineage import push as push_lib
from lineage import store as store_lib
from tests.lineage import lineage_chain

Execution = metadata_store_pb2.Execution


@pytest.fixture
def recorder(tmp_path):
  store = store_lib.open_store(store_lib.store_config(metadata_db=str(tmp_path / "m.sqlite")))
  return record.Recorder(store, str(tmp_path / "job"))


def _pushes(recorder):
  store = recorder.store
  return [(Execution.State.Name(e.last_known_state),
           e.properties["failure_reason"].string_value)
          for e in store.mlmd.get_executions_by_type(schema.PUSH)]


def _exported(recorder, tmp_path):
  export_dir = lineage_chain.fake_servable(str(tmp_path / "export" / "1700000001"), "a")
  with recorder.execution(schema.EXPORT) as run:
    return run.output("exported", schema.exported_model(export_dir))


def test_a_blessed_model_is_pushed_as_the_next_version(recorder, tmp_path):
  done = lineage_chain.record_chain(recorder, str(tmp_path))
  serving = str(tmp_path / "serving" / "intent")
  first = push_lib.push(recorder, done["optimized"], serving)
  assert (first.version, first.version_dir) == (1, os.path.join(serving, "1"))
  second = push_lib.push(recorder, done["optimized"].uri, serving + "/")
  assert second.version == 2 and second.source.id == done["optimized"].id
  assert sorted(os.listdir(serving)) == ["1", "2"]  # no staging dir left behind
  source = fingerprint.fingerprint_dir(done["optimized"].uri).fingerprint
  for result in (first, second):
    assert fingerprint.fingerprint_dir(result.version_dir).fingerprint == source
    assert result.pushed.properties["version"].int_value == result.version
  assert _pushes(recorder) == [("COMPLETE", "")] * 2


def test_push_refuses_a_model_without_a_verdict(recorder, tmp_path):
  exported = _exported(recorder, tmp_path)
  serving = str(tmp_path / "serving")
  with pytest.raises(push_lib.PushRefused, match=r"no smoke test of ExportedModel \d+ .* is "
                                                 r"recorded: it has no verdict"):
    push_lib.push(recorder, exported, serving)
  assert not os.path.exists(serving)
  [(state, reason)] = _pushes(recorder)
  assert state == "FAILED" and "PushRefused: no smoke test of ExportedModel" in reason


def test_push_refuses_a_model_its_smoke_test_did_not_bless(recorder, tmp_path):
  done = lineage_chain.record_chain(recorder, str(tmp_path), blessed=False)
  with pytest.raises(push_lib.PushRefused, match="did not bless it: 2 of 24 checks failed"):
    push_lib.push(recorder, done["optimized"], str(tmp_path / "serving"))
  assert not os.path.exists(tmp_path / "serving")
  # The export was never smoke-tested, only its optimized version.
  with pytest.raises(push_lib.PushRefused, match="no smoke test of ExportedModel"):
    push_lib.push(recorder, done["exported"].uri, str(tmp_path / "serving"))
  assert [state for state, _ in _pushes(recorder)] == ["FAILED", "FAILED"]


def test_push_refuses_when_the_newest_smoke_test_failed(recorder, tmp_path):
  done = lineage_chain.record_chain(recorder, str(tmp_path))
  with pytest.raises(RuntimeError):
    with recorder.execution(schema.SMOKE_TEST, inputs={"model": done["optimized"]}):
      raise RuntimeError("server did not start")
  # The earlier, completed smoke test still blesses it; a later NOT_BLESSED one would not.
  assert push_lib.push(recorder, done["optimized"], str(tmp_path / "serving")).version == 1
  with recorder.execution(schema.SMOKE_TEST, inputs={"model": done["optimized"]}) as run:
    run.output("verdict", schema.verdict(str(tmp_path / "v2.json"), False, "latency failed"))
  with pytest.raises(push_lib.PushRefused, match="did not bless it: latency failed"):
    push_lib.push(recorder, done["optimized"], str(tmp_path / "serving"))


def test_push_refuses_a_model_changed_after_verification(recorder, tmp_path):
  done = lineage_chain.record_chain(recorder, str(tmp_path))
  lineage_chain.write(os.path.join(done["optimized"].uri, "saved_model.pb"), "tampered")
  for model in (done["optimized"], done["optimized"].uri):
    with pytest.raises(push_lib.PushRefused, match="changed since it was recorded"):
      push_lib.push(recorder, model, str(tmp_path / "serving"))
  assert not os.path.exists(tmp_path / "serving")


def test_push_refuses_an_unrecorded_directory(recorder, tmp_path):
  unknown = lineage_chain.fake_servable(str(tmp_path / "elsewhere" / "3"), "z")
  with pytest.raises(push_lib.PushRefused, match="is not recorded as an exported or optimized"):
    push_lib.push(recorder, unknown, str(tmp_path / "serving"))
  with pytest.raises(push_lib.PushRefused, match="is not a directory"):
    push_lib.push(recorder, str(tmp_path / "missing"), str(tmp_path / "serving"))
  assert [state for state, _ in _pushes(recorder)] == ["FAILED", "FAILED"]


def test_a_failing_stage_leaves_a_failed_execution_and_no_push(recorder, tmp_path):
  """The pipeline's order: the guard refuses, so nothing is verified or pushed."""
  exported = _exported(recorder, tmp_path)
  serving = str(tmp_path / "serving")
  with pytest.raises(ValueError, match="guard"):
    with recorder.execution(schema.OPTIMIZE, inputs={"model": exported}):
      raise ValueError("[guard] optimized model disagrees with the original")
  with pytest.raises(push_lib.PushRefused):
    push_lib.push(recorder, exported, serving)
  states = {schema.OPTIMIZE: "FAILED", schema.EXPORT: "COMPLETE", schema.PUSH: "FAILED"}
  for type_name, state in states.items():
    [execution] = recorder.store.mlmd.get_executions_by_type(type_name)
    assert Execution.State.Name(execution.last_known_state) == state
  assert recorder.store.mlmd.get_artifacts_by_type(schema.PUSHED_MODEL) == []
  assert not os.path.exists(serving)

