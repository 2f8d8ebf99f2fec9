"""A tuning run recorded as a TuneBatching execution in ML Metadata: the servable it measured
as input, every point's figures and the verdict as results, the parameters file it wrote (when
a point met the budget) as output."""

import posixpath
from typing import Tuple

from ml_metadata.proto import metadata_store_pb2

from lineage import schema
from lineage.record import Recorder
from serving.tune_batching import tuner

Artifact = metadata_store_pb2.Artifact


def tune_version(recorder: Recorder, servable: Artifact, model_name: str, output_dir: str,
                 settings: tuner.TuningSettings, log=print) -> Tuple[tuner.TuningResult, str]:
  """Tunes the servable's base path as a TuneBatching execution; returns the result and the
  parameters file written ("" when no point met the budget)."""
  base_path = posixpath.dirname(servable.uri.rstrip("/"))
  with recorder.execution(schema.TUNE_BATCHING, inputs={"model": servable},
                          params={"concurrency": settings.concurrency,
                                  "p99_budget_ms": settings.p99_budget_ms,
                                  "seconds_per_point": settings.seconds_per_point}) as run:
    result = tuner.tune(base_path, model_name, settings, log)
    written = tuner.write_result(result, output_dir)
    run.results(backend=result.backend, baseline=result.baseline.as_dict(),
                measured=[m.as_dict() for m in result.measured],
                best=result.best.as_dict() if result.best else None,
                verdict=tuner.verdict(result), speedup=result.speedup)
    if written:
      run.output("batching_parameters", schema.batching_parameters(
          written, tuner.parameters(result.best.point, settings), result.best.requests_per_s,
          result.best.p99_ms, settings.concurrency))
  return result, written or ""
