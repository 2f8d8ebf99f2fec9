"""The inputs the accuracy guard runs every signature on.

From an evaluation file the user passes (read by `export.examples`, typed by what the model
parses; a `label_key` feature, where a row has it, is its label) or, by default, from the
export's own warmup records (`export.warmup`): signatures that parse tf.Examples get the
serialized examples, others the example feature named after each input, and a signature no
example can feed gets the warmup requests made for it.

Without evaluation data the warmup records rarely hold enough examples to prove anything (an
estimator's `export_saved_model` writes none at all), so `synthetic_examples` makes more from
the export itself: the features its tf.Example parser reads, with their types and shapes,
string values drawn from the words of the warmup examples or from the export's vocabulary
assets. Made-up inputs prove less than real ones; the optimizer says so when it uses them.
"""

import dataclasses
import random
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from export import examples as examples_lib
from export import warmup
from export.servable import SessionServable

EVAL_EXAMPLES_LIMIT = 4096
_BATCH = 64
_MAX_ASSET_BYTES = 4 << 20
_WHAT_TO_PASS = ("pass --eval_data: a TFRecord of serialized tf.Example, or a CSV / JSON Lines "
                 "file with one column per feature")


class GuardError(ValueError):
  """The guard could not build inputs or compare the models."""


@dataclasses.dataclass
class SignatureInputs:
  batches: List[Dict[str, object]]
  # Per row of the batches, in order: the row's label, or None (unlabelled, or no labels).
  labels: Optional[List[object]] = None

  @property
  def examples(self) -> int:
    return sum(len(next(iter(b.values()))) for b in self.batches)


@dataclasses.dataclass
class Examples:
  """Serialized tf.Examples to judge on, with a label per row (None where it has none)."""
  serialized: List[bytes]
  labels: Optional[List[object]] = None  # None: no example has a label
  synthetic: int = 0  # of them, how many were made up

  @property
  def labelled(self) -> int:
    return sum(label is not None for label in self.labels or ())


def read_eval_examples(path: str, graph_def, label_key: Optional[str] = None) -> Examples:
  """The evaluation file's examples, serialized, with the types the model parses."""
  types = {name: spec.dtype for name, spec in examples_lib.parse_spec(graph_def).items()}
  if label_key and label_key in types:
    raise GuardError(f"--label_key {label_key!r} is a feature the model itself parses")
  try:
    examples = examples_lib.read_examples(path, types, limit=EVAL_EXAMPLES_LIMIT)
  except examples_lib.ExamplesError as e:
    raise GuardError(str(e)) from None
  serialized = [e.SerializeToString() for e in examples]
  if not label_key:
    return Examples(serialized)
  labelled = Examples(serialized, [_label(e, label_key) for e in examples])
  if not labelled.labelled:
    raise GuardError(f"{path}: no example has the label feature {label_key!r}")
  return labelled


def _label(example: tf.train.Example, key: str):
  feature = example.features.feature.get(key)
  if feature is None:
    return None
  values = list(getattr(feature, feature.WhichOneof("kind") or "bytes_list").value)
  return values[0] if len(values) == 1 else None


def warmup_inputs(version_dir: str, signatures) -> Tuple[Dict[str, List[Dict]], List[bytes]]:
  """The export's warmup requests as inputs per signature, and every tf.Example in them."""
  batches: Dict[str, List[Dict]] = {}
  serialized: List[bytes] = []
  try:
    requests = warmup.read_requests(version_dir)
  except warmup.WarmupError as e:
    raise GuardError(str(e)) from None
  for request in requests:
    serialized.extend(request.examples)
    if request.kind == warmup.PREDICT:
      batches.setdefault(request.signatures[0], []).append(request.inputs)
    elif request.kind in (warmup.CLASSIFY, warmup.REGRESS):
      name = request.signatures[0]
      if name in signatures and len(signatures[name].inputs) == 1:
        batches.setdefault(name, []).append(
            {next(iter(signatures[name].inputs)): list(request.examples)})
  return batches, serialized


def synthetic_examples(graph_def, version_dir: str, signatures, count: int,
                       seeds: Sequence[bytes] = (), seed: int = 0) -> List[bytes]:
  """`count` made-up tf.Examples holding every feature the export reads (see the module
  docstring); raises, saying what to pass, when the export's inputs say too little."""
  features = {name: (spec.dtype, spec.shape)
              for name, spec in examples_lib.parse_spec(graph_def).items()}
  for signature in signatures.values():
    for key, info in signature.inputs.items():
      if key in features or examples_lib.feeds_parser(graph_def, info.name):
        continue
      dims = [d.size for d in info.tensor_shape.dim][1:]
      if any(d < 0 for d in dims) or tf.as_dtype(info.dtype) not in (tf.string, tf.float32,
                                                                      tf.int64):
        raise GuardError(f"cannot make up inputs for {key!r} ({tf.as_dtype(info.dtype).name}, "
                         f"shape {[d.size for d in info.tensor_shape.dim]}): {_WHAT_TO_PASS}")
      features[key] = (tf.as_dtype(info.dtype), dims)
  if not features:
    raise GuardError(f"the export reads no feature its signatures name: {_WHAT_TO_PASS}")
  observed = _observed_values([tf.train.Example.FromString(s) for s in seeds])
  vocabulary = _asset_tokens(version_dir)
  chooser = random.Random(seed)
  made = []
  for _ in range(count):
    example = tf.train.Example()
    for name, (dtype, shape) in sorted(features.items()):
      size = int(np.prod(shape)) if shape is not None else chooser.randint(1, 3)
      values = _values(chooser, dtype, size, observed.get(name, []), vocabulary)
      feature = example.features.feature[name]
      if dtype == tf.string:
        feature.bytes_list.value.extend(values)
      elif dtype == tf.int64:
        feature.int64_list.value.extend(values)
      else:
        feature.float_list.value.extend(values)
    made.append(example.SerializeToString())
  return made


