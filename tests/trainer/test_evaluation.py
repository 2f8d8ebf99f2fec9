"""The eval report's calibration figures on toy cases whose answers are known."""

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


def test_the_report_carries_calibration_and_the_chart_is_a_png(tmp_path):
  report = evaluation.classification_report(["a", "b", "a"], ["a", "b", "b"],
                                            confidences=[0.9, 0.8, 0.7])
  assert report["calibration"]["expected_calibration_error"] == pytest.approx(
      (abs(1 - 0.9) + abs(1 - 0.8) + abs(0 - 0.7)) / 3)
  assert "ECE: " in evaluation.summary_lines(report)[0]
  path = tmp_path / "calibration.png"
  evaluation.write_calibration_chart(str(path), report["calibration"])
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
