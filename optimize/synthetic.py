"""Made-up requests, built from what the export itself says its traffic looks like.

When real examples are too few for the guard's rule, it tops them up with synthetic ones.
Noise makes a poor stand-in (a classifier answers random bytes with near-ties on every
class), so each feature is made from what the model reads it with:

- a string feature looked up in a vocabulary asset (a categorical column, a text module's
  n-gram table) takes that asset's own entries; one the model tokenizes (string split,
  n-grams) becomes a sentence of the asset's words, each next word drawn from the word pairs
  the vocabulary holds where it holds any, so that texts read like the corpus;
- a numeric feature the model buckets takes values across its bucket boundaries;
- otherwise the values seen in the export's warmup records, or small generic ones.

The stream depends only on the export (graph, assets, warmup records) and a seed, so the
same export always gets the same requests, whatever real data the guard also has: real
examples can only add evidence, never change the synthetic part of it.
"""

import collections
import random
import re
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from export import examples as examples_lib

_MAX_ASSET_BYTES = 16 << 20
_TOKENIZING_OPS = frozenset({"StringSplit", "StringSplitV2", "StringNGrams", "UnicodeDecode",
                             "UnicodeDecodeWithOffsets", "RegexSplitWithOffsets"})
_WORD = re.compile(r"^\w+$")
_SENTENCE_WORDS = (2, 14)
WHAT_TO_PASS = ("pass --eval_data: a TFRecord of serialized tf.Example, or a CSV / JSON Lines "
                "file with one column per feature")


class SyntheticError(ValueError):
  """The export says too little to make up requests for it."""


class _Feature:
  """How one feature's values are made."""

  def __init__(self, dtype: tf.DType, shape: Optional[List[int]]):
    self.dtype, self.shape = dtype, shape
    self.vocabulary: List[bytes] = []
    self.tokenized = False
    self.boundaries: List[float] = []
    self.observed: list = []


def features(graph_def, signatures) -> Dict[str, Tuple[tf.DType, Optional[List[int]]]]:
  """Every feature the export reads: its tf.Example parsers' features, and each signature
  input that feeds no parser (a raw receiver), with their dtypes and shapes."""
  found = {name: (spec.dtype, spec.shape)
           for name, spec in examples_lib.parse_spec(graph_def).items()}
  for signature in signatures.values():
    for key, info in signature.inputs.items():
      if key in found or examples_lib.feeds_parser(graph_def, info.name):
        continue
      dims = [d.size for d in info.tensor_shape.dim][1:]
      if any(d < 0 for d in dims) or tf.as_dtype(info.dtype) not in (tf.string, tf.float32,
                                                                      tf.int64):
        raise SyntheticError(f"cannot make up inputs for {key!r} "
                             f"({tf.as_dtype(info.dtype).name}, shape "
                             f"{[d.size for d in info.tensor_shape.dim]}): {WHAT_TO_PASS}")
      found[key] = (tf.as_dtype(info.dtype), dims)
  if not found:
    raise SyntheticError(f"the export reads no feature its signatures name: {WHAT_TO_PASS}")
  return found


class SyntheticRequests:
  """A deterministic stream of made-up serialized tf.Examples for one export.

  `asset_files`: asset tensor node name -> the file it names (a SavedModel's AssetFileDefs);
  `observed`: serialized tf.Examples of the export's warmup records.
  """

  def __init__(self, graph_def, signatures, asset_files: Mapping[str, str],
               observed: Sequence[bytes] = (), seed: int = 0):
    self._features = {name: _Feature(dtype, shape)
                      for name, (dtype, shape) in features(graph_def, signatures).items()}
    _trace(graph_def, signatures, self._features, asset_files)
    for serialized in observed:
      for name, feature in tf.train.Example.FromString(serialized).features.feature.items():
        kind = feature.WhichOneof("kind")
        if kind and name in self._features:
          self._features[name].observed.extend(getattr(feature, kind).value)
    self._pairs = {name: _word_pairs(f.vocabulary) for name, f in self._features.items()
                   if f.tokenized}
    self._words = {name: _weighted(_words(f)) for name, f in self._features.items()
                   if f.dtype == tf.string}
    self._chooser = random.Random(seed)
    self.made = 0

  def take(self, count: int) -> List[bytes]:
    """The next `count` examples of the stream."""
    made = [self._example(self._chooser) for _ in range(count)]
    self.made += count
    return made

  def probe(self) -> bytes:
    """An example like the stream's, made without advancing it."""
    return self._example(random.Random(-1))

  def _example(self, chooser: random.Random) -> bytes:
    example = tf.train.Example()
    for name, feature in sorted(self._features.items()):
      size = int(np.prod(feature.shape)) if feature.shape is not None else chooser.randint(1, 3)
      values = self._values(chooser, name, feature, size)
      kind = {tf.string: "bytes_list", tf.int64: "int64_list"}.get(feature.dtype, "float_list")
      getattr(example.features.feature[name], kind).value.extend(values)
    return example.SerializeToString()

  def _values(self, chooser: random.Random, name: str, feature: _Feature, size: int):
    if feature.dtype == tf.string:
      if feature.tokenized or any(b" " in value for value in feature.observed):
        return [self._sentence(chooser, name) for _ in range(size)]
      return [_draw(chooser, self._words[name]) for _ in range(size)]
    if feature.boundaries:
      low, high = feature.boundaries[0], feature.boundaries[-1]
      margin = (high - low) / max(1, len(feature.boundaries)) or 1.0
      values = [chooser.uniform(low - margin, high + margin) for _ in range(size)]
      return [int(round(v)) for v in values] if feature.dtype == tf.int64 else values
    if feature.dtype == tf.int64:
      low, high = ((min(feature.observed), max(feature.observed)) if feature.observed
                   else (0, 9))
      return [chooser.randint(int(low), int(high)) for _ in range(size)]
    if feature.observed:
      mean, spread = float(np.mean(feature.observed)), float(np.std(feature.observed)) or 1.0
    else:
      mean, spread = 0.0, 1.0
    return [chooser.gauss(mean, spread) for _ in range(size)]

  def _sentence(self, chooser: random.Random, name: str) -> bytes:
    """Words of the vocabulary, each next one, mostly, a word the vocabulary pairs it with."""
    words, pairs = self._words[name], self._pairs.get(name, {})
    chosen = [_draw(chooser, words)]
    for _ in range(chooser.randint(*_SENTENCE_WORDS) - 1):
      following = pairs.get(chosen[-1])
      chosen.append(_draw(chooser, following) if following and chooser.random() < 0.8
                    else _draw(chooser, words))
    return b" ".join(chosen)


