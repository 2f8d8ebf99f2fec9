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
from optimize import guard
from optimize import report
from optimize import savedmodel_io
from optimize import transforms

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
  guard: guard.GuardResult
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


def _measure_inputs(inputs: Dict[str, evaluation_inputs.SignatureInputs]):
  """A signature and its batch-1 and batch-64 inputs for latency figures."""
  name = DEFAULT_SIGNATURE if DEFAULT_SIGNATURE in inputs else sorted(inputs)[0]
  first = inputs[name].batches[0]
  batch1 = {k: v[:1] for k, v in first.items()}
  rows = {k: [] for k in first}
  while len(next(iter(rows.values()))) < 64:
    for batch in inputs[name].batches:
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
class GuardSettings:
  """What the guard demands (see optimize/guard.py)."""
  min_agreement: float = guard.DEFAULT_MIN_AGREEMENT
  max_accuracy_drop: float = guard.DEFAULT_MAX_ACCURACY_DROP
  min_examples: Optional[int] = None  # None: as many as min_agreement needs

  @property
  def examples_needed(self) -> int:
    if self.min_examples is not None:
      return self.min_examples
    # Agreement 1.0 can never be proven; ask for what 0.999 would need.
    return guard.examples_needed(min(self.min_agreement, 0.999))

  def problems(self) -> List[str]:
    problems = []
    if not 0.0 <= self.min_agreement <= 1.0:
      problems.append(f"min_agreement must be in [0, 1], got {self.min_agreement}")
    if self.max_accuracy_drop < 0.0:
      problems.append(f"max_accuracy_drop must be >= 0, got {self.max_accuracy_drop}")
    if self.min_examples is not None and self.min_examples < 1:
      problems.append(f"min_examples must be >= 1, got {self.min_examples}")
    return problems


def guard_examples(input_dir: str, source: savedmodel_io.Servable, eval_data: Optional[str],
                   label_key: Optional[str], needed: int):
  """The inputs per signature, the examples behind them (the evaluation file's, else the
  warmup records' topped up with synthetic ones to the count the guard needs) and the
  original's answers to them, which every candidate is compared with."""
  with SessionServable(input_dir) as original:
    try:
      batches, warmup_examples = evaluation_inputs.warmup_inputs(input_dir, original.signatures)
      if eval_data:
        examples = evaluation_inputs.read_eval_examples(eval_data, source.graph_def, label_key)
      else:
        examples = evaluation_inputs.Examples(warmup_examples)
        if len(warmup_examples) < needed:
          made = evaluation_inputs.synthetic_examples(
              source.graph_def, input_dir, original.signatures, needed - len(warmup_examples),
              seeds=warmup_examples)
          logging.warning(
              "The guard judges %d synthetic examples beside %d from warmup records: made-up "
              "inputs prove less than real ones. Pass --eval_data (and --label_key) for a guard "
              "that proves what the model does on real data.", len(made), len(warmup_examples))
          examples = evaluation_inputs.Examples(warmup_examples + made, synthetic=len(made))
      inputs = evaluation_inputs.signature_inputs(original, source.graph_def, examples, batches)
    except evaluation_inputs.GuardError as e:
      raise OptimizeError("guard", input_dir, str(e)) from e
    return inputs, examples, guard.answers(original, inputs)


