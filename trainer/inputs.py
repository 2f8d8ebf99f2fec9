"""Reads intent data sets through `tf.io.gfile` and feeds them to the estimator.

Formats: CSV with a header (`text,intent`, or `text,category` as Banking77 ships it),
JSON Lines (`{"text": ..., "intent": ...}`) and CLINC150-style JSON
(`{"train": [[text, intent], ...], "val": ..., "test": ...}`, one split per read).
Every problem is reported with the file and line or record at fault; nothing is
skipped silently.
"""

import collections
import csv
import dataclasses
import io
import json
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import tensorflow as tf

from trainer import cached_tokens
from trainer.model import EXAMPLE_WEIGHT, TEXT_FEATURE

CSV = "csv"
JSONL = "jsonl"
CLINC_JSON = "clinc_json"
FORMATS = (CSV, JSONL, CLINC_JSON)
_LABEL_FIELDS = ("intent", "category", "label")
_EXTENSIONS = {".csv": CSV, ".jsonl": JSONL, ".ndjson": JSONL, ".json": CLINC_JSON}


class DataError(ValueError):
  """A data file that cannot be trained or evaluated on as it is."""


@dataclasses.dataclass(frozen=True)
class Example:
  text: str
  intent: str
  source: str  # "file:line" or "file:split[record]", for error messages


def expand_patterns(patterns) -> List[str]:
  """Comma-separated and/or listed glob patterns to a sorted, de-duplicated file list."""
  if isinstance(patterns, str):
    patterns = [patterns]
  files = []
  for pattern in (p.strip() for group in patterns for p in group.split(",")):
    if not pattern:
      continue
    matched = tf.io.gfile.glob(pattern)
    if not matched:
      raise DataError(f"{pattern}: no file matches this pattern")
    files.extend(m for m in sorted(matched) if m not in files)
  if not files:
    raise DataError(f"no data file given (patterns: {patterns!r})")
  return files


def detect_format(path: str) -> str:
  for extension, data_format in _EXTENSIONS.items():
    if path.lower().endswith(extension):
      return data_format
  raise DataError(f"{path}: cannot tell the format from the file name; "
                  f"pass one of {', '.join(FORMATS)} explicitly")


def read_examples(patterns, data_format: str = "auto", split: str = "train") -> List[Example]:
  """Reads every file the patterns match; `split` picks the CLINC-style JSON split, or
  several, comma-separated (read in that order)."""
  if data_format != "auto" and data_format not in FORMATS:
    raise DataError(f"unknown data format {data_format!r}; use auto or one of {FORMATS}")
  examples = []
  for path in expand_patterns(patterns):
    file_format = detect_format(path) if data_format == "auto" else data_format
    text = _read_text(path)
    if file_format == CSV:
      examples.extend(_parse_csv(path, text))
    elif file_format == JSONL:
      examples.extend(_parse_jsonl(path, text))
    else:
      for name in (s.strip() for s in split.split(",")):
        examples.extend(_parse_clinc(path, text, name))
  return examples


def split_out_of_scope(examples: Sequence[Example], oos_label: Optional[str]
                       ) -> Tuple[List[Example], List[Example]]:
  """(in-scope, out-of-scope) examples; all are in scope when there is no `oos_label`."""
  in_scope = [e for e in examples if e.intent != oos_label]
  return in_scope, [e for e in examples if oos_label is not None and e.intent == oos_label]


def _read_text(path: str) -> str:
  try:
    with tf.io.gfile.GFile(path, "rb") as f:
      raw = f.read()
  except tf.errors.OpError as e:
    raise DataError(f"{path}: cannot read file: {e.message}") from e
  try:
    return raw.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    line = raw[:e.start].count(b"\n") + 1
    raise DataError(f"{path}:{line}: not valid UTF-8 ({e.reason} at byte {e.start})") from e


def _checked(path_line: str, text, intent) -> Example:
  if not isinstance(text, str) or not text.strip():
    raise DataError(f"{path_line}: empty or missing text")
  if not isinstance(intent, str) or not intent.strip():
    raise DataError(f"{path_line}: empty or missing intent label")
  return Example(text.strip(), intent.strip(), path_line)


