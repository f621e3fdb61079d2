"""Measure plans side by side: every split's requests interleaved in rounds, so that load changing on a shared
machine hits every plan alike (timing plans one after the other measures the load drift as much as the plans).

Each round runs the splits in a new random order. In a fixed order a split always follows the same one, and what
that one leaves behind (a server kept idle while the edge ran a long slice, caches filled with other weights) counts
against this split alone, in every round; a random order spreads it over all of them.
"""

from __future__ import annotations

import random
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
    seed: int = 0,
) -> dict[Split, Measured]:
    """Run `repeat` requests per split after one warm-up each (slices uploaded and opened by the runners), one per
    split per round, in an order shuffled each round (`seed`)."""
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
        order = list(runners)
        rng = random.Random(seed)
        for _ in range(repeat):
            rng.shuffle(order)
            for s in order:
                result = runners[s].run(x)
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
