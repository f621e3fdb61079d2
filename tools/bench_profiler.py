"""Benchmark: the edge profilers (issue 4 targets; docs/performance.md#profiling).

    python tools/bench_profiler.py [--model resnet152] [--size 224] [--sample 0.3] [--max-mb 256]
                                   [--upload-max-mb 64] [--seed 0]

* DNN profiler: `run_profile` of `--sample` of the model's unique block signatures against `rr-server` (a subprocess
  on a free loopback port, fresh data dir), registration, slice uploads and the report included; target < 60 s for
  30% of resnet152 at 224. Baseline in the same run: one full-model inference with the same ONNX Runtime settings
  (median of 5 after warm-up), giving the ratio profiling time / one inference.
* Network profiler: `run_netprofile` from 1 KB to `--max-mb` MiB in both directions, and the slice-upload probes
  from 64 KiB to `--upload-max-mb`, against the same server; target < 30 s up to 256 MB on loopback.

Energy comes from `--energy` (default auto; on a machine without meters that is the declared power model, and the
output says so). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rr_edge.blocks import analyze  # noqa: E402
from rr_edge.client import Client  # noqa: E402
from rr_edge.meters import select_meter  # noqa: E402
from rr_edge.netprofile import DEFAULT_UPLOAD_MAX_MB, NetProfileConfig, run_netprofile, summary  # noqa: E402
from rr_edge.onnx_io import load_model  # noqa: E402
from rr_edge.profiler import ProfileConfig, run_profile  # noqa: E402
from rr_edge.session import OrtSettings  # noqa: E402
from tools._models import cached_export  # noqa: E402
from tools._server import rr_server  # noqa: E402
from tools._timing import session_median_ms  # noqa: E402


def one_inference_ms(model_bytes: bytes, settings: OrtSettings, runs: int = 5) -> float:
    return session_median_ms(model_bytes, settings, runs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet152")
    ap.add_argument("--path", type=Path, help="use this ONNX file instead of exporting --model")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--sample", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-mb", type=float, default=256)
    ap.add_argument("--upload-max-mb", type=float, default=DEFAULT_UPLOAD_MAX_MB)
    ap.add_argument("--energy", default="auto")
    ap.add_argument("--skip-net", action="store_true")
    args = ap.parse_args()

    path = args.path or cached_export(args.model, args.size)
    settings = OrtSettings().resolved()
    meter = select_meter(args.energy)
    out: dict[str, object] = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "loadavg_start": os.getloadavg()},
        "settings": {"provider": settings.provider, "intra_op_threads": settings.intra_op_threads},
        "energy": {"source": meter.source, "measured": meter.measured, "meter": meter.description},
    }
    t0 = time.perf_counter()
    model = load_model(path)
    load_s = time.perf_counter() - t0
    graph = analyze(model, f"{args.model}@{args.size}")
    baseline_ms = one_inference_ms(model.SerializeToString(), settings)

    stages: dict[str, float] = {}
    marks: dict[str, float] = {}

    def progress(stage: str, done: int, total: int, label: str) -> None:
        now = time.perf_counter()
        marks.setdefault(stage, now)
        stages[stage] = now - marks[stage]

    with (
        tempfile.TemporaryDirectory(prefix="rr-bench-") as tmp,
        rr_server(Path(tmp), providers="cuda,cpu") as address,
        Client(address) as client,
    ):
        t0 = time.perf_counter()
        result = run_profile(
            client, "bench-edge", model, graph.model, settings=settings, meter=meter,
            config=ProfileConfig(sample=args.sample, seed=args.seed), progress=progress,
        )  # fmt: skip
        profile_s = time.perf_counter() - t0
        run = result.model_run
        out["dnn_profile"] = {
            "model": graph.model,
            "blocks": len(graph.blocks),
            "unique_signatures": result.unique_signatures,
            "profiled": len(result.layers),
            "model_load_s": round(load_s, 3),
            "total_s": round(profile_s, 3),
            "stages_s": {k: round(v, 3) for k, v in stages.items()},
            "one_inference_ms": round(baseline_ms, 3),
            "ratio_to_one_inference": round(profile_s * 1000.0 / baseline_ms, 1),
            "e2e_over_sum_of_blocks": round(run.e2e_ratio, 3) if run else None,
            "median_cv": round(statistics.median(m.latency.cv for m in result.layers), 3),
            "target_s": 60,
        }
        if not args.skip_net:
            t0 = time.perf_counter()
            config = NetProfileConfig(max_mb=args.max_mb, upload_max_mb=args.upload_max_mb)
            profile = run_netprofile(client, "bench-edge", config, meter=meter)
            net_s = time.perf_counter() - t0
            s = summary(profile)
            keys = ("chosen_model", "poly4_error", "affine_error", "pwl_error", "bandwidth_MBps")
            out["net_profile"] = {
                "max_mb": args.max_mb,
                "upload_max_mb": args.upload_max_mb,
                "total_s": round(net_s, 3),
                "target_s": 30,
                **{d: {k: s[d][k] for k in keys} for d in ("uplink", "downlink", "upload") if s[d]},  # type: ignore[index]
            }
    meter.close()
    out["machine"]["loadavg_end"] = os.getloadavg()  # type: ignore[index]
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
