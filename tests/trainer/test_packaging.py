"""The sdist and wheel a training job installs: buildable, complete, and free of data/."""

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest

from tests.helpers import PROJECT_ROOT

# Trains a model or starts processes: the slow tier.
pytestmark = pytest.mark.slow

_SOURCES = ("pyproject.toml", "setup.py", "README.md")
_PACKAGES = ("trainer", "export", "optimize", "serving", "lineage")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  """Builds from a copy, so the source tree gets no build/ or egg-info."""
  source = tmp_path_factory.mktemp("source")
  for name in _SOURCES:
    shutil.copy(os.path.join(PROJECT_ROOT, name), source / name)
  for package in _PACKAGES:
    shutil.copytree(os.path.join(PROJECT_ROOT, package), source / package,
                    ignore=shutil.ignore_patterns("__pycache__"))
  dist = tmp_path_factory.mktemp("dist")
  completed = subprocess.run(
      [sys.executable, "-m", "build", "--sdist", "--wheel", "--no-isolation",
       "--outdir", str(dist), str(source)],
      capture_output=True, text=True, timeout=300)
  assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
  (wheel,) = dist.glob("*.whl")
  (sdist,) = dist.glob("*.tar.gz")
  return wheel, sdist


def test_wheel_holds_the_trainer_and_what_it_imports_but_no_data(built):
  wheel, _ = built
  names = zipfile.ZipFile(wheel).namelist()
  for module in ("trainer/task.py", "trainer/local_cluster.py", "trainer/cloud.py",
                 "export/servable.py", "export/artifact_io.py"):
    assert module in names
  assert not [n for n in names if n.startswith(("data/", "tests/"))]


def test_sdist_builds_with_setup_py_as_gcloud_package_path_does(built):
  _, sdist = built
  names = tarfile.open(sdist).getnames()
  root = names[0].split("/")[0]
  for name in ("setup.py", "pyproject.toml", "trainer/task.py", "export/servable.py"):
    assert f"{root}/{name}" in names


def test_installed_trainer_imports_without_data_and_asks_for_it_clearly(built, tmp_path):
  wheel, _ = built
  site = tmp_path / "site"
  zipfile.ZipFile(wheel).extractall(site)
  # PYTHONPATH comes before the editable install of the source tree in this venv.
  env = dict(os.environ, PYTHONPATH=str(site))
  imported = subprocess.run(
      [sys.executable, "-c", "import trainer.task, trainer.local_cluster; "
                             "print(trainer.task.__file__)"],
      capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
  assert imported.returncode == 0, imported.stderr[-3000:]
  assert imported.stdout.strip().startswith(str(site))

  completed = subprocess.run(
      [sys.executable, "-m", "trainer.task", f"--job-dir={tmp_path / 'job'}"],
      capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
  assert completed.returncode != 0
  assert "--train_files defaults to the data set bundled with the source tree" in completed.stderr
  assert "does not ship data/. Pass --train_files explicitly" in completed.stderr
  assert not (tmp_path / "job").exists()
