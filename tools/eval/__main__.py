"""`python -m tools.eval {collect,analyze,all} [--quick] [--input-size N] [--out DIR] [--models a,b] [--classes c,d]`

    collect   testbed up -> ground truth, report, settle, netprofile, execute -> testbed down (raw JSON in
              .cache/eval/NAME)
    analyze   raw JSON -> OUT/eval.json, ground-truth CSVs, fig3..fig6 PNGs and OUT/README.md
    all       collect, then analyze

Needs root (network namespaces, tc, cgroups). Full run: the ten paper models on four emulated classes; --quick: three
small models. --input-size N exports the models at N x N (default 224) and names the run NAME-N (e.g. quick-512).
Output: docs/results/ (full) or docs/results/NAME/ (any other run: quick, quick-512, ...) unless --out.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

from .config import get_config


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.eval", description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=("collect", "analyze", "all"))
    p.add_argument("--quick", action="store_true", help="the reduced run (< 10 min)")
    p.add_argument("--out", type=Path, help="output directory (default docs/results[/NAME])")
    p.add_argument("--models", help="comma-separated override of the model set")
    p.add_argument("--classes", help="comma-separated override of the edge classes")
    p.add_argument("--input-size", type=int, help="export the models at N x N instead of 224 (run named NAME-N)")
    p.add_argument("--name", help="run name: work and output dir (default full, quick, or NAME-N with --input-size)")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    cfg = get_config(args.quick)
    if args.models:
        cfg = replace(cfg, models=tuple(args.models.split(",")))
    if args.classes:
        cfg = replace(cfg, classes=tuple(args.classes.split(",")))
    if args.input_size is not None and args.input_size != cfg.input_size:
        if args.input_size < 32:
            p.error("--input-size must be >= 32")
        cfg = replace(cfg, input_size=args.input_size, name=f"{cfg.name}-{args.input_size}")
    if args.name:
        cfg = replace(cfg, name=args.name)
    out = args.out or cfg.default_out
    signal.signal(signal.SIGTERM, _terminate)  # so that the testbed's teardown (a `finally`) runs on SIGTERM too
    started = time.perf_counter()
    if args.command in ("collect", "all"):
        from .harness import collect

        try:
            collect(cfg)
        except RuntimeError as exc:  # a worker or the server failed, or too little disk: say why, no traceback
            logging.getLogger("tools.eval").error("%s", exc)
            return 1
    if args.command in ("analyze", "all"):
        from .analysis import analyze_run

        summary = analyze_run(cfg, out)
        print(json.dumps(summary, indent=1))
    logging.getLogger("tools.eval").info("done in %.0f s", time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
