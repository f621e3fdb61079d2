"""On the device: the online phase of RoaD-RuNNer against the testbed's server, and the measurement of every plan.

    report      the node registers and reports a p-sample of its blocks (the measurements of the ground-truth run,
                the blocks chosen exactly as `rr-edge profile` chooses them)
    settle      wait until the server's cloud profiler has timed every reported slice (no background load later)
    netprofile  the node profiles its link (`run_netprofile`), after `settle`: while the cloud profiler times big
                slices, the server's CPU is busy and small probes measured several times their quiet-host time
    execute     per model: predictions -> plans (latency, energy, pre-offloaded) and the four baselines; then every
                distinct split is RUN on the testbed (head/tail here, middle on the server) and the middle slice's
                upload is timed on a fresh copy (a protobuf doc_string tag makes its content hash new), from the
                status query to the server's opening of it, as the runner makes a slice ready for its first request

Latency of a plan as measured = mean per-request latency over a throttled window (`tools.eval.timing`) (+ the measured
upload of its middle slice when the plan uploads weights at run time: RoaD-RuNNer, Offload All, NS-nonOffloaded).
Energy is MODELLED from measured times with the class's declared watts: compute x local ms + idle x remote ms
(+ (idle + tx) x upload ms).

Only ONNX Runtime compute is throttled (plans: `Runner`'s `around_local` hook, around the head and tail runs only):
the network profile, the upload probes and a plan's remote calls run at the host's speed inside the device's
namespace (the link, not the CPU, limits them; the boards have 4-8 cores for I/O, our classes a fraction of one host
CPU, and a throttled gRPC client would measure the emulation, not the link).
"""

from __future__ import annotations

import gc
import logging
import time
import uuid
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from rr_edge.blocks import analyze
from rr_edge.client import Client
from rr_edge.device import describe_device
from rr_edge.meters.model import ModelMeter, resolve_power
from rr_edge.netmodel import NetworkModel
from rr_edge.netprofile import NetProfileConfig, run_netprofile
from rr_edge.offload import gather_costs, make_plan, make_runner, max_abs_diff, neurosurgeon_inputs
from rr_edge.onnx_io import load_model
from rr_edge.planner import PlanInputs, plan_cost
from rr_edge.profiler import ProfileResult, features_of, report_profile, select_signatures, wait_for_cloud
from rr_edge.profiles import LatencyStats, LayerMeasurement, ModelMeasurement
from rr_edge.runner import RunnerConfig, modelled_mJ
from rr_edge.session import OrtSettings
from rr_edge.slicing import Slicer

from .config import Timing
from .throttle import CgroupSwitch
from .timing import stats, window

log = logging.getLogger(__name__)

# Plans executed per model: name -> whether its weights are already on the server (no upload charged).
PLANS = {
    "roadrunner": False,
    "roadrunner_energy": False,
    "roadrunner_preoffloaded": True,
    "offload_none": False,
    "offload_all": False,
    "neurosurgeon": True,
    "neurosurgeon_non_offloaded": False,
}


def connect(server: str, wait_s: float = 120.0) -> Client:
    client = Client(server)
    deadline = time.monotonic() + wait_s
    while not client.healthy(timeout_s=2.0):
        if time.monotonic() > deadline:
            raise RuntimeError(f"server {server} not healthy after {wait_s:.0f} s")
        time.sleep(1.0)
    return client


def _stats(d: dict[str, float]) -> LatencyStats:
    """The reported statistics; the window mean stands in for the median (see tools/eval/timing.py)."""
    return LatencyStats(d["mean"], d["p10"], d["p90"], d["cv"], int(d["n"]))


