"""On the device: the ground truth. Every unique block of every model run as a standalone slice (the slices
`rr_edge.slicing.Slicer` makes, the sessions and inputs of `rr_edge.profiler`), and the whole model end to end.

Timing follows `tools.eval.timing` (window mean inside the class cgroup). Energy is the `model` meter's rule,
declared active watts x latency: MODELLED, never measured.
"""

from __future__ import annotations

import gc
import logging
import time
from pathlib import Path
from typing import Any

from rr_edge.blocks import analyze
from rr_edge.meters.model import resolve_power
from rr_edge.onnx_io import load_model
from rr_edge.profiler import random_feeds
from rr_edge.session import OrtSettings
from rr_edge.slicing import Slicer

from .config import Timing
from .throttle import CgroupSwitch
from .timing import stats, window

log = logging.getLogger(__name__)


def block_record(block: Any) -> dict[str, Any]:
    return {
        "index": block.index,
        "signature": block.signature,
        "ops": list(block.ops),
        "flops": int(block.flops),
        "param_bytes": int(block.param_bytes),
        "input_bytes": int(block.input_bytes),
        "output_bytes": int(block.output_bytes),
    }


def _time_onnx(data: bytes, settings: OrtSettings, switch: CgroupSwitch, timing: Timing) -> dict[str, Any]:
    session = settings.create_session(data)
    feeds = random_feeds(session)
    times, _ = window(lambda: session.run(None, feeds), switch, timing)
    return stats(times)


def profile_all(path: Path, name: str, timing: Timing, switch: CgroupSwitch, active_w: float) -> dict[str, Any]:
    """Every unique block of one model, and the model end to end."""
    switch.free()
    started = time.perf_counter()
    model = load_model(path)
    graph = analyze(model, name)
    slicer = Slicer(model, graph)
    settings = OrtSettings().resolved()
    measurements: dict[str, Any] = {}
    for block in graph.blocks:
        if block.signature in measurements:
            continue
        lat = _time_onnx(slicer.slice(block.index, block.index).SerializeToString(), settings, switch, timing)
        measurements[block.signature] = {"latency_ms": lat, "energy_mJ": active_w * lat["mean"]}
        gc.collect()
    whole = _time_onnx(model.SerializeToString(), settings, switch, timing)
    total = sum(measurements[b.signature]["latency_ms"]["mean"] for b in graph.blocks)
    return {
        "model": name,
        "blocks": [block_record(b) for b in graph.blocks],
        "measurements": measurements,
        "whole_model": {
            "latency_ms": whole,
            "sum_of_blocks_ms": total,
            "e2e_over_sum_of_blocks": whole["mean"] / total,
            "energy_mJ": active_w * whole["mean"],
        },
        "settings": {"execution_provider": settings.provider, "intra_op_threads": settings.intra_op_threads},
        "elapsed_s": time.perf_counter() - started,
    }


def run(spec: dict[str, Any], switch: CgroupSwitch) -> dict[str, Any]:
    timing = Timing(**spec["timing"])
    power = resolve_power(device_class=spec["device"])[0]
    out: dict[str, Any] = {
        "device": spec["device"],
        "energy_source": "model",
        "latency": "window mean (ms)",
        "power_w": power.active_w,
        "models": {},
    }
    for name, path in spec["models"].items():
        log.info("ground truth: %s on %s", name, spec["device"])
        out["models"][name] = profile_all(Path(path), name, timing, switch, power.active_w)
    return out