def _parse_csv(path: str, content: str) -> List[Example]:
  reader = csv.reader(io.StringIO(content, newline=""), strict=True)
  try:
    header = next(reader, None)
    if header is None:
      raise DataError(f"{path}: empty file, expected a header such as text,intent")
    columns = [h.strip().lower() for h in header]
    if "text" not in columns:
      raise DataError(f"{path}:1: header {header} has no 'text' column")
    label_columns = [c for c in _LABEL_FIELDS if c in columns]
    if not label_columns:
      raise DataError(f"{path}:1: header {header} has no label column "
                      f"(one of {', '.join(_LABEL_FIELDS)})")
    text_index, label_index = columns.index("text"), columns.index(label_columns[0])
    examples = []
    for row in reader:
      where = f"{path}:{reader.line_num}"
      if not row or row == [""]:
        continue
      if len(row) != len(columns):
        raise DataError(f"{where}: expected {len(columns)} fields ({','.join(columns)}), "
                        f"found {len(row)}; quote texts that contain commas")
      examples.append(_checked(where, row[text_index], row[label_index]))
  except csv.Error as e:
    raise DataError(f"{path}:{reader.line_num}: unreadable CSV: {e}") from e
  if not examples:
    raise DataError(f"{path}: no examples after the header")
  return examples


def _parse_jsonl(path: str, content: str) -> List[Example]:
  examples = []
  for number, line in enumerate(content.splitlines(), start=1):
    if not line.strip():
      continue
    where = f"{path}:{number}"
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise DataError(f"{where}: not valid JSON: {e.msg}") from e
    if not isinstance(record, dict):
      raise DataError(f"{where}: expected an object with 'text' and 'intent'")
    label = next((record[k] for k in _LABEL_FIELDS if k in record), None)
    examples.append(_checked(where, record.get("text"), label))
  if not examples:
    raise DataError(f"{path}: no examples")
  return examples


def _parse_clinc(path: str, content: str, split: str) -> List[Example]:
  try:
    document = json.loads(content)
  except json.JSONDecodeError as e:
    raise DataError(f"{path}:{e.lineno}: not valid JSON: {e.msg}") from e
  if not isinstance(document, dict) or split not in document:
    found = sorted(document) if isinstance(document, dict) else type(document).__name__
    raise DataError(f"{path}: no split {split!r} (found {found})")
  records = document[split]
  if not isinstance(records, list) or not records:
    raise DataError(f"{path}: split {split!r} is not a non-empty list of [text, intent] pairs")
  examples = []
  for index, record in enumerate(records):
    where = f"{path}:{split}[{index}]"
    if not isinstance(record, list) or len(record) != 2:
      raise DataError(f"{where}: expected a [text, intent] pair, got {record!r}")
    examples.append(_checked(where, record[0], record[1]))
  return examples


def label_vocabulary(examples: Sequence[Example]) -> List[str]:
  return sorted({e.intent for e in examples})


def check_eval_labels(train: Sequence[Example], evaluation: Sequence[Example],
                      drop_unseen: bool) -> Tuple[List[Example], Dict[str, int]]:
  """Eval labels must have been seen in training; optionally drop those that were not.

  Returns the eval examples to use and a count of dropped examples per unseen label.
  """
  known = {e.intent for e in train}
  unseen = [e for e in evaluation if e.intent not in known]
  if unseen and not drop_unseen:
    first = unseen[0]
    raise DataError(
        f"{first.source}: eval label {first.intent!r} never appears in the training data "
        f"({len(unseen)} eval examples have unseen labels); pass --drop_unseen_eval_labels "
        f"to drop them")
  dropped: Dict[str, int] = {}
  for e in unseen:
    dropped[e.intent] = dropped.get(e.intent, 0) + 1
  kept = [e for e in evaluation if e.intent in known]
  if not kept:
    raise DataError("no eval example has a label seen in training")
  return kept, dropped


def drop_words(texts: tf.Tensor, rate: float, seed) -> tf.Tensor:
  """`texts` (a `[batch]` string tensor) without each of their words with probability `rate`;
  a text that would lose every word keeps them all. One op per batch, not per text: per-text
  ops cost a third of the training speed. The draw is stateless, a function of `seed` (two
  integers) alone."""
  words = tf.strings.split(texts)
  kept = tf.ragged.boolean_mask(words, words.with_flat_values(
      tf.random.stateless_uniform(tf.shape(words.flat_values), seed=seed) >= rate))
  return tf.where(kept.row_lengths() > 0, tf.strings.reduce_join(kept, axis=1, separator=" "),
                  texts)


