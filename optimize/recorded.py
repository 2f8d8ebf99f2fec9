"""An optimization run recorded as an Optimize execution in ML Metadata.

Used by the pipeline and by `python -m optimize` given a store, so the stage records the same
execution whoever runs it.
"""

import dataclasses
from typing import Optional, Tuple

from ml_metadata.proto import metadata_store_pb2

from lineage import schema
from lineage.record import Recorder
from optimize import optimizer

Artifact = metadata_store_pb2.Artifact


def guard_figures(result: optimizer.OptimizeResult):
  """The guard's verdict as flat properties `python -m lineage` shows."""
  verdict = result.guard
  figures = dict(guard_passed=verdict.passed, guard_examples=verdict.examples,
                 guard_real_examples=verdict.real_examples,
                 guard_synthetic_examples=verdict.synthetic_examples,
                 guard_real_sources=verdict.real_sources,
                 guard_rule=verdict.rule.to_dict(),
                 kept_in_float=[f"{k.name}:{k.stored_as}" for k in result.fallback.kept]
                 if result.fallback else [])
  scored = [s for s in verdict.signatures if s.labels is not None]
  if scored:
    labels = scored[0].labels
    figures.update({"guard_metric": labels.metric, "guard_labelled_examples": labels.examples,
                    f"{labels.metric}_before": labels.original,
                    f"{labels.metric}_after": labels.optimized})
  return figures


def optimize(recorder: Recorder, source: Artifact, output_dir: str,
             settings: optimizer.OptimizeSettings = optimizer.OptimizeSettings(),
             model_name: Optional[str] = None) -> Tuple[optimizer.OptimizeResult, Artifact]:
  """`optimizer.optimize` of the servable `source` as an Optimize execution; a refusal ends
  it FAILED with the reason."""
  params = {k: v for k, v in settings.to_params().items() if v is not None}
  with recorder.execution(schema.OPTIMIZE, inputs={"model": source}, params=params) as run:
    result = optimizer.optimize(source.uri, output_dir, settings)
    steps = [dataclasses.asdict(s) for s in result.steps]
    figures = {}
    if result.steps:
      figures = dict(size_bytes_before=result.steps[0].bytes_on_disk,
                     size_bytes_after=result.steps[-1].bytes_on_disk,
                     batch1_p50_ms_before=result.steps[0].batch1_p50_ms,
                     batch1_p50_ms_after=result.steps[-1].batch1_p50_ms)
    run.results(agreement=result.guard.agreement, guard=result.guard.to_dict(), steps=steps,
                **figures, **guard_figures(result))
    optimized = run.output("optimized_model", schema.optimized_model(output_dir, model_name))
  return result, optimized
