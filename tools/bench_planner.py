"""Benchmark of the partition planner: cost of every plan (i, j) + Pareto set, on synthetic models.

    python tools/bench_planner.py [--repeats 15] [--blocks-json BLOCKS.json]

Models: a 1,000-block synthetic chain (over an affine link, and over a link fitted by the paper's quartic) and a
154-block stand-in for resnet152 at 768x768 (activation and weight sizes of resnet152's stages at that resolution,
compute from a flop budget). ``--blocks-json`` adds a real block table
(the output of ``rr-edge blocks PATH --json``) with latencies derived from its flops. Timings are medians over
``--repeats`` runs; the same-run baseline is the paper's Algorithm 1 as a plain Python double loop over (i, j) with
prefix sums plus one sort-and-sweep over all its points, so the ratio is meaningful on a noisy machine.
``plan_total_ms`` is wall-clock (median), ``plan_total_cpu_ms`` the process CPU time (median; robust when other
jobs share the cores; ``meets_target`` uses it), ``plan_total_min_ms`` the fastest run. Prints one JSON object.
Seeds are fixed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from rr_edge.netmodel import NetworkModel, fit_network_model
from rr_edge.planner import PlanInputs, choose, evaluate_all, inputs_from_blocks, pareto
from tools._timing import median_ms, times_ms

LINK = dict(rtt_ms=2.0, bytes_per_ms=80_000.0)  # the paper's 80 MB/s link
EDGE_FLOPS_PER_MS = 20e6  # 20 GFLOP/s edge CPU
EDGE_GPU_FLOPS_PER_MS = 200e6  # 200 GFLOP/s edge GPU (resnet152 stand-in: a front of ~100 plans)
CLOUD_FLOPS_PER_MS = 400e6  # 400 GFLOP/s server
EDGE_POWER_W, IDLE_POWER_W, TX_POWER_W = 6.0, 1.5, 2.5


def _link() -> NetworkModel:
    return NetworkModel.affine(LINK["rtt_ms"], LINK["bytes_per_ms"])


def synthetic_chain(n: int, seed: int = 0) -> PlanInputs:
    """A CNN-like chain: activations shrink with depth, weights grow, compute from flops with noise."""
    rng = np.random.default_rng(seed)
    depth = np.linspace(0, 1, n + 1)
    boundary = (4e6 * np.exp(-3.5 * depth) * rng.uniform(0.5, 1.5, n + 1)).round()
    boundary[-1] = 4000.0
    flops = rng.lognormal(np.log(5e7), 1.0, n)
    weights = (flops / 200 * np.exp(3 * depth[:-1])).round()
    edge_ms = flops / EDGE_FLOPS_PER_MS * rng.uniform(0.8, 1.2, n)
    return PlanInputs(
        edge_ms=edge_ms, edge_mJ=EDGE_POWER_W * edge_ms * rng.uniform(0.9, 1.1, n),
        cloud_ms=flops / CLOUD_FLOPS_PER_MS, upload_bytes=weights, boundary_bytes=boundary,
        idle_power_W=IDLE_POWER_W, tx_power_W=TX_POWER_W, e2e_correction=0.9, uplink=_link(), downlink=_link(),
    )  # fmt: skip


def resnet152_768_standin(seed: int = 1) -> PlanInputs:
    """~150 blocks with resnet152's stage shapes at 768x768 (float32): stem, 3/8/36/3 bottlenecks in 3 parts each."""
    rng = np.random.default_rng(seed)
    stages = [(256, 192, 3), (512, 96, 8), (1024, 48, 36), (2048, 24, 3)]  # channels, spatial, bottlenecks
    act, w, fl = [3 * 768 * 768 * 4.0, 64 * 384 * 384 * 4.0, 64 * 192 * 192 * 4.0], [37632.0, 256.0], [1.4e10, 1e7]
    for ch, hw, count in stages:
        parts = 3  # each bottleneck as three sub-blocks (conv-bn-relu): ~150 blocks in all
        for _ in range(count):
            for _ in range(parts):
                act.append(ch * hw * hw * 4.0)
                w.append(ch * ch * 4.0 * 1.1 / parts)
                fl.append(2.0 * ch * ch / 4 * hw * hw * 9 / parts)
    act += [2048 * 4.0, 2048 * 4.0, 1000 * 4.0]
    w += [0.0, 2048 * 1000 * 4.0]
    fl += [2048 * 24 * 24.0, 2 * 2048 * 1000.0]
    n = len(w)
    boundary = np.array(act[: n + 1])
    flops = np.array(fl[:n])
    edge_ms = flops / EDGE_GPU_FLOPS_PER_MS * rng.uniform(0.8, 1.2, n)
    return PlanInputs(
        edge_ms=edge_ms, edge_mJ=EDGE_POWER_W * edge_ms, cloud_ms=flops / CLOUD_FLOPS_PER_MS,
        upload_bytes=np.array(w), boundary_bytes=boundary, idle_power_W=IDLE_POWER_W, tx_power_W=TX_POWER_W,
        uplink=_link(), downlink=_link(),
    )  # fmt: skip


