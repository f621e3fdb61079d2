"""Long-format CSV (``row,col,value`` + optional numeric column features) -> index arrays for cf_eval.

Column features are ``f_*`` (any numeric description of a column) and ``a_*`` (additive features: raw quantities
>= 0, such as op counts, that a row's value may be a weighted sum of); both are constant per column."""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Matrix:
    """Observed entries of a positive ``n_rows x n_cols`` matrix, with optional per-column features."""

    rows: np.ndarray  # int64
    cols: np.ndarray  # int64
    values: np.ndarray  # float64, > 0
    n_rows: int
    n_cols: int
    features: np.ndarray | None  # (n_cols, n_features) or None
    feature_names: tuple[str, ...]
    row_labels: tuple[str, ...]
    col_labels: tuple[str, ...]
    additive: np.ndarray | None = None  # (n_cols, n_additive) or None
    additive_names: tuple[str, ...] = ()

    @property
    def size(self) -> int:
        return int(self.values.size)

    def subset(self, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.rows[mask], self.cols[mask], self.values[mask]


def load_csv(path: str | Path) -> Matrix:
    """Read a long-format CSV. Rows with a non-positive or non-finite value are dropped (logged)."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        for need in ("row", "col", "value"):
            if need not in header:
                raise ValueError(f"{path}: missing column {need!r} (need row,col,value[,f_*])")
        fnames = tuple(h for h in header if h.startswith("f_"))
        anames = tuple(h for h in header if h.startswith("a_"))
        row_ids: dict[str, int] = {}
        col_ids: dict[str, int] = {}
        rows, cols, values = [], [], []
        feats: dict[int, list[float]] = {}
        dropped = 0
        for rec in reader:
            v = float(rec["value"]) if rec["value"] not in ("", None) else math.nan
            c = col_ids.setdefault(rec["col"], len(col_ids))
            if (fnames or anames) and c not in feats:
                feats[c] = [float(rec[n]) for n in fnames + anames]
            if not (math.isfinite(v) and v > 0):
                dropped += 1
                continue
            rows.append(row_ids.setdefault(rec["row"], len(row_ids)))
            cols.append(c)
            values.append(v)
    if dropped:
        log.warning("%s: dropped %d entries with a non-positive or missing value", path, dropped)
    table = np.array([feats[c] for c in range(len(col_ids))], dtype=np.float64) if feats else None
    features = table[:, : len(fnames)] if fnames and table is not None else None
    additive = table[:, len(fnames) :] if anames and table is not None else None
    return Matrix(
        rows=np.asarray(rows, dtype=np.int64),
        cols=np.asarray(cols, dtype=np.int64),
        values=np.asarray(values, dtype=np.float64),
        n_rows=len(row_ids),
        n_cols=len(col_ids),
        features=features,
        feature_names=fnames,
        row_labels=tuple(row_ids),
        col_labels=tuple(col_ids),
        additive=additive,
        additive_names=anames,
    )


def write_csv(
    path: str | Path,
    matrix: np.ndarray,
    row_labels: list[str],
    col_labels: list[str],
    features: np.ndarray | None = None,
    feature_names: list[str] | None = None,
    additive: np.ndarray | None = None,
    additive_names: list[str] | None = None,
) -> None:
    """Write a dense ``rows x cols`` matrix (NaN = missing) in long format, column features repeated per entry."""
    names = [f"f_{n}" for n in (feature_names or [])] + [f"a_{n}" for n in (additive_names or [])]
    parts = [p for p in (features if feature_names else None, additive if additive_names else None) if p is not None]
    table = np.hstack(parts) if parts else np.zeros((len(col_labels), 0))
    if table.shape != (len(col_labels), len(names)):
        raise ValueError(f"column features have shape {table.shape}, expected ({len(col_labels)}, {len(names)})")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["row", "col", "value", *names])
        text = [[f"{v:.6g}" for v in table[c]] for c in range(len(col_labels))]
        for r, rl in enumerate(row_labels):
            for c, cl in enumerate(col_labels):
                v = matrix[r, c]
                if np.isfinite(v) and v > 0:
                    w.writerow([rl, cl, repr(float(v)), *text[c]])
    tmp.replace(path)
