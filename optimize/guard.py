"""The accuracy guard: original and optimized must answer the same on the traffic the model
will see.

Every signature is run on the evidence (`optimize.evidence`: real examples first, synthetic
ones on top) and compared row by row: a row agrees when every decision output (class,
scores, probabilities, class ids, regression value) agrees on it, or where a signature has
none, every output. This rule differs on purpose from the smoke test's
(`serving/smoke_test/checks.py`), which demands equal answers within float noise: the smoke
test compares one model with itself served, where any difference is a serving bug; the
guard compares two different models, where quantization is allowed to move scores as long as
the decisions (top class, regression value within tolerance) stay the same.

A signature passes when
- its real examples number at least `require_real_examples`,
- its real examples agree at least `min_agreement` of the time: real evidence outranks
  synthetic, and a change it shows is a change, however many made-up inputs agree,
- labelled real examples lose at most `max_accuracy_drop` (accuracy points; for
  regressors, percent of mean absolute error gained), and
- the counted rows, real and synthetic together, prove the agreement by the one rule of
  `optimize.proof`; when they are too few for the disagreements seen, synthetic examples
  top them up to the count that rule names.
"""

import dataclasses
import math
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from export.servable import SessionServable
from optimize import proof
from optimize.evidence import REAL
from optimize.evidence import SYNTHETIC
from optimize.evidence import Evidence

DEFAULT_MIN_AGREEMENT = proof.DEFAULT_MIN_AGREEMENT
# In accuracy points (0.2 = 0.2 % of the examples); for regressors, percent of the original's
# mean absolute error.
DEFAULT_MAX_ACCURACY_DROP = 0.2
# Synthetic inputs whose top two scores are closer than this say nothing about a change.
DEFAULT_NEAR_TIE_MARGIN = 0.02
_REGRESSION_RTOL, _REGRESSION_ATOL = 1e-2, 1e-3
# Output names TF Serving's Classify and Regress APIs and the canned estimators' Predict
# signatures give a decision; other outputs are compared but not scored against labels.
_CLASS_OUTPUTS = ("classes",)
_SCORE_OUTPUTS = ("scores", "probabilities")
_REGRESSION_OUTPUTS = ("outputs", "predictions")
# Where a signature has any of these, they decide its agreement; the others (logits, a
# binary classifier's logistic) are compared and reported but move freely with quantization.
_DECISION_OUTPUTS = frozenset(_CLASS_OUTPUTS + _SCORE_OUTPUTS + _REGRESSION_OUTPUTS
                              + ("class_ids",))


@dataclasses.dataclass(frozen=True)
class GuardSettings:
  """What the guard demands; validated once, where a run starts."""
  min_agreement: float = DEFAULT_MIN_AGREEMENT
  max_accuracy_drop: float = DEFAULT_MAX_ACCURACY_DROP
  near_tie_margin: float = DEFAULT_NEAR_TIE_MARGIN
  require_real_examples: int = 0
  confidence: float = proof.DEFAULT_CONFIDENCE

  @property
  def rule(self) -> proof.Rule:
    return proof.Rule(self.min_agreement, self.confidence)

  def problems(self) -> List[str]:
    problems = self.rule.problems()
    if self.max_accuracy_drop < 0.0:
      problems.append(f"max_accuracy_drop must be >= 0, got {self.max_accuracy_drop}")
    if not 0.0 <= self.near_tie_margin < 1.0:
      problems.append(f"near_tie_margin must be in [0, 1), got {self.near_tie_margin}")
    if self.require_real_examples < 0:
      problems.append(f"require_real_examples must be >= 0, got {self.require_real_examples}")
    return problems

  def to_dict(self) -> Dict:
    return {**dataclasses.asdict(self), "rule": self.rule.to_dict()}


@dataclasses.dataclass
class OutputAgreement:
  agreement: float
  max_abs_diff: Optional[float] = None
  mean_abs_diff: Optional[float] = None


@dataclasses.dataclass
class Tally:
  """Rows judged and rows that disagreed."""
  examples: int = 0
  disagreements: int = 0

  @property
  def agreement(self) -> float:
    return 1.0 - self.disagreements / self.examples if self.examples else 1.0

  def __add__(self, other: "Tally") -> "Tally":
    return Tally(self.examples + other.examples, self.disagreements + other.disagreements)


