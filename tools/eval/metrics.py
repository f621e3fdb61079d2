"""Pure numbers of the evaluation (no I/O): gains against a baseline, prediction errors, summaries."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np


def speedup(baseline_ms: float, ours_ms: float) -> float:
    """How many times faster than the baseline (> 1: we are faster)."""
    if ours_ms <= 0 or baseline_ms <= 0:
        raise ValueError("latencies must be positive")
    return baseline_ms / ours_ms


def energy_gain_pct(baseline_mJ: float, ours_mJ: float) -> float:
    """Percent less energy than the baseline (negative: we spend more)."""
    if baseline_mJ <= 0:
        raise ValueError("baseline energy must be positive")
    return 100.0 * (1.0 - ours_mJ / baseline_mJ)


def abs_pct_error(predicted: float, measured: float) -> float:
    """|predicted - measured| / measured, in percent."""
    if measured <= 0:
        raise ValueError("measured value must be positive")
    return 100.0 * abs(predicted - measured) / measured


def rmse(predicted: Sequence[float] | np.ndarray, truth: Sequence[float] | np.ndarray) -> float:
    p, t = np.asarray(predicted, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    if p.shape != t.shape or p.size == 0:
        raise ValueError("rmse needs two non-empty arrays of the same shape")
    return float(np.sqrt(np.mean((p - t) ** 2)))


def ape(predicted: Sequence[float] | np.ndarray, truth: Sequence[float] | np.ndarray) -> np.ndarray:
    """Absolute percentage errors, elementwise."""
    p, t = np.asarray(predicted, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    return 100.0 * np.abs(p - t) / t


def median(values: Iterable[float]) -> float | None:
    v = [x for x in values if x is not None and math.isfinite(x)]
    return float(np.median(v)) if v else None


def mean(values: Iterable[float]) -> float | None:
    v = [x for x in values if x is not None and math.isfinite(x)]
    return float(np.mean(v)) if v else None


def geomean(values: Iterable[float]) -> float | None:
    v = [x for x in values if x is not None and math.isfinite(x) and x > 0]
    return float(np.exp(np.mean(np.log(v)))) if v else None


QUADRANTS = ("green", "orange", "red", "tie")
TIE_TOLERANCE = 1e-9  # both plans ran the same split with the same weights: one measurement, so exactly 1x and 0%


def quadrant(speedup_x: float, gain_pct: float) -> str:
    """Fig. 3's colours: green = faster and less energy, orange = one of the two, red = neither; tie = neither faster
    nor slower, neither leaner nor hungrier (the same plan as the baseline: not a loss)."""
    if abs(speedup_x - 1.0) <= TIE_TOLERANCE and abs(gain_pct) <= TIE_TOLERANCE:
        return "tie"
    faster, leaner = speedup_x > 1.0, gain_pct > 0.0
    return "green" if faster and leaner else "orange" if faster or leaner else "red"


def converged_fill(fills: Sequence[float], values: Sequence[float], tolerance: float = 0.1) -> float | None:
    """Smallest fill from which every later value stays within `tolerance` (relative) of the last one."""
    if not fills or len(fills) != len(values):
        return None
    final = values[-1]
    if final is None or not math.isfinite(final):
        return None
    for k, f in enumerate(fills):
        rest = values[k:]
        if all(v is not None and abs(v - final) <= tolerance * abs(final) for v in rest):
            return float(f)
    return None
