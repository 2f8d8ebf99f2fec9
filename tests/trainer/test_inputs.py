"""Readers: each format, several files per split, and a precise error for each bad input."""

import json

import pytest
import tensorflow as tf

from trainer import inputs


def write(path, content):
  mode = "wb" if isinstance(content, bytes) else "w"
  with open(path, mode) as f:
    f.write(content)
  return str(path)


def test_reads_csv_with_intent_header_and_quoted_commas(tmp_path):
  path = write(tmp_path / "a.csv", 'text,intent\n"fly me to rome, please",book_flight\n'
                                   "what's the weather,check_weather\n")
  examples = inputs.read_examples(path)
  assert [(e.text, e.intent) for e in examples] == [
      ("fly me to rome, please", "book_flight"), ("what's the weather", "check_weather")]
  assert examples[1].source == f"{path}:3"


def test_reads_banking77_style_category_header(tmp_path):
  path = write(tmp_path / "train.csv", "text,category\nI am still waiting on my card?,card_arrival\n")
  assert inputs.read_examples(path)[0].intent == "card_arrival"


def test_reads_json_lines(tmp_path):
  path = write(tmp_path / "a.jsonl", json.dumps({"text": "hi there", "intent": "greeting"})
               + "\n\n" + json.dumps({"text": "bye", "intent": "goodbye"}) + "\n")
  assert [e.intent for e in inputs.read_examples(path)] == ["greeting", "goodbye"]


def test_reads_the_named_split_of_clinc_style_json(tmp_path):
  path = write(tmp_path / "data_full.json", json.dumps({
      "train": [["book a table", "book_restaurant"]],
      "val": [["reserve dinner for two", "book_restaurant"], ["hello", "greeting"]]}))
  assert len(inputs.read_examples(path, split="train")) == 1
  assert [e.text for e in inputs.read_examples(path, split="val")] == [
      "reserve dinner for two", "hello"]


def test_reads_every_file_of_a_glob_and_a_comma_separated_list(tmp_path):
  for name in ("part-0.csv", "part-1.csv"):
    write(tmp_path / name, f"text,intent\ntext from {name},x\n")
  extra = write(tmp_path / "extra.jsonl", '{"text": "more", "intent": "y"}\n')
  examples = inputs.read_examples(f"{tmp_path}/part-*.csv,{extra}")
  assert [e.text for e in examples] == ["text from part-0.csv", "text from part-1.csv", "more"]


def test_reads_through_tf_gfile_so_non_local_filesystems_work():
  path = "ram://inputs-test/train.csv"
  with tf.io.gfile.GFile(path, "w") as f:
    f.write("text,intent\nplay some jazz,play_music\n")
  assert inputs.read_examples(path)[0].intent == "play_music"


@pytest.mark.parametrize("content, message", [
    ("words,intent\nhello,greeting\n", r"a\.csv:1: header .* has no 'text' column"),
    ("text,topic\nhello,greeting\n", r"a\.csv:1: header .* has no label column"),
    ("text,intent\nhello,greeting\n  ,greeting\n", r"a\.csv:3: empty or missing text"),
    ("text,intent\nhello,greeting\nbye,\n", r"a\.csv:3: empty or missing intent label"),
    ("text,intent\nhello,greeting\nfly me, to rome,book_flight\n",
     r"a\.csv:3: expected 2 fields .* found 3"),
    ('text,intent\nhello,greeting\n"unterminated,greeting\n', r"a\.csv:\d+: unreadable CSV"),
    ("", r"a\.csv: empty file"),
    ("text,intent\n", r"a\.csv: no examples after the header"),
])
def test_bad_csv_is_rejected_naming_file_and_line(tmp_path, content, message):
  path = write(tmp_path / "a.csv", content)
  with pytest.raises(inputs.DataError, match=message):
    inputs.read_examples(path)


def test_non_utf8_bytes_are_rejected_naming_the_line(tmp_path):
  path = write(tmp_path / "a.csv", b"text,intent\nhello,greeting\ncaf\xe9 au lait,order\n")
  with pytest.raises(inputs.DataError, match=r"a\.csv:3: not valid UTF-8"):
    inputs.read_examples(path)


@pytest.mark.parametrize("content, message", [
    ('{"text": "hi", "intent": "greeting"}\n{"text": "bye"\n', r"a\.jsonl:2: not valid JSON"),
    ('{"text": "hi", "intent": "greeting"}\n["bye", "goodbye"]\n', r"a\.jsonl:2: expected an object"),
    ('{"text": "hi"}\n', r"a\.jsonl:1: empty or missing intent label"),
])
def test_bad_json_lines_are_rejected_naming_file_and_line(tmp_path, content, message):
  path = write(tmp_path / "a.jsonl", content)
  with pytest.raises(inputs.DataError, match=message):
    inputs.read_examples(path)


def test_clinc_errors_name_the_split_and_record(tmp_path):
  path = write(tmp_path / "c.json", json.dumps({"train": [["ok", "a"], ["no label"]]}))
  with pytest.raises(inputs.DataError, match=r"c\.json:train\[1\]: expected a \[text, intent\]"):
    inputs.read_examples(path, split="train")
  with pytest.raises(inputs.DataError, match=r"c\.json: no split 'val' \(found \['train'\]\)"):
    inputs.read_examples(path, split="val")


def test_a_pattern_matching_nothing_is_an_error(tmp_path):
  with pytest.raises(inputs.DataError, match="no file matches"):
    inputs.read_examples(str(tmp_path / "missing-*.csv"))


