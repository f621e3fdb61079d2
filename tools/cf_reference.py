"""Reference implementations the benchmark compares cf_cpp against (same data, same log-space objective).

* ``numpy_als``: biased matrix factorisation by ALS in numpy (one ridge solve per row / column per sweep, BLAS for
  the Gram matrices, batched solves), the textbook algorithm cf_cpp implements in C++ (without column features).
* ``surprise_svd``: scikit-surprise's SVD (biased MF by SGD), the common Python baseline.
"""

from __future__ import annotations

import numpy as np


def _groups(major: np.ndarray, minor: np.ndarray, values: np.ndarray, n: int):
    order = np.argsort(major, kind="stable")
    ptr = np.concatenate([[0], np.cumsum(np.bincount(major, minlength=n))])
    return ptr, minor[order], values[order]


def numpy_als(rows, cols, log_values, n_rows, n_cols, rank=16, reg=0.1, iterations=10, seed=0):
    """Returns (mu, row_params (n_rows, rank+1), col_params (n_cols, rank+1)), params = [bias, factors]."""
    rng = np.random.default_rng(seed)
    mu = float(log_values.mean())
    a = np.hstack([np.zeros((n_rows, 1)), 0.1 * rng.standard_normal((n_rows, rank))])
    z = np.hstack([np.zeros((n_cols, 1)), 0.1 * rng.standard_normal((n_cols, rank))])
    by_row = _groups(rows, cols, log_values, n_rows)
    by_col = _groups(cols, rows, log_values, n_cols)
    ridge = reg * np.eye(rank + 1)

    def half_step(groups, other, n):
        ptr, idx, val = groups
        grams = np.empty((n, rank + 1, rank + 1))
        rhs = np.empty((n, rank + 1))
        for i in range(n):
            o = other[idx[ptr[i] : ptr[i + 1]]]
            d = np.hstack([np.ones((o.shape[0], 1)), o[:, 1:]])
            t = val[ptr[i] : ptr[i + 1]] - mu - o[:, 0]
            grams[i] = d.T @ d + ridge
            rhs[i] = d.T @ t
        return np.linalg.solve(grams, rhs[..., None])[..., 0]

    for _ in range(iterations):
        a = half_step(by_row, z, n_rows)
        z = half_step(by_col, a, n_cols)
    return mu, a, z


def predict_params(mu, a, z, rows, cols):
    return mu + a[rows, 0] + z[cols, 0] + np.einsum("ij,ij->i", a[rows, 1:], z[cols, 1:])


def surprise_trainset(rows, cols, log_values, n_rows, n_cols):
    """A surprise Trainset whose inner ids equal our indices (built without pandas)."""
    from surprise import Trainset

    ur: dict[int, list] = {u: [] for u in range(n_rows)}
    ir: dict[int, list] = {i: [] for i in range(n_cols)}
    for u, i, v in zip(rows.tolist(), cols.tolist(), log_values.tolist(), strict=True):
        ur[u].append((i, v))
        ir[i].append((u, v))
    scale = (float(log_values.min()), float(log_values.max()))
    return Trainset(
        ur, ir, n_rows, n_cols, len(rows), scale, {u: u for u in range(n_rows)}, {i: i for i in range(n_cols)}
    )


def surprise_svd(trainset, rank=16, iterations=10, seed=0):
    from surprise import SVD

    algo = SVD(n_factors=rank, n_epochs=iterations, biased=True, random_state=seed)
    algo.fit(trainset)
    mu = trainset.global_mean
    a = np.hstack([algo.bu[:, None], algo.pu])
    z = np.hstack([algo.bi[:, None], algo.qi])
    return mu, a, z
