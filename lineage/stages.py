"""Recorded runs of the optimize and smoke-test stages, shared by the pipeline and by
`python -m optimize` / `python -m serving.smoke_test`, so a stage records the same
execution whoever runs it.
"""

import dataclasses
import posixpath
from typing import Optional, Tuple

from ml_metadata.proto import metadata_store_pb2

from lineage import query
from lineage import schema
from lineage.record import Recorder
from optimize import optimizer
from serving import smoke_test

Artifact = metadata_store_pb2.Artifact


def recorded_servable(recorder: Recorder, version_dir: str,
                      model_name: Optional[str] = None) -> Artifact:
  """The servable artifact for `version_dir`: the stored one if the store knows that URI
  (exported or optimized), else a new ExportedModel record of it."""
  version_dir = version_dir.rstrip("/")
  store = recorder.store
  known = query.newest(a for a in store.mlmd.get_artifacts_by_uri(version_dir)
                       if store.type_name(a.type_id) in schema.SERVABLES)
  return known[0] if known else schema.exported_model(version_dir, model_name)


def optimize(recorder: Recorder, source: Artifact, output_dir: str,
             model_name: Optional[str] = None,
             **optimize_args) -> Tuple[optimizer.OptimizeResult, Artifact]:
  """`optimizer.optimize` as an Optimize execution; a refusal ends it FAILED."""
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


def smoke_test_version(recorder: Recorder, servable: Artifact, model_name: str,
                       output_dir: Optional[str] = None,
                       **smoke_args) -> Tuple[smoke_test.Verdict, Artifact]:
  """Runs the smoke test on the servable's base path as a SmokeTest execution.

  The server serves the base path's highest version; when that is not the recorded
  servable, the verdict does not bless it.
  """
  base_path, version = posixpath.split(servable.uri.rstrip("/"))
  backend = smoke_args.get("backend", "auto")
  with recorder.execution(schema.SMOKE_TEST, inputs={"model": servable},
                          params={"backend": backend}) as run:
    verdict = smoke_test.run_smoke_test(
        base_path, model_name, output_dir=output_dir,
        expected_version=int(version) if version.isdigit() else None, **smoke_args)
    passed = sum(c.ok for c in verdict.checks)
    run.results(backend=verdict.backend, blessed=verdict.blessed, reason=verdict.reason,
                checks_passed=passed, checks_total=len(verdict.checks),
                latency_ms=verdict.latency_ms, model_version=verdict.version)
    artifact = run.output("verdict", schema.verdict(
        verdict.verdict_path, verdict.blessed, verdict.reason, verdict.backend,
        verdict.version))
  return verdict, artifact