def class_balance_weights(examples: Sequence[Example], power: float) -> List[float]:
  """Each example's loss weight: its intent's count to the power -`power`, scaled so the
  weights average 1, so the loss keeps its scale and the learning rates their meaning."""
  counts = collections.Counter(e.intent for e in examples)
  raw = [counts[e.intent] ** -power for e in examples]
  mean = sum(raw) / len(raw) if raw else 1.0
  return [w / mean for w in raw]


def make_input_fn(examples: Sequence[Example], batch_size: int, shuffle: bool,
                  num_epochs=None, seed: int = 0, num_shards: int = 1, shard_index: int = 0,
                  token_dropout: float = 0.0, weights: Optional[Sequence[float]] = None,
                  tokenizer: Optional[Callable[[], cached_tokens.Tokenizer]] = None):
  """An estimator input_fn; `num_epochs=None` repeats forever (bounded by train steps).

  With `num_shards` > 1 it reads only every `num_shards`-th example from `shard_index`;
  with `token_dropout` each word of a text is left out with that probability (`drop_words`);
  `weights` (one per example) are fed as the EXAMPLE_WEIGHT feature. With a `tokenizer`
  (built inside the input_fn) the batches also carry the n-gram ids of their texts,
  each text tokenized once (see trainer/cached_tokens.py).
  """
  if not 0 <= shard_index < num_shards:
    raise ValueError(f"shard_index must be in [0, {num_shards}), got {shard_index}")
  if weights is not None and len(weights) != len(examples):
    raise ValueError(f"{len(weights)} weights for {len(examples)} examples")
  features = {TEXT_FEATURE: [e.text for e in examples]}
  if weights is not None:
    features[EXAMPLE_WEIGHT] = [float(w) for w in weights]
  labels = [e.intent for e in examples]

  def input_fn():
    if tokenizer:
      # Sharded here, as Dataset.shard would, so each task tokenizes its own shard alone.
      return _cached_ids_dataset(
          tokenizer(), {name: values[shard_index::num_shards] for name, values in features.items()},
          labels[shard_index::num_shards], batch_size, shuffle, num_epochs, seed,
          len(labels), token_dropout)
    dataset = tf.data.Dataset.from_tensor_slices((features, labels))
    if num_shards > 1:
      dataset = dataset.shard(num_shards, shard_index)
    if shuffle:
      dataset = dataset.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.repeat(num_epochs).batch(batch_size)
    if token_dropout:
      # Keyed by (seed, batch number): a stateful draw shared by the parallel calls would
      # depend on their order, so two runs of one seed would train on different texts.
      dataset = dataset.enumerate().map(
          lambda number, batch: (
              {**batch[0], TEXT_FEATURE: drop_words(
                  batch[0][TEXT_FEATURE], token_dropout, _draw_seed(seed, number))}, batch[1]),
          num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)

  return input_fn


def _cached_ids_dataset(tokenizer: cached_tokens.Tokenizer, features, labels, batch_size,
                        shuffle, num_epochs, seed, shuffle_buffer, token_dropout):
  """The batches of `make_input_fn` over one shard's `features` and `labels`, each with
  its texts' n-gram ids.

  The dataset runs over example rows: every text is tokenized once (Grappler does it while
  it optimizes the first session run's graph, folding the result into a constant) and each
  batch gathers its rows from that. The rows are shuffled and batched as `make_input_fn`
  does the examples themselves, so each batch holds the same examples in the same order.
  """
  columns = {name: tf.constant(values) for name, values in features.items()}
  label_column = tf.constant(labels)
  tokenized = tokenizer.tokenize(columns[TEXT_FEATURE])

  # Plain graph code: autograph's conversion of it took longer than a hundred steps.
  @tf.autograph.experimental.do_not_convert
  def batch_of(number, rows):
    batch = {name: tf.gather(column, rows) for name, column in columns.items()}
    batch.update(tokenizer.ids(tokenized, rows, token_dropout, _draw_seed(seed, number)))
    return batch, tf.gather(label_column, rows)

  dataset = tf.data.Dataset.range(len(labels))
  if shuffle:
    dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
  dataset = dataset.repeat(num_epochs).batch(batch_size).enumerate()
  return dataset.map(batch_of, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def _draw_seed(seed: int, batch_number: tf.Tensor) -> tf.Tensor:
  return tf.stack([tf.constant(seed, tf.int64), batch_number])
