"""validate -> rewrite -> validate, then the accuracy guard, then an atomic write.

`optimize()` is the library entry point; `python -m optimize` is its command line.
"""

import dataclasses
import tempfile
from typing import Dict, List, Optional, Sequence, Union

import tensorflow as tf
from absl import logging
from tensorflow.python.framework import op_def_registry

from export import artifact_io
from export.servable import SessionServable
from export.warmup import DEFAULT_SIGNATURE
from optimize import evaluation_inputs
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


def optimize(input_dir: str, output_dir: str,
             transform_specs: Union[str, Sequence[str]] = transforms.DEFAULT_TRANSFORMS,
             eval_data: Optional[str] = None,
             min_agreement: float = guard.DEFAULT_MIN_AGREEMENT,
             force: bool = False, overwrite: bool = False,
             report_dir: Optional[str] = None, measure: bool = True,
             latency_repeats: int = 30) -> OptimizeResult:
  """Optimizes the SavedModel version in `input_dir` into `output_dir`.

  Refuses (writing nothing) when the guard's agreement falls below `min_agreement`,
  unless `force`. The report goes to `report_dir` (default: `<output_dir>.report`,
  a sibling TF Serving ignores since its name is not a number).
  """
  input_dir, output_dir = input_dir.rstrip("/"), output_dir.rstrip("/")
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

  with SessionServable(input_dir) as original:
    try:
      batches, warmup_examples = evaluation_inputs.warmup_inputs(input_dir, original.signatures)
      examples = (evaluation_inputs.read_eval_examples(eval_data, source.graph_def)
                  if eval_data else warmup_examples)
      inputs = evaluation_inputs.signature_inputs(original, source.graph_def, examples, batches)
    except evaluation_inputs.GuardError as e:
      raise OptimizeError("guard", input_dir, str(e)) from e
  signature, batch1, batch64 = _measure_inputs(inputs)

  scratch = tempfile.mkdtemp(prefix="optimize-")
  try:
    steps = []
    histogram = savedmodel_io.op_histogram(source.graph_def)
    if measure:
      steps.append(report.StepFigures("original", len(source.graph_def.node), {},
                                      *report.measure(input_dir, signature, batch1, batch64,
                                                      latency_repeats), agreement=1.0))
    graph_def = source.graph_def
    candidate, result_guard = None, None
    for index, spec in enumerate(specs):
      try:
        graph_def = spec.apply(graph_def, context)
      except transforms.TransformError as e:
        raise OptimizeError(spec.label, input_dir, str(e)) from e
      check_graph(graph_def, source, spec.label)
      logging.info("%s: %d nodes", spec.label, len(graph_def.node))
      if measure:
        candidate = savedmodel_io.write_servable(source, graph_def, f"{scratch}/step{index}")
        result_guard = _compare(input_dir, candidate, inputs, min_agreement, spec.label)
        new_histogram = savedmodel_io.op_histogram(graph_def)
        steps.append(report.StepFigures(
            spec.label, len(graph_def.node), report.op_delta(histogram, new_histogram),
            *report.measure(candidate, signature, batch1, batch64, latency_repeats),
            agreement=result_guard.agreement))
        histogram = new_histogram
    if candidate is None:
      # Unmeasured: the last step was not written, so the guard needs it written once.
      candidate = savedmodel_io.write_servable(source, graph_def, f"{scratch}/candidate")
      result_guard = _compare(input_dir, candidate, inputs, min_agreement, "guard")
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
           "latency_signature": signature})
  finally:
    tf.io.gfile.rmtree(scratch)
  if not written:
    raise OptimizeError("guard", input_dir,
                        "optimized model disagrees with the original: "
                        + "; ".join(result_guard.failures()) + " (nothing written; "
                        "pass force to write it anyway)")
  return OptimizeResult(output_dir, result_guard, steps, report_paths, written)


def _compare(reference_dir: str, candidate_dir: str, inputs, min_agreement, step: str):
  try:
    with SessionServable(reference_dir) as reference, SessionServable(candidate_dir) as candidate:
      return guard.compare(reference, candidate, inputs, min_agreement)
  except Exception as e:
    raise OptimizeError(step, reference_dir, f"the rewritten model fails to run: {e}") from e
