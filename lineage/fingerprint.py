"""Content fingerprints through tf.io.gfile, so gs:// data and models are hashed in place."""

import dataclasses
import hashlib
import posixpath
from typing import List, Sequence, Union

import tensorflow as tf

_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class DirDigest:
  fingerprint: str
  size_bytes: int
  files: int


def match_files(patterns: Union[str, Sequence[str]]) -> List[str]:
  """Every file that comma-separated `patterns` (paths or globs) name, sorted, each once."""
  if isinstance(patterns, str):
    patterns = patterns.split(",")
  patterns = [p.strip() for p in patterns if p.strip()]
  if not patterns:
    raise ValueError("no data files given to fingerprint")
  files = set()
  for pattern in patterns:
    matched = [f for f in tf.io.gfile.glob(pattern) if not tf.io.gfile.isdir(f)]
    if not matched:
      raise FileNotFoundError(f"no file matches {pattern!r}")
    files.update(matched)
  return sorted(files)


def _file_digest(path: str) -> bytes:
  digest = hashlib.sha256()
  with tf.io.gfile.GFile(path, "rb") as f:
    while True:
      chunk = f.read(_CHUNK)
      if not chunk:
        return digest.digest()
      digest.update(chunk)


def fingerprint_files(patterns: Union[str, Sequence[str]]) -> str:
  """sha256 over the contents of the matched files in path order.

  Names are left out: the same data copied elsewhere (say, to gs://) keeps its fingerprint.
  """
  digest = hashlib.sha256()
  for path in match_files(patterns):
    digest.update(_file_digest(path))
  return f"sha256:{digest.hexdigest()}"


def fingerprint_dir(path: str) -> DirDigest:
  """sha256 over every file's relative path and content: a SavedModel's layout matters."""
  path = path.rstrip("/")
  if not tf.io.gfile.isdir(path):
    raise FileNotFoundError(f"cannot fingerprint {path}: not a directory")
  entries = []
  for parent, _, names in tf.io.gfile.walk(path):
    for name in names:
      full = posixpath.join(parent, name)
      entries.append((full[len(path) + 1:], full))
  if not entries:
    raise ValueError(f"cannot fingerprint {path}: the directory holds no files")
  digest = hashlib.sha256()
  size = 0
  for relative, full in sorted(entries):
    digest.update(relative.encode() + b"\0" + _file_digest(full))
    size += tf.io.gfile.stat(full).length
  return DirDigest(f"sha256:{digest.hexdigest()}", size, len(entries))
