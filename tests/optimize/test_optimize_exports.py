"""End to end: optimize exports of each canned estimator and of the hub text model."""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.framework import op_def_registry

from export.servable import SessionServable
from optimize import optimizer
from optimize import savedmodel_io
from optimize import transforms
from tests.helpers import PROJECT_ROOT, run_python, scramble_weights
from tests.optimize import estimator_exports

# Loads a version dir in a fresh interpreter and runs every signature on the inputs the
# test computed; prints the answers.
RUN_SIGNATURES = r"""
import json, os, pickle, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import tensorflow as tf
version_dir, inputs_file = sys.argv[1], sys.argv[2]
inputs = pickle.load(open(inputs_file, "rb"))
answers = {}
with tf.compat.v1.Session(graph=tf.Graph()) as session:
  meta_graph = tf.compat.v1.saved_model.load(session, ["serve"], version_dir)
  for name, feeds in inputs.items():
    signature = meta_graph.signature_def[name]
    fetched = session.run({k: v.name for k, v in signature.outputs.items()},
                          {signature.inputs[k].name: v for k, v in feeds.items()})
    answers[name] = {k: v.astype(str).tolist() if v.dtype == object else v.tolist()
                     for k, v in fetched.items()}
print(json.dumps(answers))
"""


DEFAULT_STEPS = [s.label for s in transforms.parse_transforms(transforms.DEFAULT_TRANSFORMS)]


def tree_digest(path):
  digest = hashlib.sha256()
  for directory, _, files in sorted(os.walk(path)):
    for name in sorted(files):
      digest.update(name.encode())
      with open(os.path.join(directory, name), "rb") as f:
        digest.update(f.read())
  return digest.hexdigest()


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
  base = tmp_path_factory.mktemp("estimators")
  eval_data = estimator_exports.write_eval_tfrecord(str(base / "eval.tfrecord"))
  return {kind: estimator_exports.build(kind, str(base)) for kind in estimator_exports.KINDS}, \
      eval_data


def run(version_dir, output_dir, **settings):
  return optimizer.optimize(version_dir, output_dir, optimizer.OptimizeSettings(**settings))


def assert_same_signatures(original_dir, optimized_dir):
  original = savedmodel_io.read_servable(original_dir).meta_graph.signature_def
  optimized = savedmodel_io.read_servable(optimized_dir).meta_graph.signature_def
  assert sorted(original) == sorted(optimized)
  for name in original:
    assert original[name].method_name == optimized[name].method_name
    for field in ("inputs", "outputs"):
      a, b = getattr(original[name], field), getattr(optimized[name], field)
      assert sorted(a) == sorted(b)
      for key in a:
        assert (a[key].dtype, a[key].tensor_shape) == (b[key].dtype, b[key].tensor_shape)


def assert_frozen_with_stock_ops(optimized_dir):
  graph_def = savedmodel_io.read_servable(optimized_dir).graph_def
  used = savedmodel_io.ops_used(graph_def)
  # Only constants too large for the GraphDef may live in variables/, read-only.
  assert all(n.name.endswith("/stored") for n in graph_def.node if n.op == "VarHandleOp")
  assert "VariableV2" not in used
  assert all(op_def_registry.get(op) is not None and not op.startswith("_") for op in used)


def assert_same_answers_in_a_fresh_process(original_dir, optimized_dir, eval_data, tmp_path):
  """The first batch of the guard's real evidence (the eval file's, else the export's own)
  answered alike by the optimized model loaded in a fresh process."""
  with SessionServable(original_dir) as original:
    evidence = optimizer.build_evidence(savedmodel_io.read_servable(original_dir), original,
                                        optimizer.OptimizeSettings(eval_data=eval_data))
    feeds = {name: s.batches[0].inputs for name, s in evidence.signatures.items()}
    expected = {name: s.batches[0].expected for name, s in evidence.signatures.items()}
  import pickle
  inputs_file = tmp_path / "inputs.pickle"
  inputs_file.write_bytes(pickle.dumps(feeds))
  answers = json.loads(run_python(RUN_SIGNATURES, optimized_dir, str(inputs_file)))
  for name, outputs in expected.items():
    for key, value in outputs.items():
      actual = np.array(answers[name][key])
      if value.dtype.kind == "f":
        np.testing.assert_allclose(actual, value, atol=0.05 * max(1.0, np.abs(value).max()))
      else:
        assert actual.tolist() == (value.astype(str) if value.dtype == object else value).tolist()


