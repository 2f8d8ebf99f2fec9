"""Giving memory back to the system after large requests.

The server's entry point makes TensorFlow's oneDNN kernels allocate from the system allocator
(TF_ONEDNN_USE_SYSTEM_ALLOCATOR, see __main__.py), whose pool otherwise keeps what the largest
request needed. Then glibc's malloc raises its mmap threshold after a large block is freed, so the next large
blocks come from the heap, and a heap rarely shrinks: one large request (a 64 MB string, a
million short ones) left the server holding gigabytes. `configure` fixes the threshold, so
blocks of 128 KiB and more (tensors, large bodies) are mapped on their own and unmapped when
freed, as TF Serving's tcmalloc builds give them back; `release` trims what the heap can
return. Elsewhere than glibc both do nothing.
"""

import ctypes
import ctypes.util

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
