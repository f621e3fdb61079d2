"""Benchmark: graph analysis and slicing speed (issue 2 targets; docs/performance.md#graph).

    python tools/bench_blocks.py [--model resnet152] [--size 768] [--slice-sizes 224,768] [--repeat 3]

Targets: `rr-edge blocks` on resnet152 at 768 under 2 s; slicing all blocks of resnet152 one by
one under 10 s. Wall-clock medians and CPU seconds (process + children) are both reported: on a
shared, loaded machine the CPU time is the stable figure. Baselines measured in the same run, so
the ratios survive noisy machines: `onnx.load` of the same file (analysis should cost a fraction
of reading the model) and `onnx.utils.Extractor` (build once, extract every block) for slicing.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rr_edge.blocks import analyze  # noqa: E402
from rr_edge.onnx_io import load_model  # noqa: E402
from rr_edge.slicing import Slicer  # noqa: E402
from tools._models import cached_export  # noqa: E402

CPU: dict[str, float] = {}  # label -> median CPU seconds (process + children), filled by `timed`


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn: Callable[[], object], repeat: int, label: str = "") -> tuple[float, object]:
    """Median wall seconds of `repeat` calls (and the median CPU seconds under CPU[label])."""
    times, cpus, result = [], [], None
    for _ in range(repeat):
        c0, t0 = _cpu(), time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
        cpus.append(_cpu() - c0)
    if label:
        CPU[label] = round(statistics.median(cpus), 3)
    return statistics.median(times), result


def bench_blocks(path: Path, repeat: int) -> dict[str, object]:
    import onnx

    load_s, _ = timed(lambda: onnx.load(str(path)), repeat)

    def blocks_json() -> str:
        model = load_model(path)
        return json.dumps(analyze(model, path.stem).to_json())

    in_process_s, _ = timed(blocks_json, repeat, "load_analyze_json")
    model = load_model(path)
    analyze_s, graph = timed(lambda: analyze(model, path.stem), repeat)

    def cli() -> None:
        subprocess.run(
            [sys.executable, "-m", "rr_edge.cli", "blocks", str(path), "--json"],
            check=True, stdout=subprocess.DEVNULL, cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip

    cli_s, _ = timed(cli, repeat, "cli")
    return {
        "model_mb": round(path.stat().st_size / 1e6, 1),
        "nodes": len(model.graph.node),
        "blocks": len(graph),  # type: ignore[arg-type]
        "cli_blocks_json_s": round(cli_s, 3),
        "cli_blocks_json_cpu_s": CPU["cli"],
        "load_analyze_json_s": round(in_process_s, 3),
        "load_analyze_json_cpu_s": CPU["load_analyze_json"],
        "analyze_only_s": round(analyze_s, 3),
        "baseline_onnx_load_s": round(load_s, 3),
        "ratio_analyze_to_load": round(analyze_s / load_s, 3),
        "target_s": 2.0,
        "meets_target_wall": cli_s < 2.0,
        "meets_target_cpu": CPU["cli"] < 2.0,
    }


def bench_slicing(path: Path, repeat: int, baseline: bool) -> dict[str, object]:
    model = load_model(path)
    graph = analyze(model, path.stem)

    def slice_all() -> int:
        slicer = Slicer(model, graph)
        return sum(slicer.slice(k, k).ByteSize() for k in range(len(graph)))

    def slice_all_serialized() -> int:
        slicer = Slicer(model, graph)
        return sum(len(slicer.slice(k, k).SerializeToString()) for k in range(len(graph)))

    all_s, _ = timed(slice_all, repeat, "slice_all")
    ser_s, _ = timed(slice_all_serialized, repeat, "slice_all_serialized")
    out: dict[str, object] = {
        "model_mb": round(path.stat().st_size / 1e6, 1),
        "blocks": len(graph),
        "slice_all_blocks_s": round(all_s, 3),
        "slice_all_blocks_cpu_s": CPU["slice_all"],
        "slice_all_blocks_serialized_s": round(ser_s, 3),
        "slice_all_blocks_serialized_cpu_s": CPU["slice_all_serialized"],
        "target_s": 10.0,
        "meets_target_wall": ser_s < 10.0,
    }
    if baseline:
        import onnx.utils

        def extractor_all() -> int:
            ex = onnx.utils.Extractor(model)
            return sum(ex.extract_model(list(b.inputs), list(b.outputs)).ByteSize() for b in graph.blocks)

        ex_s, _ = timed(extractor_all, repeat, "extractor")
        out["baseline_onnx_extractor_s"] = round(ex_s, 3)
        out["baseline_onnx_extractor_cpu_s"] = CPU["extractor"]
        out["speedup_vs_extractor"] = round(ex_s / all_s, 2)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet152")
    ap.add_argument("--size", type=int, default=768, help="input size for the blocks benchmark")
    ap.add_argument("--slice-sizes", default="224,768", help="input sizes for the slicing benchmark")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-baseline", action="store_true", help="skip the (slow) onnx.utils.Extractor baseline")
    args = ap.parse_args()
    result: dict[str, object] = {
        "benchmark": "graph analysis and slicing",
        "model": args.model,
        "python": platform.python_version(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "repeat": args.repeat,
        "blocks": {f"{args.size}": bench_blocks(cached_export(args.model, args.size), args.repeat)},
        "slicing": {
            s: bench_slicing(cached_export(args.model, int(s)), args.repeat, not args.no_baseline)
            for s in args.slice_sizes.split(",")
        },
    }
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
