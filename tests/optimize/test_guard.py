"""The guard's comparison rule, its label scores, and how real and synthetic evidence decide."""

import numpy as np
import pytest

from optimize import guard
from optimize import proof


def signature(name, real=(2000, 0), synthetic=(0, 0), near_ties=0, labels=None):
  return guard.SignatureAgreement(name, guard.Tally(*real), guard.Tally(*synthetic), near_ties,
                                  {"scores": guard.OutputAgreement(1.0)}, labels)


def result(*signatures, **settings):
  return guard.GuardResult(list(signatures), guard.GuardSettings(**settings))


def test_the_pass_decision_is_the_bound_on_the_counted_examples():
  assert result(signature("a", real=(598, 0))).passed
  (failure,) = result(signature("a", real=(597, 0))).failures()
  assert "0 disagreements in 597 examples (597 real, 0 synthetic)" in failure
  assert "598 examples would vouch for them" in failure
  # 2 in 598 clears 0.995 as a rate, not as proof: the count needed follows from the bound.
  (failure,) = result(signature("a", real=(598, 2))).failures()
  assert "1258 examples would vouch" in failure
  assert result(signature("a", real=(1258, 2))).passed


def test_the_lowest_signature_decides():
  verdict = result(signature("a"), signature("b", real=(2000, 12)), signature("c"))
  assert verdict.agreement == pytest.approx(0.994)
  assert [f.split(":")[0] for f in verdict.failures()] == ["b", "b"]


def test_real_disagreement_outranks_any_number_of_agreeing_synthetic_examples():
  verdict = result(signature("a", real=(64, 1), synthetic=(4000, 0)))
  (failure,) = verdict.failures()
  assert "the real examples say the model changed: agreement 0.9844 < 0.995 on 64" in failure
  assert verdict.unproven() == {}


def test_synthetic_examples_top_up_real_ones_that_agree():
  few_real = signature("a", real=(64, 0), synthetic=(534, 0), near_ties=30)
  verdict = result(few_real)
  assert verdict.passed and verdict.real_examples == 64
  assert verdict.synthetic_examples == 564
  # One synthetic disagreement is not a refusal: it asks for the count that vouches for it.
  short = result(signature("a", real=(64, 0), synthetic=(534, 1)))
  assert not short.passed and short.unproven() == {"a": 947}
  assert result(signature("a", real=(64, 0), synthetic=(883, 1))).passed


def test_strict_proof_demands_real_examples():
  verdict = result(signature("a", real=(64, 0), synthetic=(534, 0)), require_real_examples=598)
  assert verdict.real_evidence_missing
  (failure,) = verdict.failures()
  assert "judged 64 real examples; 598 are required" in failure
  assert result(signature("a", real=(598, 0)), require_real_examples=598).passed


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


def test_an_accuracy_drop_over_the_limit_fails_even_when_agreement_passes():
  small_drop = guard.LabelScore("accuracy", 1000, 0.913, 0.911)
  large_drop = guard.LabelScore("accuracy", 1000, 0.913, 0.908)
  assert small_drop.drop == pytest.approx(0.2)
  assert result(signature("a", labels=small_drop)).passed
  verdict = result(signature("a", labels=large_drop))
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


def test_to_dict_carries_real_synthetic_and_counted_figures_and_the_rule():
  verdict = result(signature("a", real=(100, 1), synthetic=(500, 0), near_ties=7)).to_dict()
  assert verdict["passed"] is False and verdict["examples"] == 600
  (figures,) = verdict["signatures"]
  assert figures["real"]["examples"] == 100 and figures["real"]["disagreements"] == 1
  assert figures["real"]["disagreement_bound"] == pytest.approx(proof.upper_bound(1, 100),
                                                                 rel=1e-5)
  assert figures["synthetic"]["examples"] == 500 and figures["near_ties_set_aside"] == 7
  assert figures["counted"]["examples"] == 600 and figures["examples_needed"] == 947
  assert verdict["settings"]["rule"]["examples_needed_with_no_disagreement"] == 598
  assert verdict["settings"]["near_tie_margin"] == guard.DEFAULT_NEAR_TIE_MARGIN
  assert verdict["failures"][0].startswith("a: the real examples say the model changed")


def test_rows_agree_only_where_every_decision_output_agrees():
  reference = np.array([[0.1, 0.9], [0.6, 0.4], [0.3, 0.7]], np.float32)
  candidate = np.array([[0.2, 0.8], [0.4, 0.6], [0.3, 0.7]], np.float32)
  rows, figures = guard.row_agreement(reference, candidate)
  assert rows.tolist() == [True, False, True]
  assert figures.agreement == pytest.approx(2 / 3)


def test_impossible_settings_say_why():
  problems = guard.GuardSettings(min_agreement=1.0, max_accuracy_drop=-1,
                                 near_tie_margin=1.5, require_real_examples=-2).problems()
  assert len(problems) == 4
