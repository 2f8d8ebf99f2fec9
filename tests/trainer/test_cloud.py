"""Cloud jobs: TF_CONFIG roles, tuning trials, the tuning metric and Vertex AI's AIP_* dirs."""

import glob
import json
import os
import re
import subprocess
import sys
import types

import pytest
import tensorflow as tf

from tests.helpers import PROJECT_ROOT, small_config
from trainer import cloud
from trainer import pipeline
from trainer import settings
from trainer import config as config_lib

CLUSTER = {"chief": ["h:1"], "worker": ["h:2", "h:3"], "ps": ["h:4"]}


def environment(tf_config=None, **aip):
  environ = {k: v for k, v in aip.items()}
  if tf_config is not None:
    environ["TF_CONFIG"] = json.dumps(tf_config)
  return cloud.from_environ(environ)


def test_without_tf_config_the_trainer_is_one_local_chief():
  env = environment()
  assert env.task_type is None and env.is_chief and not env.has_evaluator and env.trial is None


@pytest.mark.parametrize("task_type, is_chief", [
    ("chief", True), ("worker", False), ("ps", False), ("evaluator", False)])
def test_cluster_roles(task_type, is_chief):
  env = environment({"cluster": dict(CLUSTER, evaluator=["h:5"]),
                     "task": {"type": task_type, "index": 0}})
  assert (env.task_type, env.is_chief, env.has_evaluator) == (task_type, is_chief, True)


def test_legacy_master_is_the_chief():
  env = environment({"cluster": {"master": ["h:1"], "worker": ["h:2"], "ps": ["h:3"]},
                     "task": {"type": "master", "index": 0, "trial": "3"}})
  assert env.is_chief and env.task_type == "master" and env.trial == "3"


@pytest.mark.parametrize("raw, message", [
    ("{not json", "TF_CONFIG is not valid JSON"),
    (json.dumps({"cluster": CLUSTER, "task": {"type": "boss", "index": 0}}), "task.type must be"),
    (json.dumps({"cluster": {"worker": ["h:1"]}, "task": {"type": "worker", "index": 0}}),
     "no chief"),
    (json.dumps({"cluster": CLUSTER, "task": {"type": "worker", "index": -1}}), "task.index"),
])
def test_a_bad_tf_config_is_refused_naming_the_problem(raw, message):
  with pytest.raises(ValueError, match=message):
    cloud.from_environ({"TF_CONFIG": raw})


def test_a_tuning_trial_writes_under_its_own_job_subdir():
  env = environment({"cluster": {"master": ["h:1"]},
                     "task": {"type": "master", "index": 0, "trial": "12"}})
  config = cloud.resolve(small_config("gs://b/jobs/tune"), env)
  assert config.job_dir == "gs://b/jobs/tune/12"
  assert config.model_dir == "gs://b/jobs/tune/12"
  assert pipeline.module_dir(config) == "gs://b/jobs/tune/12/hub_module"
  assert pipeline.export_base(config) == "gs://b/jobs/tune/12/export/intent"


def test_vertex_ai_dirs_take_precedence_over_the_job_dir():
  env = environment(AIP_MODEL_DIR="gs://b/out/model", AIP_CHECKPOINT_DIR="gs://b/out/checkpoints",
                    AIP_TENSORBOARD_LOG_DIR="gs://b/out/logs")
  config = cloud.resolve(small_config("gs://b/jobs/run"), env)
  assert config.job_dir == "gs://b/jobs/run"  # still receives eval_report.json
  assert config.model_dir == "gs://b/out/checkpoints"
  assert pipeline.module_dir(config) == "gs://b/out/checkpoints/hub_module"
  assert pipeline.export_base(config) == "gs://b/out/model"
  assert config.tensorboard_dir == "gs://b/out/logs"


def test_the_tuning_metric_goes_through_cloudml_hypertune_when_it_is_importable(monkeypatch):
  reports = []

  class HyperTune:
    def report_hyperparameter_tuning_metric(self, **kwargs):
      reports.append(kwargs)

  monkeypatch.setitem(sys.modules, "hypertune", types.SimpleNamespace(HyperTune=HyperTune))
  assert cloud.report_tuning_metric(0.9, 600)
  assert reports == [{"hyperparameter_metric_tag": "accuracy", "metric_value": 0.9,
                      "global_step": 600}]
  monkeypatch.setitem(sys.modules, "hypertune", None)  # as if not installed
  assert not cloud.report_tuning_metric(0.9, 600)


