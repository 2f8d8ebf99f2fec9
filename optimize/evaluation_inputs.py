"""The real examples the accuracy guard judges on, and how examples feed each signature.

Real examples come, first found first:
1. from an evaluation file the user passes (read by `export.examples`, typed by what the
   model parses; a `label_key` feature, where a row has it, is its label);
2. else from the export itself: its evaluation sample (`export.evaluation_sample`, written by
   this project's exporter, labelled) and the tf.Examples of its warmup records
   (`export.warmup`). Both travel with every copy of the version.

Signatures that parse tf.Examples get the serialized examples, others the example feature
named after each input; a signature no example can feed gets the warmup requests made for it.
"""

import dataclasses
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from export import evaluation_sample
from export import examples as examples_lib
from export import warmup
from optimize.synthetic import WHAT_TO_PASS

EVAL_EXAMPLES_LIMIT = 4096


class GuardError(ValueError):
  """The guard could not build inputs or compare the models."""


@dataclasses.dataclass
class RealExamples:
  """Serialized tf.Examples of real traffic, with a label per row (None where it has none),
  and where they came from, as the guard reports it."""
  serialized: List[bytes]
  labels: Optional[List[object]] = None  # None: no example has a label
  sources: List[str] = dataclasses.field(default_factory=list)

  @property
  def labelled(self) -> int:
    return sum(label is not None for label in self.labels or ())


def read_eval_examples(path: str, graph_def, label_key: Optional[str] = None) -> RealExamples:
  """The evaluation file's examples, serialized, with the types the model parses."""
  types = {name: spec.dtype for name, spec in examples_lib.parse_spec(graph_def).items()}
  if label_key and label_key in types:
    raise GuardError(f"--label_key {label_key!r} is a feature the model itself parses")
  try:
    examples = examples_lib.read_examples(path, types, limit=EVAL_EXAMPLES_LIMIT)
  except examples_lib.ExamplesError as e:
    raise GuardError(str(e)) from None
  serialized = [e.SerializeToString() for e in examples]
  source = [f"{len(serialized)} from {path}"]
  if not label_key:
    return RealExamples(serialized, sources=source)
  labelled = RealExamples(serialized, [_label(e, label_key) for e in examples], source)
  if not labelled.labelled:
    raise GuardError(f"{path}: no example has the label feature {label_key!r}")
  return labelled


def _label(example: tf.train.Example, key: str):
  feature = example.features.feature.get(key)
  if feature is None:
    return None
  values = list(getattr(feature, feature.WhichOneof("kind") or "bytes_list").value)
  return values[0] if len(values) == 1 else None


def export_examples(version_dir: str, warmup_examples: Sequence[bytes]) -> RealExamples:
  """The real examples a version carries: its evaluation sample, then those of its warmup
  records that the sample does not hold already."""
  try:
    sample = evaluation_sample.read(version_dir, limit=EVAL_EXAMPLES_LIMIT)
  except evaluation_sample.SampleError as e:
    raise GuardError(str(e)) from None
  serialized, labels, sources = [], [], []
  if sample is not None:
    serialized, labels = list(sample.serialized), list(sample.labels)
    sources.append(f"{len(serialized)} from the export's evaluation sample ({sample.path}, "
                   f"{sample.labelled} labelled)")
  known = {_without(s, sample.label_key) for s in serialized} if sample else set()
  from_warmup = [s for s in dict.fromkeys(warmup_examples) if _without(s, None) not in known]
  if from_warmup:
    serialized += from_warmup
    labels += [None] * len(from_warmup)
    sources.append(f"{len(from_warmup)} from the export's warmup records")
  return RealExamples(serialized, labels if any(l is not None for l in labels) else None,
                      sources)


def _without(serialized: bytes, label_key: Optional[str]) -> bytes:
  """An example's features without its label, in one byte order, to tell copies apart."""
  example = tf.train.Example.FromString(serialized)
  if label_key:
    example.features.feature.pop(label_key, None)
  return example.SerializeToString(deterministic=True)


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


def example_inputs(signature, graph_def, serialized: Sequence[bytes]) -> Optional[Dict]:
  """The signature's inputs for these tf.Examples (one row each), or None when some input
  is neither a tf.Example parser's nor a feature every example holds."""
  columns = {}
  for key, info in signature.inputs.items():
    if info.dtype == tf.string.as_datatype_enum and examples_lib.feeds_parser(graph_def,
                                                                               info.name):
      columns[key] = list(serialized)
    else:
      column = _feature_column(serialized, key, info)
      if column is None:
        return None
      columns[key] = column
  return columns


def unfed_signatures(signatures, graph_def, warmup_batches: Mapping[str, List[Dict]],
                     probe: Sequence[bytes]) -> Dict[str, List[Dict]]:
  """Per signature that examples like `probe` cannot feed, the warmup requests that can;
  raises naming a signature nothing feeds."""
  result = {}
  for name, signature in sorted(signatures.items()):
    if probe and example_inputs(signature, graph_def, probe[:1]) is not None:
      continue
    requests = [b for b in warmup_batches.get(name, []) if set(b) == set(signature.inputs)]
    if not requests:
      raise GuardError(f"cannot build evaluation inputs for signature {name!r} (inputs "
                       f"{sorted(signature.inputs)}): {WHAT_TO_PASS}, with a feature named "
                       f"after each input")
    result[name] = requests
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
