"""The guard's one statistical rule: what a count of examples and disagreements proves.

A model passes on agreement when the one-sided upper confidence bound (exact, Clopper-
Pearson) on its disagreement rate is at most `1 - min_agreement`. The count of examples a
judgement needs follows from the same bound: the fewest examples at which the disagreements
seen so far would be vouched for (598 at 0.995 and 95 % with none; 947 with one). Both are
stated with their parameters in the guard's report and in ML Metadata.
"""

import dataclasses
import math

DEFAULT_MIN_AGREEMENT = 0.995
DEFAULT_CONFIDENCE = 0.95


def _binomial_cdf(successes: int, trials: int, rate: float) -> float:
  """P(X <= successes) for X ~ Binomial(trials, rate)."""
  log_rate, log_rest = math.log(rate), math.log1p(-rate)
  return sum(math.exp(math.lgamma(trials + 1) - math.lgamma(k + 1) - math.lgamma(trials - k + 1)
                      + k * log_rate + (trials - k) * log_rest) for k in range(successes + 1))


def upper_bound(disagreements: int, examples: int,
                confidence: float = DEFAULT_CONFIDENCE) -> float:
  """The one-sided Clopper-Pearson upper bound on the disagreement rate."""
  if examples <= 0 or disagreements >= examples:
    return 1.0
  alpha = 1.0 - confidence
  low, high = disagreements / examples, 1.0
  for _ in range(60):
    middle = (low + high) / 2
    if middle <= 0.0 or _binomial_cdf(disagreements, examples, middle) > alpha:
      low = middle
    else:
      high = middle
  return high


@dataclasses.dataclass(frozen=True)
class Rule:
  """Agreement of at least `min_agreement`, vouched for at `confidence`."""
  min_agreement: float = DEFAULT_MIN_AGREEMENT
  confidence: float = DEFAULT_CONFIDENCE

  def problems(self):
    problems = []
    if not 0.0 <= self.min_agreement < 1.0:
      problems.append(f"min_agreement must be in [0, 1) (no count of examples vouches for "
                      f"1.0), got {self.min_agreement}")
    if not 0.5 <= self.confidence < 1.0:
      problems.append(f"confidence must be in [0.5, 1), got {self.confidence}")
    return problems

  @property
  def tolerated(self) -> float:
    """The disagreement rate the threshold allows."""
    return 1.0 - self.min_agreement

  def bound(self, disagreements: int, examples: int) -> float:
    return upper_bound(disagreements, examples, self.confidence)

  def vouches(self, disagreements: int, examples: int) -> bool:
    # Rates are ratios of counts; allow float rounding at the limit.
    return self.bound(disagreements, examples) <= self.tolerated + 1e-12

  def needed(self, disagreements: int = 0) -> int:
    """The fewest examples at which `disagreements` would be vouched for."""
    if self.min_agreement <= 0.0:
      return max(1, disagreements + 1)
    low = disagreements + 1
    high = max(low, 2 * math.ceil(math.log(1.0 - self.confidence)
                                  / math.log(self.min_agreement)))
    while not self.vouches(disagreements, high):
      low, high = high, high * 2
    while low < high:  # the bound falls as the count grows
      middle = (low + high) // 2
      if self.vouches(disagreements, middle):
        high = middle
      else:
        low = middle + 1
    return low

  def to_dict(self):
    return {"min_agreement": self.min_agreement, "confidence": self.confidence,
            "examples_needed_with_no_disagreement": self.needed(0),
            "statement": f"pass when the one-sided {self.confidence:.0%} Clopper-Pearson upper "
                         f"bound on disagreement is at most {self.tolerated:.4g}"}
