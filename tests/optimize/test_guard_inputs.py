"""What the guard judges on exports this project did not make: no warmup records, a few real
examples topped up with synthetic ones, labelled evaluation data, and a quantization that
harms one weight."""

import json

import numpy as np
import pytest
import tensorflow as tf

from export import examples as examples_lib
from export.servable import SessionServable
from optimize import guard
from optimize import optimizer
from optimize import savedmodel_io
from optimize import synthetic
from optimize.transforms import quantize
from tests.optimize import estimator_exports

pytestmark = pytest.mark.slow

# Folded and frozen so the weights are constants; min_elements small enough for the tiny
# models' hidden layers (7 inputs x 8 units, 8 x 4).
QUANTIZE_SMALL = ("freeze strip_unused_nodes fold_constants fold_batch_norms "
                  "quantize_weights(dtype=int8,min_elements=16)")


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
  base = tmp_path_factory.mktemp("estimators")
  labelled = estimator_exports.write_eval_tfrecord(str(base / "labelled.tfrecord"), labels=True)
  kinds = ("dnn_batch_norm", "dnn_regressor", "linear_vocabulary_file")
  return {kind: estimator_exports.build(kind, str(base)) for kind in kinds}, labelled


def run(version_dir, output_dir, **settings):
  return optimizer.optimize(version_dir, output_dir, optimizer.OptimizeSettings(**settings))


def made_up(version_dir, source=None):
  source = source or savedmodel_io.read_servable(version_dir)
  with SessionServable(version_dir) as servable:
    return synthetic.SyntheticRequests(source.graph_def, servable.signatures,
                                       source.asset_paths())


def test_synthetic_examples_hold_every_parsed_feature_with_its_type_and_shape(exports):
  version_dirs, _ = exports
  version_dir = version_dirs["linear_vocabulary_file"]
  stream = made_up(version_dir)
  probe = stream.probe()
  made = stream.take(50)
  assert stream.made == 50 and probe == made_up(version_dir).probe()
  with SessionServable(version_dir) as servable:
    answers = servable.run("predict", {"examples": made})
  assert len(made) == 50 and len(answers["logits"]) == 50
  words = set()
  for serialized in made:
    example = tf.train.Example.FromString(serialized)
    assert set(example.features.feature) == {"word", "tag"}
    words.update(example.features.feature["word"].bytes_list.value)
  # The word column's values come from its own vocabulary asset; the hashed tag has none.
  assert words <= {w.encode() for w in estimator_exports.WORDS[:3]} and len(words) > 1
  # The stream is the export's alone: the same requests every time, the probe not among them.
  assert made == made_up(version_dir).take(50)


def test_a_text_feature_becomes_sentences_of_its_vocabulary_words(trained):
  stream = made_up(trained.export_dir)
  vocabulary = set()
  for name in ("word_ngram_vocabulary.txt",):
    with open(f"{trained.export_dir}/assets/{name}", "rb") as f:
      vocabulary.update(line.strip() for line in f if b" " not in line.strip())
  texts = [tf.train.Example.FromString(s).features.feature["text"].bytes_list.value[0]
           for s in stream.take(40)]
  words = [w for text in texts for w in text.split()]
  assert sum(len(t.split()) > 1 for t in texts) > 30
  assert set(words) <= vocabulary


@pytest.mark.parametrize("kind", ["dnn_batch_norm", "dnn_regressor"])
def test_an_export_without_warmup_records_is_judged_on_synthetic_examples(exports, kind,
                                                                          tmp_path, caplog):
  version_dirs, _ = exports
  assert not tf.io.gfile.exists(f"{version_dirs[kind]}/assets.extra")
  result = run(version_dirs[kind], str(tmp_path / "optimized"), measure=False)
  assert result.written and result.guard.passed
  assert result.guard.real_examples == 0 and result.guard.real_sources == []
  assert result.guard.examples >= 598
  assert result.guard.synthetic_examples >= result.guard.examples
  assert all(s.labels is None for s in result.guard.signatures)
  assert "no real examples" in caplog.text


def test_a_few_real_examples_are_topped_up_and_reported_apart(exports, tmp_path):
  version_dirs, _ = exports
  version_dir = version_dirs["dnn_batch_norm"]
  few = estimator_exports.write_eval_tfrecord(str(tmp_path / "few.tfrecord"), count=64,
                                              labels=True)
  with_real = run(version_dir, str(tmp_path / "real"), eval_data=few,
                  label_key="label_name", measure=False)
  without = run(version_dir, str(tmp_path / "none"), measure=False)
  assert with_real.written and with_real.guard.passed and without.guard.passed
  for s in with_real.guard.signatures:
    assert s.real.examples == 64 and s.real.disagreements == 0
    assert s.synthetic.examples + s.real.examples >= 598
  assert with_real.guard.real_sources == [f"64 from {few}"]
  assert {s.name for s in with_real.guard.signatures if s.labels is not None}
  # The synthetic part is the same stream's prefix: real examples only replaced some of it.
  assert with_real.guard.synthetic_examples <= without.guard.synthetic_examples
  report = optimizer.summary(with_real)
  assert any("real 1.0000 on 64" in line and "synthetic" in line for line in report)


def test_strict_proof_refuses_too_few_real_examples(exports, tmp_path):
  version_dirs, _ = exports
  few = estimator_exports.write_eval_tfrecord(str(tmp_path / "few.tfrecord"), count=64)
  with pytest.raises(optimizer.OptimizeError, match="judged 64 real examples; 598 are required"):
    run(version_dirs["dnn_batch_norm"], str(tmp_path / "refused"), eval_data=few,
        guard=guard.GuardSettings(require_real_examples=598), measure=False)
  assert not (tmp_path / "refused").exists()