def read_project_file(name):
  with open(os.path.join(PROJECT_ROOT, name)) as f:
    return f.read()


def test_hptuning_config_names_the_metric_tag_and_tunes_real_trainer_flags():
  text = read_project_file("hptuning_config.yaml")
  assert re.findall(r"hyperparameterMetricTag:\s*(\S+)", text) == [cloud.METRIC_TAG]
  assert re.search(r"goal:\s*MAXIMIZE", text)
  tuned = re.findall(r"parameterName:\s*(\S+)", text)
  known = settings.flag_names(config_lib.TrainerConfig)
  assert tuned and all(name in known for name in tuned), tuned


def test_config_yaml_is_a_distributed_scale_tier():
  text = read_project_file("config.yaml")
  assert re.search(r"scaleTier:\s*CUSTOM", text)
  for count in ("workerCount", "parameterServerCount", "evaluatorCount"):
    assert int(re.search(rf"{count}:\s*(\d+)", text).group(1)) >= 1, count


FAKE_HYPERTUNE = """
import json, os
class HyperTune:
  def report_hyperparameter_tuning_metric(self, **kwargs):
    with open(os.environ["FAKE_HYPERTUNE_OUT"], "a") as f:
      f.write(json.dumps(kwargs) + "\\n")
"""


def summary_tags(directory):
  tags = set()
  for path in glob.glob(os.path.join(directory, "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      tags.update(v.tag for v in event.summary.value)
  return tags


@pytest.mark.slow
@pytest.mark.parametrize("task_type", ["master", "chief"])
def test_a_cloud_job_honours_the_trial_the_vertex_dirs_and_reports_the_metric(tmp_path, task_type):
  """One-machine jobs as AI Platform (master, tuning trial) and Vertex AI (chief) start them."""
  (tmp_path / "site" / "hypertune").mkdir(parents=True)
  (tmp_path / "site" / "hypertune" / "__init__.py").write_text(FAKE_HYPERTUNE)
  out = tmp_path / "out"
  env = dict(os.environ,
             PYTHONPATH=os.pathsep.join([str(tmp_path / "site"), PROJECT_ROOT]),
             FAKE_HYPERTUNE_OUT=str(tmp_path / "hypertune.jsonl"),
             TF_CONFIG=json.dumps({"cluster": {task_type: ["127.0.0.1:1"]},
                                   "task": {"type": task_type, "index": 0, "trial": "7"}}),
             AIP_MODEL_DIR=str(out / "model"), AIP_CHECKPOINT_DIR=str(out / "checkpoints"),
             AIP_TENSORBOARD_LOG_DIR=str(out / "logs"))
  completed = subprocess.run(
      [sys.executable, "-m", "trainer.task", f"--job-dir={tmp_path / 'job'}",
       "--train_steps=150", "--batch_size=16", "--hidden_units=16", "--embedding_dim=16",
       "--char_ngrams=3", "--oov_buckets=500", "--save_checkpoints_steps=150"],
      capture_output=True, text=True, timeout=300, cwd=PROJECT_ROOT, env=env)
  assert completed.returncode == 0, completed.stderr[-4000:]

  report = json.loads((tmp_path / "job" / "7" / "eval_report.json").read_text())
  assert [v for v in os.listdir(out / "model") if v.isdigit()]
  assert (out / "checkpoints" / "hub_module" / "tfhub_module.pb").exists()
  assert tf.train.latest_checkpoint(str(out / "checkpoints")).endswith("model.ckpt-150")
  assert not (tmp_path / "job" / "7" / "checkpoint").exists()
  # Where AI Platform's tuning service reads the metric: the estimator's eval summaries.
  assert cloud.METRIC_TAG in summary_tags(str(out / "checkpoints" / "eval"))
  assert "loss" in summary_tags(str(out / "logs"))
  assert {cloud.METRIC_TAG, "macro_f1"} <= summary_tags(str(out / "logs" / "eval"))
  (reported,) = [json.loads(l) for l in (tmp_path / "hypertune.jsonl").read_text().splitlines()]
  assert reported == {"hyperparameter_metric_tag": "accuracy",
                      "metric_value": report["accuracy"], "global_step": 150}
