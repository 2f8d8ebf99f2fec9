"""A real sample of the traffic a model will see, shipped inside its version dir.

`assets.extra/evaluation_sample.tfrecord.gz` holds serialized `tf.Example`s (real requests,
some with their true label under the manifest's `label_key`), and
`assets.extra/evaluation_sample.json` says what they are: `{"label_key", "examples",
"labelled", "sources"}`. TF Serving ignores both (it reads only the warmup file there), and
they travel with every copy of the version, so a stage that meets the model alone, on any
machine or bucket, still has real evidence to judge it on: the optimizer's guard reads it
when it is given no evaluation file.

The exporter writes it from the trainer's evaluation examples (stratified by label, so
every intent keeps its share) topped up with training texts; `read` is the one reader.
"""

import dataclasses
import json
import random
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import tensorflow as tf

from export import artifact_io
from export import examples as examples_lib

EXAMPLES_FILENAME = "evaluation_sample.tfrecord.gz"
MANIFEST_FILENAME = "evaluation_sample.json"
# Enough for the guard to vouch for 99.5 % agreement at 95 % with up to four real
# disagreements (1,829 examples), about 80 KB compressed for short texts.
DEFAULT_SIZE = 2048


class SampleError(ValueError):
  """A sample whose manifest or examples cannot be read; the message names the file."""


@dataclasses.dataclass(frozen=True)
class Sample:
  """The examples of a version's sample, serialized, with each one's label or None."""
  serialized: List[bytes]
  labels: List[Optional[bytes]]
  label_key: Optional[str]
  path: str

  @property
  def labelled(self) -> int:
    return sum(label is not None for label in self.labels)


def stratified(rows: Sequence, label_of, size: int, seed: int = 0) -> List:
  """At most `size` of `rows`, every label keeping its share (largest remainder first), in
  the rows' order."""
  if len(rows) <= size:
    return list(rows)
  by_label: Dict[object, List[int]] = {}
  for index, row in enumerate(rows):
    by_label.setdefault(label_of(row), []).append(index)
  quotas = {label: size * len(indices) / len(rows) for label, indices in by_label.items()}
  counts = {label: int(quota) for label, quota in quotas.items()}
  left = size - sum(counts.values())
  for label in sorted(quotas, key=lambda k: (counts[k] - quotas[k], str(k)))[:left]:
    counts[label] += 1
  chooser = random.Random(seed)
  chosen = []
  for label in sorted(by_label, key=str):
    chosen.extend(chooser.sample(by_label[label], counts[label]))
  return [rows[i] for i in sorted(chosen)]


def write(assets_extra_dir: str, labelled: Iterable[Tuple[tf.train.Example, bytes]],
          unlabelled: Iterable[tf.train.Example], label_key: str,
          sources: Sequence[str]) -> Dict[str, str]:
  """Writes the sample's two files into `assets_extra_dir`: the labelled examples (each given
  its label under `label_key`) then the unlabelled ones. Returns {filename: path}, as
  `export_saved_model`'s `assets_extra` takes it."""
  rows = []
  for example, label in labelled:
    with_label = tf.train.Example()
    with_label.CopyFrom(example)
    with_label.features.feature[label_key].bytes_list.value[:] = [label]
    rows.append(with_label)
  labelled_count = len(rows)
  rows.extend(unlabelled)
  paths = {EXAMPLES_FILENAME: artifact_io.join(assets_extra_dir, EXAMPLES_FILENAME),
           MANIFEST_FILENAME: artifact_io.join(assets_extra_dir, MANIFEST_FILENAME)}
  examples_lib.write_examples(paths[EXAMPLES_FILENAME], rows, compression="GZIP")
  artifact_io.write_atomic(paths[MANIFEST_FILENAME], json.dumps(
      {"label_key": label_key, "examples": len(rows), "labelled": labelled_count,
       "sources": list(sources)}, indent=2) + "\n")
  return paths


def manifest_path(version_dir: str) -> str:
  return artifact_io.join(version_dir.rstrip("/"), "assets.extra", MANIFEST_FILENAME)


def read(version_dir: str, limit: Optional[int] = None) -> Optional[Sample]:
  """The version's sample, or None when it ships none."""
  manifest_file = manifest_path(version_dir)
  if not tf.io.gfile.exists(manifest_file):
    return None
  try:
    with tf.io.gfile.GFile(manifest_file) as f:
      manifest = json.load(f)
    label_key = manifest.get("label_key")
  except (json.JSONDecodeError, AttributeError, UnicodeDecodeError) as e:
    raise SampleError(f"{manifest_file}: not a JSON object naming the sample's label_key: "
                      f"{e}") from None
  if label_key is not None and not isinstance(label_key, str):
    raise SampleError(f"{manifest_file}: label_key must be a string, got {label_key!r}")
  path = artifact_io.join(version_dir.rstrip("/"), "assets.extra", EXAMPLES_FILENAME)
  try:
    examples = examples_lib.read_examples(path, limit=limit)
  except examples_lib.ExamplesError as e:
    raise SampleError(str(e)) from None
  labels = []
  for example in examples:
    feature = example.features.feature.get(label_key) if label_key else None
    values = list(feature.bytes_list.value) if feature is not None else []
    labels.append(values[0] if len(values) == 1 else None)
  return Sample([e.SerializeToString() for e in examples], labels, label_key, path)