@dataclasses.dataclass
class LabelScore:
  """Both models scored against the labels of `examples` rows: accuracy (classifiers, a
  share) or mean absolute error (regressors)."""
  metric: str  # "accuracy" or "mean_absolute_error"
  examples: int
  original: float
  optimized: float

  @property
  def drop(self) -> float:
    """Accuracy points lost, or for an error, percent of the original error gained."""
    if self.metric == "accuracy":
      return (self.original - self.optimized) * 100.0
    if self.original == 0.0:
      return 0.0 if self.optimized == 0.0 else math.inf
    return (self.optimized - self.original) / self.original * 100.0


@dataclasses.dataclass
class SignatureAgreement:
  name: str
  real: Tally
  synthetic: Tally  # counted synthetic rows only
  near_ties: int  # synthetic rows set aside: the original's own answer was a near-tie
  outputs: Dict[str, OutputAgreement]
  labels: Optional[LabelScore] = None

  @property
  def counted(self) -> Tally:
    return self.real + self.synthetic

  @property
  def examples(self) -> int:
    return self.counted.examples

  @property
  def agreement(self) -> float:
    return self.counted.agreement


@dataclasses.dataclass
class GuardResult:
  signatures: List[SignatureAgreement]
  settings: GuardSettings = GuardSettings()
  real_sources: List[str] = dataclasses.field(default_factory=list)

  @property
  def rule(self) -> proof.Rule:
    return self.settings.rule

  @property
  def agreement(self) -> float:
    return min(s.agreement for s in self.signatures)

  @property
  def examples(self) -> int:
    return min(s.examples for s in self.signatures)

  @property
  def real_examples(self) -> int:
    return min(s.real.examples for s in self.signatures)

  @property
  def synthetic_examples(self) -> int:
    return max(s.synthetic.examples + s.near_ties for s in self.signatures)

  @property
  def passed(self) -> bool:
    return not self.failures()

  @property
  def real_evidence_missing(self) -> bool:
    """Refused for want of the real examples the settings demand, which no plan can mend."""
    return any(s.real.examples < self.settings.require_real_examples for s in self.signatures)

  def unproven(self) -> Dict[str, int]:
    """Per signature that fails only for want of proof, the count the rule needs for the
    disagreements seen: what synthetic examples may top the evidence up to."""
    return {s.name: self.rule.needed(s.counted.disagreements) for s in self.signatures
            if not self._real_failures(s) and not self._proven(s)}

  def _proven(self, s: SignatureAgreement) -> bool:
    return self.rule.vouches(s.counted.disagreements, s.counted.examples)

  def _real_failures(self, s: SignatureAgreement) -> List[str]:
    problems = []
    required = self.settings.require_real_examples
    if s.real.examples < required:
      problems.append(f"{s.name}: judged {s.real.examples} real examples; {required} are "
                      f"required (pass more evaluation data, or lower require_real_examples)")
    if s.real.examples and s.real.agreement < self.settings.min_agreement:
      problems.append(f"{s.name}: the real examples say the model changed: agreement "
                      f"{s.real.agreement:.4f} < {self.settings.min_agreement} on "
                      f"{s.real.examples}")
    # A drop exactly at the limit passes; accuracies are ratios, so allow float rounding.
    if s.labels is not None and s.labels.drop > self.settings.max_accuracy_drop + 1e-9:
      problems.append(
          f"{s.name}: {s.labels.metric} {s.labels.original:.4f} -> {s.labels.optimized:.4f} "
          f"on {s.labels.examples} labelled examples, a drop of {s.labels.drop:.2f} "
          f"> {self.settings.max_accuracy_drop}")
    return problems

  def failures(self) -> List[str]:
    problems = []
    for s in self.signatures:
      problems += self._real_failures(s)
      if not self._proven(s):
        counted = s.counted
        problems.append(
            f"{s.name}: {counted.disagreements} disagreements in {counted.examples} examples "
            f"({s.real.examples} real, {s.synthetic.examples} synthetic) put the "
            f"{self.rule.confidence:.0%} bound on disagreement at "
            f"{self.rule.bound(counted.disagreements, counted.examples):.2%} > "
            f"{self.rule.tolerated:.2%}; {self.rule.needed(counted.disagreements)} examples "
            f"would vouch for them (pass more evaluation data)")
    return problems

  def to_dict(self) -> Dict:
    signatures = []
    for s in self.signatures:
      figures = {"name": s.name, "near_ties_set_aside": s.near_ties,
                 "outputs": {k: dataclasses.asdict(v) for k, v in s.outputs.items()}}
      for origin, tally in ((REAL, s.real), (SYNTHETIC, s.synthetic), ("counted", s.counted)):
        figures[origin] = {
            "examples": tally.examples, "disagreements": tally.disagreements,
            "agreement": tally.agreement,
            "disagreement_bound": round(self.rule.bound(tally.disagreements, tally.examples), 6)}
      figures["examples_needed"] = self.rule.needed(s.counted.disagreements)
      if s.labels is not None:
        figures["labels"] = dataclasses.asdict(s.labels) | {"drop": s.labels.drop}
      signatures.append(figures)
    return {"signatures": signatures, "settings": self.settings.to_dict(),
            "real_sources": self.real_sources, "agreement": self.agreement,
            "examples": self.examples, "real_examples": self.real_examples,
            "synthetic_examples": self.synthetic_examples, "passed": self.passed,
            "failures": self.failures()}


