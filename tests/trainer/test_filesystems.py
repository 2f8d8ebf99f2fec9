"""Every data and model path goes through tf.io.gfile, so gs:// behaves like a local disk.

TensorFlow's in-memory `ram://` filesystem runs training (data, checkpoints, summaries,
eval report). It cannot hold a hub module or an export, and not because of this project:
ram:// reports every path prefix as an existing directory (hub's checkpoint lookup then
takes `variables/variables` for a directory) and renames only a directory's own entry,
not the files below it (tf.estimator's exporter and hub's module export both write a temp
directory and rename it). For those steps the last test proves instead that no local-only
call (open, os.*, shutil, glob) in the project's code touches a data or job path.
"""

import builtins
import functools
import glob
import io
import os
import posixpath
import shutil
import sys
import sysconfig
import uuid

import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import PROJECT_ROOT, small_config
from trainer import config as config_lib
from trainer import pipeline

OUR_CODE = tuple(os.path.join(PROJECT_ROOT, package) + os.sep for package in ("trainer", "export"))


def ram_dir() -> str:
  return f"ram://{uuid.uuid4().hex[:8]}"


def test_training_runs_with_data_checkpoints_summaries_and_report_on_ram(tmp_path):
  root = ram_dir()
  tf.io.gfile.makedirs(f"{root}/data")
  tf.io.gfile.copy(config_lib.BUNDLED_TRAIN, f"{root}/data/train.csv")
  tf.io.gfile.copy(config_lib.BUNDLED_EVAL, f"{root}/data/eval.csv")
  local = small_config(tmp_path / "module-job")
  train, _ = pipeline.load_data(local)
  module = pipeline.ensure_text_module(local, [e.text for e in train])

  config = small_config(f"{root}/job", train_steps=40, save_checkpoints_steps=20,
                        hub_module=module, train_files=f"{root}/data/train.csv",
                        eval_files=f"{root}/data/eval.csv")
  train, evaluation = pipeline.load_data(config)
  result = pipeline.train(config, train, evaluation)

  assert result.checkpoint_path == f"{root}/job/model.ckpt-40"
  assert tf.io.gfile.glob(f"{root}/job/eval/events.out.tfevents.*")
  with tf.io.gfile.GFile(result.eval_report_path) as f:
    assert '"accuracy"' in f.read()
  assert result.eval_report_path.startswith(root)
  assert not glob.glob(os.path.join(os.getcwd(), "ram:*"))


def test_ram_cannot_hold_a_module_or_an_export_for_reasons_of_its_own():
  root = ram_dir()
  with tf.io.gfile.GFile(f"{root}/m/variables/variables.index", "w") as f:
    f.write("x")
  assert tf.io.gfile.isdir(f"{root}/m/variables/variables")  # a file prefix, not a dir
  tf.io.gfile.makedirs(f"{root}/temp-1")
  with tf.io.gfile.GFile(f"{root}/temp-1/saved_model.pb", "w") as f:
    f.write("x")
  tf.io.gfile.rename(f"{root}/temp-1", f"{root}/1")
  assert tf.io.gfile.exists(f"{root}/1")
  assert not tf.io.gfile.exists(f"{root}/1/saved_model.pb")  # the file stayed behind


class LocalCallGuard:
  """Records local-only file calls whose nearest non-stdlib caller is the project's code."""

  FUNCTIONS = {
      builtins: ["open"], io: ["open"],
      os: ["open", "stat", "lstat", "listdir", "scandir", "mkdir", "makedirs", "remove",
           "unlink", "rename", "replace", "rmdir", "walk"],
      os.path: ["exists", "isfile", "isdir", "getsize", "getmtime"],
      shutil: ["copy", "copy2", "copyfile", "copytree", "rmtree", "move"],
      glob: ["glob", "iglob"],
  }

  def __init__(self, guarded_roots):
    self.roots = [posixpath.normpath(str(r)) + "/" for r in guarded_roots]
    self.violations = []
    self._stdlib = sysconfig.get_paths()["stdlib"] + os.sep

  def install(self, monkeypatch):
    for module, names in self.FUNCTIONS.items():
      for name in names:
        monkeypatch.setattr(module, name, self._wrap(getattr(module, name), name))

  def _wrap(self, original, name):
    @functools.wraps(original)
    def guarded(*args, **kwargs):
      self._check(name, args[:2])
      return original(*args, **kwargs)
    return guarded

  def _check(self, name, args):
    frame = sys._getframe(2)
    while frame and (frame.f_code.co_filename.startswith(self._stdlib)
                     or frame.f_code.co_filename.startswith("<frozen")):
      frame = frame.f_back
    if not frame or not frame.f_code.co_filename.startswith(OUR_CODE):
      return
    for arg in args:
      if isinstance(arg, (str, bytes, os.PathLike)):
        path = os.fsdecode(os.fspath(arg))
        path = posixpath.normpath(posixpath.join(os.getcwd(), path)) + "/"
        if any(path.startswith(root) for root in self.roots):
          self.violations.append(f"{name}({arg!r}) from {frame.f_code.co_filename}:"
                                 f"{frame.f_lineno}")


@pytest.fixture
def guard(tmp_path, monkeypatch):
  data = tmp_path / "data"
  data.mkdir()
  shutil.copy(config_lib.BUNDLED_TRAIN, data / "train.csv")
  shutil.copy(config_lib.BUNDLED_EVAL, data / "eval.csv")
  local_guard = LocalCallGuard([tmp_path / "job", data])
  local_guard.install(monkeypatch)
  return local_guard


def test_the_guard_catches_local_calls_from_project_code_only(tmp_path, guard):
  probe = f"os.path.exists({str(tmp_path / 'job')!r}); os.listdir({str(tmp_path / 'data')!r})"
  exec(compile(probe, os.path.join(PROJECT_ROOT, "trainer", "probe.py"), "exec"), {"os": os})
  assert len(guard.violations) == 2
  exec(compile(probe, os.path.join(os.path.dirname(tf.__file__), "probe.py"), "exec"), {"os": os})
  assert len(guard.violations) == 2


def test_training_and_export_touch_data_and_job_paths_only_through_gfile(tmp_path, guard):
  config = small_config(tmp_path / "job", train_steps=30, save_checkpoints_steps=30,
                        train_files=str(tmp_path / "data" / "train.csv"),
                        eval_files=str(tmp_path / "data" / "eval.csv"))
  result = pipeline.run(config)
  assert os.path.isdir(result.export_dir)
  assert guard.violations == []
  assert np.isfinite(result.train.eval_report["accuracy"])
