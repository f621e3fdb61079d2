"""A numpy reference of cf_cpp's fold-in (cf_cpp/src/fold_in.h), component by component.

The engine folds a new row in as the evidence-weighted mean of the posteriors of a Gaussian mixture prior built from
the fitted rows (docs/cf_cpp.md, "Fold-in"). This module recomputes the same thing from a fitted `CFModel`'s public
parameters, written the textbook way (dense algebra in the row's parameter space, nothing shared with the C++), so
that a test can check the engine against it and `tools.cf_fold_in_ceiling` can look inside the mixture: which
component a fold-in leaned on, and how well each single component would have done.

A row is `a = [g, b, p]`; it predicts `log y(c) = mu + b + g b_c + p . q_c`, plus its kernel residual h(c) where the
model has them (`CFModel.row_residuals`): expert r explains the revealed entries minus its own h_r, and the folded-in
row's h is the weighted mean of its experts' h_r.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cf_cpp import CFModel

# The constants of cf_cpp/src/fold_in.h (tests/test_cf_fold_in_reference.py fails if the two drift apart).
JITTER = 0.01
NOISE_FACTOR = 3.0
EXPERT_SPREAD = 0.2
GLOBAL_SPREAD = 1.0
OFFSET_STD = 1.0
SLOPE_STD = 0.2
MAX_EXPERTS = 16


@dataclass(frozen=True)
class Component:
    """One mixture component's posterior: `row` is -1 for the global component, else the fitted row it copies."""

    row: int
    mean: np.ndarray  # [g, b, p]
    log_evidence: float  # up to a constant shared by all components of one fold-in
    residual: np.ndarray  # kernel residual at every column: the expert's h_r (zeros for the global component)


def _regressors(model: CFModel, cols: np.ndarray) -> np.ndarray:
    """W with one line per column: [b_c, 1, q_c], so that W @ [g, b, p] = log y - mu."""
    return np.hstack([model.col_biases[cols, None], np.ones((cols.size, 1)), model.col_factors[cols]])


def _prior(bp: np.ndarray, spread: float, covariance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [1, b, p] and covariance spread C + OFFSET_STD^2 e_b e_b' + SLOPE_STD^2 v v', v = [1, 0, p]."""
    e = bp.size + 1
    theta = np.concatenate([[1.0], bp])
    cov = np.zeros((e, e))
    cov[1:, 1:] = spread * covariance
    cov[1, 1] += OFFSET_STD**2
    v = np.concatenate([[1.0, 0.0], bp[1:]])
    return theta, cov + SLOPE_STD**2 * np.outer(v, v)


def _posterior(w: np.ndarray, t: np.ndarray, theta: np.ndarray, cov: np.ndarray, s2: float) -> tuple[np.ndarray, float]:
    """Posterior mean of a ~ N(theta, cov) given t = W a + N(0, s2 I), and log N(t; W theta, W cov W' + s2 I)
    without its terms that do not depend on the prior (n log s2 and n log 2 pi)."""
    r = t - w @ theta
    gram, wr = w.T @ w, w.T @ r
    e = theta.size
    shift = np.linalg.solve(s2 * np.eye(e) + cov @ gram, cov @ wr)
    quad = (r @ r - wr @ shift) / s2
    log_det = np.linalg.slogdet(np.eye(e) + cov @ gram / s2)[1]
    return theta + shift, -0.5 * (quad + log_det)


def components(model: CFModel, cols: np.ndarray, values: np.ndarray) -> list[Component]:
    """The posteriors of the mixture's components given the revealed entries: the global one first, then one per
    expert (all fitted rows, or of more than MAX_EXPERTS the ones that explain the entries best with a free offset)."""
    cols = np.asarray(cols, dtype=np.int64)
    w = _regressors(model, cols)
    t = np.log(np.asarray(values, dtype=np.float64)) - model.global_mean
    h = model.row_residuals  # zeros without kernel residuals
    targets = t[:, None] - h[:, cols].T  # per row: t - h_r
    population = np.flatnonzero(model.row_counts > 0)
    rows = np.hstack([model.row_biases[:, None], model.row_factors])
    pop = rows[population]
    mean = pop.mean(axis=0)
    covariance = np.cov(pop.T, bias=True).reshape(pop.shape[1], pop.shape[1]) + JITTER * np.eye(pop.shape[1])
    s2 = NOISE_FACTOR * max(model.noise_var, 1e-12)
    experts = population
    if experts.size > MAX_EXPERTS:
        residuals = targets[:, population] - w[:, 1:] @ pop.T - w[:, :1]  # each row as it is: g = 1
        # -2 log evidence x s2 of each row with only its offset free (up to a constant)
        score = (residuals**2).sum(axis=0) - residuals.sum(axis=0) ** 2 / (t.size + s2 / OFFSET_STD**2)
        experts = population[np.argsort(score, kind="stable")[:MAX_EXPERTS]]
    out = [Component(-1, *_posterior(w, t, *_prior(mean, GLOBAL_SPREAD, covariance), s2), np.zeros(model.n_cols))]
    for r in experts:
        posterior = _posterior(w, targets[:, r], *_prior(rows[r], EXPERT_SPREAD, covariance), s2)
        out.append(Component(int(r), *posterior, h[r]))
    return out


def weights(parts: list[Component]) -> np.ndarray:
    """Each component's share of the fold-in (its normalised evidence)."""
    log_ev = np.array([p.log_evidence for p in parts])
    w = np.exp(log_ev - log_ev.max())
    return w / w.sum()


def fold_in(model: CFModel, cols: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The folded-in row [g, b, p] and its kernel residual at every column, as `CFModel.fold_in_row` computes them."""
    parts = components(model, cols, values)
    w = weights(parts)
    return w @ np.array([p.mean for p in parts]), w @ np.array([p.residual for p in parts])


def predict(model: CFModel, row: np.ndarray, cols: np.ndarray, residual: np.ndarray | None = None) -> np.ndarray:
    """Raw-unit predictions of a row [g, b, p] (with its kernel residual at every column, if any) at `cols`."""
    cols = np.asarray(cols, dtype=np.int64)
    h = residual[cols] if residual is not None else 0.0
    return np.exp(model.global_mean + _regressors(model, cols) @ row + h)