def row_agreement(reference: np.ndarray, candidate: np.ndarray):
  """(agreeing rows as bools, OutputAgreement) of one output over a batch: shapes that
  differ agree nowhere; float outputs with a class axis agree where the top class does,
  others where the candidate is within 1 % (and 1e-3) of the reference; other dtypes where
  rows are equal."""
  rows = len(reference) if reference.ndim else 1
  if reference.shape != candidate.shape:
    return np.zeros(rows, dtype=bool), OutputAgreement(0.0)
  if reference.dtype.kind == "f":
    diff = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    if reference.ndim >= 2 and reference.shape[-1] > 1:
      agree = np.argmax(reference, -1) == np.argmax(candidate, -1)
    else:
      agree = diff <= _REGRESSION_ATOL + _REGRESSION_RTOL * np.abs(reference)
    agree = agree.reshape(rows, -1).all(axis=1)
    return agree, OutputAgreement(float(np.mean(agree)) if agree.size else 1.0,
                                  float(diff.max(initial=0.0)),
                                  float(diff.mean()) if diff.size else 0.0)
  equal = reference == candidate
  agree = equal.reshape(rows, -1).all(axis=1) if equal.ndim else np.array([bool(equal)])
  return agree, OutputAgreement(float(np.mean(agree)) if agree.size else 1.0)


def compare_outputs(reference: np.ndarray, candidate: np.ndarray) -> OutputAgreement:
  return row_agreement(reference, candidate)[1]


def decisions(outputs: Mapping[str, np.ndarray]):
  """("accuracy", predicted labels as bytes) or ("mean_absolute_error", values) from a
  signature's outputs, or None when no output is a decision."""
  classes = next((outputs[k] for k in _CLASS_OUTPUTS if k in outputs), None)
  scores = next((outputs[k] for k in _SCORE_OUTPUTS if k in outputs), None)
  if classes is not None and classes.dtype == object:
    if classes.ndim == 2 and scores is not None and scores.shape == classes.shape:
      picked = classes[np.arange(len(classes)), np.argmax(scores, axis=-1)]
    else:
      picked = classes.reshape(len(classes), -1)[:, 0]
    return "accuracy", np.array([bytes(c) for c in picked], dtype=object)
  values = next((outputs[k] for k in _REGRESSION_OUTPUTS if k in outputs), None)
  if values is not None and values.dtype.kind == "f" and values.size == len(values):
    return "mean_absolute_error", values.reshape(-1).astype(np.float64)
  return None


def _as_class(label) -> bytes:
  """A label as the class string a canned classifier answers: ids answer as b"3"."""
  if isinstance(label, bytes):
    return label
  return str(int(label)).encode() if float(label).is_integer() else str(label).encode()