def optimize(input_dir: str, output_dir: str,
             transform_specs: Union[str, Sequence[str]] = transforms.DEFAULT_TRANSFORMS,
             eval_data: Optional[str] = None, label_key: Optional[str] = None,
             min_agreement: float = guard.DEFAULT_MIN_AGREEMENT,
             max_accuracy_drop: float = guard.DEFAULT_MAX_ACCURACY_DROP,
             min_examples: Optional[int] = None, fallback: str = fallback_lib.DEFAULT_FALLBACK,
             force: bool = False, overwrite: bool = False,
             report_dir: Optional[str] = None, measure: bool = True,
             latency_repeats: int = 30, latency_rounds: int = 3) -> OptimizeResult:
  """Optimizes the SavedModel version in `input_dir` into `output_dir`.

  Refuses (writing nothing) when the guard does (agreement under `min_agreement`, a label
  score dropping by more than `max_accuracy_drop`, fewer examples than `min_examples`),
  unless `force`; before refusing, `fallback="mixed"` looks for the smallest plan that keeps
  some weights out of int8 and passes. The report goes to `report_dir` (default:
  `<output_dir>.report`, a sibling TF Serving ignores since its name is not a number).
  """
  input_dir, output_dir = input_dir.rstrip("/"), output_dir.rstrip("/")
  settings = GuardSettings(min_agreement, max_accuracy_drop, min_examples)
  if settings.problems():
    raise OptimizeError("guard", input_dir, "; ".join(settings.problems()))
  if fallback not in fallback_lib.FALLBACKS:
    raise OptimizeError("guard", input_dir, f"fallback must be one of "
                        f"{', '.join(fallback_lib.FALLBACKS)}, got {fallback!r}")
  if label_key and not eval_data:
    raise OptimizeError("guard", input_dir, "label_key needs eval_data, the file with labels")
  if output_dir == input_dir:
    raise OptimizeError("input", input_dir, "the output dir must differ from the input dir")
  if artifact_io.is_non_empty_dir(output_dir) and not overwrite:
    raise OptimizeError("output", output_dir, "exists and is not empty (pass overwrite)")
  try:
    specs = transforms.parse_transforms(transform_specs)
  except transforms.TransformError as e:
    raise OptimizeError("transforms", input_dir, str(e)) from e
  try:
    source = savedmodel_io.read_servable(input_dir)
  except (savedmodel_io.SavedModelError, RuntimeError, tf.errors.OpError) as e:
    raise OptimizeError("input", input_dir, str(e)) from e
  check_graph(source.graph_def, source, "input")
  context = transforms.GraphContext(frozenset(source.protected_nodes()), source.variable_values)
  inputs, examples, expected = guard_examples(input_dir, source, eval_data, label_key,
                                              settings.examples_needed)
  signature, batch1, batch64 = _measure_inputs(inputs)

  scratch = tempfile.mkdtemp(prefix="optimize-")
  judged = 0

  def judge(graph_def, step: str) -> guard.GuardResult:
    nonlocal judged
    judged += 1
    candidate = savedmodel_io.write_servable(source, graph_def, f"{scratch}/judged{judged}")
    try:
      return _compare(input_dir, candidate, expected, inputs, settings, examples.synthetic,
                      step)
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
      except transforms.TransformError as e:
        raise OptimizeError(spec.label, input_dir, str(e)) from e
      check_graph(graph_def, source, spec.label)
      logging.info("%s: %d nodes", spec.label, len(graph_def.node))
      if measure:
        candidate = savedmodel_io.write_servable(source, graph_def, f"{scratch}/step{index}")
        result_guard = _compare(input_dir, candidate, expected, inputs, settings,
                                examples.synthetic, spec.label)
        new_histogram = savedmodel_io.op_histogram(graph_def)
        made.append(_Step(spec.label, len(graph_def.node),
                          report.op_delta(histogram, new_histogram), candidate,
                          result_guard.agreement))
        histogram = new_histogram
    if result_guard is None:
      result_guard = judge(graph_def, "guard")
    plan = None
    if (not result_guard.passed and not force and fallback == "mixed"
        and before_quantize is not None and result_guard.enough_examples):
      logging.warning("The full int8 plan fails the guard (%s); looking for the smallest plan "
                      "that passes.", "; ".join(result_guard.failures()))
      try:
        plan = fallback_lib.find_plan(before_quantize, context, specs[quantize_index],
                                      specs[quantize_index + 1:], judge)
      except transforms.TransformError as e:
        raise OptimizeError("fallback", input_dir, str(e)) from e
      if plan is not None:
        graph_def, result_guard = plan.graph_def, plan.guard
        check_graph(graph_def, source, "fallback")
        if measure:
          made.append(_Step(f"fallback: {plan.spec_label}", len(graph_def.node),
                            report.op_delta(histogram, savedmodel_io.op_histogram(graph_def)),
                            savedmodel_io.write_servable(source, graph_def,
                                                         f"{scratch}/fallback"),
                            result_guard.agreement))
    steps = []
    if measure:
      figures = report.measure_steps([step.version_dir for step in made], signature, batch1,
                                     batch64, latency_repeats, latency_rounds)
      steps = [report.StepFigures(step.label, step.nodes, step.op_delta,
                                  agreement=step.agreement, **measured)
               for step, measured in zip(made, figures)]
    written = result_guard.passed or force
    if written:
      savedmodel_io.write_servable(source, graph_def, output_dir, overwrite=overwrite)
    report_paths = {}
    # A refused run writes nothing unless a report dir was asked for explicitly.
    if measure and (written or report_dir):
      report_paths = report.write_report(
          report_dir or f"{output_dir}.report", input_dir, steps, result_guard.to_dict(),
          {"transforms": [s.label for s in specs], "output_dir": output_dir if written else None,
           "forced": force and not result_guard.passed,
           "fallback": plan.to_dict() if plan else None,
           "latency_signature": signature})
  finally:
    tf.io.gfile.rmtree(scratch)
  if not written:
    tried = (" no plan keeping weights out of int8 passes either;"
             if fallback == "mixed" and before_quantize is not None
             and result_guard.enough_examples else "")
    raise OptimizeError("guard", input_dir,
                        "optimized model fails the guard: " + "; ".join(result_guard.failures())
                        + f" ({tried} nothing written; pass force to write it anyway)")
  return OptimizeResult(output_dir, result_guard, steps, report_paths, written, plan)


def summary(result: OptimizeResult):
  """What the guard judged and found, a line each, as the console shows it."""
  verdict = result.guard
  made_up = (f", {verdict.synthetic_examples} of them synthetic" if verdict.synthetic_examples
             else "")
  yield (f"guard: {'passed' if verdict.passed else 'forced'}; judged {verdict.examples} "
         f"examples{made_up}; lowest agreement {verdict.agreement:.4f}")
  for signature in verdict.signatures:
    line = (f"  {signature.name}: agreement {signature.agreement:.4f} on {signature.examples} "
            f"(disagreement under {signature.disagreement_bound:.2%} at 95%)")
    if signature.labels is not None:
      line += (f"; {signature.labels.metric} {signature.labels.original:.4f} -> "
               f"{signature.labels.optimized:.4f} on {signature.labels.examples} labelled")
    yield line
  if result.fallback is not None:
    kept = ", ".join(f"{k.name} ({k.stored_as})" for k in result.fallback.kept)
    yield f"fallback: kept out of int8: {kept}; {len(result.fallback.quantized)} weights int8"


def _compare(reference_dir: str, candidate_dir: str, expected: guard.Answers, inputs,
             settings: GuardSettings, synthetic: int, step: str):
  try:
    with SessionServable(candidate_dir) as candidate:
      return guard.compare(expected, candidate, inputs, settings.min_agreement,
                           settings.max_accuracy_drop, settings.examples_needed, synthetic)
  except Exception as e:
    raise OptimizeError(step, reference_dir, f"the rewritten model fails to run: {e}") from e
