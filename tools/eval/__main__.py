"""`python -m tools.eval COMMAND [--quick] [--input-size N] [--out DIR] [--models a,b] [--classes c,d]`

    collect   testbed up -> ground truth, report, settle, netprofile, execute -> testbed down (raw JSON in
              .cache/eval/NAME)
    analyze   raw JSON -> OUT/eval.json, ground-truth CSVs, fig3..fig6 PNGs and OUT/README.md
    all       collect, then analyze
    rederive  OUT/eval.json -> OUT/README.md's findings again (a committed run whose raw data is gone, after a
              change to how they are read off the numbers; the numbers and the method text stay)

Needs root (network namespaces, tc, cgroups). Full run: the ten paper models on four emulated classes; --quick: three
small models. --input-size N exports the models at N x N (default 224) and names the run NAME-N (e.g. quick-512).
Output: docs/results/ (full) or docs/results/NAME/ (any other run: quick, quick-512, ...) unless --out.
Exit status 1 when `collect` or `all` did not measure everything (a device's plans, a model, the cloud profiler's
timings): `all` still writes the report, which lists what is missing at the top.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

from .config import EvalConfig, from_options
from .missing import describe


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def exit_on_signals() -> None:
    """SIGTERM (kill) and SIGHUP (a closed terminal) raise SystemExit, so the testbed's teardown (a `finally`) runs, as
    it does on Ctrl-C."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _terminate)


def parse(argv: list[str] | None = None) -> tuple[argparse.Namespace, EvalConfig]:
    p = argparse.ArgumentParser(prog="python -m tools.eval", description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=("collect", "analyze", "all", "rederive"))
    p.add_argument("--quick", action="store_true", help="the reduced run (< 10 min)")
    p.add_argument("--out", type=Path, help="output directory (default docs/results[/NAME])")
    p.add_argument("--models", help="comma-separated override of the model set")
    p.add_argument("--classes", help="comma-separated override of the edge classes")
    p.add_argument("--input-size", type=int, help="export the models at N x N instead of 224 (run named NAME-N)")
    p.add_argument("--name", help="run name: work and output dir (default full, quick, or NAME-N with --input-size)")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    models = tuple(args.models.split(",")) if args.models else None
    classes = tuple(args.classes.split(",")) if args.classes else None
    try:
        return args, from_options(args.quick, models, classes, args.input_size, args.name)
    except ValueError as exc:
        p.error(str(exc))


def main(argv: list[str] | None = None) -> int:
    args, cfg = parse(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    out = args.out or cfg.default_out
    exit_on_signals()
    started = time.perf_counter()
    log = logging.getLogger("tools.eval")
    gaps: dict[str, Any] = {}
    try:
        if args.command in ("collect", "all"):
            from .harness import collect

            gaps = collect(cfg)
        if args.command in ("analyze", "all"):
            from .analysis import analyze_run

            print(json.dumps(analyze_run(cfg, out), indent=1))
        if args.command == "rederive":
            from .report import rederive

            log.info("re-derived the findings of %s", rederive(out))
    except RuntimeError as exc:  # a bad option, a worker or the server failed, too little disk: say why, no traceback
        log.error("%s", exc)
        return 1
    log.info("done in %.0f s", time.perf_counter() - started)
    if gaps:
        log.error("the run is incomplete (kept in %s): %s", cfg.work_dir, "; ".join(describe(gaps)))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