def _draw(chooser: random.Random, weighted) -> bytes:
  values, cumulative = weighted
  return chooser.choices(values, cum_weights=cumulative)[0]


def _words(feature: _Feature) -> List[bytes]:
  """The values a string feature is drawn from: single words of a text's vocabulary, a
  categorical column's entries, else words seen in warmup records, else generic tokens."""
  if feature.tokenized:
    vocabulary = [e for e in feature.vocabulary if b" " not in e]
  else:
    vocabulary = feature.vocabulary
  return (vocabulary or [w for value in feature.observed for w in value.split()]
          or [f"token{i}".encode() for i in range(100)])


def _weighted(values: Sequence[bytes]):
  """(values, cumulative weights) favouring earlier entries as 1/sqrt(rank): vocabulary
  files list the most frequent first, and a draw should look like a corpus, not a tail of
  rare words; for an unordered list it is a mild bias and nothing more."""
  return list(values), list(np.cumsum(1.0 / np.sqrt(np.arange(1, len(values) + 1))))


def _word_pairs(vocabulary: Sequence[bytes]):
  pairs = collections.defaultdict(list)
  for entry in vocabulary:
    parts = entry.split(b" ")
    if len(parts) == 2:
      pairs[parts[0]].append(parts[1])
  return {first: _weighted(following) for first, following in pairs.items()}


def _trace(graph_def, signatures, found: Dict[str, _Feature], asset_files) -> None:
  """Fills in, per feature, what the ops that read it say: the vocabulary files of the
  tables it is looked up in, whether it is tokenized, the boundaries it is bucketed by."""
  by_name = {n.name: n for n in graph_def.node}
  users = collections.defaultdict(list)
  for node in graph_def.node:
    for position, tensor in enumerate(node.input):
      users[tensor.lstrip("^").split(":")[0]].append((node, position))
  table_files = _table_files(graph_def, by_name, asset_files)
  starts = examples_lib.parsed_tensors(graph_def)
  for signature in signatures.values():
    for key, info in signature.inputs.items():
      if key in found and key not in starts:
        starts[key] = [info.name]
  for name, tensors in starts.items():
    if name not in found:
      continue
    feature = found[name]
    keys = {_key(t) for t in tensors}
    # The first step follows the feature's own parser outputs; after it, every output.
    reads = [(user, position) for t in keys for user, position in users[t.split(":")[0]]
             if _key(user.input[position]) == t]
    seen, files = set(), []
    while reads:
      user, position = reads.pop()
      if user.op in _TOKENIZING_OPS:
        feature.tokenized = True
      if user.op == "LookupTableFindV2" and position == 1:
        table = _table_of(user.input[0], by_name)
        files.extend(f for f in table_files.get(table, []) if f not in files)
      if user.op == "Bucketize" and not feature.boundaries:
        feature.boundaries = sorted(user.attr["boundaries"].list.f)
      if user.name not in seen:
        seen.add(user.name)
        reads.extend(users.get(user.name, []))
    entries = [e for path in files for e in _asset_entries(path)]
    if feature.tokenized:
      entries = [e for e in entries if all(_is_word(p) for p in e.split(b" "))]
    feature.vocabulary = list(dict.fromkeys(entries))


def _is_word(value: bytes) -> bool:
  return bool(_WORD.match(value.decode("utf-8", "replace")))


def _key(tensor: str) -> str:
  return tensor if ":" in tensor else tensor + ":0"


def _table_of(handle: str, by_name) -> str:
  node = by_name.get(handle.lstrip("^").split(":")[0])
  while node is not None and node.op == "Identity":
    node = by_name.get(node.input[0].split(":")[0])
  return node.name if node is not None else handle


def _table_files(graph_def, by_name, asset_files) -> Dict[str, List[str]]:
  """Table node name -> the asset files its initializers read, one entry per line."""
  tables = collections.defaultdict(list)
  for node in graph_def.node:
    if node.op != "InitializeTableFromTextFileV2" or node.attr["key_index"].i != -2:
      continue
    source = node.input[1].split(":")[0]
    if source in asset_files:
      tables[_table_of(node.input[0], by_name)].append(asset_files[source])
  return tables


def _asset_entries(path: str) -> List[bytes]:
  if not tf.io.gfile.exists(path) or tf.io.gfile.stat(path).length > _MAX_ASSET_BYTES:
    return []
  with tf.io.gfile.GFile(path, "rb") as f:
    content = f.read()
  try:
    content.decode("utf-8")
  except UnicodeDecodeError:
    return []
  return [line.strip() for line in content.splitlines() if line.strip()]
