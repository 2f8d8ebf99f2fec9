"""Writes artifacts all-or-nothing through `tf.io.gfile`, so `gs://` paths work too.

Every stage stages its output next to the final path and renames it into place only
when complete: a crash or a bad input never leaves a half-written artifact, and never
touches one that was already there.
"""

import contextlib
import posixpath
import uuid

import tensorflow as tf


def join(*parts: str) -> str:
  """Joins path parts with '/', which both local paths and URLs such as gs:// use."""
  return posixpath.join(*parts)


def is_non_empty_dir(path: str) -> bool:
  return tf.io.gfile.isdir(path) and bool(tf.io.gfile.listdir(path))


@contextlib.contextmanager
def staging_dir(final_path: str, overwrite: bool = False):
  """Yields a fresh sibling directory that becomes `final_path` if the block succeeds."""
  final_path = final_path.rstrip("/")
  if is_non_empty_dir(final_path) and not overwrite:
    raise FileExistsError(f"{final_path} already exists and is not empty")
  parent, name = posixpath.split(final_path)
  tf.io.gfile.makedirs(parent or ".")
  staging = join(parent, f".{name}.partial-{uuid.uuid4().hex[:8]}")
  tf.io.gfile.makedirs(staging)
  try:
    yield staging
  except BaseException:
    tf.io.gfile.rmtree(staging)
    raise
  if tf.io.gfile.exists(final_path):
    tf.io.gfile.rmtree(final_path)
  tf.io.gfile.rename(staging, final_path)


@contextlib.contextmanager
def staging_file(path: str):
  """Yields a temporary sibling path that becomes `path` if the block succeeds; on failure
  it is removed and `path` stays as it was."""
  parent = posixpath.dirname(path)
  if parent:
    tf.io.gfile.makedirs(parent)
  staging = f"{path}.partial-{uuid.uuid4().hex[:8]}"
  try:
    yield staging
    tf.io.gfile.rename(staging, path, overwrite=True)
  except BaseException:
    if tf.io.gfile.exists(staging):
      tf.io.gfile.remove(staging)
    raise


def write_atomic(path: str, content) -> None:
  """Writes `content` (str or bytes) to `path` through a temporary sibling and a rename."""
  with staging_file(path) as staging:
    with tf.io.gfile.GFile(staging, "wb" if isinstance(content, bytes) else "w") as f:
      f.write(content)


def copy_tree(source: str, target: str) -> None:
  """Copies every file below `source` to the same relative path below `target`."""
  source = source.rstrip("/")
  for parent, _, files in tf.io.gfile.walk(source):
    relative = parent[len(source):].strip("/")
    destination = join(target, relative) if relative else target
    tf.io.gfile.makedirs(destination)
    for name in files:
      tf.io.gfile.copy(join(parent, name), join(destination, name), overwrite=True)
