"""validate -> rewrite -> validate, then the accuracy guard, then an atomic write.

`optimize()` is the library entry point; `python -m optimize` is its command line.
"""

import dataclasses
import tempfile
from typing import Dict, List, NamedTuple, Optional, Sequence, Union

import tensorflow as tf
from absl import logging
from tensorflow.python.framework import op_def_registry

from export import artifact_io
from export.servable import SessionServable
from export.warmup import DEFAULT_SIGNATURE
from optimize import evaluation_inputs
from optimize import fallback as fallback_lib
from optimize import guard as guard_lib
from optimize import profile as profile_lib
from optimize import report
from optimize import savedmodel_io
from optimize import synthetic
from optimize import transforms as transforms_lib
from optimize.evidence import Evidence

# Registered in pip builds but absent from (or specific to) other builds of TF Serving.
_BUILD_SPECIFIC_PREFIXES = ("_Mkl", "_MklNative", "_Fused", "_Quantized")


class OptimizeError(RuntimeError):
  """A failed step; the message names the step and the model."""

  def __init__(self, step: str, model: str, message: str):
    super().__init__(f"[{step}] {model}: {message}")
    self.step = step
    self.model = model


@dataclasses.dataclass
class OptimizeResult:
  output_dir: Optional[str]
  guard: guard_lib.GuardResult
  steps: List[report.StepFigures]
  report_paths: Dict[str, str]
  written: bool
  fallback: Optional[fallback_lib.Plan] = None


def check_graph(graph_def, source: savedmodel_io.Servable, step: str) -> None:
  """The graph imports, serves every signature unchanged and uses only stock ops."""
  model = source.source_dir
  unknown = sorted(op for op in savedmodel_io.ops_used(graph_def) if not _is_stock(op))
  if unknown:
    raise OptimizeError(step, model, f"ops not in stock TensorFlow Serving 2.15: {unknown}")
  graph = tf.Graph()
  try:
    with graph.as_default():
      tf.graph_util.import_graph_def(graph_def, name="")
  except (ValueError, tf.errors.OpError) as e:
    raise OptimizeError(step, model, f"the graph does not import: {e}") from e
  for name, signature in source.meta_graph.signature_def.items():
    for kind, infos in (("input", signature.inputs), ("output", signature.outputs)):
      for key, info in infos.items():
        try:
          tensor = graph.get_tensor_by_name(info.name)
        except (KeyError, ValueError) as e:
          raise OptimizeError(step, model, f"signature {name!r} {kind} {key!r}: tensor "
                                           f"{info.name} is gone") from e
        if tensor.dtype.as_datatype_enum != info.dtype:
          raise OptimizeError(step, model, f"signature {name!r} {kind} {key!r}: dtype changed "
                                           f"to {tensor.dtype.name}")
        expected = tf.TensorShape(info.tensor_shape)
        if not expected.is_compatible_with(tensor.shape):
          raise OptimizeError(step, model, f"signature {name!r} {kind} {key!r}: shape "
                                           f"{tensor.shape} no longer fits {expected}")
  if source.main_op and source.main_op not in {n.name for n in graph_def.node}:
    raise OptimizeError(step, model, f"the main op {source.main_op!r} is gone")


def _is_stock(op: str) -> bool:
  return op_def_registry.get(op) is not None and not op.startswith(_BUILD_SPECIFIC_PREFIXES)


def _measure_inputs(evidence: Evidence):
  """A signature and its batch-1 and batch-64 inputs for latency figures, real rows first."""
  name = DEFAULT_SIGNATURE if DEFAULT_SIGNATURE in evidence.signatures else sorted(
      evidence.signatures)[0]
  batches = [b.inputs for b in evidence.signatures[name].batches]
  batch1 = {k: v[:1] for k, v in batches[0].items()}
  rows = {k: [] for k in batches[0]}
  while len(next(iter(rows.values()))) < 64:
    for batch in batches:
      for k, v in batch.items():
        rows[k].extend(list(v))
  return name, batch1, {k: v[:64] for k, v in rows.items()}


