"""Benchmark: how far a first profile's predictions are from each block's own time (docs/performance.md#cold-start).

    PYTHONPATH=. .venv/bin/python -m tools.bench_cold_start [--model vgg11] [--size 224] [--sample 0.3] [--seeds 0,1,2]

Per seed: a fresh in-process rr-server, one edge node that profiles the model once (`--sample`, that seed), then the
edge's block predictions as the planner gets them (`gather_costs`: measured, predicted or cold-start, calibrated to
the profile's whole-model time) against each block run alone here (ONNX Runtime, the node's settings, median of 5
after 2 warm-ups). Prints one JSON object: per seed and block the provenance, predicted and measured ms; per seed the
blocks not measured, their worst ratio predicted / measured, the median of |log ratio|, and the sum of
|predicted - measured| over the sum measured (`abs_error_share`: the error in ms that a plan would see). A shared
machine's noise is in both columns alike; compare ratios within one run. `summary`: the medians of the last two over
the seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

import rr_edge
from rr_edge.meters.model import DEFAULT_POWER
from rr_edge.offload import gather_costs
from rr_edge.onnx_io import load_model
from rr_edge.slicing import Slicer
from rr_server import Server, ServerConfig
from tools._models import cached_export
from tools._timing import session_median_ms


def one_seed(path: Path, sample: float, seed: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, Server(ServerConfig(data_dir=Path(tmp), listen="127.0.0.1:0")) as srv:
        assert srv.address is not None
        with rr_edge.connect(srv.address, "cold-start-edge", energy="model") as node:
            node.netprofile(max_mb=1)
            node.profile(path, sample=sample, seed=seed)
            graph = node.blocks(path)
            costs = gather_costs(node.client, "cold-start-edge", graph, DEFAULT_POWER, wait_s=30)
            slicer = Slicer(load_model(path), graph)
            settings = node.settings
            blocks = [
                {
                    "index": b.index,
                    "ops": list(b.ops[:3]),
                    "provenance": p.latency_provenance,
                    "predicted_ms": round(p.latency_ms, 4),
                    "measured_ms": round(
                        session_median_ms(slicer.slice(b.index, b.index).SerializeToString(), settings, 5, warmup=2), 4
                    ),
                }  # fmt: skip
                for b, p in zip(graph.blocks, costs.edge, strict=True)
            ]
    unmeasured = [b for b in blocks if b["provenance"] != "measured"]
    ratios = [b["predicted_ms"] / b["measured_ms"] for b in unmeasured]
    missed_ms = sum(abs(b["predicted_ms"] - b["measured_ms"]) for b in unmeasured)
    return {
        "seed": seed,
        "blocks": blocks,
        "unmeasured": len(ratios),
        "worst_ratio": min(ratios, key=lambda r: -abs(np.log(r))) if ratios else None,
        "median_abs_log_ratio": round(statistics.median(abs(float(np.log(r))) for r in ratios), 3) if ratios else None,
        "abs_error_share": round(missed_ms / sum(b["measured_ms"] for b in unmeasured), 3) if unmeasured else None,
    }


def _median(values: list[float | None]) -> float | None:
    """The median of the values a run had (None: every block was measured in every run)."""
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="vgg11")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--sample", type=float, default=0.3)
    p.add_argument("--seeds", default="0,1,2")
    args = p.parse_args(argv)
    path = cached_export(args.model, args.size)
    seeds = [int(s) for s in args.seeds.split(",")]
    out = {
        "model": f"{args.model}@{args.size}",
        "sample": args.sample,
        "runs": [one_seed(path, args.sample, s) for s in seeds],
    }
    out["summary"] = {
        key: _median([r[key] for r in out["runs"]]) for key in ("median_abs_log_ratio", "abs_error_share")
    }
    json.dump(out, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
