"""The exported servable: signatures, self-containment, warmup records, versions."""

import json
import shutil

import numpy as np
import pytest
import tensorflow as tf

from export import evaluation_sample
from export import exporter
from export import warmup
from export.servable import SessionServable
from tests.helpers import RUN_EVERY_SIGNATURE, run_python, small_config
from trainer import pipeline

TEXTS = ["book a flight to rome", "what is the weather like in oslo tomorrow", "tell me a joke"]


def serialized(texts):
  return [warmup.text_example(t, "text").SerializeToString() for t in texts]


def test_export_has_tf_serving_layout_and_signatures(trained):
  export_dir = trained.export_dir
  assert export_dir.rsplit("/", 1)[1].isdigit()
  assert sorted(tf.io.gfile.listdir(export_dir)) == [
      "assets", "assets.extra", "saved_model.pb", "variables"]
  with SessionServable(export_dir) as model:
    signatures = model.signatures
    assert sorted(signatures) == ["classification", "predict", "predict_text", "serving_default"]
    for name in ("serving_default", "classification"):
      signature = signatures[name]
      assert signature.method_name == "tensorflow/serving/classify"
      assert list(signature.inputs) == ["inputs"]
      assert signature.inputs["inputs"].dtype == tf.string.as_datatype_enum
      assert sorted(signature.outputs) == ["classes", "scores"]
    assert list(signatures["predict"].inputs) == ["examples"]
    assert list(signatures["predict_text"].inputs) == ["text"]
    for name in ("predict", "predict_text"):
      assert signatures[name].method_name == "tensorflow/serving/predict"
      assert {"classes", "probabilities", "logits", "class_ids"} <= set(signatures[name].outputs)


def test_every_signature_gives_the_same_answer_for_the_same_text(trained):
  with SessionServable(trained.export_dir) as model:
    classify = model.run("classification", {"inputs": serialized(TEXTS)})
    default = model.run("serving_default", {"inputs": serialized(TEXTS)})
    predict = model.run("predict", {"examples": serialized(TEXTS)})
    raw = model.run("predict_text", {"text": TEXTS})
  np.testing.assert_allclose(classify["scores"], predict["probabilities"], rtol=1e-6)
  np.testing.assert_allclose(default["scores"], raw["probabilities"], rtol=1e-6)
  np.testing.assert_array_equal(predict["classes"], raw["classes"])
  assert [c[0].decode() for c in raw["classes"]] == ["book_flight", "check_weather", "tell_joke"]
  labels = sorted(json.load(open(trained.train.eval_report_path))["per_intent"])
  assert sorted(c.decode() for c in classify["classes"][0]) == labels


def test_a_tf_example_without_the_text_feature_is_refused(trained):
  empty = tf.train.Example().SerializeToString()
  with SessionServable(trained.export_dir) as model:
    with pytest.raises(tf.errors.InvalidArgumentError, match="text"):
      model.run("classification", {"inputs": [empty]})


@pytest.mark.slow
def test_export_answers_without_the_job_dir_in_a_fresh_process(tmp_path):
  job = tmp_path / "job"
  result = pipeline.run(small_config(job, train_steps=20))
  expected = json.loads(run_python(RUN_EVERY_SIGNATURE, result.export_dir, json.dumps(TEXTS)))
  moved = tmp_path / "models" / "intent" / "1"
  shutil.copytree(result.export_dir, moved)
  shutil.rmtree(job)
  answers = json.loads(run_python(RUN_EVERY_SIGNATURE, str(moved), json.dumps(TEXTS)))
  assert answers == expected
  assert sorted(answers) == ["classification", "predict", "predict_text", "serving_default"]


def test_warmup_records_cover_every_signature_and_replay_cleanly(trained):
  logs = warmup.read_records(trained.export_dir)
  assert 0 < len(logs) <= warmup.MAX_WARMUP_RECORDS
  kinds = {(log.WhichOneof("log_type"),
            getattr(log, log.WhichOneof("log_type")).request.model_spec.signature_name)
           for log in logs}
  assert kinds == {("classify_log", "serving_default"), ("classify_log", "classification"),
                   ("predict_log", "predict"), ("predict_log", "predict_text")}
  with SessionServable(trained.export_dir) as model:
    for log in logs:
      if log.HasField("classify_log"):
        request = log.classify_log.request
        examples = [e.SerializeToString() for e in request.input.example_list.examples]
        answer = model.run(request.model_spec.signature_name, {"inputs": examples})
        assert answer["scores"].shape[0] == len(examples)
      else:
        request = log.predict_log.request
        answer = model.run(request.model_spec.signature_name,
                           {k: tf.make_ndarray(v) for k, v in request.inputs.items()})
        assert answer["probabilities"].shape[0] == len(tf.make_ndarray(
            next(iter(request.inputs.values()))))


def test_each_export_gets_a_higher_version_and_leaves_no_staging_files(trained, tmp_path):
  base = str(tmp_path / "export" / "intent")
  first = exporter.export_servable(trained.train.estimator, base, TEXTS,
                                   checkpoint_path=trained.train.checkpoint_path)
  second = exporter.export_servable(trained.train.estimator, base, TEXTS,
                                    checkpoint_path=trained.train.checkpoint_path)
  assert int(second.rsplit("/", 1)[1]) > int(first.rsplit("/", 1)[1])
  assert sorted(tf.io.gfile.listdir(base)) == sorted(
      [first.rsplit("/", 1)[1], second.rsplit("/", 1)[1]])


def test_warmup_refuses_more_records_than_tf_serving_accepts(tmp_path):
  logs = [warmup.predict_log("predict_text", {"text": ["hi"]})] * (warmup.MAX_WARMUP_RECORDS + 1)
  with pytest.raises(ValueError, match="1 to 1000 warmup records"):
    warmup.write_warmup_file(str(tmp_path / "w"), logs)


def test_the_export_carries_a_real_labelled_sample_the_model_answers(trained):
  sample = evaluation_sample.read(trained.export_dir)
  assert len(sample.serialized) == 770 and sample.labelled == 154
  with SessionServable(trained.export_dir) as model:
    answer = model.run("serving_default", {"inputs": sample.serialized[:154]})
  top = answer["classes"][np.arange(154), np.argmax(answer["scores"], -1)]
  # The labels are the eval set's intents: the model gets most of them right.
  assert np.mean([t == label for t, label in zip(top, sample.labels[:154])]) > 0.8
