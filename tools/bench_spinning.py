"""Whole-model latency with rr-server's session options against the same with ONNX Runtime's spinning pool threads.

    PYTHONPATH=. .venv/bin/python -m tools.bench_spinning [--models alexnet,resnet18] [--rounds 15] \
        > docs/results/ort_spinning_bench.json

rr-server opens every slice with `rr_server.sessions.session_options()` (ONNX Runtime's default thread count, pool
threads not spinning, so they leave the cores to gRPC's threads). This times each model, on random input, through
both sessions in alternation (per round: 2 untimed runs, then the mean of 5 timed runs, for each session in turn) and
reports the medians over the rounds and their ratio. What it shows: the cost of not spinning for a slice of many
small operators, which the server's own timings (its cloud profiler) include and an edge-style measurement does not.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import onnxruntime as ort

from rr_edge.session import random_feeds
from rr_server.sessions import session_options
from tools._models import cached_export

MODELS = ("alexnet", "resnet18", "resnet34", "mobilenet_v2")


def _mean_ms(session: ort.InferenceSession, feeds: dict[str, np.ndarray], runs: int) -> float:
    t0 = time.perf_counter()
    for _ in range(runs):
        session.run(None, feeds)
    return (time.perf_counter() - t0) / runs * 1e3


def bench(name: str, size: int, rounds: int) -> dict[str, object]:
    path = str(cached_export(name, size))
    sessions = {
        "server": ort.InferenceSession(path, session_options(), providers=["CPUExecutionProvider"]),
        # session_options() minus its one setting: ONNX Runtime's defaults, spinning pool threads
        "spinning": ort.InferenceSession(path, ort.SessionOptions(), providers=["CPUExecutionProvider"]),
    }
    feeds = random_feeds(sessions["server"])
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(rounds):
        for key, session in sessions.items():
            _mean_ms(session, feeds, 2)
            times[key].append(_mean_ms(session, feeds, 5))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "model": name,
        "server_ms": round(med["server"], 2),
        "spinning_ms": round(med["spinning"], 2),
        "server_over_spinning": round(med["server"] / med["spinning"], 3),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--rounds", type=int, default=15)
    args = p.parse_args()
    rows = [bench(m, args.size, args.rounds) for m in args.models.split(",")]
    print(json.dumps({"input_size": args.size, "rounds": args.rounds, "ort": ort.__version__, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
