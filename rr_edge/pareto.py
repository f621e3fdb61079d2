"""Pareto front over (latency, energy) — exact, and fast on plan tables with row + column structure. Pure.

`pareto_indices` / `sweep` return the mutually non-dominated points (minimising both coordinates), sorted by
latency, one point per distinct (latency, energy). Values that differ by at most TIE_TOLERANCE times the largest of
their kind from the next one are equal (`tolerant_ranks`): plans that cost the same, summed in another order, differ
in their last bits, and that noise must not decide between them (nor keep one that an equal one dominates).

`separable_candidates` handles a whole plan table whose cells are bounded below by ``row[r] + col[j]``: it drops,
exactly, the rows, columns and cells that a front of real plans strictly dominates, so that only a few thousand cells
of a 1,000-block model reach the sort-and-sweep.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

TIE_TOLERANCE = 1e-12  # relative to the largest finite value of a coordinate among the points compared


def pareto_indices(
    latency: np.ndarray, energy: np.ndarray, tiebreak: Callable[[np.ndarray], np.ndarray] | None = None
) -> np.ndarray:
    """Flat indices of the non-dominated finite points over (latency, energy), by increasing latency.

    Equal points are kept once: the one with the smallest ``tiebreak(flat indices)`` (e.g. offloaded blocks), then
    the lowest index. Arrays of any shape are flattened; non-finite points are ignored.
    """
    fl = np.asarray(latency, dtype=np.float64).ravel()
    fe = np.asarray(energy, dtype=np.float64).ravel()
    cand = np.flatnonzero(np.isfinite(fl) & np.isfinite(fe))
    tie = np.zeros(cand.size) if tiebreak is None else np.asarray(tiebreak(cand))
    return cand[sweep(fl[cand], fe[cand], tie, cand)]


def sweep(lat: np.ndarray, en: np.ndarray, tie: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Positions of the non-dominated points of small 1-D arrays, by increasing latency (exact sort and sweep).

    Equal points (`TIE_TOLERANCE`) are kept once: the smallest ``tie``, then the smallest ``ids``.
    """
    lat, en = tolerant_ranks(lat), tolerant_ranks(en)
    order = np.lexsort((ids, tie, en, lat))
    e = en[order]
    best_before = np.concatenate(([np.inf], np.minimum.accumulate(e)[:-1])) if e.size else e
    return order[e < best_before]


def tolerant_ranks(v: np.ndarray) -> np.ndarray:
    """The rank of each value among the distinct values of v, where sorted neighbours at most TIE_TOLERANCE x the
    largest finite magnitude apart count as one value (so do all infinities of one sign): equal ranks, equal
    values, wherever they fall (rounding to a grid would part two values one bit apart across a grid line)."""
    v = np.asarray(v, dtype=np.float64)
    finite = np.isfinite(v)
    tol = TIE_TOLERANCE * float(np.abs(v[finite]).max()) if finite.any() else 0.0
    order = np.argsort(v, kind="stable")
    s = v[order]
    with np.errstate(invalid="ignore"):  # inf - inf
        same = (np.diff(s) <= tol) | (s[1:] == s[:-1])
    ranks = np.empty(v.size, dtype=np.int64)
    ranks[order] = np.cumsum(np.concatenate(([0], ~same)))[: v.size]
    return ranks


def _suffix_argmin(v: np.ndarray) -> np.ndarray:
    """k -> argmin of v[k:] (any of the equal minima)."""
    rev = v[::-1]
    run = np.minimum.accumulate(rev)
    pos = np.maximum.accumulate(np.where(rev == run, np.arange(v.size), 0))
    return (v.size - 1 - pos)[::-1]


Exact = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def separable_candidates(
    row_l: np.ndarray,
    col_l: np.ndarray,
    row_e: np.ndarray,
    col_e: np.ndarray,
    exact: Exact,
    extra_l: np.ndarray,
    extra_e: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Cells (r, j), j >= r, that may be non-dominated, for a table bounded below by (row_l[r] + col_l[j],
    row_e[r] + col_e[j]) — the exact values when the table is separable. ``exact(r, j)`` gives true cell values.

    O(N) bounds: the best latency and the best energy of row r lie over the suffix j >= r, those of column j over
    the prefix r <= j. The cells reaching those optima (true values) and the ``extra`` points (other valid plans)
    seed a front; rows and columns whose optimistic corner it strictly dominates are dropped whole, then each cell
    of the surviving rows x columns is tested, by its bound, against the front's staircase. Only dominated cells
    are dropped, so the result contains the whole front.
    """
    R = row_l.size
    rows_all = np.arange(R)
    jl, je = _suffix_argmin(col_l)[:R], _suffix_argmin(col_e)[:R]
    sl1, se1 = exact(rows_all, jl)
    sl2, se2 = exact(rows_all, je)
    seed_l = np.concatenate((sl1, sl2, extra_l))
    seed_e = np.concatenate((se1, se2, extra_e))
    keep = sweep(seed_l, seed_e, np.zeros(seed_l.size), np.arange(seed_l.size))
    stair = _Staircase(seed_l[keep], seed_e[keep])
    rows = np.flatnonzero(stair.maybe_free(row_l + col_l[jl], row_e + col_e[je]))
    corner_l = col_l + np.minimum.accumulate(row_l)[: col_l.size]
    corner_e = col_e + np.minimum.accumulate(row_e)[: col_e.size]
    cols = np.flatnonzero(stair.maybe_free(corner_l, corner_e))
    sub_l = row_l[rows][:, None] + col_l[cols][None, :]
    sub_e = row_e[rows][:, None] + col_e[cols][None, :]
    ok = stair.maybe_free(sub_l, sub_e) & (cols[None, :] >= rows[:, None])
    rr, cc = np.nonzero(ok)
    return rows[rr], cols[cc]


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
        finite = front_en[np.isfinite(front_en)]
        self.slack = 2 * TIE_TOLERANCE * float(np.abs(finite).max()) if finite.size else 0.0

    def maybe_free(self, lat: np.ndarray, en: np.ndarray) -> np.ndarray:
        """False where some front point has latency <= lat and energy < en (strictly dominated, by more than the
        tie tolerance: an equal point may still win on its tie-break)."""
        b = np.subtract(lat, self.lo)
        b *= 1.0 / self.width
        np.clip(b, 0.0, self.bins, out=b)  # below the front -> cell 0 (never dominated), inf -> beyond hi
        return en <= self.stair.take(b.astype(np.int32)) + self.slack