def test_unknown_extension_asks_for_an_explicit_format(tmp_path):
  path = write(tmp_path / "data.txt", "text,intent\nhi,greeting\n")
  with pytest.raises(inputs.DataError, match="cannot tell the format"):
    inputs.read_examples(path)
  assert inputs.read_examples(path, data_format="csv")[0].intent == "greeting"


def _examples(*pairs, source="f.csv"):
  return [inputs.Example(t, i, f"{source}:{n + 2}") for n, (t, i) in enumerate(pairs)]


def test_eval_labels_unseen_in_training_are_an_error_naming_the_record():
  train = _examples(("hi", "greeting"), ("bye", "goodbye"))
  evaluation = _examples(("hello", "greeting"), ("play jazz", "play_music"), source="e.csv")
  with pytest.raises(inputs.DataError, match=r"e\.csv:3: eval label 'play_music' never appears"):
    inputs.check_eval_labels(train, evaluation, drop_unseen=False)


def test_eval_labels_unseen_in_training_can_be_dropped_with_a_count():
  train = _examples(("hi", "greeting"))
  evaluation = _examples(("hello", "greeting"), ("jazz", "play_music"), ("rock", "play_music"))
  kept, dropped = inputs.check_eval_labels(train, evaluation, drop_unseen=True)
  assert [e.text for e in kept] == ["hello"]
  assert dropped == {"play_music": 2}


def test_bundled_data_reads_cleanly_with_enough_intents_and_examples():
  from trainer import config
  train = inputs.read_examples(config.BUNDLED_TRAIN)
  evaluation = inputs.read_examples(config.BUNDLED_EVAL)
  labels = inputs.label_vocabulary(train)
  assert len(labels) >= 12
  per_intent = {l: sum(e.intent == l for e in train + evaluation) for l in labels}
  assert min(per_intent.values()) >= 40
  assert len({e.text.lower() for e in train + evaluation}) == len(train) + len(evaluation)
  kept, dropped = inputs.check_eval_labels(train, evaluation, drop_unseen=False)
  assert len(kept) == len(evaluation) and not dropped


def dropped(text, rate, seed=(1, 0)):
  (kept,) = inputs.drop_words(tf.constant([text]), rate, seed).numpy()
  return kept.decode()


def test_token_dropout_leaves_words_out_but_never_all_of_them():
  text = " ".join(f"w{i}" for i in range(400))
  kept = dropped(text, 0.25).split()
  assert set(kept) < set(text.split()) and kept == sorted(kept, key=lambda w: int(w[1:]))
  assert 250 < len(kept) < 350  # about 300 of 400
  assert dropped("lonely", 0.99) == "lonely"
  assert dropped(text, 0.0) == text
  batch = inputs.drop_words(tf.constant(["a b c d e f", "solo", ""]), 0.5, seed=(3, 0)).numpy()
  assert batch[1:].tolist() == [b"solo", b""] and set(batch[0].split()) <= set(b"a b c d e f".split())


def test_token_dropout_draws_afresh_each_epoch():
  examples = [inputs.Example(" ".join(f"w{i}" for i in range(50)), "a", "t:1")]
  dataset = inputs.make_input_fn(examples, 1, shuffle=False, num_epochs=2, token_dropout=0.5)()
  first, second = [features["text"].numpy()[0] for features, _ in dataset]
  assert first != second


def test_token_dropout_draws_the_same_words_in_every_run_of_a_seed():
  examples = [inputs.Example(" ".join(f"w{i}" for i in range(30)) + f" n{n}", "a", f"t:{n}")
              for n in range(64)]

  def drawn(seed):
    dataset = inputs.make_input_fn(examples, 4, shuffle=True, num_epochs=2, seed=seed,
                                   token_dropout=0.3)()
    return [t for features, _ in dataset for t in features["text"].numpy().tolist()]

  assert drawn(5) == drawn(5) and drawn(5) != drawn(6)


def test_class_balance_weights_follow_the_intent_counts_and_average_one():
  examples = [inputs.Example("t", "common", "t:1")] * 9 + [inputs.Example("t", "rare", "t:2")]
  full = inputs.class_balance_weights(examples, 1.0)
  # Every intent weighs the same in all: 9 x w_common == 1 x w_rare.
  assert full[0] * 9 == pytest.approx(full[-1]) and sum(full) == pytest.approx(len(full))
  half = inputs.class_balance_weights(examples, 0.5)
  assert half[-1] / half[0] == pytest.approx(3.0) and sum(half) == pytest.approx(len(half))
  assert inputs.class_balance_weights(examples, 0.0) == [1.0] * 10


def test_weights_travel_with_their_examples_through_shuffling_and_token_dropout():
  examples = [inputs.Example(f"w{i} x y", f"i{i}", f"t:{i}") for i in range(20)]
  weights = [float(i) for i in range(20)]
  dataset = inputs.make_input_fn(examples, 5, shuffle=True, num_epochs=1, seed=1,
                                 token_dropout=0.3, weights=weights)()
  seen = {}
  for features, labels in dataset:
    for label, weight in zip(labels.numpy(), features["example_weight"].numpy()):
      seen[label.decode()] = weight
  assert seen == {f"i{i}": float(i) for i in range(20)}
  with pytest.raises(ValueError, match="3 weights for 20 examples"):
    inputs.make_input_fn(examples, 5, shuffle=False, weights=[1.0, 1.0, 1.0])
