"""The matrix-factorisation engine behind the predictor: cf_cpp's CFModel, or a numpy stand-in.

`make_engine()` returns a fresh `cf_cpp.CFModel` when the extension is installed (`make setup` builds it, or
`pip install ./cf_cpp`: it is not on PyPI, so no extra can name it). Without it the server still runs with
`BiasModel`, a global-mean + row/column-bias model in log space with a ridge feature prior for unmeasured columns,
which has the same methods the predictor uses (`fit`, `predict`, `fold_in_row`), with a warning when the server
starts.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

_CFModel: Any
try:  # pragma: no cover - depends on the build
    from cf_cpp import CFModel as _CFModel
except ImportError:  # pragma: no cover
    _CFModel = None

_warned = False


def engine_name() -> str:
    return "cf_cpp" if _CFModel is not None else "numpy-biases"


def warn_if_biases_only() -> None:
    """Log once that predictions fall back to `BiasModel` (the server calls it when it starts)."""
    global _warned
    if _CFModel is None and not _warned:
        log.warning("cf_cpp is not installed (pip install ./cf_cpp); predicting with row/column biases only")
        _warned = True


def make_engine(n_observed: int) -> Any:
    """A new, unfitted engine; the rank shrinks for tiny matrices so ALS stays well-posed."""
    if _CFModel is not None:
        rank = int(max(1, min(16, n_observed // 8)))
        return _CFModel(rank=rank, iterations=20, seed=0)
    warn_if_biases_only()
    return BiasModel()


class BiasModel:
    """log y = mu + b_r + b_c, with b_c of unmeasured columns from a ridge regression on column features (additive
    features are accepted and unused: no additive rows)."""

    def __init__(self, reg: float = 1.0, iterations: int = 10) -> None:
        self.reg = reg
        self.iterations = iterations

    def fit(self, rows, cols, values, n_rows, n_cols, col_features=None, additive_features=None) -> BiasModel:
        rows = np.asarray(rows, dtype=np.int64)
        cols = np.asarray(cols, dtype=np.int64)
        y = np.log(np.asarray(values, dtype=np.float64))
        self.mu = float(y.mean()) if y.size else 0.0
        self.b_r = np.zeros(n_rows)
        self.b_c = np.zeros(n_cols)
        for _ in range(self.iterations):
            resid = y - self.mu - self.b_r[rows]
            self.b_c = np.bincount(cols, resid, n_cols) / (np.bincount(cols, minlength=n_cols) + self.reg)
            resid = y - self.mu - self.b_c[cols]
            self.b_r = np.bincount(rows, resid, n_rows) / (np.bincount(rows, minlength=n_rows) + self.reg)
        measured = np.bincount(cols, minlength=n_cols) > 0
        self.theta = None
        if col_features is not None and measured.any():
            x1 = _with_intercept(col_features)
            a = x1[measured]
            self.theta = np.linalg.solve(a.T @ a + self.reg * np.eye(a.shape[1]), a.T @ self.b_c[measured])
            self.b_c[~measured] = x1[~measured] @ self.theta
        return self

    def add_cols(self, n: int, col_features=None, additive_features=None) -> int:
        first = int(self.b_c.size)
        prior = (
            np.zeros(n) if self.theta is None or col_features is None else _with_intercept(col_features) @ self.theta
        )
        self.b_c = np.append(self.b_c, prior)
        return first

    def predict(self, rows, cols, log: bool = False):
        z = self.mu + self.b_r[np.asarray(rows, dtype=np.int64)] + self.b_c[np.asarray(cols, dtype=np.int64)]
        return z if log else np.exp(z)

    def fold_in_row(self, cols, values) -> int:
        cols = np.asarray(cols, dtype=np.int64)
        resid = np.log(np.asarray(values, dtype=np.float64)) - self.mu - self.b_c[cols]
        self.b_r = np.append(self.b_r, resid.sum() / (resid.size + self.reg))
        return int(self.b_r.size - 1)


def _with_intercept(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return np.hstack([x, np.ones((x.shape[0], 1))])
