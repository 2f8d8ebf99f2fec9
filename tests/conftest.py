"""Shared fixtures: one small model trained on the bundled data per test session."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from optimize import transforms  # noqa: E402

from trainer import config as config_lib  # noqa: E402
from trainer import pipeline  # noqa: E402
from trainer.model import ModelConfig  # noqa: E402
from trainer.text_module import TextModuleConfig  # noqa: E402


def small_config(job_dir, **overrides) -> config_lib.TrainerConfig:
  """A model of the project's shape, small enough to train in seconds."""
  settings = dict(
      job_dir=str(job_dir),
      train_steps=400,
      batch_size=32,
      save_checkpoints_steps=400,
      eval_throttle_secs=0,
      # The stages after export have tests of their own; fixtures stop at the export.
      optimize=False,
      smoke_test=False,
      model=ModelConfig(hidden_units=(32,)),
      text_module=TextModuleConfig(embedding_dim=32, char_ngrams=(3,), oov_buckets=1000))
  settings.update(overrides)
  return config_lib.TrainerConfig(**settings)


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
  """The pipeline's result (train + export) on the bundled data."""
  return pipeline.run(small_config(tmp_path_factory.mktemp("job")))


def run_python(code: str, *args: str, timeout: float = 300) -> str:
  """Runs `code` in a fresh interpreter (nothing shared with the test process)."""
  import subprocess
  import sys
  env = dict(os.environ, PYTHONPATH=PROJECT_ROOT)
  completed = subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                             text=True, timeout=timeout, env=env, cwd=PROJECT_ROOT)
  assert completed.returncode == 0, completed.stderr[-4000:]
  return completed.stdout


PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Loads a version dir with tf.compat.v1.saved_model.load, runs every signature on the
# texts given and prints the answers as JSON.
RUN_EVERY_SIGNATURE = r"""
import json, os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import tensorflow as tf
version_dir, texts = sys.argv[1], json.loads(sys.argv[2])
examples = [tf.train.Example(features=tf.train.Features(feature={"text": tf.train.Feature(
    bytes_list=tf.train.BytesList(value=[t.encode()]))})).SerializeToString() for t in texts]
answers = {}
with tf.compat.v1.Session(graph=tf.Graph()) as session:
  meta_graph = tf.compat.v1.saved_model.load(session, ["serve"], version_dir)
  for name, signature in meta_graph.signature_def.items():
    (key, tensor), = signature.inputs.items()
    feed = {tensor.name: texts if key == "text" else examples}
    fetched = session.run({k: v.name for k, v in signature.outputs.items()}, feed)
    answers[name] = {"method": signature.method_name,
                     **{k: (v.astype(str) if v.dtype == object else v).tolist()
                        for k, v in fetched.items()}}
print(json.dumps(answers))
"""


def scramble_weights(graph_def, context):
  """A deliberately broken transform: shuffles every float matrix."""
  graph = transforms.graph.copy_graph(graph_def)
  rng = np.random.RandomState(0)
  for node in graph.node:
    if node.op == "Const" and node.attr["dtype"].type == tf.float32.as_datatype_enum:
      value = tf.make_ndarray(node.attr["value"].tensor)
      if value.ndim == 2 and value.size > 1:
        node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(
            rng.permutation(value.reshape(-1)).reshape(value.shape).astype(np.float32)))
  return graph
