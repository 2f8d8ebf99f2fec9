"""A synthetic pipeline recorded through the lineage API, on tiny fake artifact dirs.

Nothing is trained: the stages only need directories with content to fingerprint. Also run
as a script by the concurrency test, to record full chains from other processes.
"""

import json
import os
import sys
import time
from typing import Optional

from absl import logging

from lineage import push as push_lib
from lineage import record
from lineage import schema
from lineage import store as store_lib

HYPERPARAMETERS = {"batch_size": 32, "hidden_units": [32], "dropout": 0.5, "char_ngrams": [3]}
METRICS = {"accuracy": 0.875, "macro_f1": 0.86}
TRANSFORMS = ["freeze", "fold_constants"]


def write(path: str, content: str) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write(content)
  return path


def fake_servable(version_dir: str, tag: str) -> str:
  write(os.path.join(version_dir, "saved_model.pb"), f"graph {tag}")
  write(os.path.join(version_dir, "variables", "variables.index"), f"index {tag}")
  write(os.path.join(version_dir, "assets", "vocabulary.txt"), "book\nflight\n")
  return version_dir


def write_data(data_dir: str):
  return (write(os.path.join(data_dir, "train.csv"), "text,intent\nbook it,book\n"),
          write(os.path.join(data_dir, "eval.csv"), "text,intent\nfly me,fly\n"))


def record_chain(recorder: record.Recorder, root: str, tag: str = "a", blessed: bool = True,
                 push_to: Optional[str] = None, data_dir: Optional[str] = None):
  """Records train -> export -> optimize -> smoke test (-> push); returns the artifacts.

  The data goes to <root>/data unless `data_dir` already holds it.
  """
  if data_dir:
    train_file, eval_file = (os.path.join(data_dir, n) for n in ("train.csv", "eval.csv"))
  else:
    train_file, eval_file = write_data(os.path.join(root, "data"))
  module_dir = os.path.join(root, "job", "hub_module")
  write(os.path.join(module_dir, "tfhub_module.pb"), f"module {tag}")
  job_dir = os.path.join(root, "job")
  done = {}

  with recorder.execution(
      schema.TRAIN,
      inputs={"train": schema.dataset(train_file, "train", 1, 1),
              "eval": schema.dataset(eval_file, "eval", 1, 1)},
      params={"hyperparameters": HYPERPARAMETERS}) as run:
    done["module"] = run.output("hub_module", schema.hub_module(module_dir))
    done["model"] = run.output("model", schema.model(job_dir, f"{job_dir}/model.ckpt-400", 400))
    run.results(metrics=METRICS, accuracy=METRICS["accuracy"], macro_f1=METRICS["macro_f1"],
                train_examples=1, global_step=400)

  export_dir = fake_servable(os.path.join(job_dir, "export", "intent", "1700000001"), tag)
  with recorder.execution(schema.EXPORT, inputs={"model": done["model"]},
                          params={"model_name": "intent"}) as run:
    done["exported"] = run.output("exported", schema.exported_model(export_dir, "intent"))

  optimized_dir = fake_servable(os.path.join(job_dir, "optimized", "intent", "1700000001"),
                                tag + "-optimized")
  with recorder.execution(schema.OPTIMIZE, inputs={"model": done["exported"]},
                          params={"transforms": TRANSFORMS, "min_agreement": 0.995}) as run:
    done["optimized"] = run.output("optimized", schema.optimized_model(optimized_dir, "intent"))
    run.results(agreement=1.0, size_bytes_before=done["exported"].properties[
        "size_bytes"].int_value, size_bytes_after=done["optimized"].properties[
            "size_bytes"].int_value)

  verdict_path = write(os.path.join(job_dir, "smoke_test", "verdict.json"),
                       json.dumps({"blessed": blessed}))
  reason = "" if blessed else "2 of 24 checks failed"
  with recorder.execution(schema.SMOKE_TEST, inputs={"model": done["optimized"]},
                          params={"backend": "embedded"}) as run:
    done["verdict"] = run.output("verdict", schema.verdict(verdict_path, blessed, reason,
                                                           "embedded", 1700000001))
    run.results(blessed=blessed, reason=reason, checks_passed=24 if blessed else 22,
                checks_total=24, latency_ms={"batch_1": {"p50": 1.5}})

  if push_to:
    done["push"] = push_lib.push(recorder, done["optimized"], push_to)
  return done


def _wait_for_all(barrier_dir: str, tag: str, stage: str, count: int,
                  timeout_secs: float = 120) -> None:
  """Holds each process at `stage` until all `count` processes reached it."""
  write(os.path.join(barrier_dir, f"{stage}.{tag}"), "")
  deadline = time.monotonic() + timeout_secs
  while sum(name.startswith(f"{stage}.") for name in os.listdir(barrier_dir)) < count:
    if time.monotonic() > deadline:
      raise TimeoutError(f"{tag}: the other processes never reached {stage} in {barrier_dir}")
    time.sleep(0.005)


if __name__ == "__main__":
  # DB ROOT TAG DATA_DIR BARRIER_DIR OPENERS RECORDERS CHAINS: past the slow imports, the
  # OPENERS processes open the store at once (the first creates its tables), then all
  # RECORDERS participants (these processes, and the test holding a lock) start recording.
  db, root, tag, data_dir, barrier_dir = sys.argv[1:6]
  openers, recorders, chains = (int(a) for a in sys.argv[6:9])
  logging.set_verbosity(logging.INFO)  # the test reads the retries off stderr
  logging.use_absl_handler()
  _wait_for_all(barrier_dir, tag, "open", openers)
  store = store_lib.open_store(store_lib.store_config(metadata_db=db))
  _wait_for_all(barrier_dir, tag, "record", recorders)
  runs = []
  for n in range(chains):
    chain_root = os.path.join(root, f"{tag}{n}")
    recorder = record.Recorder(store, os.path.join(chain_root, "job"))
    result = record_chain(recorder, chain_root, f"{tag}{n}", data_dir=data_dir,
                          push_to=os.path.join(chain_root, "serving"))
    runs.append({"run": recorder.pipeline_run.name, "job_dir": os.path.join(chain_root, "job"),
                 "pushed": result["push"].pushed.id})
  print(json.dumps(runs))
