"""Fit-time cost of cf_cpp's per-row kernel residual (docs/cf_cpp.md, "Model"), with it off and on, in one run.

    python -m tools.bench_cf_kernel [--repeats 3] [--threads 0] [--data-dir .cache/cf_datasets] [--ranks]

Cases: oneproxy_nb201 and help_nb201 (real NAS-Bench-201 latencies with 57 architecture features; converted by
``python -m tools.convert_datasets``; skipped with a note when absent) with a random ``fill`` of their entries, and two
synthetic matrices with Gaussian column features (rank-4 interaction, a linear feature effect, a per-row pairwise
feature interaction, noise): 100 x 5,000 with 15 features and 50 x 3,000 with 34 (the count of
`rr_server.predictor.feature_vector`), 30% observed. Per case: the median fit time of ``--repeats`` fits with
``kernel_residual`` off and on (rank 16, 10 iterations) and their difference, the kernel stage's cost. Prints one
JSON object. Wall-clock times on a shared machine are noisy: compare the two columns of one run.

``--ranks`` times nothing; it prints each case's kernel rank instead, the dimension of the column basis the engine
builds (a pivoted Cholesky of the column kernel on the standardised features, stopped where every column's remainder
is below ``tol`` times the largest diagonal; tol 1e-10 as in the engine, and 1e-4), next to the bound 1 + F + F(F+1)/2.
A row solves in the basis when it has at least twice as many entries as the rank (docs/cf_cpp.md, Model).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from cf_cpp import CFModel
from tools.cf_data import load_csv

Case = tuple[np.ndarray, np.ndarray, np.ndarray, int, int, np.ndarray]


def synthetic(n_rows: int, n_cols: int, n_features: int, density: float = 0.3, seed: int = 0) -> Case:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_cols, n_features))
    interaction = 0.3 * rng.standard_normal((n_rows, 4)) @ rng.standard_normal((4, n_cols))
    pairwise = 0.2 * rng.standard_normal((n_rows, 1)) * (x[:, 0] * x[:, 1])
    log_values = interaction + 0.5 * x[:, :3].sum(axis=1) + pairwise
    rows, cols = np.nonzero(rng.random((n_rows, n_cols)) < density)
    values = np.exp(log_values[rows, cols] + 0.02 * rng.standard_normal(rows.size))
    return rows, cols, values, n_rows, n_cols, x


def real(path: Path, fill: float, seed: int = 0) -> Case:
    m = load_csv(path)
    keep = np.random.default_rng(seed).random(m.size) < fill
    assert m.features is not None
    return m.rows[keep], m.cols[keep], m.values[keep], m.n_rows, m.n_cols, m.features


def kernel_rank(features: np.ndarray, tol: float) -> int:
    """Rank of the engine's column kernel (1 + x.x'/F)^2 on the standardised features, to `tol` (numpy, independent
    of the C++ column basis)."""
    std = features.std(axis=0)
    x = np.where(std > 1e-12, (features - features.mean(axis=0)) / np.where(std > 1e-12, std, 1.0), 0.0)
    f = features.shape[1]
    remainder = (1 + (x * x).sum(axis=1) / f) ** 2
    stop = tol * remainder.max()
    basis: list[np.ndarray] = []
    while remainder.max() > stop:
        p = int(np.argmax(remainder))
        column = (1 + x @ x[p] / f) ** 2 - sum(b * b[p] for b in basis)
        column = column / np.sqrt(remainder[p])
        remainder = remainder - column**2
        remainder[p] = 0.0
        basis.append(column)
    return len(basis)


def fit_times(case: Case, kernel_residual: bool, repeats: int, threads: int) -> list[float]:
    times = []
    for _ in range(repeats):
        model = CFModel(rank=16, iterations=10, seed=0, threads=threads, kernel_residual=kernel_residual)
        t0 = time.perf_counter()
        model.fit(*case)
        times.append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.bench_cf_kernel", description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="cf_cpp threads (0 = all cores)")
    p.add_argument("--data-dir", type=Path, default=Path(".cache/cf_datasets"))
    p.add_argument("--ranks", action="store_true", help="print each case's kernel rank instead of timing fits")
    args = p.parse_args(argv)
    cases: dict[str, Case] = {}
    skipped = []
    for name, fill in (("oneproxy_nb201", 0.3), ("oneproxy_nb201", 0.5), ("help_nb201", 0.5)):
        path = args.data_dir / f"{name}.csv"
        if path.exists():
            cases[f"{name} fill {fill}"] = real(path, fill)
        else:
            skipped.append(f"{name}: {path} missing (python -m tools.convert_datasets {name})")
    cases["synthetic 100 x 5000, 15 features"] = synthetic(100, 5000, 15)
    cases["synthetic 50 x 3000, 34 features"] = synthetic(50, 3000, 34)
    if args.ranks:
        ranks = {}
        for name, case in cases.items():
            f = case[5].shape[1]
            ranks[name] = {"features": f, "bound": 1 + f + f * (f + 1) // 2}
            ranks[name].update({f"rank_tol_{tol:g}": kernel_rank(case[5], tol) for tol in (1e-10, 1e-4)})
        print(json.dumps({"ranks": ranks, "skipped": skipped}, indent=2))
        return 0
    results = {}
    for name, case in cases.items():
        off = float(np.median(fit_times(case, False, args.repeats, args.threads)))
        on = float(np.median(fit_times(case, True, args.repeats, args.threads)))
        results[name] = {"entries": int(case[0].size), "fit_s_off": off, "fit_s_on": on, "kernel_stage_s": on - off}
    out = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg_1m": os.getloadavg()[0]},
        "config": {"repeats": args.repeats, "threads": args.threads, "rank": 16, "iterations": 10},
        "cases": results,
        "skipped": skipped,
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
