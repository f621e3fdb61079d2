"""The ground-truth matrix (nodes x block signatures) as tools/cf_eval long-format CSVs, and back.

    groundtruth_latency.csv / groundtruth_energy.csv   row (device class), col (signature), value (window-mean ms / mJ),
                                                       f_* column features (the server's CF features, log scale)
    groundtruth_blocks.csv                             signature, model, block index, ops and sizes per block

Energy values are MODELLED (declared watts x measured time), latency is measured on EMULATED device classes. The
energy file says so in every entry: `unit` (mJ) and `energy_source` (the meter of the row's device, `model` on the
testbed); tools/cf_eval reads row, col, value and f_* and passes over them.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rr_server.predictor import OP_VOCABULARY, feature_vector
from rr_server.records import Features

FEATURE_NAMES = tuple(
    ["f_log_flops", "f_log_param_bytes", "f_log_input_bytes", "f_log_output_bytes", "f_log_n_ops"]
    + [f"f_log_n_{op}" for op in OP_VOCABULARY]
    + ["f_log_n_other"]
)
BLOCK_FIELDS = ("signature", "model", "index", "ops", "flops", "param_bytes", "input_bytes", "output_bytes")


def features_of(block: Mapping[str, Any]) -> np.ndarray:
    """The server's column features (log1p sizes and op counts) of a block record."""
    f = Features(
        tuple(block["ops"]),
        int(block["flops"]),
        int(block["param_bytes"]),
        int(block["input_bytes"]),
        int(block["output_bytes"]),
    )
    return feature_vector(f)


@dataclass
class GroundTruth:
    """Dense matrices (NaN where missing) with their row/column names and per-column block records."""

    rows: list[str]
    cols: list[str]
    latency_ms: np.ndarray
    energy_mJ: np.ndarray
    blocks: dict[str, dict[str, Any]]  # signature -> first block record (ops, sizes)
    energy_sources: list[str]  # per row: the meter its energy came from (the worker's `energy_source`)

    @property
    def features(self) -> np.ndarray:
        return np.stack([features_of(self.blocks[c]) for c in self.cols])


def from_worker_outputs(outputs: Mapping[str, Mapping[str, Any]]) -> tuple[GroundTruth, list[dict[str, Any]]]:
    """Ground-truth worker outputs (device -> JSON) -> the matrix and every (model, block) record."""
    rows = list(outputs)
    blocks: dict[str, dict[str, Any]] = {}
    occurrences = []
    for out in outputs.values():
        for m in out["models"].values():
            for b in m["blocks"]:
                blocks.setdefault(b["signature"], b)
    for name, m in next(iter(outputs.values()))["models"].items():
        occurrences += [{"model": name, **b} for b in m["blocks"]]
    cols = list(blocks)
    index = {c: k for k, c in enumerate(cols)}
    lat = np.full((len(rows), len(cols)), np.nan)
    en = np.full_like(lat, np.nan)
    for r, out in enumerate(outputs.values()):
        for m in out["models"].values():
            for sig, meas in m["measurements"].items():
                lat[r, index[sig]] = meas["latency_ms"]["mean"]
                if meas.get("energy_mJ") is not None:
                    en[r, index[sig]] = meas["energy_mJ"]
    sources = [out["energy_source"] for out in outputs.values()]
    return GroundTruth(rows, cols, lat, en, blocks, sources), occurrences


def write_long_csv(
    path: Path, gt: GroundTruth, values: np.ndarray, labels: Mapping[str, list[str]] | None = None
) -> int:
    """row,col,value, then the `labels` (column name -> one text per row, such as the unit or the energy meter), then
    f_* for every finite entry; returns the number of entries written."""
    labels = labels or {}
    feats = gt.features
    n = 0
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["row", "col", "value", *labels, *FEATURE_NAMES])
        for r, row in enumerate(gt.rows):
            for c, col in enumerate(gt.cols):
                v = values[r, c]
                if np.isfinite(v) and v > 0:
                    text = [t[r] for t in labels.values()]
                    w.writerow([row, col, f"{v:.6g}", *text, *(f"{x:.6g}" for x in feats[c])])
                    n += 1
    return n


def write_energy_csv(path: Path, gt: GroundTruth) -> int:
    """The energy matrix in the long format, every entry labelled with its unit and the meter of its row: modelled
    energy must not pass for measured energy once the file is out of the report's sight."""
    return write_long_csv(path, gt, gt.energy_mJ, {"unit": ["mJ"] * len(gt.rows), "energy_source": gt.energy_sources})


def write_blocks_csv(path: Path, occurrences: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=BLOCK_FIELDS, extrasaction="ignore")
        w.writeheader()
        for b in occurrences:
            w.writerow({**b, "ops": "+".join(b["ops"])})


def read_long_csv(path: Path) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """(rows, cols, dense values with NaN, per-column features) from a long-format CSV."""
    with open(path, newline="", encoding="utf-8") as f:
        recs = list(csv.DictReader(f))
    rows = list(dict.fromkeys(r["row"] for r in recs))
    cols = list(dict.fromkeys(r["col"] for r in recs))
    ri, ci = {r: k for k, r in enumerate(rows)}, {c: k for k, c in enumerate(cols)}
    values = np.full((len(rows), len(cols)), np.nan)
    fnames = [k for k in (recs[0] if recs else {}) if k.startswith("f_")]
    feats = np.zeros((len(cols), len(fnames)))
    for r in recs:
        values[ri[r["row"]], ci[r["col"]]] = float(r["value"])
        feats[ci[r["col"]]] = [float(r[k]) for k in fnames]
    return rows, cols, values, feats
