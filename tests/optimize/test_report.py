"""The optimization report: per-step figures as JSON, Markdown and a chart."""

import json

import pytest

from optimize import guard
from optimize import proof
from optimize import report
from tests import tiny_models


def steps():
  return [report.StepFigures("original", 100, {}, 4_000_000, 0.2, 0.40, 4.0, 1.0),
          report.StepFigures("freeze", 60, {"VarHandleOp": -3, "Const": 3}, 3_000_000, 0.1,
                             0.30, 3.0, 1.0),
          report.StepFigures("quantize_weights(dtype=int8)", 70, {"Cast": 2}, 1_000_000, 0.1,
                             0.50, 2.0, 0.9975)]


def guard_figures(real=(400, 1), synthetic=(0, 0), near_ties=0):
  return guard.GuardResult(
      [guard.SignatureAgreement("serving_default", guard.Tally(*real), guard.Tally(*synthetic),
                                near_ties, {"scores": guard.OutputAgreement(0.9975, 0.01, 0.001)})],
      real_sources=["400 from /data/eval.tfrecord"]).to_dict()


GUARD = guard_figures()


def test_op_delta_lists_only_the_ops_whose_count_changed():
  assert report.op_delta({"Const": 3, "MatMul": 2, "Identity": 5},
                         {"Const": 6, "MatMul": 2, "Cast": 1}) == {
                             "Cast": 1, "Const": 3, "Identity": -5}


def test_the_markdown_names_every_step_with_its_ratios_and_the_slower_ones():
  text = report.to_markdown("/models/intent/1", steps(), GUARD)
  lines = text.splitlines()
  assert lines[0] == "# Optimization report: /models/intent/1"
  rows = [l for l in lines if l.startswith("| ") and "MB" in l]
  assert [r.split(" | ")[0][2:] for r in rows] == [s.step for s in steps()]
  assert "| freeze | 60 | 3.00 MB | 0.750 | 0.100 | 0.300 | 0.75 | 3.00 | 0.75 | 1.0000 |" in lines
  assert ("Slower than the original at batch 1 (by more than 5 %): "
          "quantize_weights(dtype=int8).") in text
  assert "- **freeze**: VarHandleOp -3, Const +3" in text
  bound = f"{proof.upper_bound(1, 400):.2%}"
  assert f"| serving_default | 400, 0.9975, {bound} | 0, 1.0000, 100.00% (0) | {bound}, 947 |" \
      f" 1.00e-02 |" in text
  assert text.count("FAILED. The rule: pass when the one-sided 95% Clopper-Pearson upper") == 1
  assert "Real examples: 400 from /data/eval.tfrecord." in text


def test_the_markdown_shows_label_scores_synthetic_inputs_and_the_fallback():
  figures = guard_figures(real=(100, 0), synthetic=(500, 0), near_ties=20)
  figures["signatures"][0]["labels"] = {"metric": "accuracy", "examples": 100, "original": 0.91,
                                      "optimized": 0.905, "drop": 0.5}
  figures["failures"] = ["serving_default: accuracy 0.9100 -> 0.9050 on 100 labelled examples"]
  fallback = {"spec": "quantize_weights(dtype=int8,keep_float16=dense/kernel)", "plans_tried": 4,
              "kept_in_float": [{"name": "dense/kernel", "stored_as": "float16",
                                 "agreement_when_int8_alone": 0.93}],
              "int8": ["embeddings", "logits/kernel"]}
  text = report.to_markdown("/m/1", steps(), figures, fallback)
  assert "Up to 520 synthetic examples were made from the export" in text
  assert "| 500, 1.0000, " in text and "(20) |" in text
  assert "| 100 | accuracy 0.9100 | 0.9050 |" in text
  assert "- serving_default: accuracy 0.9100 -> 0.9050 on 100 labelled examples" in text
  assert "- `dense/kernel` as float16 (0.9300)" in text
  assert "4 plans were tried" in text and "2 weights stay int8." in text