def sampled_result(
    name: str,
    graph: Any,
    slicer: Slicer,
    gt: dict[str, Any],
    measured: set[str],
    sample: float,
    seed: int,
    model_bytes: bytes | None = None,
) -> ProfileResult:
    """The ProfileResult `rr-edge profile --sample p` would report, built from the ground-truth measurements."""
    signatures = [b.signature for b in graph.blocks]
    chosen = select_signatures(signatures, measured, sample, seed, {b.signature: b.flops for b in graph.blocks})
    first: dict[str, Any] = {}
    for b in graph.blocks:
        first.setdefault(b.signature, b)
    layers, slices = [], {}
    for sig in chosen:
        block, m = first[sig], gt["measurements"][sig]
        slices[sig] = slicer.slice(block.index, block.index).SerializeToString()
        layers.append(
            LayerMeasurement(
                sig,
                block.index,
                features_of(block),
                _stats(m["latency_ms"]),
                m["energy_mJ"],
                "model",
                slice_bytes=len(slices[sig]),
            )
        )
    whole = gt["whole_model"]
    model_run = ModelMeasurement(
        graph.model_key,
        tuple(signatures),
        _stats(whole["latency_ms"]),
        whole["sum_of_blocks_ms"],
        whole["energy_mJ"],
        "model",
    )
    unique = set(signatures)
    return ProfileResult(
        name,
        seed,
        len(unique),
        len(unique & measured),
        layers,
        model_run,
        OrtSettings().resolved(),
        "model",
        False,
        slices=slices,
        model_bytes=model_bytes,
    )


def _seed(base: int, node: str, k: int) -> int:
    """Each node draws its own sample (as separate devices would), reproducibly."""
    return base + 1000 * zlib.crc32(node.encode()) + k


def report(spec: dict[str, Any], switch: CgroupSwitch) -> dict[str, Any]:
    node, gt = spec["device"], spec["groundtruth"]
    switch.free()
    client = connect(spec["server"])
    client.register_node(node, describe_device(OrtSettings(), energy_source="model"))
    out: dict[str, Any] = {"device": node, "models": {}}
    for k, (name, path) in enumerate(spec["models"].items()):
        model = load_model(path)
        graph = analyze(model, name)
        measured = client.list_measured_signatures(node)
        result = sampled_result(
            name,
            graph,
            Slicer(model, graph),
            gt["models"][name],
            measured,
            spec["sample"],
            _seed(spec["seed"], node, k),
            Path(path).read_bytes(),
        )
        report_profile(client, node, result, max_upload_bytes=spec.get("max_upload_mb", 2048) * 1024 * 1024)
        # The cloud profiler times this model's slices now; the next model's slicing would share the host's CPUs
        # with it (in the full run its whole-model times came out up to 2x the server's ground truth).
        uploaded = [m.signature for m in result.layers if m.slice_id]
        wait_for_cloud(client, {name: graph}, uploaded, poll_s=0.25, stall_s=spec.get("stall_s", 30))
        out["models"][name] = {
            "reported": [m.signature for m in result.layers],
            "uploaded": uploaded,
            "unique": result.unique_signatures,
            "already_measured": result.already_measured,
        }
    client.close()
    return out


def netprofile(spec: dict[str, Any], switch: CgroupSwitch) -> dict[str, Any]:
    """The node's network profile (reported to the server by `run_netprofile`) and its raw samples."""
    switch.free()
    node = spec["device"]
    client = connect(spec["server"])
    t0 = time.perf_counter()
    config = NetProfileConfig(max_mb=spec["netprofile_max_mb"], upload_max_mb=spec["upload_probe_max_mb"])
    prof = run_netprofile(client, node, config, meter=ModelMeter())
    out: dict[str, Any] = {"device": node, "netprofile_s": time.perf_counter() - t0}
    out["network"] = {
        d: {
            "chosen_model": p.chosen_model,
            "poly4_error": p.poly4_error,
            "affine_error": p.affine_error,
            "pwl_error": p.pwl_error,
            "samples": [[s.bytes, s.ms] for s in p.samples],
        }
        for d, p in (("uplink", prof.uplink), ("downlink", prof.downlink), ("upload", prof.upload))
        if p is not None
    }
    client.close()
    return out


