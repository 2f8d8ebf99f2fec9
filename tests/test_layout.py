"""The shape of the code: layers import only downward, and no product module outgrows one idea."""

import os
import subprocess
import sys

from tests.helpers import PROJECT_ROOT

PACKAGES = ("trainer", "optimize", "serving", "lineage", "export")
MAX_MODULE_LINES = 500


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
