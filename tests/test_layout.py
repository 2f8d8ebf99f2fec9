"""The shape of the code: layers import only downward, and no product module or class outgrows
one idea."""

import ast
import os
import subprocess
import sys
from importlib import metadata

import pytest
from packaging import requirements, utils

from tests.helpers import PROJECT_ROOT

PACKAGES = ("trainer", "optimize", "serving", "lineage", "export")
MAX_MODULE_LINES = 500
MAX_CLASS_METHODS = 15


def test_the_import_linter_contracts_in_pyproject_hold():
  lint_imports = os.path.join(os.path.dirname(sys.executable), "lint-imports")
  completed = subprocess.run([lint_imports, "--no-cache"], capture_output=True, text=True,
                             cwd=PROJECT_ROOT, timeout=300)
  assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-2000:]
  assert "broken" not in completed.stdout.split("Contracts:")[-1].replace("0 broken", "")


def test_no_product_module_is_over_500_lines():
  too_long = {}
  for package in PACKAGES:
    for parent, _, names in os.walk(os.path.join(PROJECT_ROOT, package)):
      for name in names:
        if name.endswith(".py"):
          path = os.path.join(parent, name)
          with open(path) as f:
            lines = sum(1 for _ in f)
          if lines > MAX_MODULE_LINES:
            too_long[os.path.relpath(path, PROJECT_ROOT)] = lines
  assert not too_long, too_long


def _product_modules():
  for package in PACKAGES:
    for parent, _, names in os.walk(os.path.join(PROJECT_ROOT, package)):
      for name in names:
        if name.endswith(".py"):
          yield os.path.join(parent, name)


def classes_over_the_method_limit(source: str):
  """{class name: methods} of the classes in `source` defining more than MAX_CLASS_METHODS."""
  over = {}
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.ClassDef):
      methods = sum(isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))
                    for item in node.body)
      if methods > MAX_CLASS_METHODS:
        over[node.name] = methods
  return over


def test_the_class_check_counts_every_method_a_class_defines():
  methods = "".join(f"  def m{i}(self):\n    pass\n" for i in range(MAX_CLASS_METHODS))
  assert classes_over_the_method_limit(f"class Fits:\n{methods}") == {}
  one_more = methods + "  async def last(self):\n    pass\n"
  assert classes_over_the_method_limit(f"class Big:\n{one_more}") == {
      "Big": MAX_CLASS_METHODS + 1}


def test_no_product_class_has_more_than_15_methods():
  too_big = {}
  for path in _product_modules():
    with open(path) as f:
      for name, methods in classes_over_the_method_limit(f.read()).items():
        too_big[f"{os.path.relpath(path, PROJECT_ROOT)}:{name}"] = methods
  assert not too_big, too_big


def test_importing_the_command_modules_changes_nothing_in_the_environment():
  probe = ("import os, sys; before = dict(os.environ); "
           "import trainer.task, optimize.__main__, lineage.__main__, "
           "serving.model_server.__main__, serving.smoke_test.__main__; "
           "import trainer.command, optimize.command, serving.model_server.command; "
           "changed = {k for k in set(before) | set(os.environ) "
           "           if before.get(k) != os.environ.get(k)}; "
           "print(sorted(changed)); sys.exit(1 if changed else 0)")
  env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
  env["PYTHONPATH"] = PROJECT_ROOT
  completed = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                             cwd=PROJECT_ROOT, env=env, timeout=300)
  assert completed.returncode == 0, completed.stdout + completed.stderr[-2000:]


# Imported only where the platform provides it, behind an ImportError check: Vertex AI's
# training containers install cloudml-hypertune (trainer/cloud.py).
PLATFORM_PROVIDED_MODULES = {"hypertune"}


def _third_party_imports(package):
  """Top-level module names imported anywhere in `package`, minus the standard library."""
  names = set()
  for parent, _, files in os.walk(os.path.join(PROJECT_ROOT, package)):
    for file_name in files:
      if not file_name.endswith(".py"):
        continue
      with open(os.path.join(parent, file_name)) as f:
        tree = ast.parse(f.read())
      for node in ast.walk(tree):
        if isinstance(node, ast.Import):
          names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
          names.add(node.module.split(".")[0])
  return names - set(sys.stdlib_module_names) - set(PACKAGES) - PLATFORM_PROVIDED_MODULES


def _installed_by(requirement_texts):
  """Every distribution a fresh `pip install` of these requirements brings, transitively."""
  wanted = [requirements.Requirement(text) for text in requirement_texts]
  seen = set()
  while wanted:
    requirement = wanted.pop()
    name = utils.canonicalize_name(requirement.name)
    if name in seen or (requirement.marker and not requirement.marker.evaluate({"extra": ""})):
      continue
    seen.add(name)
    wanted.extend(requirements.Requirement(text) for text in metadata.requires(name) or ())
  return seen


def test_every_module_the_package_imports_is_installed_by_its_declared_dependencies():
  # CI runs Python 3.11; tomllib and sys.stdlib_module_names are not in 3.9.
  tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11")
  with open(os.path.join(PROJECT_ROOT, "pyproject.toml"), "rb") as f:
    installed = _installed_by(tomllib.load(f)["project"]["dependencies"])
  providers = metadata.packages_distributions()
  undeclared = {}
  for package in PACKAGES:
    for module in _third_party_imports(package):
      distributions = {utils.canonicalize_name(d) for d in providers.get(module, ())}
      if not distributions & installed:
        undeclared[module] = sorted(distributions) or "not installed here either"
  assert not undeclared, f"imported but not installed by pyproject's dependencies: {undeclared}"
