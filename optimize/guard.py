"""The accuracy guard: original and optimized must answer the same on evaluation inputs.

Every signature is run on the inputs `evaluation_inputs` builds and compared, output by
output, as an agreement rate; a signature's agreement is its lowest decision output's (class,
scores, probabilities, class ids, regression value) or, where it has none, its lowest
output's. This rule differs on purpose from the smoke test's (`serving/smoke_test/checks.py`),
which demands equal answers within float noise: the smoke test compares one model with itself
served, where any difference is a serving bug; the guard compares two different models, where
quantization is allowed to move scores as long as the decisions (top class, regression value
within tolerance) stay the same.

Where the inputs carry labels, the guard also scores both models against them: accuracy for
classifiers, mean absolute error for regressors. And it says how much its count of examples
can prove: the one-sided 95 % (Clopper-Pearson) upper bound on the disagreement rate, and how
many examples the agreement threshold needs before zero disagreements can vouch for it.
"""

import dataclasses
import math
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from export.servable import SessionServable
from optimize.evaluation_inputs import SignatureInputs

DEFAULT_MIN_AGREEMENT = 0.995
# In accuracy points (0.2 = 0.2 % of the examples); for regressors, percent of the original's
# mean absolute error.
DEFAULT_MAX_ACCURACY_DROP = 0.2
CONFIDENCE = 0.95
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


def examples_needed(min_agreement: float, confidence: float = CONFIDENCE) -> int:
  """The fewest examples on which zero disagreements put the one-sided upper bound on the
  disagreement rate at or under 1 - min_agreement."""
  if min_agreement <= 0.0:
    return 1
  if min_agreement >= 1.0:
    raise ValueError("no number of examples can prove agreement 1.0")
  return math.ceil(math.log(1.0 - confidence) / math.log(min_agreement))


def disagreement_bound(disagreements: int, examples: int, confidence: float = CONFIDENCE) -> float:
  """The one-sided Clopper-Pearson upper bound on the disagreement rate."""
  if examples <= 0:
    return 1.0
  if disagreements >= examples:
    return 1.0
  alpha = 1.0 - confidence

  def at_most_observed(rate: float) -> float:  # P(X <= disagreements) for X ~ B(examples, rate)
    log_rate, log_rest = math.log(rate), math.log1p(-rate)
    return sum(math.exp(math.lgamma(examples + 1) - math.lgamma(k + 1)
                        - math.lgamma(examples - k + 1) + k * log_rate
                        + (examples - k) * log_rest) for k in range(disagreements + 1))

  low, high = disagreements / examples, 1.0
  for _ in range(60):
    middle = (low + high) / 2
    if middle <= 0.0 or at_most_observed(middle) > alpha:
      low = middle
    else:
      high = middle
  return high


@dataclasses.dataclass
class OutputAgreement:
  agreement: float
  max_abs_diff: Optional[float] = None
  mean_abs_diff: Optional[float] = None


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
  examples: int
  agreement: float
  outputs: Dict[str, OutputAgreement]
  labels: Optional[LabelScore] = None

  @property
  def disagreements(self) -> int:
    return int(round((1.0 - self.agreement) * self.examples))

  @property
  def disagreement_bound(self) -> float:
    return disagreement_bound(self.disagreements, self.examples)


@dataclasses.dataclass
class GuardResult:
  signatures: List[SignatureAgreement]
  min_agreement: float
  max_accuracy_drop: float = DEFAULT_MAX_ACCURACY_DROP
  min_examples: int = 0
  synthetic_examples: int = 0  # of the inputs, how many were made up from the export

  @property
  def agreement(self) -> float:
    return min(s.agreement for s in self.signatures)

  @property
  def examples(self) -> int:
    return min(s.examples for s in self.signatures)

  @property
  def passed(self) -> bool:
    return not self.failures()

  @property
  def enough_examples(self) -> bool:
    return self.examples >= self.min_examples

  def failures(self) -> List[str]:
    problems = []
    for s in self.signatures:
      if s.examples < self.min_examples:
        problems.append(
            f"{s.name}: judged {s.examples} examples; {self.min_examples} are needed before "
            f"agreement {self.min_agreement} can be vouched for at {CONFIDENCE:.0%} (pass more "
            f"evaluation data, or lower min_examples to accept less proof)")
      if s.agreement < self.min_agreement:
        problems.append(f"{s.name}: agreement {s.agreement:.4f} < {self.min_agreement}")
      # A drop exactly at the limit passes; accuracies are ratios, so allow float rounding.
      if s.labels is not None and s.labels.drop > self.max_accuracy_drop + 1e-9:
        problems.append(
            f"{s.name}: {s.labels.metric} {s.labels.original:.4f} -> {s.labels.optimized:.4f} "
            f"on {s.labels.examples} labelled examples, a drop of {s.labels.drop:.2f} "
            f"> {self.max_accuracy_drop}")
    return problems

  def to_dict(self) -> Dict:
    signatures = []
    for s in self.signatures:
      figures = dataclasses.asdict(s) | {"disagreement_bound_95": round(s.disagreement_bound, 6)}
      if s.labels is not None:
        figures["labels"]["drop"] = s.labels.drop
      signatures.append(figures)
    return {"signatures": signatures, "min_agreement": self.min_agreement,
            "max_accuracy_drop": self.max_accuracy_drop, "min_examples": self.min_examples,
            "synthetic_examples": self.synthetic_examples, "agreement": self.agreement,
            "examples": self.examples, "passed": self.passed, "failures": self.failures()}