@pytest.mark.slow
@pytest.mark.parametrize("evidence", ["600 real", "64 real", "none"])
@pytest.mark.parametrize("kind", estimator_exports.KINDS)
def test_optimizes_each_canned_estimator_export(exports, kind, evidence, tmp_path):
  version_dirs, eval_data = exports
  if evidence == "64 real":
    eval_data = estimator_exports.write_eval_tfrecord(str(tmp_path / "few.tfrecord"), count=64)
  elif evidence == "none":
    eval_data = None
  original_dir = version_dirs[kind]
  before = tree_digest(original_dir)
  result = run(original_dir, str(tmp_path / "optimized"), eval_data=eval_data, measure=False)
  # Real evidence, plenty or little, never refuses what no evidence would pass.
  assert result.written and result.guard.passed and result.guard.agreement >= 0.995
  assert result.guard.real_examples == {"600 real": 600, "64 real": 64, "none": 0}[evidence]
  assert {s.name for s in result.guard.signatures} == set(
      savedmodel_io.read_servable(original_dir).meta_graph.signature_def)
  assert tree_digest(original_dir) == before, "the input model was modified"
  assert_same_signatures(original_dir, result.output_dir)
  assert_frozen_with_stock_ops(result.output_dir)
  assert_same_answers_in_a_fresh_process(original_dir, result.output_dir, eval_data, tmp_path)
  if kind == "dnn_batch_norm":
    nodes = savedmodel_io.read_servable(result.output_dir).graph_def.node
    assert not [n.name for n in nodes if "batchnorm" in n.name], "batch norm was not folded"


def test_vocabulary_file_asset_survives_and_its_table_still_works(exports, tmp_path):
  version_dirs, eval_data = exports
  original_dir = version_dirs["linear_vocabulary_file"]
  result = run(original_dir, str(tmp_path / "optimized"), eval_data=eval_data, measure=False)
  assert os.listdir(os.path.join(result.output_dir, "assets")) == ["words.txt"]
  assert savedmodel_io.read_servable(result.output_dir).meta_graph.asset_file_def
  examples = [tf.train.Example(features=tf.train.Features(feature={
      "word": tf.train.Feature(bytes_list=tf.train.BytesList(value=[w.encode()])),
      "tag": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"tag1"]))}))
      .SerializeToString() for w in estimator_exports.WORDS]
  with SessionServable(original_dir) as a, SessionServable(result.output_dir) as b:
    expected = a.run("predict", {"examples": examples})["logits"]
    actual = b.run("predict", {"examples": examples})["logits"]
  np.testing.assert_allclose(actual, expected, atol=0.05)
  assert len({round(float(v), 3) for v in expected[:, 0]}) > 1, "vocabulary ids all collapsed"


