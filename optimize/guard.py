"""The accuracy guard: original and optimized must answer the same on evaluation inputs.

Every signature is run on the inputs `evaluation_inputs` builds and compared, output by
output, as an agreement rate. This rule differs on purpose from the smoke test's
(`serving/smoke_test/checks.py`), which demands equal answers within float noise: the smoke
test compares one model with itself served, where any difference is a serving bug; the guard
compares two different models, where quantization is allowed to move scores as long as the
decisions (top class, regression value within tolerance) stay the same.
"""

import dataclasses
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from export.servable import SessionServable
from optimize.evaluation_inputs import SignatureInputs

DEFAULT_MIN_AGREEMENT = 0.995
_REGRESSION_RTOL, _REGRESSION_ATOL = 1e-2, 1e-3


@dataclasses.dataclass
class OutputAgreement:
  agreement: float
  max_abs_diff: Optional[float] = None
  mean_abs_diff: Optional[float] = None


@dataclasses.dataclass
class SignatureAgreement:
  name: str
  examples: int
  agreement: float
  outputs: Dict[str, OutputAgreement]


@dataclasses.dataclass
class GuardResult:
  signatures: List[SignatureAgreement]
  min_agreement: float

  @property
  def agreement(self) -> float:
    return min(s.agreement for s in self.signatures)

  @property
  def passed(self) -> bool:
    return self.agreement >= self.min_agreement

  def failures(self) -> List[str]:
    return [f"{s.name}: {s.agreement:.4f} < {self.min_agreement}" for s in self.signatures
            if s.agreement < self.min_agreement]

  def to_dict(self) -> Dict:
    return dataclasses.asdict(self) | {"agreement": self.agreement, "passed": self.passed}


def compare_outputs(reference: np.ndarray, candidate: np.ndarray) -> OutputAgreement:
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


def compare(reference: SessionServable, candidate: SessionServable,
            inputs: Mapping[str, SignatureInputs],
            min_agreement: float = DEFAULT_MIN_AGREEMENT) -> GuardResult:
  signatures = []
  for name, signature_inputs_ in sorted(inputs.items()):
    per_output: Dict[str, List[OutputAgreement]] = {}
    weights = []
    for batch in signature_inputs_.batches:
      expected = reference.run(name, batch)
      actual = candidate.run(name, batch)
      weights.append(len(next(iter(batch.values()))))
      for key in expected:
        per_output.setdefault(key, []).append(compare_outputs(expected[key], actual[key]))
    outputs = {key: _combine(parts, weights) for key, parts in per_output.items()}
    signatures.append(SignatureAgreement(
        name, signature_inputs_.examples, min(o.agreement for o in outputs.values()), outputs))
  return GuardResult(signatures, min_agreement)


def _combine(parts: Sequence[OutputAgreement], weights: Sequence[int]) -> OutputAgreement:
  total = float(sum(weights))
  agreement = sum(p.agreement * w for p, w in zip(parts, weights)) / total
  if parts[0].max_abs_diff is None:
    return OutputAgreement(agreement)
  return OutputAgreement(agreement, max(p.max_abs_diff for p in parts),
                         sum(p.mean_abs_diff * w for p, w in zip(parts, weights)) / total)