def test_the_report_files_are_written_together(tmp_path):
  paths = report.write_report(str(tmp_path / "r"), "/m/1", steps(), GUARD, {"transforms": ["x"]})
  written = json.loads((tmp_path / "r" / "report.json").read_text())
  assert [s["step"] for s in written["steps"]] == [s.step for s in steps()]
  assert written["transforms"] == ["x"] and written["guard"] == GUARD
  assert (tmp_path / "r" / "report.md").read_text().startswith("# Optimization report")
  assert (tmp_path / "r" / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert set(paths) == {"json", "markdown", "chart"}


def test_measure_gives_size_cold_start_and_both_latencies_of_a_version(tmp_path):
  version_dir = tiny_models.half_plus_two(str(tmp_path / "1"))
  batch1 = {"x": [[1.0]]}
  batch64 = {"x": [[float(i)] for i in range(64)]}
  size, cold, one, sixty_four = report.measure(version_dir, "serving_default", batch1, batch64,
                                               repeats=5)
  assert size == report.savedmodel_io.directory_bytes(version_dir) > 0
  assert cold > 0 and one > 0 and sixty_four > 0


@pytest.mark.parametrize("repeats", [1, 7])
def test_time_runs_is_the_median_of_the_repeats(tmp_path, repeats, monkeypatch):
  calls = []

  class Fake:
    def run(self, signature, inputs):
      calls.append(signature)

  ticks = iter([0.0, 0.001, 0.0, 0.003, 0.0, 0.002, 0.0, 0.001, 0.0, 0.001, 0.0, 0.005,
                0.0, 0.002])
  monkeypatch.setattr(report.time, "perf_counter", lambda: next(ticks))
  median = report.time_runs(Fake(), "s", {}, repeats)
  assert len(calls) == repeats + 1  # one untimed run first
  assert median == pytest.approx({1: 1.0, 7: 2.0}[repeats])


def test_steps_are_measured_in_interleaved_rounds_and_summarized_by_their_median(monkeypatch,
                                                                                 tmp_path):
  calls = []
  latencies = iter([0.5, 0.9, 0.4, 1.0, 0.6, 0.8])

  def measure(version_dir, signature, batch1, batch64, repeats):
    calls.append(version_dir)
    return 0, 0.1, next(latencies), 2.0
  monkeypatch.setattr(report, "measure", measure)
  monkeypatch.setattr(report.savedmodel_io, "directory_bytes", lambda path: 1000)
  figures = report.measure_steps(["a", "b"], "serving_default", {}, {}, repeats=1, rounds=3)
  assert calls == ["a", "b"] * 3
  assert figures[0]["batch1_p50_ms"] == 0.5 and figures[0]["batch1_range_ms"] == [0.4, 0.6]
  assert figures[1]["batch1_p50_ms"] == 0.9 and figures[1]["batch1_range_ms"] == [0.8, 1.0]


def test_a_step_is_slower_only_when_its_spread_clears_the_originals():
  base = report.StepFigures("original", 1, {}, 1, 0.1, 0.40, 4.0, 1.0,
                            batch1_range_ms=[0.35, 0.45])
  overlapping = report.StepFigures("noisy", 1, {}, 1, 0.1, 0.60, 4.0, 1.0,
                                   batch1_range_ms=[0.44, 0.90])
  clear = report.StepFigures("slow", 1, {}, 1, 0.1, 0.60, 4.0, 1.0,
                             batch1_range_ms=[0.50, 0.70])
  assert not report.slower_at_batch1(base, overlapping)
  assert report.slower_at_batch1(base, clear)
  text = report.to_markdown("/m/1", [base, overlapping, clear], GUARD)
  assert "(every round slower than the original's slowest): slow." in text


OP_PROFILE = {"batch_64": {
    "rows": 64, "runs": 30, "total_op_micros": {"original": 1180.0, "optimized": 640.0},
    "ops": [{"op": "SparseMatMul", "original": {"micros": 156.0, "share": 0.1322},
             "optimized": None},
            {"op": "Tile", "original": {"micros": 142.0, "share": 0.1203},
             "optimized": {"micros": 20.5, "share": 0.032}}]}}


def test_the_markdown_says_where_the_time_goes_before_and_after():
  text = report.to_markdown("/m/1", steps(), GUARD, op_profile=OP_PROFILE)
  section = text.split("## Where the time goes")[1].split("## Accuracy guard")[0]
  assert "Batch 64: 1180 us of op time before, 640 us after (30 runs each)." in section
  assert "| SparseMatMul | 156.0 | 13.2% | - | - |" in section
  assert "| Tile | 142.0 | 12.0% | 20.5 | 3.2% |" in section
  assert "## Where the time goes" not in report.to_markdown("/m/1", steps(), GUARD)
