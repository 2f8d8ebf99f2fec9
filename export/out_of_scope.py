"""The out-of-scope threshold a servable ships in `assets.extra/out_of_scope.json`.

TF Serving answers every classification with its intents' scores and never says "none of
these"; the trainer picks on its eval set the top score below which an answer should be taken
as out of scope (see trainer/evaluation.py), and the export carries it beside the model, so a
client applies the threshold its model was measured with:

    {"label": "oos", "threshold": 0.62, "target_precision": 0.95,
     "score": "the top classification score (classify: scores; predict: probabilities)"}

This module is the one writer and reader of that file: the exporter writes it, the optimizer
copies assets.extra whole, the smoke test reads it back.
"""

import dataclasses
import json
from typing import Optional

import tensorflow as tf

from export import artifact_io

FILENAME = "out_of_scope.json"
PATH = f"assets.extra/{FILENAME}"  # relative to the version dir
_SCORE = "the top classification score (classify: scores; predict: probabilities)"


class BadThresholdFile(ValueError):
  """The file is there but not a threshold this code can apply."""


@dataclasses.dataclass(frozen=True)
class OutOfScopeThreshold:
  label: str
  threshold: float
  target_precision: float

  def applied(self, top_class: str, top_score: float) -> str:
    """The answer a client gives: the top class, or `label` below the threshold."""
    return top_class if top_score >= self.threshold else self.label

  def to_json(self) -> str:
    return json.dumps({**dataclasses.asdict(self), "score": _SCORE}, indent=2) + "\n"


def read(version_dir: str) -> Optional[OutOfScopeThreshold]:
  """The version's threshold; None when it has none. Raises BadThresholdFile naming the file
  and the field at fault."""
  path = artifact_io.join(version_dir, PATH)
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path, "r") as f:
    content = f.read()
  try:
    document = json.loads(content)
  except ValueError as e:
    raise BadThresholdFile(f"{path}: not JSON: {e}") from None
  if not isinstance(document, dict):
    raise BadThresholdFile(f"{path}: expected a JSON object, got {type(document).__name__}")
  label = document.get("label")
  if not isinstance(label, str) or not label:
    raise BadThresholdFile(f"{path}: 'label' must be a non-empty string, got {label!r}")
  numbers = {}
  for field in ("threshold", "target_precision"):
    value = document.get(field)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
      raise BadThresholdFile(f"{path}: {field!r} must be a number in [0, 1], got {value!r}")
    numbers[field] = float(value)
  return OutOfScopeThreshold(label, **numbers)
