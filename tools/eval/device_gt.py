"""On the device: the ground truth. Every unique block of every model run as a standalone slice (the slices
`rr_edge.slicing.Slicer` makes, the sessions and inputs of `rr_edge.profiler`), and the whole model end to end.

Timing follows `tools.eval.timing` (window mean inside the class cgroup). Energy is the `model` meter's rule,
declared active watts x latency: MODELLED, never measured.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnxruntime as ort

from rr_edge.blocks import analyze
from rr_edge.cpus import ort_threads
from rr_edge.meters.model import resolve_power
from rr_edge.onnx_io import load_model
from rr_edge.session import OrtSettings, random_feeds
from rr_edge.slicing import Slicer
from rr_server.config import DEFAULT_PROVIDERS
from rr_server.sessions import resolve_providers, session_options

from .config import SERVER_CLASS, Timing
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


def _time_onnx(
    data: bytes, open_session: Callable[[bytes], Any], switch: CgroupSwitch, timing: Timing
) -> dict[str, Any]:
    session = open_session(data)
    feeds = random_feeds(session)
    times, _ = window(lambda: session.run(None, feeds), switch, timing)
    return stats(times)


def session_opener(device: str) -> tuple[Callable[[bytes], Any], dict[str, Any]]:
    """How `device` opens a model, and its settings as recorded: an edge class as `rr-edge` does (`OrtSettings`), the
    server class as `rr-server` opens a slice (`rr_server.sessions.session_options`: its pool threads do not spin)."""
    if device == SERVER_CLASS:
        providers = resolve_providers(DEFAULT_PROVIDERS)
        recorded = {"execution_provider": providers[0], "intra_op_threads": ort_threads(0), "spinning": False}
        return lambda data: ort.InferenceSession(data, session_options(), providers=providers), recorded
    settings = OrtSettings().resolved()
    recorded = {"execution_provider": settings.provider, "intra_op_threads": settings.intra_op_threads}
    return settings.create_session, recorded


def profile_all(
    path: Path, name: str, timing: Timing, switch: CgroupSwitch, active_w: float, device: str = ""
) -> dict[str, Any]:
    """Every unique block of one model, and the model end to end, each opened as `device` opens it."""
    switch.free()
    started = time.perf_counter()
    model = load_model(path)
    graph = analyze(model, name)
    slicer = Slicer(model, graph)
    open_session, settings = session_opener(device)
    measurements: dict[str, Any] = {}
    for block in graph.blocks:
        if block.signature in measurements:
            continue
        lat = _time_onnx(slicer.slice(block.index, block.index).SerializeToString(), open_session, switch, timing)
        measurements[block.signature] = {"latency_ms": lat, "energy_mJ": active_w * lat["mean"]}
        gc.collect()
    whole = _time_onnx(model.SerializeToString(), open_session, switch, timing)
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
        "settings": settings,
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
        out["models"][name] = profile_all(Path(path), name, timing, switch, power.active_w, spec["device"])
    return out
