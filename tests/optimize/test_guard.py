"""The guard's comparison rule, its label scores and what its count of examples can prove."""

import math

import numpy as np
import pytest

from optimize import guard


def signature(name, agreement, examples=1000, labels=None):
  return guard.SignatureAgreement(name, examples, agreement,
                                  {"scores": guard.OutputAgreement(agreement)}, labels)


def result(*signatures, min_agreement=0.995, max_drop=0.2, min_examples=0):
  return guard.GuardResult(list(signatures), min_agreement, max_drop, min_examples)


def test_agreement_exactly_at_the_threshold_passes_and_just_below_fails():
  assert result(signature("a", 0.995)).passed
  assert not result(signature("a", 0.994)).passed


def test_the_lowest_signature_decides():
  verdict = result(signature("a", 1.0), signature("b", 0.99), signature("c", 0.999))
  assert verdict.agreement == 0.99
  assert not verdict.passed
  assert verdict.failures() == ["b: agreement 0.9900 < 0.995"]


def test_outputs_of_different_shapes_agree_nowhere():
  assert guard.compare_outputs(np.zeros((4, 3)), np.zeros((4, 2))).agreement == 0.0


def test_class_scores_agree_where_the_top_class_does():
  reference = np.array([[0.1, 0.9], [0.6, 0.4], [0.3, 0.7], [0.8, 0.2]], np.float32)
  candidate = np.array([[0.2, 0.8], [0.4, 0.6], [0.3, 0.7], [0.9, 0.1]], np.float32)
  assert guard.compare_outputs(reference, candidate).agreement == 0.75


def test_a_regression_value_outside_the_tolerance_counts_against_it():
  reference = np.array([[10.0], [10.0], [0.0], [0.0]], np.float32)
  # 1 % of the value (and 1e-3) is allowed: 10.09 and 0.0009 agree; 10.2 and 0.002 do not.
  candidate = np.array([[10.09], [10.2], [0.0009], [0.002]], np.float32)
  figures = guard.compare_outputs(reference, candidate)
  assert figures.agreement == 0.5
  assert figures.max_abs_diff == pytest.approx(0.2, abs=1e-5)


def test_string_outputs_agree_where_whole_rows_are_equal():
  reference = np.array([[b"a", b"b"], [b"a", b"b"]], dtype=object)
  candidate = np.array([[b"a", b"b"], [b"b", b"a"]], dtype=object)
  assert guard.compare_outputs(reference, candidate).agreement == 0.5


def test_examples_needed_for_the_default_threshold_is_what_the_rule_of_three_gives():
  needed = guard.examples_needed(0.995)
  assert needed == 598
  assert 0.995 ** needed <= 0.05 < 0.995 ** (needed - 1)
  assert guard.examples_needed(0.0) == 1
  with pytest.raises(ValueError):
    guard.examples_needed(1.0)


@pytest.mark.parametrize("examples", [18, 154, 598, 5000])
def test_with_no_disagreement_the_bound_is_the_exact_one_sided_bound(examples):
  assert guard.disagreement_bound(0, examples) == pytest.approx(
      1 - 0.05 ** (1 / examples), rel=1e-6)


def test_the_bound_is_the_clopper_pearson_one():
  # 3 disagreements in 100: the binomial chance of <= 3 at the bound is 5 %.
  bound = guard.disagreement_bound(3, 100)
  chance = sum(math.comb(100, k) * bound ** k * (1 - bound) ** (100 - k) for k in range(4))
  assert chance == pytest.approx(0.05, abs=1e-6)
  assert 0.03 < bound < guard.disagreement_bound(4, 100) < guard.disagreement_bound(4, 50)


def test_too_few_examples_are_refused_saying_how_many_are_needed():
  verdict = result(signature("serving_default", 1.0, examples=18), min_examples=598)
  assert not verdict.passed and not verdict.enough_examples
  (failure,) = verdict.failures()
  assert "judged 18 examples; 598 are needed" in failure
  assert result(signature("serving_default", 1.0, examples=598), min_examples=598).passed


def test_an_accuracy_drop_over_the_limit_fails_even_when_agreement_passes():
  small_drop = guard.LabelScore("accuracy", 1000, 0.913, 0.911)
  large_drop = guard.LabelScore("accuracy", 1000, 0.913, 0.908)
  assert small_drop.drop == pytest.approx(0.2)
  assert result(signature("a", 0.996, labels=small_drop)).passed
  verdict = result(signature("a", 0.996, labels=large_drop))
  assert not verdict.passed
  assert "accuracy 0.9130 -> 0.9080 on 1000 labelled examples" in verdict.failures()[0]


def test_a_regressors_drop_is_the_percent_of_error_it_gains():
  assert guard.LabelScore("mean_absolute_error", 10, 2.0, 2.01).drop == pytest.approx(0.5)
  assert guard.LabelScore("mean_absolute_error", 10, 2.0, 1.9).drop < 0


def test_decisions_are_the_top_class_or_the_regression_value():
  outputs = {"classes": np.array([[b"no", b"yes"], [b"no", b"yes"]], dtype=object),
             "scores": np.array([[0.2, 0.8], [0.7, 0.3]], np.float32)}
  metric, decided = guard.decisions(outputs)
  assert metric == "accuracy" and decided.tolist() == [b"yes", b"no"]
  metric, decided = guard.decisions({"outputs": np.array([1.5, 2.5], np.float32)})
  assert metric == "mean_absolute_error" and decided.tolist() == [1.5, 2.5]
  assert guard.decisions({"logits": np.zeros((2, 3), np.float32)}) is None


def test_to_dict_carries_the_bound_and_the_failures():
  verdict = result(signature("a", 0.99, examples=100)).to_dict()
  assert verdict["passed"] is False and verdict["examples"] == 100
  assert verdict["signatures"][0]["disagreement_bound_95"] == pytest.approx(
      guard.disagreement_bound(1, 100), rel=1e-5)
  assert verdict["failures"] == ["a: agreement 0.9900 < 0.995"]