def compare_outputs(reference: np.ndarray, candidate: np.ndarray) -> OutputAgreement:
  """Agreement of one output over a batch: shapes that differ agree nowhere; float outputs
  with a class axis agree where the top class does, others where the candidate is within
  1 % (and 1e-3) of the reference; other dtypes where rows are equal."""
  if reference.shape != candidate.shape:
    return OutputAgreement(0.0)
  if reference.dtype.kind == "f":
    diff = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    if reference.ndim >= 2 and reference.shape[-1] > 1:
      agreement = np.mean(np.argmax(reference, -1) == np.argmax(candidate, -1))
    else:
      agreement = np.mean(diff <= _REGRESSION_ATOL + _REGRESSION_RTOL * np.abs(reference))
    return OutputAgreement(float(agreement), float(diff.max(initial=0.0)),
                           float(diff.mean()) if diff.size else 0.0)
  equal = reference == candidate
  rows = equal.reshape(equal.shape[0], -1).all(axis=1) if equal.ndim > 1 else equal
  return OutputAgreement(float(np.mean(rows)) if rows.size else 1.0)


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


Answers = Dict[str, List[Dict[str, np.ndarray]]]  # per signature, the outputs of each batch


def answers(servable: SessionServable, inputs: Mapping[str, SignatureInputs]) -> Answers:
  """What `servable` answers to every batch of every signature: the original's are computed
  once and compared with each candidate's."""
  return {name: [servable.run(name, batch) for batch in signature_inputs_.batches]
          for name, signature_inputs_ in inputs.items()}


def compare(expected: Answers, candidate: SessionServable,
            inputs: Mapping[str, SignatureInputs],
            min_agreement: float = DEFAULT_MIN_AGREEMENT,
            max_accuracy_drop: float = DEFAULT_MAX_ACCURACY_DROP,
            min_examples: int = 0, synthetic_examples: int = 0) -> GuardResult:
  """The candidate's answers judged against the original's `expected` ones."""
  signatures = []
  for name, signature_inputs_ in sorted(inputs.items()):
    per_output: Dict[str, List[OutputAgreement]] = {}
    weights = []
    actual = [candidate.run(name, batch) for batch in signature_inputs_.batches]
    for batch, reference, answered in zip(signature_inputs_.batches, expected[name], actual):
      weights.append(len(next(iter(batch.values()))))
      for key in reference:
        per_output.setdefault(key, []).append(compare_outputs(reference[key], answered[key]))
    outputs = {key: _combine(parts, weights) for key, parts in per_output.items()}
    deciding = [o for key, o in outputs.items() if key in _DECISION_OUTPUTS] or list(
        outputs.values())
    signatures.append(SignatureAgreement(
        name, signature_inputs_.examples, min(o.agreement for o in deciding), outputs,
        _label_score(expected[name], actual, signature_inputs_.labels)))
  return GuardResult(signatures, min_agreement, max_accuracy_drop, min_examples,
                     synthetic_examples)


def _label_score(expected: List[Dict[str, np.ndarray]], actual: List[Dict[str, np.ndarray]],
                 labels: Optional[Sequence]) -> Optional[LabelScore]:
  """Both models scored on the rows that have a label, or None when there are no labels or
  no output is a decision."""
  if labels is None:
    return None
  rows = [i for i, label in enumerate(labels) if label is not None]
  truth = [labels[i] for i in rows]
  decided = [decisions({key: np.concatenate([batch[key] for batch in batches])
                        for key in batches[0]}) for batches in (expected, actual)]
  if decided[0] is None or decided[1] is None:
    return None
  metric = decided[0][0]
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
  return OutputAgreement(agreement, max(p.max_abs_diff for p in parts),
                         sum(p.mean_abs_diff * w for p, w in zip(parts, weights)) / total)