def settle(spec: dict[str, Any], switch: CgroupSwitch) -> dict[str, Any]:
    """Poll the cloud node until every expected signature is measured and every model timed whole (or nothing moves
    for long)."""
    switch.free()
    client = connect(spec["server"])
    graphs = {name: analyze(load_model(path), name) for name, path in spec["models"].items()}
    expected = set(spec["signatures"])
    start = time.monotonic()
    done, whole = wait_for_cloud(
        client, graphs, expected, poll_s=2.0, stall_s=spec.get("stall_s", 30), max_s=spec.get("max_s", 900)
    )
    client.close()
    return {
        "expected": len(expected),
        "measured": len(done & expected),
        "cloud_measured_total": len(done),
        "models_timed_whole": len(whole),
        "waited_s": time.monotonic() - start,
    }


def _tagged(data: bytes) -> bytes:
    """The same slice with a unique ModelProto.doc_string (field 6) appended: same size, new content hash."""
    tag = f"rr-eval upload probe {uuid.uuid4().hex}".encode()
    return data + bytes([0x32, len(tag)]) + tag


def measure_split(
    slicer: Slicer,
    graph: Any,
    split: tuple[int, int],
    client: Client,
    timing: Timing,
    switch: CgroupSwitch,
    x: np.ndarray,
    power: Any,
    reference: dict | None,
    links: tuple[NetworkModel, NetworkModel],
) -> dict[str, Any]:
    """Run one split in a timing window. Its edge energy (model) is charged as the planner charges it, from measured
    times: local compute at active power, the server's run (the time it reports) at idle, and the rest of the round
    trip at tx and rx power, shared between the two directions as the node's network models predict them."""
    switch.free()
    # only the edge's ONNX Runtime runs are throttled (the gRPC client runs at host speed, as in the network profile)
    runner = make_runner(
        slicer, graph, split, client, config=RunnerConfig(timeout_s=300.0), around_local=switch.throttled
    )
    _, results = window(lambda: runner.run(x), CgroupSwitch(), timing)
    runner.close()
    outputs = results[-1].outputs
    offloads = runner.slices.offloads
    total = np.array([r.total_ms for r in results])
    remote = np.array([r.remote_ms for r in results])
    server = np.array([r.remote_parts()[0] for r in results])
    energy = [modelled_mJ(r, power, *links) for r in results]
    rec: dict[str, Any] = {
        "split": list(split),
        "runs_ms": total.tolist(),
        "latency_ms": stats(total.tolist()),
        "remote_ms": float(np.mean(remote)),
        "server_ms": float(np.mean(server)),
        "head_ms": float(np.mean([r.head_ms for r in results])),
        "tail_ms": float(np.mean([r.tail_ms for r in results])),
        "energy_mJ": float(np.mean(energy)),
        "fallback_requests": sum(r.fallback for r in results),
        "bytes_up": results[-1].bytes_up,
        "bytes_down": results[-1].bytes_down,
        "max_abs_diff_vs_local": max_abs_diff(outputs, reference) if reference else 0.0,
        "upload_ms": 0.0,
        "upload_bytes": 0,
        "upload_mJ": 0.0,
    }
    if offloads:
        i, j = split
        data = _tagged(slicer.slice(i + 1, j).SerializeToString())
        t0 = time.perf_counter()
        # as the runner makes it ready before its first request: status query, upload, session opened
        up = client.upload_slice(data, label=f"{graph.model}[{i + 1}:{j}] probe", timeout_s=600.0, load=True)
        upload_ms = (time.perf_counter() - t0) * 1e3
        client.unload_model(up.slice_id)
        if up.cached:
            raise RuntimeError(f"upload probe of {graph.model}[{i + 1}:{j}] was already cached")
        rec.update(upload_ms=upload_ms, upload_bytes=len(data), upload_mJ=power.watts("tx") * upload_ms)
        del data
    rec["_outputs"] = outputs
    gc.collect()
    return rec


