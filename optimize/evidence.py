"""What the guard judges every candidate on: real examples first, synthetic ones on top.

Per signature, the evidence is a list of batches, each real or synthetic, with the
original's answers to it (computed once, compared with every candidate's) and which of its
rows count. Every real row counts. A synthetic row counts only where the original itself
gives a decided answer: on an input whose top two scores are within `near_tie_margin` any
change of the weights may swap them, and such a swap says nothing about the traffic the
model will see. Synthetic rows are added in order from one deterministic stream, so every
candidate is judged on a prefix of the same inputs.
"""

import dataclasses
from typing import Dict, List, Mapping, Optional

import numpy as np

from export.servable import SessionServable
from optimize import evaluation_inputs
from optimize.synthetic import SyntheticRequests

REAL, SYNTHETIC = "real", "synthetic"
BATCH = 64
# The most synthetic examples one run makes: enough to vouch for 99.5 % with a dozen
# disagreements, and a bound on the time a hopeless candidate costs.
SYNTHETIC_LIMIT = 4096
_SCORE_OUTPUTS = ("scores", "probabilities")


@dataclasses.dataclass
class Batch:
  inputs: Dict[str, object]
  origin: str  # REAL or SYNTHETIC
  expected: Dict[str, np.ndarray]  # the original's answers
  counted: np.ndarray  # bool per row
  labels: Optional[List[object]] = None  # per row, real batches only

  @property
  def rows(self) -> int:
    return len(self.counted)


@dataclasses.dataclass
class SignatureEvidence:
  batches: List[Batch] = dataclasses.field(default_factory=list)
  fed_by_examples: bool = True

  def counted(self, origin: Optional[str] = None) -> int:
    return sum(int(b.counted.sum()) for b in self.batches if origin in (None, b.origin))

  def rows(self, origin: str) -> int:
    return sum(b.rows for b in self.batches if b.origin == origin)


def margins(outputs: Mapping[str, np.ndarray]) -> Optional[np.ndarray]:
  """Per row, the original's top score minus its second; None for outputs with no scores."""
  scores = next((outputs[k] for k in _SCORE_OUTPUTS if k in outputs), None)
  if scores is None or scores.ndim != 2 or scores.shape[1] < 2:
    return None
  top_two = np.sort(scores.astype(np.float64), axis=1)[:, -2:]
  return top_two[:, 1] - top_two[:, 0]


class Evidence:
  """The real examples and the warmup requests of signatures they cannot feed, judged by the
  original; `top_up` adds synthetic examples from `synthetic` (None: the export says too
  little to make any)."""

  def __init__(self, original: SessionServable, graph_def,
               real: evaluation_inputs.RealExamples, warmup_batches: Mapping[str, List[Dict]],
               synthetic: Optional[SyntheticRequests], near_tie_margin: float):
    self.real = real
    self._original = original
    self._graph_def = graph_def
    self._synthetic = synthetic
    self._near_tie_margin = near_tie_margin
    probe = real.serialized[:1] or ([synthetic.probe()] if synthetic else [])
    unfed = evaluation_inputs.unfed_signatures(original.signatures, graph_def, warmup_batches,
                                               probe)
    self.signatures: Dict[str, SignatureEvidence] = {}
    for name in sorted(original.signatures):
      evidence = self.signatures[name] = SignatureEvidence(fed_by_examples=name not in unfed)
      for inputs in unfed.get(name, []):
        evidence.batches.append(self._judged(name, inputs, REAL))
    labels = real.labels
    for start in range(0, len(real.serialized), BATCH):
      self._add(real.serialized[start:start + BATCH], REAL,
                labels[start:start + BATCH] if labels is not None else None)

  @property
  def synthetic_made(self) -> int:
    return self._synthetic.made if self._synthetic is not None else 0

  @property
  def synthetic_room(self) -> int:
    """How many more synthetic examples may be made."""
    return SYNTHETIC_LIMIT - self.synthetic_made if self._synthetic is not None else 0

  def top_up(self, targets: Mapping[str, int]) -> bool:
    """Adds synthetic batches until each named signature counts `targets[name]` rows or the
    limit is reached; whether any were added."""
    def short():
      return [n for n, count in targets.items()
              if self.signatures[n].fed_by_examples and self.signatures[n].counted() < count]
    added = False
    while short() and self.synthetic_room:
      self._add(self._synthetic.take(min(BATCH, self.synthetic_room)), SYNTHETIC, None)
      added = True
    return added

  def _add(self, serialized, origin: str, labels) -> None:
    for name, evidence in self.signatures.items():
      if evidence.fed_by_examples:
        inputs = evaluation_inputs.example_inputs(self._original.signatures[name],
                                                  self._graph_def, serialized)
        if inputs is None:
          raise evaluation_inputs.GuardError(
              f"signature {name!r}: some {origin} examples lack a feature named after its "
              f"inputs {sorted(self._original.signatures[name].inputs)}")
        evidence.batches.append(self._judged(name, inputs, origin, labels))

  def _judged(self, name: str, inputs, origin: str, labels=None) -> Batch:
    expected = self._original.run(name, inputs)
    rows = len(next(iter(inputs.values())))
    counted = np.ones(rows, dtype=bool)
    if origin == SYNTHETIC:
      margin = margins(expected)
      if margin is not None:
        counted = margin >= self._near_tie_margin
    return Batch(inputs, origin, expected, counted, labels)
