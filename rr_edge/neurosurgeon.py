"""Neurosurgeon's per-layer-type regression predictor (the paper's comparison point for Fig. 4/5). Pure.

Neurosurgeon (Kang et al., ASPLOS 2017) predicts a layer's latency and energy from its configuration with one
linear or logarithmic regression per layer type. For our atomic blocks the layer type is the block's dominant op
category (conv > fc > pool > norm > act > other), and the regressors are the block features of SPEC §3: flops,
input_bytes, output_bytes, param_bytes. Per type three candidates are fitted on the profiled blocks —

* ``linear``: y = a + b * x on the type's main feature (flops for conv/fc, input bytes otherwise),
* ``log``:    y = a + b * ln(1 + x) on the same feature,
* ``multi``:  y = a + sum_k b_k * x_k on all four features (only with >= 10 samples),

and the one with the lowest leave-one-out RMSE is kept. As in Neurosurgeon, whose regressors are the compute of
convolution and fully connected layers and the data size (neurons) of the others, "other" blocks (Transpose, Concat,
Reshape: no FLOPs to speak of) go by input bytes; on FLOPs, zero for most of them, they had all come out at about
their type's mean (review). Types with fewer than 3 samples use a model fitted on all blocks, whose main feature is
flops (the conv and fc blocks hold most of a model's time). Predictions are clipped at 0. Units: latency ms, energy
mJ.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

FEATURES = ("flops", "input_bytes", "output_bytes", "param_bytes")
_CATEGORY_OPS = {
    "conv": {"Conv", "ConvTranspose", "ConvInteger", "QLinearConv"},
    "fc": {"Gemm", "MatMul", "MatMulInteger", "QLinearMatMul", "Einsum"},
    "pool": {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool"},
    "norm": {"BatchNormalization", "LayerNormalization", "InstanceNormalization", "GroupNormalization", "LRN"},
    "act": {"Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Gelu", "LeakyRelu", "Softmax", "Erf"},
}
_PRIORITY = ("conv", "fc", "pool", "norm", "act")
_MIN_TYPE_SAMPLES = 3
_MIN_MULTI_SAMPLES = 10


def layer_type(ops: Sequence[str]) -> str:
    """Dominant op category of a block's op list."""
    present = set(ops)
    for cat in _PRIORITY:
        if present & _CATEGORY_OPS[cat]:
            return cat
    return "other"


def _features(blocks: Sequence[Mapping[str, Any]]) -> np.ndarray:
    try:
        return np.array([[float(b[f]) for f in FEATURES] for b in blocks], dtype=np.float64).reshape(-1, 4)
    except KeyError as exc:
        raise ValueError(f"block is missing feature {exc}") from None


@dataclass(frozen=True)
class Regression:
    """One fitted model: ``kind`` in linear/log/multi, ``feature`` column for linear/log, coefficients, LOO RMSE."""

    kind: str
    feature: int
    coef: tuple[float, ...]
    scale: tuple[float, ...]
    rmse: float

    def predict(self, X: np.ndarray) -> np.ndarray:
        A = _design(self.kind, self.feature, X, np.asarray(self.scale))
        return np.maximum(A @ np.asarray(self.coef), 0.0)


def _design(kind: str, feature: int, X: np.ndarray, scale: np.ndarray) -> np.ndarray:
    ones = np.ones((X.shape[0], 1))
    if kind == "linear":
        return np.hstack([ones, X[:, [feature]] / scale[feature]])
    if kind == "log":
        return np.hstack([ones, np.log1p(X[:, [feature]])])
    return np.hstack([ones, X / scale])


def _lstsq(A: np.ndarray, y: np.ndarray) -> np.ndarray:
    ridge = 1e-9 * np.eye(A.shape[1])
    return np.linalg.solve(A.T @ A + ridge, A.T @ y)


