"""The inputs the accuracy guard runs every signature on.

From an evaluation file the user passes (read by `export.examples`, typed by what the model
parses) or, by default, from the export's own warmup records (`export.warmup`): signatures that
parse tf.Examples get the serialized examples, others the example feature named after each
input, and a signature no example can feed gets the warmup requests made for it.
"""

import dataclasses
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from export import examples as examples_lib
from export import warmup
from export.servable import SessionServable

EVAL_EXAMPLES_LIMIT = 2048
_BATCH = 64


class GuardError(ValueError):
  """The guard could not build inputs or compare the models."""


@dataclasses.dataclass
class SignatureInputs:
  batches: List[Dict[str, object]]

  @property
  def examples(self) -> int:
    return sum(len(next(iter(b.values()))) for b in self.batches)


def read_eval_examples(path: str, graph_def) -> List[bytes]:
  """The evaluation file's examples, serialized, with the types the model parses."""
  types = {name: spec.dtype for name, spec in examples_lib.parse_spec(graph_def).items()}
  try:
    examples = examples_lib.read_examples(path, types, limit=EVAL_EXAMPLES_LIMIT)
  except examples_lib.ExamplesError as e:
    raise GuardError(str(e)) from None
  return [e.SerializeToString() for e in examples]


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


def signature_inputs(servable: SessionServable, graph_def, examples: Sequence[bytes],
                     warmup_batches: Mapping[str, List[Dict]]) -> Dict[str, SignatureInputs]:
  """Inputs for every signature, from tf.Examples where it can and else from warmup
  requests; raises naming the signature it cannot feed."""
  result = {}
  for name, signature in sorted(servable.signatures.items()):
    keys = list(signature.inputs)
    if examples:
      batch_columns = {}
      for key in keys:
        info = signature.inputs[key]
        if info.dtype == tf.string.as_datatype_enum and examples_lib.feeds_parser(
            graph_def, info.name):
          batch_columns[key] = list(examples)
        else:
          column = _feature_column(examples, key, info)
          if column is None:
            break
          batch_columns[key] = column
      if len(batch_columns) == len(keys):
        result[name] = SignatureInputs([
            {k: v[i:i + _BATCH] for k, v in batch_columns.items()}
            for i in range(0, len(examples), _BATCH)])
        continue
    requests = [b for b in warmup_batches.get(name, []) if set(b) == set(keys)]
    if requests:
      result[name] = SignatureInputs(requests)
      continue
    raise GuardError(f"cannot build evaluation inputs for signature {name!r} (inputs {keys}): "
                     f"pass evaluation data with a feature named after each input")
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
