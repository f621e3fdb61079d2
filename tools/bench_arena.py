"""Benchmark: a server session with and without ONNX Runtime's CPU memory arena (docs/performance.md).

    PYTHONPATH=. .venv/bin/python tools/bench_arena.py [--models resnet18,mobilenet_v2] [--size 224] [--repeat 15]

The middle third of each model's atomic blocks, opened three ways with rr-server's session options: the arena on
(ONNX Runtime's default), off (rr-server's setting), and on but shrunk after every run (the run option
`memory.enable_memory_arena_shrinkage`). Round robin within each repetition, in this process with rr-server's malloc
tuning; median run time and its ratio to the arena's. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import onnxruntime as ort  # noqa: E402

from rr_edge.blocks import analyze  # noqa: E402
from rr_edge.onnx_io import load_model  # noqa: E402
from rr_edge.session import random_feeds  # noqa: E402
from rr_edge.slicing import Slicer  # noqa: E402
from rr_proto.allocator import tune_allocator  # noqa: E402
from rr_server.sessions import session_options  # noqa: E402
from tools._models import cached_export  # noqa: E402


def variants(onnx_bytes: bytes) -> dict:
    """One run function per setting, each on its own session."""
    runs = {}
    for name, arena, shrink in (("arena", True, False), ("no_arena", False, False), ("arena_shrunk", True, True)):
        options = session_options()
        options.enable_cpu_mem_arena = arena
        session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
        run_options = ort.RunOptions()
        if shrink:
            run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        feeds = random_feeds(session)
        runs[name] = lambda s=session, f=feeds, o=run_options: s.run(None, f, o)
    return runs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet18,mobilenet_v2")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeat", type=int, default=15)
    args = ap.parse_args()
    tune_allocator()
    out: dict = {"benchmark": "arena", "size": args.size, "repeat": args.repeat, "models": {}}
    for model_name in args.models.split(","):
        model = load_model(cached_export(model_name, args.size))
        graph = analyze(model)
        n = len(graph.blocks)
        runs = variants(Slicer(model, graph).slice(n // 3, 2 * n // 3).SerializeToString())
        for run in runs.values():  # warm-up
            run()
            run()
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.repeat):
            for name, run in runs.items():
                start = time.perf_counter()
                run()
                times[name].append((time.perf_counter() - start) * 1000.0)
        base = statistics.median(times["arena"])
        out["models"][model_name] = {
            name: {"median_ms": round(statistics.median(t), 3), "ratio_to_arena": round(statistics.median(t) / base, 3)}
            for name, t in times.items()
        }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