class _Step(NamedTuple):
  label: str
  nodes: int
  op_delta: Dict[str, int]
  version_dir: str
  agreement: float


@dataclasses.dataclass(frozen=True)
class OptimizeSettings:
  """Everything a run of the optimizer is told, typed and checked once (`problems`)."""
  transforms: Union[str, Sequence[str]] = transforms_lib.DEFAULT_TRANSFORMS
  # Real examples to judge on (TFRecord, CSV or JSON Lines); None: the export's own.
  eval_data: Optional[str] = None
  label_key: Optional[str] = None  # the eval_data feature holding each row's label
  guard: guard_lib.GuardSettings = guard_lib.GuardSettings()
  fallback: str = fallback_lib.DEFAULT_FALLBACK
  force: bool = False  # write even when the guard refuses
  overwrite: bool = False
  report_dir: Optional[str] = None  # None: <output_dir>.report
  measure: bool = True  # size, cold start and latency after every step
  latency_repeats: int = 30
  latency_rounds: int = 3

  def problems(self) -> List[str]:
    problems = self.guard.problems()
    if self.fallback not in fallback_lib.FALLBACKS:
      problems.append(f"fallback must be one of {', '.join(fallback_lib.FALLBACKS)}, got "
                      f"{self.fallback!r}")
    if self.label_key and not self.eval_data:
      problems.append("label_key needs eval_data, the file with the labels")
    if self.latency_repeats < 1 or self.latency_rounds < 1:
      problems.append("latency_repeats and latency_rounds must be >= 1")
    return problems

  def specs(self) -> List[transforms_lib.TransformSpec]:
    return transforms_lib.parse_transforms(self.transforms)

  def to_params(self) -> Dict:
    """The settings as an Optimize execution records them."""
    return {"transforms": [s.label for s in self.specs()], "eval_data": self.eval_data,
            "label_key": self.label_key, "min_agreement": self.guard.min_agreement,
            "max_accuracy_drop": self.guard.max_accuracy_drop,
            "require_real_examples": self.guard.require_real_examples,
            "fallback": self.fallback, "force": self.force}


def build_evidence(source: savedmodel_io.Servable, original: SessionServable,
                   settings: OptimizeSettings) -> Evidence:
  """Real examples first (the evaluation file's, else the export's own sample and warmup
  records), topped up with synthetic ones made from the export to the count the rule needs,
  each judged by the original."""
  input_dir = source.source_dir
  warmup_batches, warmup_examples = evaluation_inputs.warmup_inputs(input_dir,
                                                                    original.signatures)
  if settings.eval_data:
    real = evaluation_inputs.read_eval_examples(settings.eval_data, source.graph_def,
                                                settings.label_key)
  else:
    real = evaluation_inputs.export_examples(input_dir, warmup_examples)
  try:
    made_up = synthetic.SyntheticRequests(source.graph_def, original.signatures,
                                          source.asset_paths(), observed=warmup_examples)
  except synthetic.SyntheticError as e:
    logging.warning("No synthetic examples can top up the real ones: %s", e)
    made_up = None
  evidence = Evidence(original, source.graph_def, real, warmup_batches, made_up,
                      settings.guard.near_tie_margin)
  needed = settings.guard.rule.needed(0)
  evidence.top_up({name: needed for name in evidence.signatures})
  if not real.serialized:
    logging.warning(
        "The guard has no real examples of this model's traffic: no --eval_data, and %s "
        "carries no evaluation sample or warmup records. It judges %d synthetic examples made "
        "from the export, which prove less than real ones.", input_dir, evidence.synthetic_made)
  logging.info("Guard evidence: %s real examples (%s), %d synthetic", len(real.serialized),
               "; ".join(real.sources) or "none", evidence.synthetic_made)
  return evidence


