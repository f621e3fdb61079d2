"""How a device times a piece of work on the emulated testbed, and why the window MEAN is its latency.

A CFS quota is a rate limit, not a slower CPU: a run that starts with quota left runs at full host speed until the
quota of the current period (10 ms) is spent. Runs shorter than the quota (1 ms of CPU on emu-nano, 5 ms on emu-agx)
therefore often finish unthrottled, and the *median* of back-to-back runs shows the host's speed, not the device's
(measured here: mobilenet_v2's blocks summed to 12 ms by medians on emu-nano, the whole model took 90 ms). The mean
over a window of back-to-back runs spanning many periods is CPU time / quota, the emulated device's speed, for short
and long work alike. So:

    warm-up    `warmup` runs at full speed (first-run allocations, server-side session creation), untimed
    burn-in    throttled, untimed, until `burn_s` has passed (spends the head-start quota of the period)
    window     throttled; at least `min_runs` runs and `min_time_s` seconds, at most `max_runs`; mean and median
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from .config import Timing
from .throttle import CgroupSwitch

T = TypeVar("T")


def window(run: Callable[[], T], switch: CgroupSwitch, timing: Timing) -> tuple[list[float], list[T]]:
    """Per-run wall times (ms) and results of the timed window."""
    for _ in range(timing.warmup):
        run()
    times: list[float] = []
    results: list[T] = []
    with switch.throttled():
        start = time.perf_counter()
        while time.perf_counter() - start < timing.burn_s:
            run()
        start = time.perf_counter()
        while True:
            t0 = time.perf_counter()
            results.append(run())
            t1 = time.perf_counter()
            times.append((t1 - t0) * 1e3)
            if len(times) >= timing.max_runs or (len(times) >= timing.min_runs and t1 - start >= timing.min_time_s):
                break
    return times, results


def stats(times_ms: list[float]) -> dict[str, Any]:
    t = np.asarray(times_ms, dtype=np.float64)
    mean = float(t.mean())
    return {
        "mean": mean,
        "median": float(np.median(t)),
        "p10": float(np.percentile(t, 10)),
        "p90": float(np.percentile(t, 90)),
        "cv": float(t.std(ddof=1) / mean) if t.size > 1 and mean > 0 else 0.0,
        "n": int(t.size),
    }
