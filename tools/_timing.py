"""Repeated timing for the benchmarks: the times of `repeat` calls of a function, and their median, in ms."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def times_ms(fn: Callable[[], object], repeat: int, clock: Callable[[], float] = time.perf_counter) -> list[float]:
    """Milliseconds of each of `repeat` calls of `fn`, by `clock` (wall time by default; `time.process_time`: CPU)."""
    times = []
    for _ in range(repeat):
        start = clock()
        fn()
        times.append((clock() - start) * 1e3)
    return times


def median_ms(fn: Callable[[], object], repeat: int, clock: Callable[[], float] = time.perf_counter) -> float:
    """Median milliseconds of `repeat` calls of `fn` (unrounded; callers round to the precision they report)."""
    return statistics.median(times_ms(fn, repeat, clock))