def optimize(input_dir: str, output_dir: str,
             settings: OptimizeSettings = OptimizeSettings()) -> OptimizeResult:
  """Optimizes the SavedModel version in `input_dir` into `output_dir`.

  Refuses (writing nothing) when the guard does, unless `settings.force`; before refusing,
  `fallback="mixed"` looks for the smallest plan that keeps some weights out of int8 and
  passes. The report goes to `report_dir` (default: `<output_dir>.report`, a sibling TF
  Serving ignores since its name is not a number).
  """
  input_dir, output_dir = input_dir.rstrip("/"), output_dir.rstrip("/")
  if settings.problems():
    raise OptimizeError("settings", input_dir, "; ".join(settings.problems()))
  if output_dir == input_dir:
    raise OptimizeError("input", input_dir, "the output dir must differ from the input dir")
  if artifact_io.is_non_empty_dir(output_dir) and not settings.overwrite:
    raise OptimizeError("output", output_dir, "exists and is not empty (pass overwrite)")
  try:
    specs = settings.specs()
  except transforms_lib.TransformError as e:
    raise OptimizeError("transforms", input_dir, str(e)) from e
  try:
    source = savedmodel_io.read_servable(input_dir)
  except (savedmodel_io.SavedModelError, RuntimeError, tf.errors.OpError) as e:
    raise OptimizeError("input", input_dir, str(e)) from e
  check_graph(source.graph_def, source, "input")
  with SessionServable(input_dir) as original:
    try:
      evidence = build_evidence(source, original, settings)
    except evaluation_inputs.GuardError as e:
      raise OptimizeError("guard", input_dir, str(e)) from e
    return _rewrite_and_judge(source, output_dir, specs, settings, guard_lib.Judge(
        evidence, settings.guard), _measure_inputs(evidence))


def _rewrite_and_judge(source, output_dir, specs, settings: OptimizeSettings,
                       judge_candidate: guard_lib.Judge, measured) -> OptimizeResult:
  input_dir = source.source_dir
  context = transforms_lib.GraphContext(frozenset(source.protected_nodes()),
                                        source.variable_values, source.asset_line_counts(),
                                        source.asset_paths(), frozenset(source.fed_nodes()))
  signature, batch1, batch64 = measured
  scratch = tempfile.mkdtemp(prefix="optimize-")
  judged = 0

  def judge_at(version_dir: str, step: str) -> guard_lib.GuardResult:
    try:
      with SessionServable(version_dir) as candidate:
        return judge_candidate(candidate)
    except Exception as e:
      raise OptimizeError(step, input_dir, f"the rewritten model fails to run: {e}") from e

  def judge(graph_def, step: str) -> guard_lib.GuardResult:
    nonlocal judged
    judged += 1
    candidate = savedmodel_io.write_servable(source, graph_def, f"{scratch}/judged{judged}")
    try:
      return judge_at(candidate, step)
    finally:
      tf.io.gfile.rmtree(candidate)

  try:
    # Each step's servable, measured at the end in interleaved rounds.
    made = [_Step("original", len(source.graph_def.node), {}, input_dir, 1.0)]
    histogram = savedmodel_io.op_histogram(source.graph_def)
    graph_def = source.graph_def
    quantize_index = fallback_lib.quantize_step(specs)
    before_quantize = None
    result_guard = None
    for index, spec in enumerate(specs):
      if index == quantize_index:
        before_quantize = graph_def
      try:
        graph_def = spec.apply(graph_def, context)
      except transforms_lib.TransformError as e:
        raise OptimizeError(spec.label, input_dir, str(e)) from e
      check_graph(graph_def, source, spec.label)
      logging.info("%s: %d nodes", spec.label, len(graph_def.node))
      if settings.measure:
        candidate = savedmodel_io.write_servable(source, graph_def, f"{scratch}/step{index}")
        result_guard = judge_at(candidate, spec.label)
        new_histogram = savedmodel_io.op_histogram(graph_def)
        made.append(_Step(spec.label, len(graph_def.node),
                          report.op_delta(histogram, new_histogram), candidate,
                          result_guard.agreement))
        histogram = new_histogram
    if result_guard is None:
      result_guard = judge(graph_def, "guard")
    plan = None
    if (not result_guard.passed and not settings.force and settings.fallback == "mixed"
        and before_quantize is not None and not result_guard.real_evidence_missing):
      logging.warning("The full int8 plan fails the guard (%s); looking for the smallest plan "
                      "that passes.", "; ".join(result_guard.failures()))
      try:
        plan = fallback_lib.find_plan(before_quantize, context, specs[quantize_index],
                                      specs[quantize_index + 1:], judge)
      except transforms_lib.TransformError as e:
        raise OptimizeError("fallback", input_dir, str(e)) from e
      if plan is not None:
        graph_def, result_guard = plan.graph_def, plan.guard
        check_graph(graph_def, source, "fallback")
        if settings.measure:
          made.append(_Step(f"fallback: {plan.spec_label}", len(graph_def.node),
                            report.op_delta(histogram, savedmodel_io.op_histogram(graph_def)),
                            savedmodel_io.write_servable(source, graph_def,
                                                         f"{scratch}/fallback"),
                            result_guard.agreement))
    steps, profiles = [], None
    if settings.measure:
      figures = report.measure_steps([step.version_dir for step in made], signature, batch1,
                                     batch64, settings.latency_repeats, settings.latency_rounds)
      steps = [report.StepFigures(step.label, step.nodes, step.op_delta,
                                  agreement=step.agreement, **measured)
               for step, measured in zip(made, figures)]
      profiles = profile_lib.compare(made[0].version_dir, made[-1].version_dir, signature,
                                     {1: batch1, 64: batch64})
    written = result_guard.passed or settings.force
    if written:
      savedmodel_io.write_servable(source, graph_def, output_dir, overwrite=settings.overwrite)
    report_paths = {}
    # A refused run writes nothing unless a report dir was asked for explicitly.
    if settings.measure and (written or settings.report_dir):
      report_paths = report.write_report(
          settings.report_dir or f"{output_dir}.report", input_dir, steps,
          result_guard.to_dict(),
          {"transforms": [s.label for s in specs], "output_dir": output_dir if written else None,
           "forced": settings.force and not result_guard.passed,
           "fallback": plan.to_dict() if plan else None,
           "latency_signature": signature, "op_profile": profiles})
  finally:
    tf.io.gfile.rmtree(scratch)
  if not written:
    tried = (" no plan keeping weights out of int8 passes either;"
             if settings.fallback == "mixed" and before_quantize is not None
             and not result_guard.real_evidence_missing else "")
    raise OptimizeError("guard", input_dir,
                        "optimized model fails the guard: " + "; ".join(result_guard.failures())
                        + f" ({tried} nothing written; pass force to write it anyway)")
  return OptimizeResult(output_dir, result_guard, steps, report_paths, written, plan)


