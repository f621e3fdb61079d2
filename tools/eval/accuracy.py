"""Fig. 4: prediction error against the fraction of profiled blocks, on the complete ground-truth matrix.

For each fill f and seed, every node (row) reveals ceil(f x columns) of its blocks, chosen at random, as if it had
profiled that sample; the rest is hidden and predicted by

* CF:           the server's engine as the server builds it (`rr_server.cf_engine.make_engine`: cf_cpp, rank
                min(16, observed / 8), 20 ALS iterations) on all rows at once, with the server's column features;
* Neurosurgeon: its per-layer-type regression (`rr_edge.neurosurgeon`), fitted per node on that node's revealed
                blocks only (it has no notion of other nodes).

Scores on the hidden entries: RMSE in the target's units (ms or mJ), RMSE of log values, MAPE and median APE.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from rr_edge import neurosurgeon
from rr_server.cf_engine import make_engine

from . import metrics


def reveal_mask(values: np.ndarray, fill: float, rng: np.random.Generator, min_per_row: int = 2) -> np.ndarray:
    """Boolean mask of revealed entries: per row, ceil(fill x observed) of its observed entries (>= min_per_row)."""
    mask = np.zeros(values.shape, dtype=bool)
    for r in range(values.shape[0]):
        observed = np.flatnonzero(np.isfinite(values[r]))
        k = min(observed.size, max(min_per_row, math.ceil(round(fill * observed.size, 9))))
        mask[r, rng.choice(observed, size=k, replace=False)] = True
    return mask


def predict_cf(values: np.ndarray, mask: np.ndarray, features: np.ndarray) -> np.ndarray:
    """Dense prediction of every entry from the revealed ones."""
    r, c = np.nonzero(mask)
    engine = make_engine(int(r.size))
    mean, std = features.mean(axis=0), features.std(axis=0)
    std[std == 0] = 1.0
    engine.fit(
        r.astype(np.int64),
        c.astype(np.int64),
        values[r, c].astype(np.float64),
        values.shape[0],
        values.shape[1],
        col_features=(features - mean) / std,
    )
    rr, cc = np.indices(values.shape)
    return np.asarray(engine.predict(rr.ravel().astype(np.int64), cc.ravel().astype(np.int64))).reshape(values.shape)


def predict_ns(values: np.ndarray, mask: np.ndarray, blocks: Sequence[dict[str, Any]]) -> np.ndarray:
    """Per row, Neurosurgeon's regression fitted on the revealed blocks of that row."""
    out = np.full(values.shape, np.nan)
    for r in range(values.shape[0]):
        seen = np.flatnonzero(mask[r])
        model = neurosurgeon.fit([blocks[int(c)] for c in seen], values[r, seen])
        out[r] = model.predict(blocks)[0]
    return out


def scores(pred: np.ndarray, truth: np.ndarray, hidden: np.ndarray) -> dict[str, float]:
    p, t = pred[hidden], truth[hidden]
    ok = np.isfinite(p) & np.isfinite(t) & (t > 0)
    p, t = p[ok], t[ok]
    errs = metrics.ape(p, t)
    return {
        "rmse": metrics.rmse(p, t),
        "log_rmse": metrics.rmse(np.log(np.maximum(p, 1e-9)), np.log(t)),
        "mape": float(np.mean(errs)),
        "median_ape": float(np.median(errs)),
        "n": int(t.size),
    }


def fill_sweep(
    values: np.ndarray, features: np.ndarray, blocks: Sequence[dict[str, Any]], fills: Sequence[float], seeds: int
) -> dict[str, Any]:
    """Mean (over seeds) scores of CF and Neurosurgeon at every fill."""
    out: dict[str, Any] = {"fills": list(fills), "seeds": seeds, "cf": {}, "ns": {}}
    per: dict[str, list[list[dict[str, float]]]] = {"cf": [], "ns": []}
    observed = np.isfinite(values)
    for fill in fills:
        runs: dict[str, list[dict[str, float]]] = {"cf": [], "ns": []}
        for seed in range(seeds):
            rng = np.random.default_rng(1000 * seed + int(round(fill * 1000)))
            mask = reveal_mask(values, fill, rng)
            hidden = observed & ~mask
            if not hidden.any():
                continue
            runs["cf"].append(scores(predict_cf(values, mask, features), values, hidden))
            runs["ns"].append(scores(predict_ns(values, mask, blocks), values, hidden))
        for k in runs:
            per[k].append(runs[k])
    for method, by_fill in per.items():
        keys = ("rmse", "log_rmse", "mape", "median_ape")
        out[method] = {k: [metrics.mean(s[k] for s in runs) for runs in by_fill] for k in keys}
        out[method]["rmse_std"] = [float(np.std([s["rmse"] for s in runs])) if runs else None for runs in by_fill]
    return out
