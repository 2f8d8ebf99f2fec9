"""Giving memory back to the system after large requests, and keeping Python's garbage
collector off the loaded models.

The server's entry point makes TensorFlow's oneDNN kernels allocate from the system allocator
(TF_ONEDNN_USE_SYSTEM_ALLOCATOR, see __main__.py), whose pool otherwise keeps what the largest
request needed. Then glibc's malloc raises its mmap threshold after a large block is freed, so the next large
blocks come from the heap, and a heap rarely shrinks: one large request (a 64 MB string, a
million short ones) left the server holding gigabytes. `configure` fixes the threshold, so
blocks of 128 KiB and more (tensors, large bodies) are mapped on their own and unmapped when
freed, as TF Serving's tcmalloc builds give them back; `release` trims what the heap can
return. Elsewhere than glibc both do nothing.

A loaded model is some 300,000 Python objects (its graph), and a full garbage collection
walks them all: 230 ms for the Banking77 model. Requests make enough short-lived garbage to
set one off every few seconds under load, which stalled every request in flight (p99 180 ms
against 13 ms at 32 connections). `freeze_loaded` moves what is alive into the collector's
permanent generation after versions load or unload, so collections walk only what requests
make.
"""

import ctypes
import ctypes.util
import gc

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_BYTES = 128 * 1024
_TRIM_THRESHOLD_BYTES = 8 * 1024 * 1024


def _libc():
  name = ctypes.util.find_library("c")
  if not name:
    return None
  try:
    libc = ctypes.CDLL(name)
  except OSError:
    return None
  return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


_LIBC = _libc()


def configure() -> None:
  """Called once by the server at start-up, before the models load."""
  if _LIBC is not None:
    _LIBC.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)
    _LIBC.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES)


def release() -> None:
  """Returns the heap's free memory to the system (after a large request)."""
  if _LIBC is not None:
    _LIBC.malloc_trim(0)


def freeze_loaded(unloaded: bool) -> None:
  """After versions loaded (or `unloaded`): keeps everything alive out of later collections;
  after an unload, first frees what the gone versions left in reference cycles (one full
  collection)."""
  if unloaded:
    gc.unfreeze()
    gc.collect()
  gc.freeze()
