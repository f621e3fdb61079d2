"""Convert the public latency data sets of ../shared/datasets into cf_eval's long-format CSV.

    python -m tools.convert_datasets [--data ../shared/datasets] [--out .cache/cf_datasets] [NAME ...]

Reads the (read-only) data sets and writes ``<out>/<name>.csv`` (rows = devices, cols = models / kernels, value = ms,
features ``f_*`` and additive features ``a_*`` per column). Nothing is copied into the repository: the default output
is the git-ignored ``.cache/cf_datasets``. Data sets:

* ``oneproxy_nb201``        18 devices x 1999 NB201 cells; features: architecture encoding + features derived from it;
                            additive features: the cell's op counts (tools/nb201_features.py). ``rice_edgetpu``
                            values of -1 are missing.
* ``oneproxy_nb201_onehot`` the same matrix with only the 30-dim architecture one-hot as features (and the op counts).
* ``help_nb201``            HELP's 27 device settings x 2000 NB201 cells (a fixed random subset, seed 0, of 15625),
                            same features as oneproxy_nb201.
* ``ncnn_benchmark``        263 benchncnn runs x 40 CNNs (avg ms); feature: int8 flag of the model name.
* ``deepbench_gemm``        21 device/precision rows x 254 GEMM shapes; features: log m, n, k, log 2mnk, log operand
                            elements, transpose flags (duplicate cells are averaged geometrically).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from tools import cf_data, nb201_features
from tools.cf_data import write_csv

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "datasets"
DEFAULT_OUT = REPO / ".cache" / "cf_datasets"
HELP_SUBSET = 2000


def _nb201_matrix(arch: list[str], y: np.ndarray, devices: list[str], encoding_only: bool):
    feats = np.array([nb201_features.features(a, encoding_only) for a in arch])
    names = nb201_features.names()[: feats.shape[1]]
    counts = np.array([nb201_features.op_counts(a) for a in arch])
    return y.T, devices, feats, names, (counts, nb201_features.additive_names())


def oneproxy(data: Path, encoding_only: bool = False):
    with open(data / "oneproxy_nb201" / "oneproxy_nb201_latency_ms.csv", newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    y = np.array([[float(x) for x in r[3:]] for r in body])
    y[y < 0] = np.nan
    m, devs, feats, names, additive = _nb201_matrix([r[2] for r in body], y, header[3:], encoding_only)
    return m, devs, [f"nb201_{r[1]}" for r in body], feats, names, additive


def help_nb201(data: Path):
    with gzip.open(data / "help_latency" / "nasbench201_latency_ms.csv.gz", "rt", newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    pick = np.sort(np.random.default_rng(0).choice(len(body), HELP_SUBSET, replace=False))
    body = [body[i] for i in pick]
    y = np.array([[float(x) for x in r[2:]] for r in body])
    m, devs, feats, names, additive = _nb201_matrix([r[1] for r in body], y, header[2:], False)
    return m, devs, [f"nb201_{r[0]}" for r in body], feats, names, additive


def ncnn(data: Path):
    with open(data / "ncnn_benchmark" / "ncnn_benchmark_long.csv", newline="", encoding="utf-8") as f:
        recs = list(csv.DictReader(f))
    runs = sorted({int(r["run_id"]) for r in recs})
    models = sorted({r["model"] for r in recs})
    cells: dict[tuple[int, str], list[float]] = defaultdict(list)
    for r in recs:
        if r["avg_ms"]:
            cells[(int(r["run_id"]), r["model"])].append(float(r["avg_ms"]))
    m = np.full((len(runs), len(models)), np.nan)
    for (run, model), vals in cells.items():
        m[runs.index(run), models.index(model)] = vals[0]
    feats = np.array([[1.0 if name.endswith("_int8") else 0.0] for name in models])
    return m, [f"run{r}" for r in runs], models, feats, ["int8"], None


def deepbench_gemm(data: Path):
    with open(data / "deepbench" / "deepbench_results_long.csv", newline="", encoding="utf-8") as f:
        recs = [
            r
            for r in csv.DictReader(f)
            if r["section"] == "Dense Matrix Multiplication" and r["metric"] == "time" and r["value_ms"]
        ]
    cells: dict[tuple[str, tuple], list[float]] = defaultdict(list)
    for r in recs:
        p = json.loads(r["params"])
        key = (int(p["m"]), int(p["n"]), int(p["k"]), p["a transpose"], p["b transpose"])
        cells[(f"{r['mode']}:{r['device']}:{r['sheet']}", key)].append(float(r["value_ms"]))
    devs = sorted({d for d, _ in cells})
    kernels = sorted({k for _, k in cells}, key=str)
    m = np.full((len(devs), len(kernels)), np.nan)
    for (d, k), vals in cells.items():
        pos = [v for v in vals if v > 0]
        if pos:
            m[devs.index(d), kernels.index(k)] = math.exp(np.mean(np.log(pos)))
    feats = np.array(
        [
            [
                math.log(a),
                math.log(b),
                math.log(c),
                math.log(2 * a * b * c),
                math.log(a * c + c * b + a * b),
                float(ta == "T"),
                float(tb == "T"),
            ]
            for a, b, c, ta, tb in kernels
        ]
    )
    cols = [f"gemm_{a}x{b}x{c}_{ta}{tb}" for a, b, c, ta, tb in kernels]
    return m, devs, cols, feats, ["log_m", "log_n", "log_k", "log_flops", "log_elements", "a_t", "b_t"], None


CONVERTERS = {
    "oneproxy_nb201": lambda d: oneproxy(d),
    "oneproxy_nb201_onehot": lambda d: oneproxy(d, encoding_only=True),
    "help_nb201": help_nb201,
    "ncnn_benchmark": ncnn,
    "deepbench_gemm": deepbench_gemm,
}


def convert(name: str, data: Path = DEFAULT_DATA, out: Path = DEFAULT_OUT, force: bool = False) -> Path:
    """Write (or reuse) ``out/name.csv`` and return its path. A CSV older than the converters' code is rewritten."""
    path = out / f"{name}.csv"
    code = max(Path(mod.__file__).stat().st_mtime for mod in (sys.modules[__name__], nb201_features, cf_data))
    if path.exists() and not force and path.stat().st_mtime >= code:
        return path
    matrix, row_labels, col_labels, feats, fnames, additive = CONVERTERS[name](data)
    write_csv(path, matrix, row_labels, col_labels, feats, fnames, *(additive or (None, None)))
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.convert_datasets", description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="*", help=f"any of {', '.join(CONVERTERS)} (default: all)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--force", action="store_true", help="rewrite existing CSVs")
    args = p.parse_args(argv)
    for name in args.names:
        if name not in CONVERTERS:
            p.error(f"unknown data set {name!r}; choose from {', '.join(CONVERTERS)}")
    for name in args.names or CONVERTERS:
        print(convert(name, args.data, args.out, args.force), file=sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