@pytest.mark.slow
def test_optimizes_the_hub_text_model_smaller_with_warmup_kept(trained, tmp_path):
  # No evaluation file: the guard finds the real sample the exporter put in the version.
  result = run(trained.export_dir, str(tmp_path / "optimized"), latency_repeats=3)
  assert result.guard.passed and result.guard.real_examples == 770
  assert result.guard.real_sources[0].startswith(
      f"770 from the export's evaluation sample ({trained.export_dir}/assets.extra/")
  scored = [s.labels for s in result.guard.signatures if s.labels is not None]
  assert scored and all(labels.examples == 154 for labels in scored)
  assert_same_signatures(trained.export_dir, result.output_dir)
  assert_frozen_with_stock_ops(result.output_dir)
  warmup = "assets.extra/tf_serving_warmup_requests"
  with open(os.path.join(trained.export_dir, warmup), "rb") as a, \
      open(os.path.join(result.output_dir, warmup), "rb") as b:
    assert a.read() == b.read()
  assert os.path.exists(os.path.join(result.output_dir, "assets.extra",
                                     "evaluation_sample.json"))
  assert result.steps[-1].bytes_on_disk < 0.5 * result.steps[0].bytes_on_disk
  assert result.steps[-1].nodes < result.steps[0].nodes
  # The head's class strings are sliced from 128 stored rows.
  written = savedmodel_io.read_servable(result.output_dir)
  by_name = {n.name: n for n in written.graph_def.node}
  assert by_name["head/Tile"].op == "Merge"
  stored = by_name[by_name["head/Tile/stored/pool_if_fits"].input[0]]
  row_size = tf.make_ndarray(by_name["head/Tile/stored/row_size"].attr["value"].tensor)
  assert tf.make_ndarray(stored.attr["value"].tensor).shape == (128 * row_size,)
  steps = [s.step for s in result.steps]
  # A trailing step is the int8 fallback's plan, when the full plan did not pass.
  assert steps[:len(DEFAULT_STEPS) + 1] == ["original"] + DEFAULT_STEPS
  assert steps[len(DEFAULT_STEPS) + 1:] in ([], [f"fallback: {result.fallback.spec_label}"]
                                            if result.fallback else [])
  for path in result.report_paths.values():
    assert os.path.getsize(path) > 0
  assert_same_answers_in_a_fresh_process(trained.export_dir, result.output_dir, None, tmp_path)


def test_guard_refuses_a_broken_transform_and_writes_nothing(trained, tmp_path):
  output = tmp_path / "optimized"
  with transforms.registry.registered("scramble_weights", scramble_weights):
    with pytest.raises(optimizer.OptimizeError, match=r"\[guard\] .*fails the guard") as error:
      run(trained.export_dir, str(output), transforms="freeze scramble_weights",
          measure=False)
    assert error.value.step == "guard"
    assert not output.exists() and not list(tmp_path.iterdir())
    forced = run(trained.export_dir, str(output), transforms="freeze scramble_weights",
                 measure=False, force=True)
  assert forced.written and not forced.guard.passed


def test_refuses_a_non_empty_output_dir_and_the_input_dir(trained, tmp_path):
  occupied = tmp_path / "occupied"
  occupied.mkdir()
  (occupied / "keep.txt").write_text("mine")
  with pytest.raises(optimizer.OptimizeError, match="not empty"):
    run(trained.export_dir, str(occupied), measure=False)
  assert (occupied / "keep.txt").read_text() == "mine"
  with pytest.raises(optimizer.OptimizeError, match="must differ"):
    run(trained.export_dir, trained.export_dir, measure=False)


def test_a_directory_without_a_saved_model_gets_an_error_naming_it(tmp_path):
  with pytest.raises(optimizer.OptimizeError, match=r"\[input\] .*no saved_model.pb"):
    run(str(tmp_path), str(tmp_path / "out"), measure=False)


def run_cli(*args):
  return subprocess.run([sys.executable, "-m", "optimize", *args], capture_output=True, text=True,
                        timeout=600, cwd=PROJECT_ROOT)


@pytest.mark.slow
def test_command_line_optimizes_and_reports(trained, tmp_path):
  output = tmp_path / "model" / "2"
  completed = run_cli(f"--input_dir={trained.export_dir}", f"--output_dir={output}",
                      "--transforms=freeze strip_unused_nodes quantize_weights(dtype=float16)")
  assert completed.returncode == 0, completed.stderr[-3000:]
  assert f"optimized {output}" in completed.stdout
  assert (tmp_path / "model" / "2.report" / "report.md").exists()
  assert (output / "saved_model.pb").exists()


@pytest.mark.slow
def test_a_model_copied_away_from_its_job_dir_optimizes_saying_what_it_judged(trained,
                                                                             tmp_path):
  copied = tmp_path / "elsewhere" / "7"
  shutil.copytree(trained.export_dir, copied)
  completed = run_cli(f"--input_dir={copied}", f"--output_dir={tmp_path / 'out' / '7'}",
                      "--nomeasure")
  assert completed.returncode == 0, completed.stderr[-3000:]
  assert (f"real examples: 770 from the export's evaluation sample "
          f"({copied}/assets.extra/evaluation_sample.tfrecord.gz, 154 labelled)"
          in completed.stdout)
  # Without the sample it still optimizes, and says it judged made-up inputs alone.
  for name in ("evaluation_sample.json", "evaluation_sample.tfrecord.gz",
               "tf_serving_warmup_requests"):
    (copied / "assets.extra" / name).unlink()
  completed = run_cli(f"--input_dir={copied}", f"--output_dir={tmp_path / 'bare' / '7'}",
                      "--nomeasure")
  assert completed.returncode == 0, completed.stderr[-3000:]
  assert "real examples: none; synthetic:" in completed.stdout
  assert "no real examples" in completed.stderr