def _observed_values(examples: Sequence[tf.train.Example]) -> Dict[str, list]:
  observed: Dict[str, list] = {}
  for example in examples:
    for name, feature in example.features.feature.items():
      kind = feature.WhichOneof("kind")
      if kind:
        observed.setdefault(name, []).extend(getattr(feature, kind).value)
  return observed


def _asset_tokens(version_dir: str) -> List[bytes]:
  """Lines of the export's text assets (vocabulary files of categorical columns)."""
  tokens: List[bytes] = []
  assets = f"{version_dir}/assets"
  if not tf.io.gfile.isdir(assets):
    return tokens
  for name in sorted(tf.io.gfile.listdir(assets)):
    path = f"{assets}/{name}"
    if tf.io.gfile.isdir(path) or tf.io.gfile.stat(path).length > _MAX_ASSET_BYTES:
      continue
    with tf.io.gfile.GFile(path, "rb") as f:
      content = f.read()
    try:
      content.decode("utf-8")
    except UnicodeDecodeError:
      continue
    tokens.extend(line.split(b"\t")[0].strip() for line in content.splitlines()
                  if line.strip())
  return tokens


def _values(chooser: random.Random, dtype, size: int, observed: list, vocabulary):
  if dtype == tf.string:
    words = [w for value in observed for w in value.split()] or vocabulary
    if not words:
      words = [f"token{i}".encode() for i in range(100)]
    if observed and any(b" " in value for value in observed):  # texts: make sentences
      return [b" ".join(chooser.choice(words) for _ in range(chooser.randint(2, 12)))
              for _ in range(size)]
    return [chooser.choice(words) for _ in range(size)]
  if dtype == tf.int64:
    low, high = (min(observed), max(observed)) if observed else (0, 9)
    return [chooser.randint(int(low), int(high)) for _ in range(size)]
  if observed:
    mean, spread = float(np.mean(observed)), float(np.std(observed)) or 1.0
  else:
    mean, spread = 0.0, 1.0
  return [chooser.gauss(mean, spread) for _ in range(size)]


def signature_inputs(servable: SessionServable, graph_def, examples: Examples,
                     warmup_batches: Mapping[str, List[Dict]]) -> Dict[str, SignatureInputs]:
  """Inputs for every signature, from tf.Examples where it can and else from warmup
  requests; raises naming the signature it cannot feed."""
  result = {}
  serialized = examples.serialized
  for name, signature in sorted(servable.signatures.items()):
    keys = list(signature.inputs)
    if serialized:
      batch_columns = {}
      for key in keys:
        info = signature.inputs[key]
        if info.dtype == tf.string.as_datatype_enum and examples_lib.feeds_parser(
            graph_def, info.name):
          batch_columns[key] = list(serialized)
        else:
          column = _feature_column(serialized, key, info)
          if column is None:
            break
          batch_columns[key] = column
      if len(batch_columns) == len(keys):
        result[name] = SignatureInputs(
            [{k: v[i:i + _BATCH] for k, v in batch_columns.items()}
             for i in range(0, len(serialized), _BATCH)],
            examples.labels)
        continue
    requests = [b for b in warmup_batches.get(name, []) if set(b) == set(keys)]
    if requests:
      result[name] = SignatureInputs(requests)
      continue
    raise GuardError(f"cannot build evaluation inputs for signature {name!r} (inputs {keys}): "
                     f"{_WHAT_TO_PASS}, with a feature named after each input")
  return result


def _feature_column(examples: Sequence[bytes], key: str, info) -> Optional[np.ndarray]:
  values = []
  for serialized in examples:
    feature = tf.train.Example.FromString(serialized).features.feature.get(key)
    if feature is None:
      return None
    kind = feature.WhichOneof("kind")
    values.append(list(getattr(feature, kind).value))
  rank = len(info.tensor_shape.dim)
  dtype = tf.as_dtype(info.dtype)
  if dtype == tf.string:
    array = np.array(values, dtype=object)
  else:
    array = np.array(values, dtype=dtype.as_numpy_dtype)
  if rank == 1 and array.ndim == 2 and array.shape[1] == 1:
    array = array[:, 0]
  return array
