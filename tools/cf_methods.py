"""Predictors compared by cf_eval. Each fits on observed (row, col, value) triplets of one matrix, predicts any
(row, col), and adds a new row from a few revealed entries (``fold_in``). All work in log space.

* ``cf_cpp``            the hybrid engine with column features and additive features (when the CSV has any).
* ``mf_no_features``    the same engine without features (plain biased MF).
* ``biases_only``       the engine at rank 0 without features: mu + b_row + b_col.
* ``feature_regression`` one ridge regression of log value on the column features shared by all rows, plus a
                        per-row offset.
* ``neurosurgeon``      Neurosurgeon's predictor (Kang et al., ASPLOS'17): an independent regression per device (row)
                        and layer type on the layer's configuration, linear or logarithmic. A generic CSV has no layer
                        type, so here it is one regression per row on the ``f_*`` features, fitted both on the raw
                        values (linear) and on log values (logarithmic), keeping the better fit per row. A new row is
                        fitted on its revealed entries, shrunk toward the average row model.
* ``cf_cpp_residual``   an extra, not a baseline: the engine (with features) fitted to the ratio of each value to the
                        neurosurgeon prediction, i.e. per-device feature regression + hybrid MF on its log residual.
Without features, the two regressions reduce to per-row (and, for feature_regression, shared) means.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from cf_cpp import CFModel


class Predictor(Protocol):
    def fit(
        self,
        rows: np.ndarray,
        cols: np.ndarray,
        values: np.ndarray,
        n_rows: int,
        n_cols: int,
        features: np.ndarray | None,
        additive: np.ndarray | None = None,
    ) -> None: ...

    def predict(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray: ...

    def fold_in(self, cols: np.ndarray, values: np.ndarray) -> int: ...


class Engine:
    """cf_cpp with or without features / factors."""

    def __init__(self, use_features: bool, seed: int, **params: Any) -> None:
        self.use_features = use_features
        self.model = CFModel(seed=seed, **params)  # CFModel defaults: see docs/cf_cpp.md

    def fit(self, rows, cols, values, n_rows, n_cols, features, additive=None) -> None:
        if not self.use_features:
            features = additive = None
        self.model.fit(rows, cols, values, n_rows, n_cols, features, additive)

    def predict(self, rows, cols) -> np.ndarray:
        return self.model.predict(rows, cols)

    def fold_in(self, cols, values) -> int:
        return self.model.fold_in_row(cols, values)


def _design(features: np.ndarray | None, n_cols: int) -> np.ndarray:
    """Standardised features with an intercept column (intercept only without features)."""
    if features is None or features.shape[1] == 0:
        return np.ones((n_cols, 1))
    mean, std = features.mean(0), features.std(0)
    keep = std > 1e-12
    x = (features[:, keep] - mean[keep]) / std[keep]
    return np.hstack([x, np.ones((n_cols, 1))])


def _ridge(x: np.ndarray, y: np.ndarray, lam: float, prior: np.ndarray | None = None) -> np.ndarray:
    """Ridge toward ``prior`` on the feature weights; the intercept (last column of x) is left (almost) free."""
    prior = np.zeros(x.shape[1]) if prior is None else prior
    ridge = np.full(x.shape[1], lam)
    ridge[-1] = 1e-8
    a = x.T @ x + np.diag(ridge)
    return np.linalg.solve(a, x.T @ y + ridge * prior)


class FeatureRegression:
    """log y = offset_row + w . x_col, w shared by all rows (alternating ridge / offsets)."""

    def __init__(self, lam: float = 1.0) -> None:
        self.lam = lam

    def fit(self, rows, cols, values, n_rows, n_cols, features, additive=None) -> None:
        self.x = _design(features, n_cols)
        y = np.log(values)
        self.offset = np.zeros(n_rows)
        self.w = np.zeros(self.x.shape[1])
        xs = self.x[cols]
        for _ in range(10):
            self.w = _ridge(xs, y - self.offset[rows], self.lam)
            resid = y - xs @ self.w
            sums = np.bincount(rows, resid, n_rows)
            counts = np.bincount(rows, minlength=n_rows)
            self.offset = np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)

    def predict(self, rows, cols) -> np.ndarray:
        return np.exp(self.offset[rows] + self.x[cols] @ self.w)

    def fold_in(self, cols, values) -> int:
        off = float(np.mean(np.log(values) - self.x[cols] @ self.w)) if len(cols) else float(np.mean(self.offset))
        self.offset = np.append(self.offset, off)
        return len(self.offset) - 1


class Neurosurgeon:
    """Per-row regression on the features, linear or logarithmic (whichever fits the row's data better)."""

    def __init__(self, lam: float = 1.0) -> None:
        self.lam = lam

    def fit(self, rows, cols, values, n_rows, n_cols, features, additive=None) -> None:
        self.x = _design(features, n_cols)
        d = self.x.shape[1]
        self.w = np.zeros((n_rows, d))
        self.log_space = np.ones(n_rows, dtype=bool)
        fitted = []
        for r in range(n_rows):
            m = rows == r
            if m.any():
                self.w[r], self.log_space[r] = self._fit_row(self.x[cols[m]], values[m], None)
                fitted.append(r)
        self.mean_w_log = self.w[fitted][self.log_space[fitted]].mean(0) if self.log_space[fitted].any() else None
        for r in set(range(n_rows)) - set(fitted):
            self.w[r] = self.mean_w_log if self.mean_w_log is not None else 0.0

    def _fit_row(self, x: np.ndarray, v: np.ndarray, prior: np.ndarray | None) -> tuple[np.ndarray, bool]:
        w_log = _ridge(x, np.log(v), self.lam, prior)
        if prior is not None:  # few revealed entries: the logarithmic model shrunk toward the average row
            return w_log, True
        w_lin = _ridge(x, v, self.lam)
        err_log = np.mean((x @ w_log - np.log(v)) ** 2)
        err_lin = np.mean((np.log(np.maximum(x @ w_lin, 1e-12)) - np.log(v)) ** 2)
        return (w_log, True) if err_log <= err_lin else (w_lin, False)

    def predict(self, rows, cols) -> np.ndarray:
        raw = np.einsum("ij,ij->i", self.x[cols], self.w[rows])
        return np.where(self.log_space[rows], np.exp(np.minimum(raw, 700)), np.maximum(raw, 1e-12))

    def fold_in(self, cols, values) -> int:
        prior = self.mean_w_log if self.mean_w_log is not None else np.zeros(self.x.shape[1])
        w = self._fit_row(self.x[cols], values, prior)[0] if len(cols) else prior
        self.w = np.vstack([self.w, w])
        self.log_space = np.append(self.log_space, True)
        return len(self.w) - 1


class Residual:
    """Engine on the log residual of the per-device regression (prediction = regression x engine)."""

    def __init__(self, seed: int) -> None:
        self.base = Neurosurgeon()
        self.engine = Engine(True, seed)

    def fit(self, rows, cols, values, n_rows, n_cols, features, additive=None) -> None:
        self.base.fit(rows, cols, values, n_rows, n_cols, features)
        self.engine.fit(rows, cols, values / self.base.predict(rows, cols), n_rows, n_cols, features)

    def predict(self, rows, cols) -> np.ndarray:
        return self.base.predict(rows, cols) * self.engine.predict(rows, cols)

    def fold_in(self, cols, values) -> int:
        row = self.base.fold_in(cols, values)
        base = self.base.predict(np.full(len(cols), row, dtype=np.int64), cols)
        if self.engine.fold_in(cols, values / base) != row:
            raise RuntimeError("row indices of the two stages diverged")
        return row


METHODS = ("cf_cpp", "biases_only", "mf_no_features", "feature_regression", "neurosurgeon", "cf_cpp_residual")


def make(name: str, seed: int) -> Predictor:
    if name == "cf_cpp":
        return Engine(True, seed)
    if name == "mf_no_features":
        return Engine(False, seed)
    if name == "biases_only":
        return Engine(False, seed, rank=0)
    if name == "feature_regression":
        return FeatureRegression()
    if name == "neurosurgeon":
        return Neurosurgeon()
    if name == "cf_cpp_residual":
        return Residual(seed)
    raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