def _cost(inputs: PlanInputs | None, i: int, j: int, preloaded: bool) -> dict[str, Any] | None:
    if inputs is None:
        return None
    plan = plan_cost(replace(inputs, preloaded=preloaded, cached_slices=frozenset()), i, j)
    return {**plan.to_dict(), "breakdown": plan.breakdown}


def execute_model(
    name: str, path: Path, client: Client, node: str, spec: dict[str, Any], switch: CgroupSwitch, power: Any
) -> dict[str, Any]:
    switch.free()
    started = time.perf_counter()
    model = load_model(path)
    graph = analyze(model, name)
    slicer = Slicer(model, graph)
    n = len(graph.blocks)
    costs = gather_costs(client, node, graph, power)
    reports = {
        "latency": make_plan(graph, costs, objective="latency"),
        "energy": make_plan(graph, costs, objective="energy"),
        "preloaded": make_plan(graph, costs, objective="latency", preloaded=True),
    }
    lat = reports["latency"]
    ns_inputs = neurosurgeon_inputs(graph, costs, lat.inputs)
    chosen = {
        "roadrunner": reports["latency"].chosen,
        "roadrunner_energy": reports["energy"].chosen,
        "roadrunner_preoffloaded": reports["preloaded"].chosen,
        **lat.baselines,
    }

    def norm(i: int, j: int) -> tuple[int, int]:
        return (n - 1, n - 1) if i == j else (i, j)

    splits = [norm(n - 1, n - 1)] + [norm(p.i, p.j) for p in chosen.values()]
    splits = list(dict.fromkeys(splits))
    x = np.random.default_rng(spec["seed"]).standard_normal((1, 3, spec["input_size"], spec["input_size"]))
    x = x.astype(np.float32)
    measured: dict[str, Any] = {}
    reference = None
    timing = Timing(**spec["timing"])
    for split in splits:
        log.info("%s on %s: running split %s", name, node, split)
        links = (lat.inputs.uplink, lat.inputs.downlink)
        rec = measure_split(slicer, graph, split, client, timing, switch, x, power, reference, links)
        outputs = rec.pop("_outputs")
        if reference is None:
            reference = outputs
        measured[f"{split[0]},{split[1]}"] = rec
    plans = {}
    for pname, plan in chosen.items():
        i, j = norm(plan.i, plan.j)
        pre = PLANS[pname]
        plans[pname] = {
            "split": [i, j],
            "preloaded": pre,
            "offloaded_blocks": j - i,
            "predicted": _cost(lat.inputs, i, j, pre),
            "predicted_ns": _cost(ns_inputs, i, j, pre),
        }
    return {
        "model": name,
        "blocks": n,
        "plans": plans,
        "measured": measured,
        "pareto": {k: [p.to_dict() for p in r.pareto] for k, r in reports.items()},
        "provenance": costs.provenance_counts(),
        "e2e_correction": costs.e2e_correction,
        "energy_source": costs.energy_source,
        "network_models": {"uplink": lat.inputs.uplink.to_dict(), "downlink": lat.inputs.downlink.to_dict()},
        "elapsed_s": time.perf_counter() - started,
    }


def execute(spec: dict[str, Any], switch: CgroupSwitch) -> dict[str, Any]:
    node = spec["device"]
    switch.free()
    client = connect(spec["server"])
    power = resolve_power(device_class=node)[0]
    out: dict[str, Any] = {"device": node, "energy_source": "model", "models": {}}
    for name, path in spec["models"].items():
        try:
            out["models"][name] = execute_model(name, Path(path), client, node, spec, switch, power)
        except Exception as exc:  # noqa: BLE001 - one model's failure must not cost the others' measurements
            log.exception("%s on %s failed", name, node)
            out.setdefault("errors", {})[name] = f"{type(exc).__name__}: {exc}"
    client.close()
    return out
