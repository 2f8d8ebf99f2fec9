"""Per-step figures of an optimization run, written as JSON, Markdown and a PNG chart."""

import dataclasses
import io
import json
import statistics
import time
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from export import artifact_io
from export.servable import SessionServable
from optimize import savedmodel_io


@dataclasses.dataclass
class StepFigures:
  step: str
  nodes: int
  op_delta: Dict[str, int]
  bytes_on_disk: int
  cold_start_seconds: float  # load + first answer, what a fresh server pays
  batch1_p50_ms: float
  batch64_p50_ms: float
  agreement: Optional[float] = None  # vs the original, lowest over signatures
  # The lowest and highest of the per-round medians the two p50 figures are the median of.
  batch1_range_ms: Optional[List[float]] = None
  batch64_range_ms: Optional[List[float]] = None


def op_delta(before: Mapping[str, int], after: Mapping[str, int]) -> Dict[str, int]:
  return {op: after.get(op, 0) - before.get(op, 0)
          for op in sorted(set(before) | set(after)) if after.get(op, 0) != before.get(op, 0)}


def time_runs(servable: SessionServable, signature: str, inputs, repeats: int) -> float:
  """Median milliseconds of `repeats` runs, after one untimed run."""
  servable.run(signature, inputs)
  samples = []
  for _ in range(repeats):
    started = time.perf_counter()
    servable.run(signature, inputs)
    samples.append((time.perf_counter() - started) * 1000.0)
  return statistics.median(samples)


