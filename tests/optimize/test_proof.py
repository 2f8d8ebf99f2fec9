"""The guard's one statistical rule: the pass decision is the bound, and the count the rule
needs follows from the same bound."""

import math

import pytest

from optimize import proof

RULE = proof.Rule()


def test_none_disagreeing_needs_what_the_rule_of_three_gives():
  needed = RULE.needed(0)
  assert needed == 598
  assert 0.995 ** needed <= 0.05 < 0.995 ** (needed - 1)


@pytest.mark.parametrize("disagreements", [0, 1, 2, 5])
def test_the_count_needed_is_the_first_the_bound_vouches_at(disagreements):
  needed = RULE.needed(disagreements)
  assert RULE.vouches(disagreements, needed)
  assert not RULE.vouches(disagreements, needed - 1)
  assert RULE.needed(disagreements + 1) > needed


def test_agreement_above_the_threshold_still_fails_on_too_few_examples():
  # 2 of 598 disagree: agreement 0.9967 clears 0.995, but 598 cannot vouch for it.
  assert 1 - 2 / 598 > 0.995
  assert RULE.bound(2, 598) > RULE.tolerated and not RULE.vouches(2, 598)
  assert RULE.vouches(2, RULE.needed(2))


@pytest.mark.parametrize("examples", [18, 154, 598, 5000])
def test_with_no_disagreement_the_bound_is_the_exact_one_sided_bound(examples):
  assert RULE.bound(0, examples) == pytest.approx(1 - 0.05 ** (1 / examples), rel=1e-6)


def test_the_bound_is_the_clopper_pearson_one():
  # 3 disagreements in 100: the binomial chance of <= 3 at the bound is 5 %.
  bound = proof.upper_bound(3, 100)
  chance = sum(math.comb(100, k) * bound ** k * (1 - bound) ** (100 - k) for k in range(4))
  assert chance == pytest.approx(0.05, abs=1e-6)
  assert 0.03 < bound < proof.upper_bound(4, 100) < proof.upper_bound(4, 50)


def test_a_higher_confidence_needs_more_examples():
  assert proof.Rule(0.995, 0.99).needed(0) > RULE.needed(0)


@pytest.mark.parametrize("rule, words", [
    (proof.Rule(1.0), "no count of examples vouches for 1.0"),
    (proof.Rule(-0.1), "min_agreement must be in [0, 1)"),
    (proof.Rule(0.99, 1.0), "confidence must be in [0.5, 1)")])
def test_impossible_rules_say_why(rule, words):
  assert any(words in problem for problem in rule.problems())


def test_the_rule_states_itself_with_its_parameters():
  stated = RULE.to_dict()
  assert stated["min_agreement"] == 0.995 and stated["confidence"] == 0.95
  assert stated["examples_needed_with_no_disagreement"] == 598
  assert "upper bound on disagreement is at most 0.005" in stated["statement"]
