"""Allocators that give freed memory back, so a long job's resident memory follows what it holds now rather
than the most it ever held.

The job reads and writes Parquet a row group at a time and drops what it read; with Arrow's default pool
(mimalloc or jemalloc keep freed pages for reuse) and glibc's defaults (many per-thread arenas, a trim
threshold that grows), those freed buffers stayed resident: a +1% rerun of a 300k-row output peaked at 269 MB
against 231 MB with the settings below (measured with /proc/self/statm; `python -m bench --scenario scale`
has the table). The calls, not the allocator, bound this job's speed. A user's own
ARROW_DEFAULT_MEMORY_POOL or MALLOC_* settings win.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import threading

__all__ = ["return_freed_memory"]

_LOGGER = logging.getLogger(__name__)
_lock = threading.Lock()
_done = False
# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
_GLIBC_SETTINGS = (("MALLOC_TRIM_THRESHOLD_", _M_TRIM_THRESHOLD, 1 << 20),   # give back a free top over 1 MiB
                   ("MALLOC_MMAP_THRESHOLD_", _M_MMAP_THRESHOLD, 256 << 10),  # blocks from 256 KiB: own pages
                   ("MALLOC_ARENA_MAX", _M_ARENA_MAX, 2))                     # not one heap a thread


def return_freed_memory() -> None:
    """Once per process: Arrow allocates from the system allocator, and glibc (where it is the C library)
    returns large and trailing free blocks. Safe to call anywhere, any number of times."""
    global _done
    with _lock:
        if _done:
            return
        _done = True
    if os.environ.get("ARROW_DEFAULT_MEMORY_POOL", "system") == "system":
        # pyarrow's own allocations follow; Arrow's C++ default is chosen at import (see pipeline/__init__.py).
        try:
            import pyarrow as pa

            pa.set_memory_pool(pa.system_memory_pool())
        except Exception as exc:  # an Arrow built without it: keep its default
            _LOGGER.debug("Arrow's memory pool left as it is: %s", exc)
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl, Windows): nothing to tune
        return
    for env, parameter, value in _GLIBC_SETTINGS:
        if env not in os.environ:
            mallopt(ctypes.c_int(parameter), ctypes.c_int(value))
