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


def optimize(recorder: Recorder, source: Artifact, output_dir: str,
             model_name: Optional[str] = None,
             **optimize_args) -> Tuple[optimizer.OptimizeResult, Artifact]:
  """`optimizer.optimize` of the servable `source` as an Optimize execution; a refusal ends
  it FAILED with the reason."""
  transforms = optimize_args.get("transform_specs")
  params = {"transforms": transforms if isinstance(transforms, (list, type(None)))
                          else [transforms],
            "min_agreement": optimize_args.get("min_agreement"),
            "force": optimize_args.get("force", False)}
  with recorder.execution(schema.OPTIMIZE, inputs={"model": source},
                          params={k: v for k, v in params.items() if v is not None}) as run:
    result = optimizer.optimize(source.uri, output_dir, **optimize_args)
    steps = [dataclasses.asdict(s) for s in result.steps]
    figures = {}
    if result.steps:
      figures = dict(size_bytes_before=result.steps[0].bytes_on_disk,
                     size_bytes_after=result.steps[-1].bytes_on_disk,
                     batch1_p50_ms_before=result.steps[0].batch1_p50_ms,
                     batch1_p50_ms_after=result.steps[-1].batch1_p50_ms)
    run.results(agreement=result.guard.agreement, guard=result.guard.to_dict(), steps=steps,
                **figures)
    optimized = run.output("optimized_model", schema.optimized_model(output_dir, model_name))
  return result, optimized