def summary(result: OptimizeResult):
  """What the guard judged and found, a line each, as the console shows it."""
  verdict = result.guard
  rule = verdict.rule
  yield (f"guard: {'passed' if verdict.passed else 'forced'}; real examples: "
         f"{'; '.join(verdict.real_sources) or 'none'}; synthetic: "
         f"{verdict.synthetic_examples}; pass when the {rule.confidence:.0%} bound on "
         f"disagreement is at most {rule.tolerated:.2%}")
  for signature in verdict.signatures:
    parts = []
    for origin, tally in (("real", signature.real), ("synthetic", signature.synthetic)):
      if tally.examples:
        parts.append(f"{origin} {tally.agreement:.4f} on {tally.examples}")
    if signature.near_ties:
      parts.append(f"{signature.near_ties} synthetic near-ties set aside")
    counted = signature.counted
    line = (f"  {signature.name}: agreement {counted.agreement:.4f} on {counted.examples} "
            f"({', '.join(parts)}); disagreement under "
            f"{rule.bound(counted.disagreements, counted.examples):.2%} at "
            f"{rule.confidence:.0%}")
    if signature.labels is not None:
      line += (f"; {signature.labels.metric} {signature.labels.original:.4f} -> "
               f"{signature.labels.optimized:.4f} on {signature.labels.examples} labelled")
    yield line
  if result.fallback is not None:
    kept = ", ".join(f"{k.name} ({k.stored_as})" for k in result.fallback.kept)
    yield f"fallback: kept out of int8: {kept}; {len(result.fallback.quantized)} weights int8"
