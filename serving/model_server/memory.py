"""The server's memory: its allocator, giving memory back to the system after large requests,
and keeping Python's garbage collector off the loaded models.

TF Serving's binary is built with tcmalloc. `python -m serving.model_server` runs with it too
when the system has it (Debian: libtcmalloc-minimal4), re-executing itself with LD_PRELOAD
before anything is loaded (`tcmalloc_environment`); SERVING_MALLOC=system keeps the system's
malloc. A one-row session run costs less under tcmalloc (benchmarks/serving_latency.py reports
`in_process_tcmalloc` beside `in_process`, and the servers' figures with the allocator they
ran on).

The server's entry point makes TensorFlow's oneDNN kernels allocate from the process's
allocator (TF_ONEDNN_USE_SYSTEM_ALLOCATOR, see __main__.py), whose pool otherwise keeps what
the largest request needed. Under glibc's malloc, the mmap threshold rises after a large block
is freed, so the next large blocks come from the heap, and a heap rarely shrinks: one large
request (a long string, a million short ones) left the server holding gigabytes. `configure`
fixes the threshold, so blocks of 128 KiB and more (tensors, large bodies) are mapped on their
own and unmapped when freed; `release` trims what the heap can return, or under tcmalloc
returns its free pages (MallocExtension_ReleaseFreeMemory). Elsewhere both do nothing.

A loaded model is hundreds of thousands of Python objects (its graph), and a full garbage
collection walks them all, for far longer than a request takes. Requests make enough
short-lived garbage to set one off every few seconds under load, which stalled every request
in flight (benchmarks/serving_latency.py's tail latencies show it). `freeze_loaded` moves what
is alive into the collector's permanent generation after versions load or unload, so
collections walk only what requests make.
"""

import ctypes
import ctypes.util
import functools
import gc
from typing import Dict, Mapping, Optional

# Requests larger than this are followed by giving freed memory back to the system.
LARGE_REQUEST_BYTES = 1 << 20
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

ALLOCATOR_VARIABLE = "SERVING_MALLOC"  # "system": keep the system's malloc
_TCMALLOC_NAMES = ("tcmalloc_minimal", "tcmalloc")
# gperftools warns on stderr of every allocation above 1 GiB, which a request may make.
_LARGE_ALLOC_REPORT = ("TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD", str(1 << 40))


def tcmalloc_library() -> Optional[str]:
  """The installed tcmalloc's library name (as LD_PRELOAD takes it), or None."""
  for name in _TCMALLOC_NAMES:
    found = ctypes.util.find_library(name)
    if found:
      return found
  return None


def tcmalloc_environment(environ: Mapping[str, str]) -> Optional[Dict[str, str]]:
  """The environment to re-execute the server in so that tcmalloc is its allocator; None
  when it already is (or was asked for and could not load), when SERVING_MALLOC=system, or
  when no tcmalloc is installed."""
  preloaded = environ.get("LD_PRELOAD", "")
  if environ.get(ALLOCATOR_VARIABLE) == "system" or "tcmalloc" in preloaded:
    return None
  library = tcmalloc_library()
  if library is None:
    return None
  changed = dict(environ)
  changed["LD_PRELOAD"] = " ".join(filter(None, (library, preloaded)))
  changed.setdefault(*_LARGE_ALLOC_REPORT)
  return changed


@functools.lru_cache(maxsize=None)
def _tcmalloc_release():
  """tcmalloc's MallocExtension_ReleaseFreeMemory when tcmalloc is this process's allocator."""
  try:
    return ctypes.CDLL(None).MallocExtension_ReleaseFreeMemory
  except (AttributeError, OSError):
    return None


def allocator() -> str:
  """"tcmalloc" or "system": which malloc this process runs on."""
  return "tcmalloc" if _tcmalloc_release() is not None else "system"


def configure() -> None:
  """Called once by the server at start-up, before the models load."""
  if _LIBC is not None and _tcmalloc_release() is None:
    _LIBC.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)
    _LIBC.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES)


def release() -> None:
  """Returns the allocator's free memory to the system (after a large request)."""
  tcmalloc_release = _tcmalloc_release()
  if tcmalloc_release is not None:
    tcmalloc_release()
  elif _LIBC is not None:
    _LIBC.malloc_trim(0)


def release_after(request_bytes: int) -> None:
  """`release` after a request of `request_bytes` when it was a large one."""
  if request_bytes > LARGE_REQUEST_BYTES:
    release()


def freeze_loaded(unloaded: bool) -> None:
  """After versions loaded (or `unloaded`): keeps everything alive out of later collections;
  after an unload, first frees what the gone versions left in reference cycles (one full
  collection)."""
  if unloaded:
    gc.unfreeze()
    gc.collect()
  gc.freeze()
