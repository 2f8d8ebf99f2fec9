#!/usr/bin/env bash
# Creates (or reuses) the virtual environment with a Python that TensorFlow 2.15 supports
# and installs the project with the extras asked for. Usage: tools/bootstrap.sh VENV [EXTRAS]
set -euo pipefail
venv=${1:-.venv}
extras=${2:-test}
supported='import sys; sys.exit(0 if (3, 9) <= sys.version_info[:2] <= (3, 11) else 1)'

if [ -x "$venv/bin/python" ] && ! "$venv/bin/python" -c "$supported" 2>/dev/null; then
  echo "Removing $venv: its Python is not 3.9-3.11." >&2
  rm -rf "$venv"
fi
if [ ! -x "$venv/bin/python" ]; then
  python=""
  for candidate in "${PYTHON:-}" python3.11 python3.10 python3.9 python3 python; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c "$supported" 2>/dev/null; then
      python=$candidate
      break
    fi
  done
  if [ -z "$python" ]; then
    echo "No Python 3.9, 3.10 or 3.11 found (TensorFlow 2.15, the last release with" >&2
    echo "tf.estimator, needs one). Install one, or point PYTHON at it: PYTHON=/path/to/python3.11 make ..." >&2
    exit 1
  fi
  echo "Creating $venv with $("$python" --version 2>&1)"
  "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -e ".[$extras]"