def measure(version_dir: str, signature: str, batch1, batch64, repeats: int = 30):
  """(bytes on disk, cold start seconds, batch-1 p50 ms, batch-64 p50 ms)."""
  started = time.perf_counter()
  with SessionServable(version_dir) as servable:
    servable.run(signature, batch1)
    cold_start = time.perf_counter() - started
    batch1_ms = time_runs(servable, signature, batch1, repeats)
    batch64_ms = time_runs(servable, signature, batch64, max(3, repeats // 5))
  return savedmodel_io.directory_bytes(version_dir), cold_start, batch1_ms, batch64_ms


def measure_steps(version_dirs: Sequence[str], signature: str, batch1, batch64,
                  repeats: int = 30, rounds: int = 3) -> List[Dict]:
  """`measure` of every version dir in `rounds` interleaved rounds, so the machine's drift
  falls on every step alike: per dir the size, and the median over rounds of cold start and
  both latencies, with the range of the latencies' round medians."""
  samples: List[List[Tuple[float, float, float]]] = [[] for _ in version_dirs]
  for _ in range(rounds):
    for index, version_dir in enumerate(version_dirs):
      samples[index].append(measure(version_dir, signature, batch1, batch64, repeats)[1:])
  figures = []
  for version_dir, rounds_seen in zip(version_dirs, samples):
    cold, one, sixty_four = zip(*rounds_seen)
    figures.append(dict(bytes_on_disk=savedmodel_io.directory_bytes(version_dir),
                        cold_start_seconds=statistics.median(cold),
                        batch1_p50_ms=statistics.median(one),
                        batch64_p50_ms=statistics.median(sixty_four),
                        batch1_range_ms=[min(one), max(one)],
                        batch64_range_ms=[min(sixty_four), max(sixty_four)]))
  return figures


def slower_at_batch1(base: StepFigures, step: StepFigures) -> bool:
  """Slower only when the spreads say so: the step's fastest round is slower than the
  original's slowest. Single samples fall back to a 5 % margin."""
  if base.batch1_range_ms and step.batch1_range_ms:
    return step.batch1_range_ms[0] > base.batch1_range_ms[1]
  return step.batch1_p50_ms > base.batch1_p50_ms * 1.05


def to_markdown(model: str, steps: List[StepFigures], guard: Mapping,
                fallback: Optional[Mapping] = None,
                op_profile: Optional[Mapping] = None) -> str:
  base = steps[0]
  lines = [f"# Optimization report: {model}", "",
           "| step | nodes | size | size x | cold start s | batch-1 p50 ms | x | "
           "batch-64 p50 ms | x | agreement |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
  for s in steps:
    agreement = "" if s.agreement is None else f"{s.agreement:.4f}"
    lines.append(
        f"| {s.step} | {s.nodes} | {s.bytes_on_disk / 1e6:.2f} MB | "
        f"{s.bytes_on_disk / base.bytes_on_disk:.3f} | {s.cold_start_seconds:.3f} | "
        f"{s.batch1_p50_ms:.3f} | {s.batch1_p50_ms / base.batch1_p50_ms:.2f} | "
        f"{s.batch64_p50_ms:.2f} | {s.batch64_p50_ms / base.batch64_p50_ms:.2f} | {agreement} |")
  slower = [s.step for s in steps[1:] if slower_at_batch1(base, s)]
  if slower:
    rule = ("every round slower than the original's slowest" if base.batch1_range_ms
            else "by more than 5 %")
    lines += ["", f"Slower than the original at batch 1 ({rule}): {', '.join(slower)}."]
  if base.batch1_range_ms:
    lines += ["", "Latencies are medians over interleaved rounds; batch-1 round medians ranged "
              + ", ".join(f"{s.step} {s.batch1_range_ms[0]:.3f}-{s.batch1_range_ms[1]:.3f} ms"
                          for s in steps) + "."]
  lines += ["", "## Op changes per step", ""]
  for s in steps[1:]:
    delta = ", ".join(f"{op} {n:+d}" for op, n in s.op_delta.items()) or "none"
    lines.append(f"- **{s.step}**: {delta}")
  if op_profile:
    lines += _op_profile_lines(op_profile)
  settings = guard["settings"]
  rule = settings["rule"]
  lines += ["", "## Accuracy guard", "",
            f"{'Passed' if guard['passed'] else 'FAILED'}. The rule: {rule['statement']} "
            f"(min_agreement {rule['min_agreement']}, {rule['examples_needed_with_no_disagreement']}"
            f" examples with none disagreeing); real examples must also agree at least "
            f"{rule['min_agreement']} and lose at most {settings['max_accuracy_drop']} accuracy "
            f"points; synthetic examples the original answers with a near-tie (top two scores "
            f"within {settings['near_tie_margin']}) do not count.", "",
            "Real examples: " + ("; ".join(guard.get("real_sources", [])) or "none") + ".", ""]
  if guard.get("synthetic_examples"):
    lines += [f"Up to {guard['synthetic_examples']} synthetic examples were made from the export "
              "to top them up: they prove less than real ones.", ""]
  lines += ["| signature | real: examples, agreement, 95 % bound | synthetic: counted, agreement, "
            "bound (near-ties set aside) | counted: bound, needed | worst output max abs diff | "
            "labelled | before | after |",
            "| --- | --- | --- | --- | ---: | ---: | ---: | ---: |"]
  for s in guard["signatures"]:
    diffs = [o["max_abs_diff"] for o in s["outputs"].values() if o["max_abs_diff"] is not None]
    labels = s.get("labels")
    scored = (f"{labels['examples']} | {labels['metric']} {labels['original']:.4f} | "
              f"{labels['optimized']:.4f}" if labels else " | ")
    real, made, counted = s["real"], s["synthetic"], s["counted"]
    lines.append(
        f"| {s['name']} | {real['examples']}, {real['agreement']:.4f}, "
        f"{real['disagreement_bound']:.2%} | {made['examples']}, {made['agreement']:.4f}, "
        f"{made['disagreement_bound']:.2%} ({s['near_ties_set_aside']}) | "
        f"{counted['disagreement_bound']:.2%}, {s['examples_needed']} | "
        f"{max(diffs) if diffs else 0:.2e} | {scored} |")
  for failure in guard.get("failures", []):
    lines.append(f"- {failure}")
  if fallback:
    lines += ["", "## Quantization fallback", "",
              f"The full int8 plan failed the guard; {fallback['plans_tried']} plans were tried "
              f"and `{fallback['spec']}` passed. Kept out of int8 (agreement with only that "
              "weight in int8):", ""]
    lines += [f"- `{k['name']}` as {k['stored_as']} ({k['agreement_when_int8_alone']:.4f})"
              for k in fallback["kept_in_float"]]
    lines += ["", f"{len(fallback['int8'])} weights stay int8."]
  return "\n".join(lines) + "\n"


def _op_profile_lines(op_profile: Mapping) -> List[str]:
  """The per-op tables: what the run bought per op type and what is left."""
  lines = ["", "## Where the time goes", "",
           "Op time summed by op type from the runtime's step stats (ops overlap across "
           "cores, so op time is not wall time), mean over traced runs, original and "
           "optimized."]
  for batch in op_profile.values():
    totals = batch["total_op_micros"]
    lines += ["", f"Batch {batch['rows']}: {totals['original']:.0f} us of op time before, "
              f"{totals['optimized']:.0f} us after ({batch['runs']} runs each).", "",
              "| op | original us | share | optimized us | share |",
              "| --- | ---: | ---: | ---: | ---: |"]
    for row in batch["ops"]:
      cells = []
      for side in ("original", "optimized"):
        entry = row[side]
        cells += ["-", "-"] if entry is None else [f"{entry['micros']:.1f}",
                                                   f"{entry['share']:.1%}"]
      lines.append(f"| {row['op']} | " + " | ".join(cells) + " |")
  return lines


def write_chart(path: str, steps: List[StepFigures]) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  panels = [("size (MB)", [s.bytes_on_disk / 1e6 for s in steps]),
            ("nodes", [s.nodes for s in steps]),
            ("cold start (s)", [s.cold_start_seconds for s in steps]),
            ("batch-1 p50 (ms)", [s.batch1_p50_ms for s in steps]),
            ("batch-64 p50 (ms)", [s.batch64_p50_ms for s in steps])]
  figure, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.5))
  labels = [s.step for s in steps]
  for axis, (title, values) in zip(axes, panels):
    axis.bar(range(len(values)), values, color=["#888888"] + ["#2a7ab9"] * (len(values) - 1))
    axis.set_title(title)
    axis.set_xticks(range(len(labels)))
    axis.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
  figure.tight_layout()
  png = io.BytesIO()
  figure.savefig(png, format="png", dpi=90)
  plt.close(figure)
  artifact_io.write_atomic(path, png.getvalue())


def write_report(report_dir: str, model: str, steps: List[StepFigures], guard: Mapping,
                 extra: Mapping) -> Dict[str, str]:
  payload = {"model": model, "steps": [dataclasses.asdict(s) for s in steps], "guard": guard,
             **extra}
  paths = {"json": artifact_io.join(report_dir, "report.json"),
           "markdown": artifact_io.join(report_dir, "report.md"),
           "chart": artifact_io.join(report_dir, "report.png")}
  artifact_io.write_atomic(paths["json"], json.dumps(payload, indent=2) + "\n")
  artifact_io.write_atomic(paths["markdown"], to_markdown(model, steps, guard,
                                                         extra.get("fallback"),
                                                         extra.get("op_profile")))
  write_chart(paths["chart"], steps)
  return paths
