"""glibc malloc settings for processes that move big messages (the `rr-server` and `rr-edge` entry points)."""

from __future__ import annotations

import ctypes
import logging
import os
import platform
from collections.abc import Mapping
from typing import Any

__all__ = ["MALLOC_KEEP_BYTES", "MALLOC_TUNING_ENV", "release_free_memory", "tune_allocator"]

log = logging.getLogger(__name__)

MALLOC_TUNING_ENV = "RR_MALLOC_TUNING"  # "0" (or off/false/no) leaves glibc's allocator as it is
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8  # glibc <malloc.h> mallopt parameters
MALLOC_KEEP_BYTES = 1 << 30  # allocations below this come from the heap; freed heap memory up to this is kept


def tune_allocator(environ: Mapping[str, str] = os.environ) -> bool:
    """Make glibc's malloc reuse the memory of big messages instead of mapping fresh pages for each one.

    Every ModelInfer of an N-byte tensor allocates several N-byte buffers per process (grpcio copies a message into
    and out of its own slices; framing joins the request or response). By default glibc serves allocations above
    its mmap threshold (dynamic, at most 32 MB) with a fresh `mmap` and unmaps them on free, and each thread but the
    main one allocates from its own arena, whose heaps cannot hold a block above 64 MB, so those are mmapped too:
    every call then page-faults and zeroes every page again (half of the client's CPU time at 16 MB in a perf
    profile; docs/performance.md, "Server and transport"). This sets, process-wide: the mmap threshold and the trim
    threshold to `MALLOC_KEEP_BYTES` (1 GiB: big buffers come from the heap, and freed heap memory stays for the
    next call) and one arena for all threads (so a server thread's 64 MB message is a heap block too).

    Cost: the process keeps its peak heap (up to 1 GiB free) instead of returning it to the system after a burst
    of big messages, and threads share one malloc lock; a process whose work leaves much memory free at known
    points (the server's refits) gives it back there with `release_free_memory`. Called first thing by the
    `rr-server` and `rr-edge` entry points; not by the library (an embedding application decides for its own
    process). Set `RR_MALLOC_TUNING=0` to opt out. Returns True when the setting was applied (glibc only; other C
    libraries are left alone).
    """
    if environ.get(MALLOC_TUNING_ENV, "1").strip().lower() in ("0", "off", "false", "no"):
        return False
    mallopt = _glibc("mallopt", [ctypes.c_int, ctypes.c_int])
    if mallopt is None:
        return False
    settings = ((_M_MMAP_THRESHOLD, MALLOC_KEEP_BYTES), (_M_TRIM_THRESHOLD, MALLOC_KEEP_BYTES), (_M_ARENA_MAX, 1))
    applied = all([mallopt(param, value) == 1 for param, value in settings])
    log.debug("malloc tuning for large messages %s", "applied" if applied else "partly refused by glibc")
    return applied


def release_free_memory() -> bool:
    """Return the heap memory that is free to the system (glibc `malloc_trim(0)`, every arena), e.g. after a big
    transient computation under `tune_allocator`, which otherwise keeps it. A few ms per 100 MB; the next big
    message faults its pages in again. Returns False where there is no such call (other C libraries)."""
    malloc_trim = _glibc("malloc_trim", [ctypes.c_size_t])
    if malloc_trim is None:
        return False
    malloc_trim(0)
    return True


def _glibc(name: str, argtypes: list[type]) -> Any:
    """glibc's function `name` (returning int), or None under another C library or where it lacks one."""
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        function = getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None
    function.argtypes, function.restype = argtypes, ctypes.c_int
    return function
