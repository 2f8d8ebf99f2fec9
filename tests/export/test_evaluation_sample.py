"""The real sample of traffic a version carries: stratified, written whole, read back with
its labels, and a clear error for a broken one."""

import collections
import json

import pytest
import tensorflow as tf

from export import evaluation_sample
from export import warmup
from trainer import pipeline
from tests.helpers import small_config


def test_a_stratified_sample_keeps_every_labels_share_and_the_rows_order():
  rows = [("a", i) for i in range(60)] + [("b", i) for i in range(30)] + [("c", i)
                                                                          for i in range(10)]
  chosen = evaluation_sample.stratified(rows, lambda row: row[0], 20, seed=3)
  assert collections.Counter(label for label, _ in chosen) == {"a": 12, "b": 6, "c": 2}
  assert chosen == sorted(chosen, key=rows.index)
  assert chosen == evaluation_sample.stratified(rows, lambda row: row[0], 20, seed=3)
  assert evaluation_sample.stratified(rows, lambda row: row[0], 500) == rows


def test_the_largest_remainders_fill_the_sample_to_its_size():
  rows = [("a", i) for i in range(5)] + [("b", i) for i in range(5)] + [("c", i)
                                                                        for i in range(5)]
  chosen = evaluation_sample.stratified(rows, lambda row: row[0], 10)
  assert len(chosen) == 10
  assert sorted(collections.Counter(label for label, _ in chosen).values()) == [3, 3, 4]


def test_written_examples_read_back_with_their_labels(tmp_path):
  labelled = [(warmup.text_example(t, "text"), label)
              for t, label in (("book a flight", b"travel"), ("tell me a joke", b"fun"))]
  paths = evaluation_sample.write(str(tmp_path), labelled, [warmup.text_example("hi", "text")],
                                  "intent", ["eval.csv"])
  assert set(paths) == {evaluation_sample.EXAMPLES_FILENAME,
                        evaluation_sample.MANIFEST_FILENAME}
  version = tmp_path / "1"
  (version / "assets.extra").mkdir(parents=True)
  for name, path in paths.items():
    (version / "assets.extra" / name).write_bytes(open(path, "rb").read())
  sample = evaluation_sample.read(str(version))
  assert sample.labels == [b"travel", b"fun", None] and sample.labelled == 2
  assert sample.label_key == "intent"
  texts = [tf.train.Example.FromString(s).features.feature["text"].bytes_list.value[0]
           for s in sample.serialized]
  assert texts == [b"book a flight", b"tell me a joke", b"hi"]
  manifest = json.loads((version / "assets.extra" / "evaluation_sample.json").read_text())
  assert manifest == {"label_key": "intent", "examples": 3, "labelled": 2,
                      "sources": ["eval.csv"]}


def test_a_version_without_a_sample_has_none_and_a_broken_one_is_named(tmp_path):
  assert evaluation_sample.read(str(tmp_path)) is None
  (tmp_path / "assets.extra").mkdir()
  manifest = tmp_path / "assets.extra" / evaluation_sample.MANIFEST_FILENAME
  manifest.write_text("{not json")
  with pytest.raises(evaluation_sample.SampleError, match=str(manifest)):
    evaluation_sample.read(str(tmp_path))
  manifest.write_text('{"label_key": "intent"}')
  with pytest.raises(evaluation_sample.SampleError, match="no such examples file"):
    evaluation_sample.read(str(tmp_path))


def test_the_pipelines_sample_is_the_eval_set_labelled_then_training_texts(tmp_path):
  config = small_config(tmp_path / "job")
  train_examples, eval_examples = pipeline.load_data(config)
  rows = pipeline.evaluation_sample(config, eval_examples, train_examples)
  texts = [text for text, _ in rows]
  assert len(texts) == len(set(texts)) == 770
  assert [label for _, label in rows[:154]] == [e.intent for e in eval_examples]
  assert all(label is None for _, label in rows[154:])
