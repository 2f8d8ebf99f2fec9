"""The one reader of evaluation examples: formats, typing rules, and errors naming the place."""

import gzip

import pytest
import tensorflow as tf

from export import examples


def features(example):
  """{name: (kind, values)} of a tf.Example."""
  result = {}
  for name, feature in example.features.feature.items():
    kind = feature.WhichOneof("kind")
    result[name] = (kind, list(getattr(feature, kind).value))
  return result


def write(tmp_path, name, content):
  path = tmp_path / name
  path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
  return str(path)


def test_json_lines_follow_tf_serving_rest_types(tmp_path):
  path = write(tmp_path, "eval.jsonl",
               '{"text": "hi", "n": 3, "x": [1.5, 2], "flag": true, "raw": {"b64": "AAE="}}\n\n')
  (example,) = examples.read_examples(path)
  assert features(example) == {"text": ("bytes_list", [b"hi"]), "n": ("int64_list", [3]),
                               "x": ("float_list", [1.5, 2.0]), "flag": ("int64_list", [1]),
                               "raw": ("bytes_list", [b"\x00\x01"])}


def test_csv_columns_are_typed_by_their_cells_and_empty_cells_are_left_out(tmp_path):
  path = write(tmp_path, "eval.csv", "text,count,score,zip\nhi,3,0.5,02134\nyo,4,,x\n")
  first, second = examples.read_examples(path)
  assert features(first) == {"text": ("bytes_list", [b"hi"]), "count": ("int64_list", [3]),
                             "score": ("float_list", [0.5]), "zip": ("bytes_list", [b"02134"])}
  assert "score" not in features(second)


def test_the_model_types_win_over_the_files_own(tmp_path):
  types = {"count": tf.float32, "zip": tf.string, "n": tf.float32}
  csv_path = write(tmp_path, "eval.csv", "count,zip\n3,02134\n")
  (row,) = examples.read_examples(csv_path, types)
  assert features(row) == {"count": ("float_list", [3.0]), "zip": ("bytes_list", [b"02134"])}
  jsonl_path = write(tmp_path, "eval.jsonl", '{"n": 2}\n')
  (record,) = examples.read_examples(jsonl_path, types)
  assert features(record) == {"n": ("float_list", [2.0])}


def test_csv_and_json_lines_give_the_same_examples_for_the_same_data(tmp_path):
  csv_rows = examples.read_examples(write(tmp_path, "a.csv", "text,n\nbook it,7\n"))
  json_rows = examples.read_examples(write(tmp_path, "a.jsonl", '{"text": "book it", "n": 7}\n'))
  assert csv_rows == json_rows


@pytest.mark.parametrize("name, content, types, message", [
    ("bad.jsonl", '{"a": 1}\n{"a": \n', None, r"bad.jsonl:2: not valid JSON"),
    ("bad.jsonl", '["a"]\n', None, r"bad.jsonl:1: expected a JSON object of features"),
    ("bad.jsonl", '{"a": ["x", 1]}\n', None, r"bad.jsonl:1: feature 'a': mixes strings"),
    ("bad.jsonl", '{"a": "x"}\n', {"a": tf.float32}, r"bad.jsonl:1: feature 'a': expected a "
                                                      r"number, got a string"),
    ("bad.jsonl", '{"a": 1.5}\n', {"a": tf.int64}, r"feature 'a': expected an integer"),
    ("bad.csv", "a,b\n1,2\n3,4,5\n", None, r"bad.csv:3: 3 fields, but the header names 2"),
    ("bad.csv", "a\nx\n", {"a": tf.int64}, r"bad.csv:2: feature 'a': expected an integer"),
    ("bad.csv", b"a\nok\n\xff\n", None, r"bad.csv:3: not valid UTF-8"),
    ("empty.csv", "", None, r"empty.csv: empty file"),
    ("only_header.csv", "a,b\n", None, r"only_header.csv: holds no example"),
])
def test_bad_files_are_refused_naming_file_line_and_feature(tmp_path, name, content, types,
                                                           message):
  with pytest.raises(examples.ExamplesError, match=message):
    examples.read_examples(write(tmp_path, name, content), types)


def test_tfrecords_plain_and_gzip_and_the_limit(tmp_path):
  rows = [tf.train.Example() for _ in range(3)]
  for index, row in enumerate(rows):
    row.features.feature["i"].int64_list.value.append(index)
  plain = tmp_path / "eval.tfrecord"
  with tf.io.TFRecordWriter(str(plain)) as writer:
    for row in rows:
      writer.write(row.SerializeToString())
  packed = tmp_path / "eval.tfrecord.gz"
  with tf.io.TFRecordWriter(str(packed), options="GZIP") as writer:
    for row in rows:
      writer.write(row.SerializeToString())
  assert examples.read_examples(str(plain)) == rows
  assert examples.read_examples(str(packed), limit=2) == rows[:2]
  assert gzip.open(packed).read(1)  # really compressed


def test_a_tfrecord_of_something_else_names_the_record(tmp_path):
  path = tmp_path / "eval.tfrecord"
  with tf.io.TFRecordWriter(str(path)) as writer:
    writer.write(b"\xff\xff not an example")
  with pytest.raises(examples.ExamplesError, match="record 1 is not a serialized tf.Example"):
    examples.read_examples(str(path))
  with pytest.raises(examples.ExamplesError, match="no such examples file"):
    examples.read_examples(str(tmp_path / "missing.tfrecord"))


def test_the_parse_spec_names_each_feature_with_its_type_and_shape():
  graph = tf.Graph()
  with graph.as_default():
    serialized = tf.compat.v1.placeholder(tf.string, [None])
    tf.io.parse_example(serialized, {
        "x": tf.io.FixedLenFeature([3], tf.float32),
        "word": tf.io.VarLenFeature(tf.string),
        "n": tf.io.FixedLenFeature([], tf.int64, default_value=0)})
  spec = examples.parse_spec(graph.as_graph_def())
  assert spec == {"x": examples.FeatureSpec(tf.float32, [3]),
                  "n": examples.FeatureSpec(tf.int64, []),
                  "word": examples.FeatureSpec(tf.string, None)}
  assert examples.feeds_parser(graph.as_graph_def(), serialized.name)