def _fit_one(kind: str, feature: int, X: np.ndarray, y: np.ndarray) -> Regression:
    scale = np.maximum(np.abs(X).max(axis=0), 1.0)
    A = _design(kind, feature, X, scale)
    coef = _lstsq(A, y)
    n = len(y)
    if n > A.shape[1]:
        errs = []
        for k in range(n):
            keep = np.arange(n) != k
            c = _lstsq(A[keep], y[keep])
            errs.append(max(float(A[k] @ c), 0.0) - y[k])
        rmse = float(np.sqrt(np.mean(np.square(errs))))
    else:
        rmse = float("inf")
    return Regression(kind, feature, tuple(float(c) for c in coef), tuple(float(s) for s in scale), rmse)


def _fit_best(X: np.ndarray, y: np.ndarray, main: int) -> Regression:
    cands = [_fit_one("linear", main, X, y), _fit_one("log", main, X, y)]
    if len(y) >= _MIN_MULTI_SAMPLES:
        cands.append(_fit_one("multi", 0, X, y))
    return min(cands, key=lambda r: (r.rmse, r.kind != "linear"))


def _main_feature(cat: str) -> int:
    return 0 if cat in ("conv", "fc") else 1


@dataclass(frozen=True)
class TargetModel:
    """Per-type regressions for one target (latency or energy), with the all-blocks fallback."""

    per_type: dict[str, Regression]
    fallback: Regression

    def predict(self, types: Sequence[str], X: np.ndarray) -> np.ndarray:
        out = np.empty(len(types))
        kinds = np.array(types, dtype=object)
        for t in set(types):
            mask = kinds == t
            out[mask] = self.per_type.get(t, self.fallback).predict(X[mask])
        return out


def _fit_target(types: list[str], X: np.ndarray, y: np.ndarray) -> TargetModel:
    fallback = _fit_best(X, y, 0)
    per_type = {}
    for t in sorted(set(types)):
        mask = np.array([u == t for u in types])
        if mask.sum() >= _MIN_TYPE_SAMPLES:
            per_type[t] = _fit_best(X[mask], y[mask], _main_feature(t))
    return TargetModel(per_type, fallback)


@dataclass(frozen=True)
class RegressionPredictor:
    """Neurosurgeon-style predictor of one node: latency (ms) and optionally energy (mJ) per block."""

    latency: TargetModel
    energy: TargetModel | None

    def predict(self, blocks: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray | None]:
        """(latency_ms, energy_mJ or None) for SPEC §3 block dicts (``ops`` and the FEATURES keys)."""
        types = [layer_type(b.get("ops", ())) for b in blocks]
        X = _features(blocks)
        en = None if self.energy is None else self.energy.predict(types, X)
        return self.latency.predict(types, X), en


def fit(
    blocks: Sequence[Mapping[str, Any]], latency_ms: Sequence[float], energy_mJ: Sequence[float] | None = None
) -> RegressionPredictor:
    """Fit on the profiled blocks (SPEC §3 dicts) and their measured latency (ms) and energy (mJ)."""
    if len(blocks) < 2:
        raise ValueError("the regression predictor needs at least two profiled blocks")
    y = np.asarray(latency_ms, dtype=np.float64)
    if y.shape != (len(blocks),) or not np.all(np.isfinite(y)):
        raise ValueError("latency_ms must be finite, one per block")
    types = [layer_type(b.get("ops", ())) for b in blocks]
    X = _features(blocks)
    energy = None
    if energy_mJ is not None:
        e = np.asarray(energy_mJ, dtype=np.float64)
        if e.shape != y.shape or not np.all(np.isfinite(e)):
            raise ValueError("energy_mJ must be finite, one per block")
        energy = _fit_target(types, X, e)
    return RegressionPredictor(_fit_target(types, X, y), energy)


def predict(predictor: RegressionPredictor, blocks: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, Any]:
    """Module-level alias of `RegressionPredictor.predict`."""
    return predictor.predict(blocks)