def with_poly_link(inp: PlanInputs) -> PlanInputs:
    """The same model over a link whose fitted curve is the paper's quartic (congestion on large messages)."""
    sizes = np.logspace(3, np.log10(256e6), 16)
    x = sizes / sizes.max()
    link = fit_network_model(sizes, LINK["rtt_ms"] + sizes / LINK["bytes_per_ms"] * (1 + 0.3 * x**2)).chosen
    assert link.kind == "poly4"
    return replace(inp, uplink=link, downlink=link)


def from_blocks_json(path: str) -> PlanInputs:
    with open(path) as fh:
        blocks = json.load(fh)["blocks"]
    flops = np.array([float(b["flops"]) for b in blocks])
    edge_ms = flops / EDGE_FLOPS_PER_MS + 0.01
    return inputs_from_blocks(
        blocks, edge_ms=edge_ms, edge_mJ=EDGE_POWER_W * edge_ms, cloud_ms=flops / CLOUD_FLOPS_PER_MS + 0.01,
        idle_power_W=IDLE_POWER_W, tx_power_W=TX_POWER_W, uplink=_link(), downlink=_link(),
    )  # fmt: skip


def algorithm1_loop(inp: PlanInputs) -> int:
    """Same-run baseline: the paper's Algorithm 1 as a Python double loop (prefix sums) + a sort-based sweep."""
    n, up, down = inp.n_blocks, inp.uplink, inp.downlink
    c = inp.e2e_correction
    pe = (c * np.concatenate(([0.0], np.cumsum(inp.edge_ms)))).tolist()
    pc = np.concatenate(([0.0], np.cumsum(inp.cloud_ms))).tolist()
    pj = (c * np.concatenate(([0.0], np.cumsum(inp.edge_mJ)))).tolist()
    pw = np.concatenate(([0.0], np.cumsum(inp.upload_bytes))).tolist()
    bb = inp.boundary_bytes.tolist()
    (ua, ub), (da, db) = up.affine_terms() or (0, 0), down.affine_terms() or (0, 0)
    pts = [(pe[n], pj[n])]
    for r in range(n):
        head, head_mJ, up_ms = pe[r], pj[r], ua + ub * bb[r]
        for j in range(r, n):
            cloud = pc[j + 1] - pc[r]
            xfer = up_ms + da + db * bb[j + 1] + ua + ub * (pw[j + 1] - pw[r])
            lat = head + xfer + cloud + pe[n] - pe[j + 1]
            en = head_mJ + pj[n] - pj[j + 1] + inp.tx_power_W * xfer + inp.idle_power_W * cloud
            pts.append((lat, en))
    pts.sort()
    front, best = 0, float("inf")
    for _, en in pts:
        if en < best:
            best, front = en, front + 1
    return front


def _median_ms(fn: Callable[[], Any], repeats: int) -> float:
    return round(median_ms(fn, repeats), 3)


def bench(name: str, inp: PlanInputs, repeats: int, target_ms: float | None) -> dict[str, Any]:
    table = evaluate_all(inp)
    front = pareto(table)
    totals = times_ms(lambda: pareto(evaluate_all(inp)), repeats)
    total = round(statistics.median(totals), 3)
    cpu = times_ms(lambda: pareto(evaluate_all(inp)), repeats, time.process_time)
    affine = inp.uplink.kind == inp.downlink.kind == "affine"  # the loop models affine links only
    fronts: list[int] = []
    baseline = _median_ms(lambda: fronts.append(algorithm1_loop(inp)), 1 if inp.n_blocks > 300 else 3)
    return {
        "model": name,
        "blocks": inp.n_blocks,
        "plans": len(table),
        "pareto_size": len(front),
        "evaluate_all_ms": _median_ms(lambda: evaluate_all(inp), repeats),
        "pareto_ms": _median_ms(lambda: pareto(table), repeats),
        "plan_total_ms": total,
        "plan_total_min_ms": round(min(totals), 3),
        "plan_total_cpu_ms": round(statistics.median(cpu), 3),
        "choose_latency_ms": _median_ms(lambda: choose(inp, "latency"), repeats),
        "target_ms": target_ms,
        "meets_target": None if target_ms is None else statistics.median(cpu) < target_ms,
        "baseline_python_loop_ms": baseline,
        "speedup_vs_python_loop": round(baseline / total, 1) if total > 0 else None,
        "pareto_size_matches_baseline": all(f == len(front) for f in fronts) if affine else None,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--blocks-json", help="a `rr-edge blocks --json` output to benchmark as well")
    args = ap.parse_args(argv)
    cases = [
        ("synthetic-1000", synthetic_chain(1000), 50.0),
        ("resnet152@768-standin", resnet152_768_standin(), 5.0),
        ("synthetic-1000, poly4 link", with_poly_link(synthetic_chain(1000)), 50.0),
    ]
    if args.blocks_json:
        cases.append((args.blocks_json, from_blocks_json(args.blocks_json), 5.0))
    out = {
        "machine": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "cpus": os.cpu_count(),
            "load_avg_1min": round(os.getloadavg()[0], 2),
        },
        "repeats": args.repeats,
        "results": [bench(name, inp, args.repeats, target) for name, inp, target in cases],
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
