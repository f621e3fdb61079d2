"""`rr-edge demo`: the main job, self-contained (rr_edge.demo)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rr_edge.commands._common import fraction, output_console, positive_float, positive_int, print_json
from rr_edge.demo import DemoOptions, check_verified, run_demo


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    d = DemoOptions()
    p = subparsers.add_parser("demo", help="run the whole system end to end on this machine")
    p.add_argument("--model", default=d.model, help="torchvision model (default %(default)s)")
    p.add_argument(
        "--input-size",
        type=positive_int,
        default=d.input_size,
        metavar="N",
        help="image side, input 1 x 3 x N x N (default %(default)s)",
    )
    p.add_argument(
        "--sample", type=fraction, default=d.sample, help="fraction of unique blocks to profile (default %(default)g)"
    )
    p.add_argument(
        "--max-mb",
        type=positive_float,
        default=d.max_mb,
        help="largest network-profile payload in MiB (default %(default)g)",
    )
    p.add_argument(
        "--repeat",
        type=positive_int,
        default=d.repeat,
        help="requests per measured plan, and the plan's amortization (default %(default)s)",
    )
    p.add_argument(
        "--objective",
        choices=("latency", "energy", "pareto"),
        default=d.objective,
        help="the plan to choose (default %(default)s)",
    )
    p.add_argument("--out", type=Path, default=d.out_dir, help="where the model and the plot go (default %(default)s)")
    p.add_argument("--json", action="store_true", help="also print the summary as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    options = DemoOptions(
        model=args.model, input_size=args.input_size, sample=args.sample, max_mb=args.max_mb,
        repeat=args.repeat, objective=args.objective, out_dir=args.out,
    )  # fmt: skip
    stderr = bool(args.json)  # stdout carries only the JSON then
    summary = run_demo(options, output_console(stderr))
    if args.json:
        print_json(summary)
    check_verified(summary, options.tolerance)  # after the summary: a failed check still shows what was measured
    return 0
