"""A smoke test recorded as a SmokeTest execution in ML Metadata, with its Verdict artifact.

Used by the pipeline and by `python -m serving.smoke_test` given a store, so the stage
records the same execution whoever runs it.
"""

import posixpath
from typing import Optional, Tuple

from ml_metadata.proto import metadata_store_pb2

from export import versions
from lineage import schema
from lineage.record import Recorder
from serving.smoke_test import verdict as verdict_lib

Artifact = metadata_store_pb2.Artifact


def smoke_test_version(recorder: Recorder, servable: Artifact, model_name: str,
                       output_dir: Optional[str] = None,
                       **smoke_args) -> Tuple[verdict_lib.Verdict, Artifact]:
  """Runs the smoke test on the servable's base path as a SmokeTest execution.

  The server serves the base path's highest version; when that is not the recorded
  servable, the verdict does not bless it.
  """
  base_path, name = posixpath.split(servable.uri.rstrip("/"))
  backend = smoke_args.get("backend", "auto")
  with recorder.execution(schema.SMOKE_TEST, inputs={"model": servable},
                          params={"backend": backend}) as run:
    verdict = verdict_lib.run_smoke_test(
        base_path, model_name, output_dir=output_dir,
        expected_version=versions.parse_version(name), **smoke_args)
    passed = sum(c.ok for c in verdict.checks)
    run.results(backend=verdict.backend, blessed=verdict.blessed, reason=verdict.reason,
                checks_passed=passed, checks_total=len(verdict.checks),
                latency_ms=verdict.latency_ms, model_version=verdict.version)
    artifact = run.output("verdict", schema.verdict(
        verdict.verdict_path, verdict.blessed, verdict.reason, verdict.backend,
        verdict.version))
  return verdict, artifact