def test_with_labels_the_guard_scores_a_classifier_before_and_after(exports, tmp_path):
  version_dirs, labelled = exports
  result = run(version_dirs["dnn_batch_norm"], str(tmp_path / "optimized"),
               eval_data=labelled, label_key="label_name", measure=False)
  scored = {s.name: s.labels for s in result.guard.signatures if s.labels is not None}
  assert {"classification", "serving_default", "predict"} <= set(scored)
  expected = _accuracy(version_dirs["dnn_batch_norm"], labelled)
  for labels in scored.values():
    assert labels.metric == "accuracy" and labels.examples == 600
    assert labels.original == pytest.approx(expected)
    assert abs(labels.optimized - labels.original) <= 0.002


def _accuracy(version_dir, path):
  examples = examples_lib.read_examples(path)
  serialized = [e.SerializeToString() for e in examples]
  with SessionServable(version_dir) as servable:
    answers = servable.run("classification", {"inputs": serialized})
  top = answers["classes"][np.arange(len(serialized)), np.argmax(answers["scores"], -1)]
  labels = [e.features.feature["label_name"].bytes_list.value[0] for e in examples]
  return float(np.mean([t == label for t, label in zip(top, labels)]))


def test_with_labels_the_guard_scores_a_regressors_error(exports, tmp_path):
  version_dirs, labelled = exports
  result = run(version_dirs["dnn_regressor"], str(tmp_path / "optimized"),
               eval_data=labelled, label_key="target", measure=False)
  scored = [s.labels for s in result.guard.signatures if s.labels is not None]
  assert scored and all(s.metric == "mean_absolute_error" for s in scored)
  assert all(s.original > 0 and s.examples == 600 for s in scored)


@pytest.fixture
def harmful_int8(monkeypatch):
  """int8 that zeroes the first hidden layer's kernel; float16 of it stays honest."""
  honest = quantize._quantized

  def quantized(node, value, use, dtype, per_row):
    if dtype == "int8" and "hiddenlayer_0" in node.name:
      value = np.zeros_like(value)
    return honest(node, value, use, dtype, per_row)
  monkeypatch.setattr(quantize, "_quantized", quantized)


def test_the_fallback_keeps_the_harmed_weight_in_float_and_passes(exports, tmp_path,
                                                                  harmful_int8):
  version_dirs, labelled = exports
  result = run(version_dirs["dnn_batch_norm"], str(tmp_path / "optimized"),
               transforms=QUANTIZE_SMALL, eval_data=labelled, label_key="label_name",
               latency_repeats=3)
  assert result.written and result.guard.passed
  (kept,) = result.fallback.kept
  assert "hiddenlayer_0" in kept.name and kept.stored_as == "float16"
  assert kept.agreement_when_int8_alone < 0.995
  assert result.fallback.quantized, "the harmless weights should stay int8"
  assert result.steps[-1].step.startswith("fallback: quantize_weights(")
  optimized = savedmodel_io.read_servable(result.output_dir).graph_def
  names = {n.name for n in optimized.node}
  assert f"{kept.name}/float16" in names
  assert any(f"{name}/int8" in names for name in result.fallback.quantized)


def test_fallback_none_refuses_the_harmful_plan(exports, tmp_path, harmful_int8):
  version_dirs, labelled = exports
  with pytest.raises(optimizer.OptimizeError, match="fails the guard"):
    run(version_dirs["dnn_batch_norm"], str(tmp_path / "optimized"), transforms=QUANTIZE_SMALL,
        eval_data=labelled, label_key="label_name", fallback="none", measure=False)
  assert not (tmp_path / "optimized").exists()


def test_real_evidence_of_a_changed_model_refuses_whatever_synthetic_ones_say(
    exports, tmp_path, harmful_int8):
  version_dirs, _ = exports
  few = estimator_exports.write_eval_tfrecord(str(tmp_path / "few.tfrecord"), count=64)
  with pytest.raises(optimizer.OptimizeError, match="the real examples say the model changed"):
    run(version_dirs["dnn_batch_norm"], str(tmp_path / "optimized"), transforms=QUANTIZE_SMALL,
        eval_data=few, fallback="none", measure=False)
  assert not (tmp_path / "optimized").exists()


@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
def test_labelled_csv_and_json_lines_are_scored_as_the_tfrecord_is(exports, tmp_path, suffix):
  version_dirs, labelled = exports
  rows = [(e.features.feature["word"].bytes_list.value[0].decode(),
           e.features.feature["tag"].bytes_list.value[0].decode(),
           e.features.feature["label"].int64_list.value[0])
          for e in examples_lib.read_examples(labelled)]
  path = tmp_path / f"eval.{suffix}"
  if suffix == "csv":
    path.write_text("word,tag,label\n" + "".join(f"{w},{t},{l}\n" for w, t, l in rows))
  else:
    path.write_text("".join(json.dumps({"word": w, "tag": t, "label": l}) + "\n"
                            for w, t, l in rows))
  version_dir = version_dirs["linear_vocabulary_file"]
  from_file = run(version_dir, str(tmp_path / "a"), eval_data=str(path), label_key="label",
                  measure=False)
  from_tfrecord = run(version_dir, str(tmp_path / "b"), eval_data=labelled, label_key="label",
                      measure=False)
  scores = {s.name: s.labels for s in from_file.guard.signatures if s.labels is not None}
  assert scores and scores == {s.name: s.labels for s in from_tfrecord.guard.signatures
                               if s.labels is not None}
  assert all(s.examples == 600 and 0.0 < s.original <= 1.0 for s in scores.values())
