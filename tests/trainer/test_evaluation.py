"""The eval report's accuracy and calibration figures on toy cases whose answers are known."""

import pytest

from trainer import evaluation


def test_a_perfectly_calibrated_model_has_no_calibration_error():
  # In each bin the share of right answers equals the confidence: 0.95 -> 19 of 20 right,
  # 0.55 -> 11 of 20 right.
  confidences = [0.95] * 20 + [0.55] * 20
  correct = [True] * 19 + [False] + [True] * 11 + [False] * 9
  figures = evaluation.calibration(confidences, correct, bins=10)
  assert figures["expected_calibration_error"] == pytest.approx(0.0, abs=1e-12)
  filled = [b for b in figures["bins"] if b["count"]]
  assert [(b["count"], b["correct"], b["wrong"]) for b in filled] == [(20, 11, 9), (20, 19, 1)]


def test_an_overconfident_model_has_the_gap_as_its_error():
  # Always 90 % sure, right half the time: ECE 0.4.
  figures = evaluation.calibration([0.9] * 10, [True, False] * 5, bins=15)
  assert figures["expected_calibration_error"] == pytest.approx(0.4)
  # Two groups, weighted by their share: |0.3 - 0.8| * 0.5 + |1.0 - 0.6| * 0.5 = 0.45.
  mixed = evaluation.calibration([0.8] * 10 + [0.6] * 10,
                                 [True] * 3 + [False] * 7 + [True] * 10, bins=10)
  assert mixed["expected_calibration_error"] == pytest.approx(0.45)


def test_confidence_one_falls_in_the_last_bin_and_bad_values_are_refused():
  figures = evaluation.calibration([1.0, 0.0], [True, False], bins=4)
  assert figures["bins"][-1]["count"] == 1 and figures["bins"][0]["count"] == 1
  with pytest.raises(ValueError, match=r"in \[0, 1\]"):
    evaluation.calibration([1.2], [True])
  with pytest.raises(ValueError, match="equal, non-zero"):
    evaluation.calibration([0.5], [])


def test_balanced_accuracy_weighs_every_intent_alike():
  # "a" is common and always right, "b" rare and always wrong: accuracy 0.9, balanced 0.5.
  report = evaluation.classification_report(["a"] * 9 + ["b"], ["a"] * 10)
  assert report["accuracy"] == pytest.approx(0.9)
  assert report["balanced_accuracy"] == pytest.approx(0.5)
  # An intent only ever predicted, never labelled, has no recall to count.
  assert evaluation.classification_report(["a", "a"], ["a", "c"])["balanced_accuracy"] == \
      pytest.approx(0.5)


def test_the_report_carries_calibration_and_the_chart_is_a_png(tmp_path):
  report = evaluation.classification_report(["a", "b", "a"], ["a", "b", "b"],
                                            confidences=[0.9, 0.8, 0.7])
  assert report["calibration"]["expected_calibration_error"] == pytest.approx(
      (abs(1 - 0.9) + abs(1 - 0.8) + abs(0 - 0.7)) / 3)
  assert "ECE: " in evaluation.summary_lines(report)[0]
  path = tmp_path / "calibration.png"
  evaluation.write_calibration_chart(str(path), report["calibration"])
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_oos_threshold_is_the_lowest_score_that_keeps_the_target_precision():
  # In-scope answers: right at 0.9, 0.8 and 0.4, wrong at 0.6; out-of-scope texts at 0.7, 0.3.
  figures = evaluation.out_of_scope_threshold(
      [True, True, False, True], [0.9, 0.8, 0.6, 0.4], [0.7, 0.3], target_precision=0.66)
  # Keeping >= 0.8: 2/2 right; >= 0.7: 2/3 (0.667); >= 0.6: 2/4; >= 0.4: 3/5; >= 0.3: 3/6.
  assert figures["threshold"] == 0.7 and figures["target_met"]
  assert figures["in_scope_precision"] == pytest.approx(2 / 3)
  assert figures["in_scope_accuracy"] == pytest.approx(2 / 4)
  assert figures["out_of_scope_recall"] == pytest.approx(1 / 2)


def test_oos_threshold_falls_back_to_the_most_precise_when_the_target_is_out_of_reach():
  figures = evaluation.out_of_scope_threshold(
      [False, True, True], [0.9, 0.8, 0.7], [], target_precision=0.99)
  assert not figures["target_met"]
  assert figures["threshold"] == 0.7  # 2/3, better than 0/1 at 0.9 and 1/2 at 0.8
  assert figures["out_of_scope_recall"] is None


def test_oos_summary_line_names_threshold_and_recall():
  report = evaluation.classification_report(["a", "b"], ["a", "a"], confidences=[0.9, 0.5])
  report["out_of_scope"] = {"label": "oos", **evaluation.out_of_scope_threshold(
      [True, False], [0.9, 0.5], [0.2], 0.9)}
  line = evaluation.summary_lines(report)[1]
  assert "out-of-scope (oos): threshold 0.9000" in line and "recall 1.0000" in line
