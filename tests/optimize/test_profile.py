"""Per-op profiles: the runtime's own op timings by type, and original beside optimized."""

from export.servable import SessionServable
from optimize import profile
from tests import tiny_models


def batches():
  return {1: {"x": [[1.0]]}, 64: {"x": [[float(i)] for i in range(64)]}}


def test_a_profile_times_the_signatures_ops_by_type_and_leaves_out_executor_bookkeeping(
    tmp_path):
  version_dir = tiny_models.half_plus_two(str(tmp_path / "1"))
  with SessionServable(version_dir) as servable:
    measured = profile.profile(servable, "serving_default", {"x": [[1.0], [2.0]]}, runs=3)
  assert measured.rows == 2 and measured.runs == 3
  assert {"Mul", "AddV2"} <= set(measured.micros)
  assert not set(measured.micros) & {"_SOURCE", "_Arg", "_Retval"}
  top = measured.top(count=1)
  assert len(top) == 1 and top[0]["micros"] == round(max(measured.micros.values()), 1)


def test_compare_gives_both_sides_per_batch_costliest_first(tmp_path):
  original = tiny_models.half_plus_two(str(tmp_path / "original" / "1"))
  optimized = tiny_models.half_plus_two(str(tmp_path / "optimized" / "1"), offset=3.0)
  compared = profile.compare(original, optimized, "serving_default", batches(), runs=2,
                             count=3)
  assert list(compared) == ["batch_1", "batch_64"]
  batch = compared["batch_64"]
  assert batch["rows"] == 64 and batch["runs"] == 2 and len(batch["ops"]) <= 3
  assert batch["total_op_micros"]["original"] > 0 and batch["total_op_micros"]["optimized"] > 0
  costs = [max(row[side]["micros"] for side in ("original", "optimized") if row[side])
           for row in batch["ops"]]
  assert costs == sorted(costs, reverse=True)
  for row in batch["ops"]:
    for side in ("original", "optimized"):
      assert row[side] is None or 0.0 <= row[side]["share"] <= 1.0


def test_an_op_one_side_lacks_is_shown_as_absent_not_as_zero():
  before = profile.OpProfile(1, 1, {"MatMul": 30.0, "Cast": 10.0})
  assert profile._entry(before, "Cast") == {"micros": 10.0, "share": 0.25}
  assert profile._entry(before, "SparseMatMul") is None