def _score(metric: str, predicted: np.ndarray, labels: Sequence) -> float:
  if metric == "accuracy":
    return float(np.mean([p == _as_class(label) for p, label in zip(predicted, labels)]))
  return float(np.mean(np.abs(predicted - np.array([float(v) for v in labels]))))


class Judge:
  """Judges candidates on one `Evidence`, topping it up with synthetic examples when a
  candidate fails only for want of proof."""

  def __init__(self, evidence: Evidence, settings: GuardSettings):
    self.evidence = evidence
    self.settings = settings

  def __call__(self, candidate: SessionServable) -> GuardResult:
    answered: Dict[str, List[Dict[str, np.ndarray]]] = {n: [] for n in self.evidence.signatures}
    while True:
      for name, signature in self.evidence.signatures.items():
        for batch in signature.batches[len(answered[name]):]:
          answered[name].append(candidate.run(name, batch.inputs))
      result = self._verdict(answered)
      # Only where the rule's count is within reach: a candidate that disagrees a lot gets
      # no synthetic examples it could never be vouched for with.
      reachable = {name: needed for name, needed in result.unproven().items()
                   if needed - self.evidence.signatures[name].counted()
                   <= self.evidence.synthetic_room}
      if result.passed or not self.evidence.top_up(reachable):
        return result

  def _verdict(self, answered) -> GuardResult:
    signatures = []
    for name, signature in self.evidence.signatures.items():
      tallies = {REAL: Tally(), SYNTHETIC: Tally()}
      near_ties = 0
      per_output: Dict[str, List[OutputAgreement]] = {}
      weights = []
      for batch, actual in zip(signature.batches, answered[name]):
        deciding = [k for k in batch.expected if k in _DECISION_OUTPUTS] or list(batch.expected)
        agree = np.ones(batch.rows, dtype=bool)
        for key in batch.expected:
          rows, figures = row_agreement(batch.expected[key], actual[key])
          per_output.setdefault(key, []).append(figures)
          if key in deciding:
            agree &= rows
        weights.append(batch.rows)
        tallies[batch.origin] += Tally(int(batch.counted.sum()),
                                       int((~agree & batch.counted).sum()))
        near_ties += int((~batch.counted).sum())
      signatures.append(SignatureAgreement(
          name, tallies[REAL], tallies[SYNTHETIC], near_ties,
          {key: _combine(parts, weights) for key, parts in per_output.items()},
          _label_score(signature.batches, answered[name])))
    return GuardResult(signatures, self.settings, list(self.evidence.real.sources))


def _label_score(batches, actual: List[Dict[str, np.ndarray]]) -> Optional[LabelScore]:
  """Both models scored on the real rows that have a label, or None when there are none
  or no output is a decision."""
  labelled = [(b, a) for b, a in zip(batches, actual) if b.origin == REAL and b.labels]
  if not labelled:
    return None
  labels = [label for b, _ in labelled for label in b.labels]
  rows = [i for i, label in enumerate(labels) if label is not None]
  if not rows:
    return None
  decided = [decisions({key: np.concatenate([outputs[key] for outputs in per_batch])
                        for key in per_batch[0]})
             for per_batch in ([b.expected for b, _ in labelled], [a for _, a in labelled])]
  if decided[0] is None or decided[1] is None:
    return None
  metric = decided[0][0]
  truth = [labels[i] for i in rows]
  try:
    return LabelScore(metric, len(rows), _score(metric, decided[0][1][rows], truth),
                      _score(metric, decided[1][1][rows], truth))
  except ValueError:
    # Labels that are no numbers cannot score a regression output (a binary classifier's
    # regress signature gives the positive class's probability).
    return None


def _combine(parts: Sequence[OutputAgreement], weights: Sequence[int]) -> OutputAgreement:
  total = float(sum(weights))
  agreement = sum(p.agreement * w for p, w in zip(parts, weights)) / total
  if parts[0].max_abs_diff is None:
    return OutputAgreement(agreement)
  return OutputAgreement(agreement, max(p.max_abs_diff or 0.0 for p in parts),
                         sum((p.mean_abs_diff or 0.0) * w for p, w in zip(parts, weights))
                         / total)
