"""Numeric version directories under a TF Serving model base path.

TF Serving takes every child directory whose name is a non-negative integer as that version,
and loads it from the directory as it is named: `00000123` is version 123 (TF Serving's own
test models are laid out that way). Everything else in the base path (staging dirs, reports,
`.partial` copies) is ignored. This module is the one place that reads version numbers off
directory names, through `tf.io.gfile` so `gs://` base paths work.
"""

import re
from typing import Dict, List, Optional

import tensorflow as tf

from export import artifact_io

_VERSION_NAME = re.compile(r"[0-9]+")


def parse_version(name: str) -> Optional[int]:
  """The version a directory name stands for, or None for a name that is not a number."""
  name = name.rstrip("/")
  return int(name) if _VERSION_NAME.fullmatch(name) else None


def version_dirs(base_path: str) -> Dict[int, str]:
  """Version number -> its directory, for every numeric child directory of `base_path`.

  Two names for one number (`7` and `007`) keep the one that sorts last, as TF Serving's
  default (latest) version policy does, whatever order the file system lists them in. A
  missing base path has none.
  """
  if not tf.io.gfile.isdir(base_path):
    return {}
  found: Dict[int, str] = {}
  for name in sorted(n.rstrip("/") for n in tf.io.gfile.listdir(base_path)):
    version = parse_version(name)
    path = artifact_io.join(base_path, name)
    if version is not None and tf.io.gfile.isdir(path):
      found[version] = path
  return found


def versions(base_path: str) -> List[int]:
  """The version numbers under `base_path`, lowest first."""
  return sorted(version_dirs(base_path))


def latest_version_dir(base_path: str) -> Optional[str]:
  """The directory of the highest version (the one TF Serving serves by default), or None."""
  found = version_dirs(base_path)
  return found[max(found)] if found else None


def next_version(base_path: str, at_least: int = 1) -> int:
  """A version above every existing one and not below `at_least`: TF Serving serves the
  highest number, so a new version must never reuse or go below an old one."""
  return max([at_least] + [v + 1 for v in version_dirs(base_path)])
