"""Evaluation protocols (train / test splits) and error metrics for cf_eval. Metrics use held-out entries only."""

from __future__ import annotations

import time
from collections.abc import Iterable

import numpy as np

from tools import cf_methods
from tools.cf_data import Matrix

HOLDOUT_FRACTION = 0.2  # share of rows (new-row) or columns (cold-col) held out per seed
REVEALS = (1, 3, 5, 10)


def within10_hits(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per prediction: within +-10% of the truth (the `within10` metric is their share, in %)."""
    return np.abs(pred / truth - 1.0) <= 0.10


def metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    err = np.log(pred) - np.log(truth)
    ape = np.abs(pred / truth - 1.0)
    return {
        "log_rmse": float(np.sqrt(np.mean(err**2))),
        "mape": float(100 * np.mean(ape)),
        "median_ape": float(100 * np.median(ape)),
        "within10": float(100 * np.mean(within10_hits(pred, truth))),
    }


def _sample(mask: np.ndarray, fill: float, rng: np.random.Generator) -> np.ndarray:
    """Keep a random fraction ``fill`` of the True entries of mask."""
    idx = np.flatnonzero(mask)
    keep = rng.permutation(idx)[: max(1, int(round(fill * idx.size)))]
    out = np.zeros_like(mask)
    out[keep] = True
    return out


def _fit(method, m: Matrix, train: np.ndarray, n_rows: int, rows: np.ndarray) -> float:
    t0 = time.perf_counter()
    method.fit(rows[train], m.cols[train], m.values[train], n_rows, m.n_cols, m.features, m.additive)
    return time.perf_counter() - t0


def _fit_and_score(
    m: Matrix, names: Iterable[str], train: np.ndarray, test: np.ndarray, seed: int
) -> dict[str, dict[str, float]]:
    """Fit every method on the `train` entries and score it on the `test` entries."""
    out = {}
    for name in names:
        method = cf_methods.make(name, seed)
        fit_s = _fit(method, m, train, m.n_rows, m.rows)
        out[name] = {**metrics(method.predict(m.rows[test], m.cols[test]), m.values[test]), "fit_s": fit_s}
    return out


def random_fill(m: Matrix, names: Iterable[str], fill: float, seed: int) -> dict[str, dict[str, float]]:
    rng = np.random.default_rng(seed)
    train = _sample(np.ones(m.size, dtype=bool), fill, rng)
    test = ~train
    return _fit_and_score(m, names, train, test, seed)


def cold_col(m: Matrix, names: Iterable[str], fill: float, seed: int) -> dict[str, dict[str, float]]:
    rng = np.random.default_rng(seed)
    n_hold = max(1, int(round(HOLDOUT_FRACTION * m.n_cols)))
    held = np.zeros(m.n_cols, dtype=bool)
    held[rng.choice(m.n_cols, n_hold, replace=False)] = True
    test = held[m.cols]
    train = _sample(~test, fill, rng)
    return _fit_and_score(m, names, train, test, seed)


def new_row_split(
    m: Matrix, fill: float, seed: int, held: Iterable[int] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, dict[int, np.ndarray]]:
    """The new-row split of one seed: held-out rows (``held``, else a random HOLDOUT_FRACTION of them), training
    mask, row index map of the kept rows (-1 for held rows), number of kept rows, and each held row's entries in
    reveal order."""
    rng = np.random.default_rng(seed)
    if held is None:
        n_hold = max(1, int(round(HOLDOUT_FRACTION * m.n_rows)))
        held_rows = np.sort(rng.choice(m.n_rows, n_hold, replace=False))
    else:
        held_rows = np.unique(np.fromiter(held, dtype=np.int64))
    is_held = np.isin(m.rows, held_rows)
    train = _sample(~is_held, fill, rng)
    remap = np.full(m.n_rows, -1, dtype=np.int64)
    kept = np.setdiff1d(np.arange(m.n_rows), held_rows)
    remap[kept] = np.arange(kept.size)
    order = {int(r): rng.permutation(np.flatnonzero(m.rows == r)) for r in held_rows}
    return held_rows, train, remap, int(kept.size), order


def new_row_splits(
    m: Matrix, fill: float, seed: int, leave_one_out: bool = False
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, int, dict[int, np.ndarray]]]:
    """The new-row splits of one seed: one (`new_row_split`), or with ``leave_one_out`` one per row, held out alone."""
    groups: list[list[int] | None] = [[r] for r in range(m.n_rows)] if leave_one_out else [None]
    return [new_row_split(m, fill, seed, held) for held in groups]


def new_row(
    m: Matrix,
    names: Iterable[str],
    fill: float,
    seed: int,
    reveals: tuple[int, ...] = REVEALS,
    leave_one_out: bool = False,
) -> dict[int, dict[str, dict[str, float]]]:
    """Hold out whole rows; the others are sampled at ``fill``; each held row is folded in from n revealed entries
    and scored on its entries beyond the largest n (the same test entries for every n). With ``leave_one_out`` every
    row is held out in turn, alone (one fit per row; the predictions of all rows are scored together)."""
    splits = new_row_splits(m, fill, seed, leave_one_out)
    top = max(reveals)
    result: dict[int, dict[str, dict[str, float]]] = {n: {} for n in reveals}
    for name in names:
        preds: dict[int, list[np.ndarray]] = {n: [] for n in reveals}
        truths: list[np.ndarray] = []
        fold_s = dict.fromkeys(reveals, 0.0)
        fit_s = 0.0
        for held_rows, train, remap, n_kept, order in splits:
            method = cf_methods.make(name, seed)
            fit_s += _fit(method, m, train, n_kept, remap[m.rows])
            for r in held_rows:
                entries = order[r]
                if entries.size <= top:
                    continue  # too few entries to reveal and still test
                test = entries[top:]
                truths.append(m.values[test])
                for n in reveals:
                    t0 = time.perf_counter()
                    new = method.fold_in(m.cols[entries[:n]], m.values[entries[:n]])
                    fold_s[n] += time.perf_counter() - t0
                    preds[n].append(method.predict(np.full(test.size, new), m.cols[test]))
        fit_s /= len(splits)
        for n in reveals:
            if not truths:  # no held row has more than max(reveals) entries
                result[n][name] = {k: float("nan") for k in ("log_rmse", "mape", "median_ape", "within10")}
                result[n][name].update(fit_s=fit_s, fold_in_ms=float("nan"))
                continue
            scored = metrics(np.concatenate(preds[n]), np.concatenate(truths))
            result[n][name] = {**scored, "fit_s": fit_s, "fold_in_ms": 1000 * fold_s[n] / len(truths)}
    return result
