"""Pareto front over (latency, energy) of many points — exact, with a cheap pre-filter for plan tables. Pure.

`pareto_indices` returns the mutually non-dominated points (minimising both coordinates), sorted by latency, one
point per distinct (latency, energy). For a 2-D plan table it first drops whole rows and columns that a seed front
strictly dominates, so that only a few thousand cells reach the exact sort-and-sweep.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def pareto_indices(
    latency: np.ndarray, energy: np.ndarray, tiebreak: Callable[[np.ndarray], np.ndarray] | None = None
) -> np.ndarray:
    """Flat indices of the non-dominated finite points over (latency, energy), by increasing latency.

    Equal points are kept once: the one with the smallest ``tiebreak(flat indices)`` (e.g. offloaded blocks), then
    the lowest index. Arrays may be 2-D (rows then seed a cheap exact pre-filter); +inf marks an invalid point.
    """
    lat = np.asarray(latency, dtype=np.float64)
    en = np.asarray(energy, dtype=np.float64)
    cand = _prefilter(lat, en)
    fl, fe = lat.ravel(), en.ravel()
    tie = np.zeros(cand.size) if tiebreak is None else np.asarray(tiebreak(cand))
    order = cand[np.lexsort((cand, tie, fe[cand], fl[cand]))]
    e = fe[order]
    best_before = np.concatenate(([np.inf], np.minimum.accumulate(e)[:-1])) if e.size else e
    return order[e < best_before]


def _prefilter(lat: np.ndarray, en: np.ndarray) -> np.ndarray:
    """Flat indices of finite points not provably dominated (exact: only strictly dominated points are dropped).

    For a 2-D table: the row minima (of latency and of energy) seed a front; a row (column) whose
    corner (min latency, min energy) that front strictly dominates is dominated in full and dropped; the cells of
    the surviving rows x columns are then tested one by one against the front's staircase.
    """
    fl, fe = lat.ravel(), en.ravel()
    if lat.ndim != 2 or fl.size <= 4096:
        return np.flatnonzero(np.isfinite(fe) & np.isfinite(fl))
    R, C = lat.shape
    ar = np.arange(R)
    rl, re = lat.argmin(axis=1), en.argmin(axis=1)  # (argmin along axis 0 is slow in numpy: rows only)
    seeds = np.concatenate((ar * C + rl, ar * C + re))
    seeds = np.unique(seeds[np.isfinite(fl[seeds]) & np.isfinite(fe[seeds])])
    front = seeds[pareto_indices(fl[seeds], fe[seeds])]
    stair = _Staircase(fl[front], fe[front])
    rows = np.flatnonzero(stair.maybe_free(lat[ar, rl], en[ar, re]))
    cols = np.flatnonzero(stair.maybe_free(lat.min(axis=0), en.min(axis=0)))
    sub_l, sub_e = lat[np.ix_(rows, cols)], en[np.ix_(rows, cols)]
    keep = stair.maybe_free(sub_l, sub_e) & np.isfinite(sub_l) & np.isfinite(sub_e)
    rr, cc = np.nonzero(keep)
    return np.union1d(rows[rr] * C + cols[cc], front)


class _Staircase:
    """Lower envelope of a front (latency asc, energy desc) over latency bins, one bin conservative."""

    def __init__(self, front_lat: np.ndarray, front_en: np.ndarray, bins: int = 4096) -> None:
        self.lo, hi = float(front_lat[0]), float(front_lat[-1])
        self.bins = bins
        self.width = ((hi - self.lo) or 1.0) * (1.0 + 1e-9) / bins  # hi maps strictly below the last cell
        edges = self.lo + self.width * np.arange(bins)
        pos = np.searchsorted(front_lat, edges, side="right") - 1
        stair = np.where(pos >= 0, front_en[np.maximum(pos, 0)], np.inf)
        # cell b is tested against edge b - 1 (never above the point's latency); the last cell: beyond hi
        self.stair = np.concatenate(([np.inf], stair[:-1], [front_en[-1]]))

    def maybe_free(self, lat: np.ndarray, en: np.ndarray) -> np.ndarray:
        """False where some front point has latency <= lat and energy < en (strictly dominated)."""
        b = np.subtract(lat, self.lo)
        b *= 1.0 / self.width
        np.clip(b, 0.0, self.bins, out=b)  # below the front -> cell 0 (never dominated), inf -> beyond hi
        return en <= self.stair.take(b.astype(np.int32))
