"""On the device: the ground truth. Every unique block of every model timed (and metered) by the product's own
profiler (`rr_edge.profiler.profile_model` with sample = 1.0), plus the whole model end to end.

Each timed window runs in the device class's cgroup (`ThrottledMeter`); the energy is the `model` meter's (declared
watts x measured time), never a measurement.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from rr_edge.blocks import analyze
from rr_edge.meters.model import ModelMeter
from rr_edge.onnx_io import load_model
from rr_edge.profiler import ProfileConfig, TimingPolicy, profile_model
from rr_edge.session import OrtSettings

from .config import Timing
from .throttle import CgroupSwitch, ThrottledMeter

log = logging.getLogger(__name__)


def timing_policy(t: Timing) -> TimingPolicy:
    return TimingPolicy(
        warmup_runs=t.warmup, min_runs=t.min_runs, min_time_s=t.min_time_s, max_runs=t.max_runs, rounds=1
    )


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


def profile_all(path: Path, name: str, timing: Timing, switch: CgroupSwitch) -> dict[str, Any]:
    """Every unique block of one model, and the model end to end."""
    switch.free()
    started = time.perf_counter()
    model = load_model(path)
    graph = analyze(model, name)
    policy = timing_policy(timing)
    meter = ThrottledMeter(ModelMeter(), switch)
    cfg = ProfileConfig(sample=1.0, seed=0, timing=policy, whole_model=True, e2e_timing=policy, sweep=policy)
    result = profile_model(model, graph, settings=OrtSettings(), meter=meter, config=cfg)
    measurements = {
        m.signature: {
            "latency_ms": m.latency.to_json(),
            "samples": m.latency.samples,
            "energy_mJ": m.energy_mJ,
            "energy_source": m.energy_source,
        }
        for m in result.layers
    }
    return {
        "model": name,
        "blocks": [block_record(b) for b in graph.blocks],
        "measurements": measurements,
        "whole_model": result.model_run.to_json() if result.model_run else None,
        "settings": result.to_json()["settings"],
        "elapsed_s": time.perf_counter() - started,
    }


def run(spec: dict[str, Any], switch: CgroupSwitch) -> dict[str, Any]:
    timing = Timing(**spec["timing"])
    out: dict[str, Any] = {"device": spec["device"], "energy_source": "model", "models": {}}
    for name, path in spec["models"].items():
        log.info("ground truth: %s on %s", name, spec["device"])
        out["models"][name] = profile_all(Path(path), name, timing, switch)
    return out
