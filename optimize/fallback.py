"""Accuracy-aware quantization: when the full int8 plan fails the guard, the smallest plan
that passes, instead of a refusal.

When the failed plan stored OOV-bucket rows in 4 bits, the first plan tried is int8
throughout. Beyond it, each weight `quantize_weights` would store as int8 is measured alone
(only it int8, every other weight float32), and its effect on the guard's figures ranks it.
Plans then keep the most sensitive weights out of int8, one more at a time, first as float16
and then as float32, until one passes the guard; the weights kept and why are the plan's
report.
"""

import dataclasses
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from absl import logging
from tensorflow.core.framework import graph_pb2

from optimize import guard
from optimize import transforms
from optimize.transforms import quantize

FALLBACKS = ("mixed", "none")
DEFAULT_FALLBACK = "mixed"
QUANTIZE = "quantize_weights"

# (graph after the quantize step and every later one, label) -> the guard's result.
Judge = Callable[[graph_pb2.GraphDef, str], guard.GuardResult]


@dataclasses.dataclass
class KeptWeight:
  name: str
  stored_as: str  # "float16" or "float32"
  agreement_when_int8_alone: float
  mean_abs_diff_when_int8_alone: float


@dataclasses.dataclass
class Plan:
  graph_def: graph_pb2.GraphDef
  spec_label: str
  kept: List[KeptWeight]
  quantized: List[str]
  guard: guard.GuardResult
  trials: int

  def to_dict(self) -> Dict:
    return {"spec": self.spec_label, "kept_in_float": [dataclasses.asdict(k) for k in self.kept],
            "int8": self.quantized, "plans_tried": self.trials,
            "agreement": self.guard.agreement}


def quantize_step(specs: Sequence[transforms.TransformSpec]) -> Optional[int]:
  """The index of the int8 quantize_weights step the fallback can relax, if any."""
  for index, spec in enumerate(specs):
    if spec.name == QUANTIZE and dict(spec.arguments).get("dtype", "int8") == "int8":
      return index
  return None


def find_plan(before_quantize: graph_pb2.GraphDef, context: transforms.GraphContext,
              quantize_spec: transforms.TransformSpec,
              later_specs: Sequence[transforms.TransformSpec], judge: Judge) -> Optional[Plan]:
  """The smallest plan that passes `judge`, or None when even all-float32 fails."""
  arguments = dict(quantize_spec.arguments)
  min_elements = arguments.get("min_elements", quantize.DEFAULT_MIN_ELEMENTS)
  weights = quantize.quantizable_weights(before_quantize, context, min_elements)
  if not weights:
    return None
  trials = 0

  def run(float16: Sequence[str], float32: Sequence[str]) -> Tuple[graph_pb2.GraphDef, str,
                                                                    guard.GuardResult]:
    nonlocal trials
    trials += 1
    params = [("dtype", "int8"), ("min_elements", str(min_elements)), ("oov_rows", "int8")]
    if float16:
      params.append(("keep_float16", quantize.NAME_SEPARATOR.join(float16)))
    if float32:
      params.append(("keep_float32", quantize.NAME_SEPARATOR.join(float32)))
    spec = transforms.TransformSpec(QUANTIZE, tuple(params))
    graph_def = spec.apply(before_quantize, context)
    for later in later_specs:
      graph_def = later.apply(graph_def, context)
    return graph_def, spec.label, judge(graph_def, f"{QUANTIZE} fallback, plan {trials}")

  if arguments.get("oov_rows", "int8") != "int8":
    graph_def, label, result = run([], [])
    if result.passed:
      return Plan(graph_def, label, [], list(weights), result, trials)
  effects = {}
  for name in weights:
    _, _, alone = run([], [w for w in weights if w != name])
    effects[name] = (alone.agreement, _mean_abs_diff(alone), _label_drop(alone))
  # Most harmful first: lowest agreement, then the largest label drop and score movement.
  ranked = sorted(weights, key=lambda w: (effects[w][0], -effects[w][2], -effects[w][1]))
  logging.info("fallback: int8 weights by harm alone: %s",
               [(w, round(effects[w][0], 4)) for w in ranked])
  for stored_as in ("float16", "float32"):
    for count in range(1, len(ranked) + 1):
      kept = ranked[:count]
      graph_def, label, result = run(kept if stored_as == "float16" else [],
                                     kept if stored_as == "float32" else [])
      if result.passed:
        return Plan(graph_def, label,
                    [KeptWeight(w, stored_as, effects[w][0], effects[w][1]) for w in kept],
                    [w for w in ranked if w not in kept], result, trials)
  return None


def _mean_abs_diff(result: guard.GuardResult) -> float:
  return max((o.mean_abs_diff or 0.0 for s in result.signatures for o in s.outputs.values()),
             default=0.0)


def _label_drop(result: guard.GuardResult) -> float:
  return max((s.labels.drop for s in result.signatures if s.labels is not None), default=0.0)
