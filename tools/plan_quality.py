"""Plan quality on this machine: is the chosen latency-optimal plan as fast, measured, as the best plan tried?

An in-process rr-server on loopback; the edge profiles a 30% sample of resnet18's blocks and its network, plans for
latency, then every Pareto plan, the chosen plan and `--random` random single/two-split plans are run over gRPC
(`--repeat` requests each, interleaved round-robin, slices uploaded beforehand,
median latency). Prints JSON with the ratio
chosen / best measured (target <= 1.10, issue 5).

    python -m tools.plan_quality [--model resnet18] [--random 10] [--repeat 15] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from rr_edge.api import EdgeNode
from rr_edge.export import export_model
from rr_edge.measure import measure_splits
from rr_edge.session import OrtSettings
from rr_server import Server, ServerConfig


def plan_quality(
    model: str = "resnet18", n_random: int = 10, repeat: int = 15, seed: int = 0, work_dir: Path | None = None
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="rr-planq-") as tmp:
        base = Path(work_dir or tmp)
        path = base / f"{model}.onnx"
        if not path.exists():
            export_model(model, path)
        with Server(ServerConfig(data_dir=base / "data", listen="127.0.0.1:0")) as server:
            assert server.address is not None
            with EdgeNode(server.address, "planq-edge", settings=OrtSettings(intra_op_threads=1)) as node:
                node.netprofile(max_mb=32)
                node.profile(path, sample=0.3, seed=seed)
                time.sleep(1.0)  # the server's debounced refresh and its own cloud timings
                report = node.plan(path, "latency", preloaded=True)
                n = report.blocks
                rng = random.Random(seed)
                splits = {(p.i, p.j) for p in report.pareto} | {(report.chosen.i, report.chosen.j)}
                while len(splits) < len(report.pareto) + 1 + n_random:
                    i = rng.randint(-1, n - 2)
                    splits.add((i, rng.choice([n - 1, rng.randint(i + 1, n - 1)])))  # i < j: really offloads
                shape = node.blocks(path).inputs[0].shape
                x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
                measured = {
                    split: m.median_ms
                    for split, m in measure_splits(lambda s: node.runner(path, s), sorted(splits), x, repeat).items()
                }
    chosen = (report.chosen.i, report.chosen.j)
    best = min(measured, key=measured.__getitem__)
    return {
        "model": model,
        "blocks": n,
        "chosen": list(chosen),
        "chosen_measured_ms": measured[chosen],
        "chosen_predicted_ms": report.chosen.latency_ms,
        "best": list(best),
        "best_measured_ms": measured[best],
        "ratio_chosen_to_best": measured[chosen] / measured[best],
        "plans_tried": len(measured),
        "measured_ms": {f"{i},{j}": ms for (i, j), ms in measured.items()},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet18")
    p.add_argument("--random", type=int, default=10)
    p.add_argument("--repeat", type=int, default=15)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    json.dump(plan_quality(args.model, args.random, args.repeat, args.seed), sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
