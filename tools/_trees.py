"""Benchmarks comparing two checkouts: a measure run in a subprocess that imports one tree's code, the trees run
alternately round after round (the machine's load hits both alike), and each tree's medians with their ratios."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def trees(baseline: Path | None) -> dict[str, Path]:
    """This tree, after `baseline` (another checkout, e.g. `git worktree add DIR <commit>`) when one is given."""
    return {"baseline": baseline.resolve(), "this": REPO} if baseline else {"this": REPO}


def run_in_tree(tree: Path, module: str, call: str) -> dict[str, Any]:
    """`call` (Python source calling a function of `module`, one of this repository's tools, that returns a JSON-able
    dict) in a subprocess whose `rr_edge` and `rr_proto` are `tree`'s (first on PYTHONPATH); what it returned."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    code = f"import json, sys; sys.path.insert(0, {str(REPO)!r}); from {module} import *; sys.path.pop(0); "
    code += f"print(json.dumps({call}))"  # the module comes from this tree; it imports rr_edge inside the call
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=tree, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"worker for {tree} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def alternate(
    trees: Mapping[str, Path], rounds: int, module: str, call: str, measures: Sequence[str], load_avg: list[float]
) -> dict[str, Any]:
    """`run_in_tree(tree, module, call)` for each tree in turn, `rounds` times (the 1-minute load average before each
    appended to `load_avg`); per tree the median of each measure over all its runs' lists of values, and where a
    baseline ran, the ratios baseline / this (None over 0); `runs`: every result, by tree and round. Each result names
    its tree in `code`."""
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label in trees}
    for _ in range(rounds):
        for label, tree in trees.items():
            load_avg.append(round(os.getloadavg()[0], 2))
            runs[label].append(run_in_tree(tree, module, call))
    entry: dict[str, Any] = {}
    for label, results in runs.items():
        entry[label] = {m: statistics.median(t for r in results for t in r[m]) for m in measures}
        entry[label]["code"] = results[0]["code"]
    if "baseline" in trees:
        entry["ratio_baseline_over_this"] = {  # None where this tree's median is 0 (a count that went to none)
            m: entry["baseline"][m] / entry["this"][m] if entry["this"][m] else None for m in measures
        }
    entry["runs"] = runs
    return entry


def add_tree_args(p: argparse.ArgumentParser, models: str, repeat: int, repeat_help: str) -> None:
    """The options of a benchmark comparing trees model by model (`compare_models`)."""
    p.add_argument("--models", default=models)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--repeat", type=int, default=repeat, help=repeat_help)
    p.add_argument("--rounds", type=int, default=3, help="subprocesses per model (and per tree)")
    p.add_argument("--baseline", type=Path, help="a checkout to compare with, run alternately with this tree")


def compare_models(
    args: argparse.Namespace,
    module: str,
    call: Callable[[Path], str],
    measures: Sequence[str],
    keys: Sequence[str],
    report: dict[str, Any],
) -> None:
    """For each of `--models` (exported at `--size`): `alternate` the trees on `call(path)`, into `report[name]`
    after the `keys` of this tree's first result (what was measured: blocks, split, ...)."""
    from tools._models import cached_export

    for name in args.models.split(","):
        path = cached_export(name, args.size)
        entry = alternate(trees(args.baseline), args.rounds, module, call(path), measures, report["load_avg_1min"])
        report[name] = {**{k: entry["runs"]["this"][0][k] for k in keys}, **entry}
