"""Evaluate the cf_cpp engine and baselines on any long-format latency CSV.

    python -m tools.cf_eval --csv FILE [--protocol random|new-row|cold-col] [--fill 0.3] [--seeds 3] [--first-seed 0]
                            [--json] [--leave-one-out]

The CSV has columns ``row,col,value`` and optional numeric column features ``f_*`` (constant per col); values must be
positive (non-positive / missing ones are dropped). Protocols:

* random:   a random fraction ``fill`` of the observed entries trains, the rest is scored.
* new-row:  20% of the rows are held out; the other rows are sampled at ``fill``; each held row is folded in from
            n = 1, 3, 5, 10 revealed entries and scored on its remaining entries. ``methods`` holds the largest n,
            ``by_revealed`` every n. With ``--leave-one-out`` every row is held out in turn, alone, and the rest
            of the matrix is in the fit (a new node joining a fleet whose other nodes have all reported).
* cold-col: 20% of the columns are held out entirely (predicted from features only); the rest is sampled at ``fill``.

Metrics (held-out entries only, mean over seeds; ``methods_std`` has the standard deviations): log_rmse (natural log),
mape and median_ape (%), within10 (% of predictions within +-10% of the truth), fit_s (seconds).
Methods are described in ``tools/cf_methods.py``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from tools import cf_methods, cf_protocols
from tools.cf_data import Matrix, load_csv

PROTOCOLS = ("random", "new-row", "cold-col")


def _stat(values: list[float], fn) -> float | None:
    finite = [v for v in values if np.isfinite(v)]
    return float(fn(finite)) if finite else None  # None (JSON null): no seed could score this


def _aggregate(per_seed: list[dict[str, dict[str, float]]]) -> tuple[dict, dict]:
    mean: dict[str, dict[str, float | None]] = {}
    std: dict[str, dict[str, float | None]] = {}
    for name in per_seed[0]:
        keys = per_seed[0][name].keys()
        mean[name] = {k: _stat([s[name][k] for s in per_seed], np.mean) for k in keys}
        std[name] = {k: _stat([s[name][k] for s in per_seed], np.std) for k in keys}
    return mean, std


def evaluate(
    m: Matrix,
    protocol: str,
    fill: float,
    seeds: int,
    methods: tuple[str, ...] = cf_methods.METHODS,
    reveals: tuple[int, ...] = cf_protocols.REVEALS,
    leave_one_out: bool = False,
    first_seed: int = 0,
) -> dict:
    """Run one protocol over ``seeds`` seeds (first_seed, first_seed + 1, ...) and return the report dict."""
    if leave_one_out and protocol != "new-row":
        raise ValueError("leave-one-out applies to the new-row protocol only")
    report: dict = {
        "protocol": protocol,
        "fill": fill,
        "seeds": seeds,
        "first_seed": first_seed,
        "n_rows": m.n_rows,
        "n_cols": m.n_cols,
        "n_observed": m.size,
        "n_features": 0 if m.features is None else int(m.features.shape[1]),
    }
    seed_range = range(first_seed, first_seed + seeds)
    if protocol == "new-row":
        report["leave_one_out"] = leave_one_out
        runs = [cf_protocols.new_row(m, methods, fill, s, reveals, leave_one_out) for s in seed_range]
        by_n = {}
        for n in reveals:
            mean, std = _aggregate([run[n] for run in runs])
            by_n[str(n)] = {"methods": mean, "methods_std": std}
        report["revealed"] = max(reveals)
        report["methods"] = by_n[str(max(reveals))]["methods"]
        report["methods_std"] = by_n[str(max(reveals))]["methods_std"]
        report["by_revealed"] = by_n
        return report
    run = cf_protocols.random_fill if protocol == "random" else cf_protocols.cold_col
    report["methods"], report["methods_std"] = _aggregate([run(m, methods, fill, s) for s in seed_range])
    return report


def _print_table(report: dict, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ("method", "log_rmse", "mape %", "median_ape %", "within10 %", "fit_s"):
        table.add_column(col, justify="right" if col != "method" else "left")

    def fmt(v: float | None, spec: str) -> str:
        return "n/a" if v is None else format(v, spec)

    for name, r in report["methods"].items():
        table.add_row(
            name,
            fmt(r["log_rmse"], ".4f"),
            fmt(r["mape"], ".2f"),
            fmt(r["median_ape"], ".2f"),
            fmt(r["within10"], ".1f"),
            fmt(r["fit_s"], ".2f"),
        )
    Console().print(table)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.cf_eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--csv", required=True, type=Path, help="long-format CSV: row,col,value[,f_*]")
    p.add_argument("--protocol", choices=PROTOCOLS, default="random")
    p.add_argument("--fill", type=float, default=0.3, help="fraction of the (remaining) entries used for training")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1")
    p.add_argument("--methods", default=",".join(cf_methods.METHODS), help="comma-separated subset")
    p.add_argument("--reveal", default=",".join(map(str, cf_protocols.REVEALS)), help="new-row: revealed counts")
    p.add_argument("--leave-one-out", action="store_true", help="new-row: hold out every row in turn, alone")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not 0 < args.fill <= 1:
        p.error("--fill must be in (0, 1]")
    if args.seeds < 1:
        p.error("--seeds must be >= 1")
    if args.leave_one_out and args.protocol != "new-row":
        p.error("--leave-one-out applies to --protocol new-row only")
    methods = tuple(s for s in args.methods.split(",") if s)
    for name in methods:
        if name not in cf_methods.METHODS:
            p.error(f"unknown method {name!r}; choose from {', '.join(cf_methods.METHODS)}")
    try:
        reveals = tuple(int(s) for s in args.reveal.split(",") if s)
    except ValueError:
        p.error("--reveal must be comma-separated integers")
    try:
        m = load_csv(args.csv)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = {
        "csv": str(args.csv),
        **evaluate(m, args.protocol, args.fill, args.seeds, methods, reveals, args.leave_one_out, args.first_seed),
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        protocol = args.protocol + (" (leave-one-out)" if args.leave_one_out else "")
        _print_table(report, f"{args.csv.name}: {protocol}, fill {args.fill}, {args.seeds} seeds")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
