"""Measure plans side by side: every split's requests interleaved round-robin, so that load changing on a shared
machine hits every plan alike (timing plans one after the other measures the load drift as much as the plans)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from rr_edge.offload import max_abs_diff
from rr_edge.runner import Runner

Split = tuple[int, int]


@dataclass(frozen=True)
class Measured:
    """Latency (ms) of one split over the measured requests, and whether every output was right; `upload_ms`: what
    making the split's middle slice ready on the server took once, before the requests (the weight upload of
    dynamic offloading and the server's opening of the slice, or only the cache check and the opening when the
    server already had it)."""

    split: Split
    median_ms: float
    p90_ms: float
    fallback: bool
    max_abs_diff: float
    upload_ms: float = 0.0


def measure_splits(
    runner_for: Callable[[Split], Runner],
    splits: Iterable[Split],
    x: np.ndarray,
    repeat: int,
    expected: Mapping[str, np.ndarray] | None = None,
) -> dict[Split, Measured]:
    """Run `repeat` requests per split after one warm-up each (slices uploaded and opened by the runners)."""
    runners: dict[Split, Runner] = {}
    try:
        for split in dict.fromkeys(splits):  # those made are closed below, should making the next one fail
            runners[split] = runner_for(split)
        upload_ms = {s: runner.upload_ms for s, runner in runners.items()}
        times: dict[Split, list[float]] = {s: [] for s in runners}
        fallback = dict.fromkeys(runners, False)
        diff = dict.fromkeys(runners, 0.0)
        for runner in runners.values():
            runner.run(x)
        for _ in range(repeat):
            for s, runner in runners.items():
                result = runner.run(x)
                times[s].append(result.total_ms)
                fallback[s] |= result.fallback
                if expected is not None:
                    diff[s] = float(np.max([diff[s], max_abs_diff(result.outputs, expected)]))  # NaN stays NaN
    finally:
        for runner in runners.values():
            runner.close()
    return {
        s: Measured(s, float(np.median(t)), float(np.percentile(t, 90)), fallback[s], diff[s], upload_ms[s])
        for s, t in times.items()
    }
