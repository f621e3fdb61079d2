"""Repeated timing for the benchmarks: the times of `repeat` calls of a function, and their median, in ms; and the
median run of an ONNX model in ONNX Runtime on random inputs."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from rr_edge.session import OrtSettings, random_feeds


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


def session_median_ms(model: bytes, settings: OrtSettings, repeat: int, warmup: int = 1) -> float:
    """Median ms of `repeat` runs of `model` in ONNX Runtime with `settings`, on random inputs, after `warmup` runs."""
    session = settings.create_session(model)
    feeds = random_feeds(session)
    for _ in range(warmup):
        session.run(None, feeds)
    return median_ms(lambda: session.run(None, feeds), repeat)
