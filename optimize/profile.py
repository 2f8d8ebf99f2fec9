"""Where a servable's time goes: the runtime's own per-op timings, summed by op type.

Each traced run's step stats time every op the executor ran (RunOptions FULL_TRACE); their
durations are summed per op type and averaged over the runs. Ops overlap on a multi-core
machine, so the sum is op time, not wall time; the shares say what is left to attack.
`compare` puts the original and the optimized servable side by side, as the optimizer's
report shows them.
"""

import collections
import dataclasses
from typing import Dict, List, Mapping, Optional

from export.servable import SessionServable

# Executor bookkeeping the trace lists beside the graph's ops.
_NOT_OPS = frozenset({"_SOURCE", "_SINK", "RecvTensor", "_Recv", "_Send", "_Arg", "_Retval"})


@dataclasses.dataclass
class OpProfile:
  """Mean microseconds per run by op type, over `runs` traced runs of `rows` rows (None for
  runs of no fixed row count, such as training steps)."""
  rows: Optional[int]
  runs: int
  micros: Dict[str, float]

  @property
  def total_micros(self) -> float:
    return sum(self.micros.values())

  def top(self, count: int = 8) -> List[Dict]:
    """The `count` costliest op types with their share of the summed op time."""
    total = self.total_micros or 1.0
    return [{"op": op, "micros": round(micros, 1), "share": round(micros / total, 4)}
            for op, micros in sorted(self.micros.items(), key=lambda kv: -kv[1])[:count]]

  def to_dict(self, count: int = 8) -> Dict:
    return {"rows": self.rows, "runs": self.runs,
            "total_op_micros": round(self.total_micros, 1), "top": self.top(count)}


def op_types(graph_def) -> Dict[str, str]:
  return {node.name: node.op for node in graph_def.node}


def profile(servable: SessionServable, signature: str, inputs: Mapping[str, object],
            runs: int = 20) -> OpProfile:
  """The signature's op time by type on `inputs`, after one untraced warm-up run."""
  types = op_types(servable.graph_def)
  servable.run(signature, inputs)
  totals: Dict[str, float] = collections.defaultdict(float)
  for _ in range(runs):
    add_op_micros(totals, servable.run_traced(signature, inputs), types)
  rows = len(next(iter(inputs.values())))
  return OpProfile(rows, runs, {op: micros / runs for op, micros in totals.items()})


def add_op_micros(totals: Dict[str, float], metadata, types: Mapping[str, str]) -> None:
  """Adds one traced run's op time (its RunMetadata step stats) to `totals` by op type.
  Ops Grappler made are missing from `types`: their type comes from the trace's label."""
  for device in metadata.step_stats.dev_stats:
    for node in device.node_stats:
      name = node.node_name.split(":")[0]
      op = types.get(name, node.timeline_label.split(" = ")[-1].split("(")[0] or name)
      if op in _NOT_OPS or name in _NOT_OPS:
        continue
      totals[op] += (node.op_end_rel_micros - node.op_start_rel_micros)


def compare(original_dir: str, optimized_dir: str, signature: str,
            batches: Mapping[int, Mapping[str, object]], runs: int = 20,
            count: int = 10) -> Dict[str, Dict]:
  """Per batch size, both servables' op time and the `count` op types costliest in either,
  each with its microseconds and share before and after (None where a side has no such op)."""
  profiles = {}
  for label, version_dir in (("original", original_dir), ("optimized", optimized_dir)):
    with SessionServable(version_dir) as servable:
      profiles[label] = {rows: profile(servable, signature, inputs, runs)
                         for rows, inputs in batches.items()}
  compared = {}
  for rows in batches:
    before, after = profiles["original"][rows], profiles["optimized"][rows]
    ops = sorted(set(before.micros) | set(after.micros),
                 key=lambda op: -max(before.micros.get(op, 0.0), after.micros.get(op, 0.0)))
    compared[f"batch_{rows}"] = {
        "rows": rows, "runs": runs,
        "total_op_micros": {"original": round(before.total_micros, 1),
                            "optimized": round(after.total_micros, 1)},
        "ops": [{"op": op, "original": _entry(before, op), "optimized": _entry(after, op)}
                for op in ops[:count]]}
  return compared


def _entry(measured: OpProfile, op: str) -> Optional[Dict]:
  if op not in measured.micros:
    return None
  micros = measured.micros[op]
  return {"micros": round(micros, 1), "share": round(micros / (measured.total_micros or 1.0), 4)}