@pytest.mark.slow
def test_command_line_exits_non_zero_naming_the_failed_step(tmp_path):
  completed = run_cli(f"--input_dir={tmp_path}", f"--output_dir={tmp_path}/out")
  assert completed.returncode == 1
  assert "[input]" in completed.stdout
  completed = run_cli(f"--input_dir={tmp_path}", f"--output_dir={tmp_path}/out",
                      "--transforms=freeze squash")
  assert completed.returncode == 1 and "unknown transform 'squash'" in completed.stdout


def test_large_constants_are_stored_as_read_only_variables_and_restored(trained, tmp_path):
  source = savedmodel_io.read_servable(trained.export_dir)
  context = transforms.GraphContext(frozenset(source.protected_nodes()), source.variable_values)
  frozen = transforms.freeze_and_cleanup.freeze(source.graph_def, context)
  output = savedmodel_io.write_servable(source, frozen, str(tmp_path / "1"),
                                        externalize_min_bytes=4096)
  written = savedmodel_io.read_servable(output)
  stored = [n.name for n in written.graph_def.node if n.op == "VarHandleOp"]
  assert stored and all(name.endswith("/stored") for name in stored)
  assert os.path.exists(os.path.join(output, "variables", "variables.index"))
  assert os.path.getsize(os.path.join(output, "saved_model.pb")) < 0.5 * len(
      frozen.SerializeToString())
  texts = {"text": ["book a flight to rome", "tell me a joke"]}
  with SessionServable(trained.export_dir) as a, SessionServable(output) as b:
    np.testing.assert_allclose(b.run("predict_text", texts)["probabilities"],
                               a.run("predict_text", texts)["probabilities"], rtol=1e-6)
  # Optimizing the result again reads the stored tensors back as constants.
  again = run(output, str(tmp_path / "2"), measure=False)
  assert again.guard.passed


def test_tables_from_a_quarter_megabyte_are_stored_and_weights_that_size_stay_inline():
  rng = np.random.RandomState(0)
  graph = tf.Graph()
  with graph.as_default():
    ids = tf.compat.v1.placeholder(tf.int32, [None], name="ids")
    table = tf.constant(rng.randn(300, 256).astype(np.float32), name="table")  # 300 KiB
    weights = tf.constant(rng.randn(256, 300).astype(np.float32), name="weights")
    tf.matmul(tf.gather(table, ids), weights, name="y")
  externalize = savedmodel_io._externalize_large_constants  # pylint: disable=protected-access
  rewritten, stored = externalize(graph.as_graph_def(), savedmodel_io.EXTERNALIZE_MIN_BYTES)
  assert [name.split("/")[0] for name in stored] == ["table"]
  assert {n.name: n.op for n in rewritten.node}["weights"] == "Const"


def test_string_constants_from_4096_elements_are_stored_and_smaller_stay_inline():
  graph = tf.Graph()
  with graph.as_default():
    many = tf.constant(np.array([b"card_arrival"] * 4096, dtype=object), name="many")
    few = tf.constant(np.array([b"card_arrival"] * 4095, dtype=object), name="few")
    tf.concat([many, few], 0, name="y")
  externalize = savedmodel_io._externalize_large_constants  # pylint: disable=protected-access
  rewritten, stored = externalize(graph.as_graph_def(), savedmodel_io.EXTERNALIZE_MIN_BYTES)
  assert list(stored) == ["many"] and stored["many"].shape == (4096,)
  ops = {n.name: n.op for n in rewritten.node}
  assert ops["many"] == "ReadVariableOp" and ops["few"] == "Const"
