"""How many column features the predictor's cold-start prior learns from, chosen by cross-validation over columns.

A prior fitted to every feature (log sizes and op-type counts, 34 of them) from the handful of signatures a first
profile measures fits noise: resnet18's stem convolution was priced at a fifth of its time. Fewer features are not
better everywhere either: log FLOPs alone misprice the depthwise convolutions of mobilenet_v2 and efficientnet_b0,
which the byte sizes explain (`tools/bench_cold_start.py`, docs/performance.md "Cold start after a first profile").
So each fit with few measured columns tries the nested sets of `FEATURE_SETS` the way a cold-start prediction is
used: whole measured columns are held out, fold by fold, and predicted from the prior alone; the set with the
smallest squared log error wins. From `CV_UNTIL_COLUMNS` measured columns on, every feature is used without a trial.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

FEATURE_SETS = (1, 5, 34)  # leading entries of predictor.feature_vector: log flops; log sizes; sizes and op counts
FOLDS = 5
CV_UNTIL_COLUMNS = 3 * FEATURE_SETS[-1]  # three measured columns per feature: enough to learn them all


def standardized(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and spread (1 where a feature does not vary) of each feature over the columns."""
    mean, std = raw.mean(axis=0), raw.std(axis=0)
    std[std == 0] = 1.0
    return mean, std


def choose_prior_features(
    rows: np.ndarray,
    cols: np.ndarray,
    values: np.ndarray,
    n_rows: int,
    raw: np.ndarray,
    additive: np.ndarray,
    make_engine: Callable[[int], Any],
) -> int:
    """The number of leading columns of `raw` (one row of features per column) that predicts held-out measured
    columns best; the entries are (rows, cols, values) as the engine's `fit` takes them."""
    measured = np.unique(cols)
    if measured.size >= CV_UNTIL_COLUMNS:
        return FEATURE_SETS[-1]
    if measured.size < 2:
        return FEATURE_SETS[0]
    fold_of = np.empty(raw.shape[0], dtype=np.int64)
    fold_of[measured] = np.arange(measured.size) % min(FOLDS, measured.size)
    errors = {}
    for k in FEATURE_SETS:
        mean, std = standardized(raw[:, :k])
        features = (raw[:, :k] - mean) / std
        squared = 0.0
        for fold in range(min(FOLDS, measured.size)):
            held = fold_of[cols] == fold
            engine = make_engine(int((~held).sum()))
            engine.fit(
                rows[~held], cols[~held], values[~held], n_rows, raw.shape[0],
                col_features=features, additive_features=additive,
            )  # fmt: skip
            predicted = engine.predict(rows[held], cols[held], log=True)
            squared += float(np.sum((predicted - np.log(values[held])) ** 2))
        errors[k] = squared
    return min(FEATURE_SETS, key=lambda k: (errors[k], k))
