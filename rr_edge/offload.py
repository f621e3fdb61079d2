"""From a model and a server to a plan and a runner: the online phase of the edge.

    gather   predictions for this node and for the cloud node, the network profile, the e2e correction
    plan     every plan (i, j) with the planner, the Pareto set, the chosen plan and the four baselines
    runner   the chosen (or a forced) split as slices: head and tail local, the middle offloaded

The cost model and the planner are pure (`rr_edge.planner`); this module gathers their inputs through the client
and turns a split into runnable slices.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import onnx

from rr_edge import neurosurgeon
from rr_edge.baselines import all_baselines
from rr_edge.blocks import Block, BlockGraph
from rr_edge.client import Client, Prediction, ServerInfo
from rr_edge.echo import echo_transfers
from rr_edge.errors import ArgumentError, ModelError, PredictionsPending, RoadRunnerError
from rr_edge.local_model import LocalModel
from rr_edge.meters.model import PowerSpec
from rr_edge.netmodel import NetworkModel
from rr_edge.planner import Plan, PlanInputs, PlanTable, choose, correction_factor, evaluate_all, pareto, plan_cost
from rr_edge.profiler import features_of
from rr_edge.runner import PlanSlices, Runner, RunnerConfig
from rr_edge.session import OrtSettings, run_session
from rr_edge.slicing import Slicer

log = logging.getLogger(__name__)

DEFAULT_OBJECTIVE = "latency"


MAX_CACHE_QUERIES = 4  # slices asked about before planning: each is cut out of the model and hashed
NEUROSURGEON_FITS = 4  # Neurosurgeon fits kept (`_neurosurgeon_fit`): one per model and predictions
# A run planned local measures its link each way with three echoes of each of two sizes: the fastest small one the
# fixed cost per message (noise only adds time), the median large one the cost per byte (`NetworkModel.rescaled`;
# small echoes slowed by a hiccup had made every message 45 ms dearer and bulk transfers 3x cheaper: review).
LINK_PROBE_BYTES = 256 * 1024
LINK_PROBE_SMALL_BYTES = 1024
LINK_PROBE_REPEATS = 3


@dataclass(frozen=True)
class Costs:
    """Per-block predictions of one model on the edge node and on the cloud node, with their provenance."""

    edge: tuple[Prediction, ...]
    cloud: tuple[Prediction, ...]
    e2e_correction: float
    uplink: NetworkModel
    downlink: NetworkModel
    power: PowerSpec
    upload: NetworkModel | None = None  # measured whole slice uploads (None: costed with the uplink)
    cloud_correction: float = 1.0  # the server's whole-model latency over the sum of its block predictions
    max_slice_bytes: int = 0  # the server's limit on one slice (0: none); plans over it cannot run
    max_message_bytes: int = 0  # the largest message either way (0: none); plans sending larger tensors cannot run
    transfer_energy_source: str = ""  # the meter of the network profile's energy fits ("" when none was fitted)
    slice_overhead: tuple[int, ...] = ()  # per block, what its slice holds beyond slice_bytes (`with_slice_overhead`)

    @property
    def energy_source(self) -> str:
        """Where the plans' edge energy comes from: the sources of the block figures, the meter of the network's
        energy fits (netprofile may have read another meter than profile: a GPU node's RAPL beside its NVML), and
        "model" too, since the power model's idle watts cost every wait for the cloud, and its transmit watts every
        transfer whose direction has no metered energy fit."""
        sources = {p.energy_source for p in self.edge if p.energy_source} | {"model"}
        sources |= {self.transfer_energy_source} - {""}
        return ",".join(sorted(sources))

    def provenance_counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for side, preds in (("edge", self.edge), ("cloud", self.cloud)):
            counts: dict[str, int] = {}
            for p in preds:
                counts[p.latency_provenance] = counts.get(p.latency_provenance, 0) + 1
            out[side] = counts
        return out


@dataclass
class PlanReport:
    """Everything `rr-edge plan` prints, plus the full table for plots (its repr shows the plans, not the table and
    the per-block costs behind them)."""

    blocks: int
    table: PlanTable = field(repr=False)
    pareto: list[Plan]
    chosen: Plan
    baselines: dict[str, Plan]
    inputs: PlanInputs = field(repr=False)
    costs: Costs = field(repr=False)
    options: dict[str, Any] = field(default_factory=dict, repr=False)  # make_plan's keyword arguments, for re-planning

    def to_json(self) -> dict[str, Any]:
        """SPEC section 6 `plan --json` (plus energy_source and provenance counts)."""
        return {
            "blocks": self.blocks,
            "pareto": [p.to_dict() for p in self.pareto],
            "chosen": self.chosen.to_dict(),
            "baselines": {name: p.to_dict() for name, p in self.baselines.items()},
            "energy_source": self.costs.energy_source,
            "provenance": self.costs.provenance_counts(),
            "e2e_correction": self.costs.e2e_correction,
            "cloud_correction": self.costs.cloud_correction,
        }


def gather_costs(client: Client, node_id: str, graph: BlockGraph, power: PowerSpec, wait_s: float = 0.0) -> Costs:
    """Ask the server for the predictions of every block on this node and on the cloud node, and the network.

    The server refits in the background after reports arrive; `wait_s` polls that long for complete predictions.
    """
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return _gather_costs(client, node_id, graph, power)
        except PredictionsPending:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.25)


def _gather_costs(client: Client, node_id: str, graph: BlockGraph, power: PowerSpec) -> Costs:
    profile = client.get_network_profile(node_id)
    if profile is None:
        raise RoadRunnerError(
            f"node {node_id!r} has no network profile on the server: run `rr-edge netprofile` (EdgeNode.netprofile)"
        )
    signatures = [b.signature for b in graph.blocks]
    features = [features_of(b) for b in graph.blocks]
    edge = client.predict(node_id, signatures, features, model=graph.model_key)
    server = client.server_info()
    cloud = client.predict(server.cloud_node_id, signatures, features, model=graph.model_key)
    missing = [
        s
        for s in signatures
        for preds in (edge, cloud)
        if s not in preds.by_signature or preds.by_signature[s].latency_provenance == "unknown"
    ]
    if missing:
        raise PredictionsPending(
            f"the server has no latency prediction yet for {len(set(missing))} block(s) (e.g. {missing[0]}): "
            "profile the model on this node first (rr-edge profile, EdgeNode.profile), or retry once the server has "
            "refitted"
        )
    edge_preds, edge_correction, shared = calibrated(
        tuple(edge.by_signature[s] for s in signatures), edge.model_latency_ms, edge.e2e_correction or 1.0
    )
    edge_preds = tuple(_energy_known(p, power) for p in edge_preds)
    cloud_preds = tuple(cloud.by_signature[s] for s in signatures)
    uplink, downlink = NetworkModel.from_dict(profile.uplink.model), NetworkModel.from_dict(profile.downlink.model)
    if cloud.model_latency_ms > 0:
        cloud_correction = e2e_correction(cloud.model_latency_ms, cloud_preds, 1.0)
    else:  # never timed whole there (over the upload limit): the error of the predictions both rows share
        cloud_preds, cloud_correction = tuple(_scaled(p, shared) for p in cloud_preds), 1.0
    return Costs(
        edge=edge_preds,
        cloud=cloud_preds,
        e2e_correction=edge_correction,
        cloud_correction=cloud_correction,
        uplink=uplink,
        downlink=downlink,
        power=power,
        upload=NetworkModel.from_dict(profile.upload.model) if profile.upload is not None else None,
        max_slice_bytes=server.max_slice_bytes,
        max_message_bytes=message_limit(client, server),
        transfer_energy_source=profile.energy_source if uplink.has_energy or downlink.has_energy else "",
    )


def e2e_correction(model_latency_ms: float, blocks: Sequence[Prediction], fallback: float) -> float:
    """The compute correction of one model on one node: the node's measured whole-model latency over the sum of
    the block predictions the plan uses, so that running every block there is predicted as measured, and the CF
    predictions set only how that time divides between blocks (`fallback` without a whole-model measurement)."""
    return correction_factor(model_latency_ms, (p.latency_ms for p in blocks), fallback or 1.0)


def calibrated(
    preds: tuple[Prediction, ...], whole_ms: float, ratio: float
) -> tuple[tuple[Prediction, ...], float, float]:
    """The edge's block predictions for one model, its compute correction, and the error of the predictions of the
    blocks it did not measure (the factor they were scaled by).

    The profile times the whole model (`whole_ms`) and every block standalone (the unsampled ones briefly), and the
    server keeps their `ratio` (whole / sum of blocks). So the blocks this node did not measure are scaled together
    to the standalone total the profile found for them, the measured ones are kept, and every block takes the
    ratio: running them all is predicted as measured, and CF decides only how the unmeasured time divides. One
    factor for every block stretched the measured ones with the cold-start error: a measured Transpose of vit_b_16
    came out at 18 ms (first-use review). When that total is not known (no whole-model time, every block measured,
    or noise putting the measured ones over it), one factor as before, and the error is that factor less the ratio.
    The cloud's predictions share the error: a model over the upload limit is never timed whole there, and with its
    blocks left as predicted, offloading a first profile's vit_b_16 looked 350x cheaper than it measured."""
    measured = sum(p.latency_ms for p in preds if p.latency_provenance == "measured")
    rest = sum(p.latency_ms for p in preds if p.latency_provenance != "measured")
    swept = whole_ms / ratio if whole_ms > 0 else 0.0
    if rest > 0 and swept > measured:
        error = (swept - measured) / rest
        return tuple(_scaled(p, error) for p in preds), ratio, error
    correction = e2e_correction(whole_ms, preds, ratio)
    return preds, correction, correction / ratio


def _energy_known(p: Prediction, power: PowerSpec) -> Prediction:
    """`p`, with the power model's energy (its latency at `active_w`, source "model") where the server knows none: no
    node reported energy yet (a profile whose meter read nothing). Its 0 mJ had made all-local cost nothing, and the
    energy objective chose it (found by review)."""
    if p.energy_provenance != "unknown":
        return p
    return replace(p, energy_mJ=power.active_w * p.latency_ms, energy_source="model")


def _scaled(p: Prediction, factor: float) -> Prediction:
    """`p` times `factor` where it is not measured (latency and energy each)."""
    return replace(
        p,
        latency_ms=p.latency_ms if p.latency_provenance == "measured" else p.latency_ms * factor,
        energy_mJ=p.energy_mJ if p.energy_provenance == "measured" else p.energy_mJ * factor,
    )


def plan_inputs(
    graph: BlockGraph,
    costs: Costs,
    *,
    preloaded: bool = False,
    amortize_over: int = 1,
    cached: Sequence[tuple[int, int]] = (),
) -> PlanInputs:
    """The planner's inputs for one model (pure)."""
    return PlanInputs(
        edge_ms=np.array([p.latency_ms for p in costs.edge]),
        edge_mJ=np.array([p.energy_mJ for p in costs.edge]),
        cloud_ms=np.array([p.latency_ms for p in costs.cloud]),
        upload_bytes=np.array([b.slice_bytes for b in graph.blocks]),
        boundary_bytes=np.array(graph.boundary_bytes()),
        uplink=costs.uplink,
        downlink=costs.downlink,
        idle_power_W=costs.power.watts("idle"),
        tx_power_W=costs.power.watts("tx"),
        rx_power_W=costs.power.watts("rx"),
        preloaded=preloaded,
        cached_slices=frozenset(cached),
        amortize_over=amortize_over,
        e2e_correction=costs.e2e_correction,
        cloud_correction=costs.cloud_correction,
        upload=costs.upload,
        max_slice_bytes=costs.max_slice_bytes or None,
        slice_overhead_bytes=np.array(costs.slice_overhead) if costs.slice_overhead else None,
        local_only=frozenset(b.index for b in graph.blocks if not b.offloadable),
        max_message_bytes=costs.max_message_bytes or None,
    )


def neurosurgeon_inputs(graph: BlockGraph, costs: Costs, inputs: PlanInputs) -> PlanInputs | None:
    """The same inputs with per-block figures from Neurosurgeon's regression, fitted on the measured blocks only,
    calibrated like the CF figures on both nodes: on each, the regression's blocks sum to the same whole-model
    latency as the CF figures' (the corrections are rescaled, the per-block shares are the regression's)."""
    for side, preds in (("edge", costs.edge), ("cloud", costs.cloud)):
        if sum(p.latency_provenance == "measured" for p in preds) < 2:
            log.info("neurosurgeon: fewer than 2 measured %s blocks; deciding on the CF figures", side)
            return None
    # tuples, the fit's cache key: Costs' sequences may be lists (its annotations say tuple; lists raised TypeError)
    fit = _neurosurgeon_fit(tuple(graph.blocks), tuple(costs.edge), tuple(costs.cloud))
    predicted: dict[str, Any] = {k: v.copy() for k, v in fit.items()}
    return replace(
        inputs,
        **predicted,
        e2e_correction=_recalibrated(inputs.e2e_correction, inputs.edge_ms, predicted["edge_ms"]),
        cloud_correction=_recalibrated(inputs.cloud_correction, inputs.cloud_ms, predicted["cloud_ms"]),
    )


@functools.lru_cache(maxsize=NEUROSURGEON_FITS)
def _neurosurgeon_fit(
    blocks: tuple[Block, ...], edge: tuple[Prediction, ...], cloud: tuple[Prediction, ...]
) -> dict[str, np.ndarray]:
    """Neurosurgeon's per-block figures (`edge_ms`, `edge_mJ` where it fits energy, `cloud_ms`), fitted on each
    side's measured blocks (at least 2). Kept per model and predictions: a re-plan changes only the link, and the
    fit (a leave-one-out refit per measured block and candidate) had been 85% of each plan's time, 0.6 s at 1000
    blocks (review). The same inputs fit the same figures, so a kept fit plans exactly as a fresh one."""
    features = [b.to_json() for b in blocks]
    predicted: dict[str, np.ndarray] = {}
    for side, preds in (("edge", edge), ("cloud", cloud)):
        measured = [k for k, p in enumerate(preds) if p.latency_provenance == "measured"]
        model = neurosurgeon.fit(
            [features[k] for k in measured],
            [preds[k].latency_ms for k in measured],
            [preds[k].energy_mJ for k in measured],
        )
        lat, en = model.predict(features)
        predicted[f"{side}_ms"] = lat
        if side == "edge" and en is not None:
            predicted["edge_mJ"] = en
    return predicted


def _recalibrated(correction: float, calibrated_ms: np.ndarray, new_ms: np.ndarray) -> float:
    """The correction that makes `new_ms` sum to the whole-model latency `correction * sum(calibrated_ms)`."""
    return correction_factor(correction * float(np.sum(calibrated_ms)), new_ms, correction)


def make_plan(
    graph: BlockGraph,
    costs: Costs,
    *,
    objective: str = DEFAULT_OBJECTIVE,
    slo_ms: float | None = None,
    preloaded: bool = False,
    amortize_over: int = 1,
    cached: Sequence[tuple[int, int]] = (),
) -> PlanReport:
    """Evaluate every plan, keep the Pareto set, choose one, cost the baselines (pure)."""
    inputs = plan_inputs(graph, costs, preloaded=preloaded, amortize_over=amortize_over, cached=cached)
    table = evaluate_all(inputs)
    front = pareto(table)
    chosen = choose(table, objective, slo_ms)
    minimised = "energy" if objective == "energy" or slo_ms is not None else "latency"  # by Neurosurgeon, too
    baselines = all_baselines(inputs, neurosurgeon_inputs(graph, costs, inputs), minimised)
    options = {"objective": objective, "slo_ms": slo_ms, "preloaded": preloaded, "amortize_over": amortize_over}
    return PlanReport(len(graph.blocks), table, front, chosen, baselines, inputs, costs, {**options, "cached": cached})


def check_plan_of(report: PlanReport, graph: BlockGraph) -> None:
    """ArgumentError unless `report` was planned for `graph`'s blocks (a plan of another model ran at its split,
    checked for drift against its predictions, and `replan` failed with a ValueError of the cost model, review)."""
    planned, given = [p.signature for p in report.costs.edge], [b.signature for b in graph.blocks]
    if planned != given:
        if len(planned) == len(given):  # "another model (13 blocks), not resnet18 (13 blocks)" read as a contradiction
            first = next(k for k, (a, b) in enumerate(zip(planned, given, strict=True)) if a != b)
            differ = f"{len(given)} blocks too, unlike its own from block {first} on: another graph or input size"
        else:
            differ = f"{len(planned)} blocks, not {len(given)}"
        raise ArgumentError(
            f"this plan was made for another model than {graph.model} ({differ}): plan {graph.model} first"
        )


def replan(report: PlanReport, graph: BlockGraph, runner: Runner, amortize_over: int | None = None) -> PlanReport:
    """Plan again with the network the runner measured (after `runner.replan_needed`); its slice counts as cached.
    `amortize_over`: the requests a new slice's upload is spread over now (None: as the report planned)."""
    check_plan_of(report, graph)
    uplink, downlink = runner.network_models()
    if uplink is None or downlink is None:
        return report
    costs = with_link(report.costs, uplink, downlink)
    i, j = runner.slices.split
    cached = [*report.options.get("cached", ()), *([(i + 1, j)] if i < j else [])]
    options = {**report.options, "cached": cached}
    if amortize_over is not None:
        options["amortize_over"] = max(int(amortize_over), 1)
    return make_plan(graph, costs, **options)


def replan_with_probe(
    client: Client, report: PlanReport, graph: BlockGraph, amortize_over: int | None = None
) -> PlanReport:
    """Plan again with the link as measured now: echoes of two sizes each way (`LINK_PROBE_SMALL_BYTES`,
    `LINK_PROBE_BYTES`), timed as the network profile was (`rr_edge.echo.echo_transfers`), against the plan's
    network models (their fixed cost and cost per byte scaled to them, `NetworkModel.rescaled`). A run whose plan is
    local measures no network, so a link that got faster went unnoticed for the rest of the run (testbed: local at 20
    Mbit/s for 200 requests after the link went to 200). `amortize_over`: the requests a new slice's upload is spread
    over now."""
    costs = report.costs

    def echo_ms(transfer: Callable[[int], object], nbytes: int) -> float:
        start = time.perf_counter()
        transfer(nbytes)
        return (time.perf_counter() - start) * 1e3

    measured = []
    with contextlib.ExitStack() as stack:
        up, down, _ = echo_transfers(client, stack, warmup=1, warmup_bytes=LINK_PROBE_SMALL_BYTES)
        for model, transfer in ((costs.uplink, up), (costs.downlink, down)):
            small = min(echo_ms(transfer, LINK_PROBE_SMALL_BYTES) for _ in range(LINK_PROBE_REPEATS))
            large = np.median([echo_ms(transfer, LINK_PROBE_BYTES) for _ in range(LINK_PROBE_REPEATS)])
            measured.append(model.rescaled((LINK_PROBE_SMALL_BYTES, float(small)), (LINK_PROBE_BYTES, float(large))))
    options = dict(report.options)
    if amortize_over is not None:
        options["amortize_over"] = max(int(amortize_over), 1)
    return make_plan(graph, with_link(costs, measured[0], measured[1]), **options)


def with_link(costs: Costs, uplink: NetworkModel, downlink: NetworkModel) -> Costs:
    """`costs` with the link as measured since: the two curves, and the slice upload curve scaled as the uplink
    moved (it is the same link; a re-plan after a 10x slowdown had costed a new slice's upload at the old speed):
    its cost per byte by the uplink's `drift`, its fixed cost by `fixed_drift` too (`NetworkModel.rescaled` moves
    them apart; with `drift` alone, a grown round trip left the upload's fixed cost as it was, and a slower rate
    multiplied it)."""
    upload, old = costs.upload, costs.uplink
    if upload is not None:
        upload = replace(
            upload,
            drift=upload.drift * uplink.drift / old.drift,
            fixed_drift=upload.fixed_drift * uplink.fixed_drift / old.fixed_drift,
        ).rebased()
    return replace(costs, uplink=uplink.rebased(), downlink=downlink.rebased(), upload=upload)


def with_slice_overhead(costs: Costs, graph: BlockGraph, slicer: Slicer) -> Costs:
    """`costs` with `Costs.slice_overhead` measured, where the server limits a slice's size: per block, the bytes its
    slice cut out alone holds beyond `Block.slice_bytes` (the graph's inputs and outputs, value infos, opset imports,
    the framing of nodes and weights). A slice of several blocks holds no more than their sum (one header, the
    boundaries between them as value infos, shared weights and static copies once), so the planner refuses by that
    bound: on slice_bytes alone, a slice 2-6 KB larger than they add up to could be chosen and then refused by the
    server (review). Each block is sized as cut out alone, its weights not copied (`Slicer.slice_size`), once per
    plan (a re-plan keeps them), and only for a model within a factor 2 (and 1 MiB) of the limit: framing adds a few
    bytes per node and weight to what `slice_bytes` counts, and the declarations of a slice's inputs and outputs
    little more, far from doubling it."""
    total = sum(b.slice_bytes for b in graph.blocks)
    if not costs.max_slice_bytes or costs.slice_overhead or 2 * total + (1 << 20) <= costs.max_slice_bytes:
        return costs
    overhead = tuple(max(slicer.slice_size(k, k) - b.slice_bytes, 0) for k, b in enumerate(graph.blocks))
    return replace(costs, slice_overhead=overhead)


def plan_with_server_cache(
    client: Client, model: onnx.ModelProto, graph: BlockGraph, costs: Costs, slicer: Slicer | None = None, **kw: Any
) -> PlanReport:
    """`make_plan`, with the slices the server already holds free of upload: the chosen plan's, and those of the
    plans (MAX_CACHE_QUERIES in all) that would beat it with no upload to pay. Only the chosen one's was asked
    about: a plan whose slice the server held from an earlier run (1.7x faster, measured on the testbed) lost to the
    all-local plan, which pays no upload. Slices over the server's size limit are refused (`with_slice_overhead`)."""
    slicer = slicer or Slicer(model, graph)
    costs = with_slice_overhead(costs, graph, slicer)
    report = make_plan(graph, costs, **kw)
    if kw.get("preloaded"):
        return report
    asked = _worth_asking(report)
    # the chosen plan's slice asked last: the slicer keeps the slices cut last, and that one is the likeliest to run
    on_server = {split: _on_server(client, slicer, split) for split in reversed(asked)}
    held = [split for split in asked if on_server[split]]
    if not held:
        return report
    log.info("slices already on the server, their upload not charged: %s", ", ".join(f"{i + 1}..{j}" for i, j in held))
    return make_plan(graph, costs, **{**kw, "cached": [*kw.get("cached", ()), *((i + 1, j) for i, j in held)]})


def _worth_asking(report: PlanReport) -> list[tuple[int, int]]:
    """The splits whose slice is worth asking the server about: the chosen plan's (when it offloads), then the plans
    that, with no upload to pay, would beat it on the objective (energy with a deadline), best first. When no plan
    met the deadline (the chosen one is the fastest, "slo-unmet"), a plan beats it that meets the deadline with no
    upload, whatever its energy (those first, by energy), or that is faster than it with no upload (then, fastest
    first): comparing energies had left a deadline-meeting plan whose slice the server held unasked, and a deadline
    no plan meets had left all-local chosen over a faster plan whose slice the server held (reviews)."""
    chosen = report.chosen
    slo_ms = report.options.get("slo_ms")
    i, j, latency_ms, energy_mJ = evaluate_all(replace(report.inputs, preloaded=True)).flat()
    if slo_ms is not None and chosen.objective == "slo-unmet":
        meets = latency_ms <= slo_ms
        ranked = [*_ranked(energy_mJ, meets), *_ranked(latency_ms, ~meets & (latency_ms < chosen.latency_ms))]
    elif slo_ms is not None:  # a plan over the deadline even with no upload cannot be chosen: not worth a query
        ranked = _ranked(energy_mJ, (latency_ms <= slo_ms) & (energy_mJ < chosen.energy_mJ))
    elif report.options.get("objective") == "energy":
        ranked = _ranked(energy_mJ, energy_mJ < chosen.energy_mJ)
    else:
        ranked = _ranked(latency_ms, latency_ms < chosen.latency_ms)
    splits = [(chosen.i, chosen.j)] if chosen.i < chosen.j else []
    for k in ranked:
        split = (int(i[k]), int(j[k]))
        if len(splits) >= MAX_CACHE_QUERIES:
            break
        if split[0] < split[1] and split not in splits:
            splits.append(split)
    return splits


def _ranked(key: np.ndarray, where: np.ndarray) -> list[int]:
    """The indices where `where` holds, by `key` ascending (ties in table order)."""
    candidates = np.flatnonzero(where)
    return [int(k) for k in candidates[np.argsort(key[candidates], kind="stable")]]


def plan_for_split(
    client: Client, graph: BlockGraph, costs: Costs, slicer: Slicer, split: tuple[int, int], **kw: Any
) -> PlanReport:
    """`make_plan` with the forced `split` as its chosen plan (the other plans stay, for comparison); its upload is
    not charged when its middle slice is already on the server."""
    cached = [(split[0] + 1, split[1])] if not kw.get("preloaded") and _on_server(client, slicer, split) else []
    report = make_plan(graph, with_slice_overhead(costs, graph, slicer), **{**kw, "cached": cached})
    return replace(report, chosen=report.table.plan(*split))


def _on_server(client: Client, slicer: Slicer, split: tuple[int, int]) -> bool:
    """Whether plan `split` offloads a middle slice the server already holds (its bytes and id kept by the slicer
    for the runner, `Slicer.serialized`)."""
    i, j = split
    if i >= j:
        return False
    try:
        middle = slicer.serialized(i + 1, j, f"blocks {i + 1}..{j}")
    except ModelError:  # over protobuf's limit: no server holds it
        return False
    return client.slice_status(middle.id).cached


def plan_slices(slicer: Slicer, n_blocks: int, i: int, j: int, label: str = "") -> PlanSlices:
    """The head (0..i), middle (i+1..j) and tail (j+1..N-1) slices of plan (i, j): the middle as ONNX bytes with
    its slice id, the head and tail as they run here (`Slicer.local`, as the whole model does for a local plan); a
    ModelError for a slice over protobuf's 2 GiB limit (it had been a raw EncodeError). The bytes of the middle slice
    planning asked about are those the slicer kept (`Slicer.serialized`); then it keeps none (`Slicer.release`): the
    runner holds them, and they go with it."""
    if not -1 <= i <= j <= n_blocks - 1:
        raise ArgumentError(f"invalid split {i},{j}: need -1 <= I <= J <= {n_blocks - 1}")

    def part(a: int, b: int) -> LocalModel | None:
        return slicer.local(a, b, f"the slice of blocks {a}..{b}") if a <= b else None

    try:
        if i == j:  # nothing offloaded: the whole model runs locally
            return PlanSlices((i, j), slicer.local(0, n_blocks - 1, "the model"), None, None, label)
        middle = slicer.serialized(i + 1, j, f"the slice of blocks {i + 1}..{j}")
        return PlanSlices(
            (i, j), part(0, i), middle.data, part(j + 1, n_blocks - 1), f"{label}[{i + 1}:{j}]", middle_id=middle.id
        )
    finally:
        slicer.release()


def make_runner(
    slicer: Slicer,
    graph: BlockGraph,
    split: tuple[int, int],
    client: Client | None,
    *,
    config: RunnerConfig | None = None,
    settings: OrtSettings | None = None,
    report: PlanReport | None = None,
    around_local: Callable[[], AbstractContextManager[object]] | None = None,
    connect_later: bool = False,
) -> Runner:
    """A runner for `split`; with a plan report, it also tracks the network against the planned models.
    `around_local`, `connect_later`: see `Runner`."""
    i, j = split
    if report is not None:
        check_plan_of(report, graph)
    slices = plan_slices(slicer, len(graph.blocks), i, j, graph.model)
    kw: dict[str, Any] = {
        "around_local": around_local, "connect_later": connect_later, "model_inputs": [t.name for t in graph.inputs],
    }  # fmt: skip
    if report is not None and slices.offloads:
        kw |= {
            "uplink": report.inputs.uplink.rebased(),
            "downlink": report.inputs.downlink.rebased(),
            "expected_cloud_ms": plan_cost(report.inputs, i, j).breakdown.get("cloud_ms", 0.0),
            "expected_upload_ms": float(report.inputs.weight_link.predict_ms(len(slices.middle or b""))),
        }
    return Runner(slices, client if slices.offloads else None, config, settings, **kw)


def message_limit(client: Client, server: ServerInfo) -> int:
    """The largest message the edge and the server both take (0: neither said)."""
    limits = [m for m in (client.options.max_message_bytes, server.max_message_bytes) if m > 0]
    return min(limits, default=0)


def check_messages(graph: BlockGraph, split: tuple[int, int], limit: int) -> None:
    """Raise when `split` sends a tensor over `limit` bytes up or down (0: no limit)."""
    i, j = split
    if i == j or limit <= 0:
        return
    bounds = graph.boundary_bytes()
    for where, k in (("up to", i + 1), ("back from", j + 1)):
        if bounds[k] > limit:
            raise RoadRunnerError(
                f"split {i},{j} sends {bounds[k]:,} bytes {where} the server in one message, over the limit of "
                f"{limit:,}; choose another split"
            )


def validate_split(text: str, graph: BlockGraph) -> tuple[int, int]:
    """Parse `--split I,J`; I = J (nothing offloaded) is the all-local plan, written as the planner writes it. A
    split that offloads a block the server does not run (`Block.offloadable`) is refused here, naming it."""
    n_blocks = len(graph.blocks)
    try:
        i, j = (int(v) for v in text.split(","))
    except ValueError:
        raise RoadRunnerError(f"--split wants I,J (two integers), got {text!r}") from None
    if not -1 <= i <= j <= n_blocks - 1:
        raise RoadRunnerError(f"--split {i},{j} out of range: need -1 <= I <= J <= {n_blocks - 1}")
    local = [b for b in graph.blocks[i + 1 : j + 1] if not b.offloadable]
    if local:
        ops = sorted({op for b in local for op in b.ops})
        raise RoadRunnerError(
            f"--split {i},{j} offloads block {local[0].index} ({', '.join(ops[:4])}), which holds operators outside "
            "the standard ONNX domains: rr-server does not run them; keep it on the edge"
        )
    return (i, j) if i < j else (n_blocks - 1, n_blocks - 1)


def local_outputs(
    settings: OrtSettings, model: bytes | str, inputs: Mapping[str, np.ndarray] | np.ndarray
) -> dict[str, np.ndarray]:
    """The whole model (its ONNX bytes, or a path) run locally on one request (its inputs by name, or the one
    input's array): the reference a plan's outputs are checked against. A model that loads but fails to run (a Gather
    index out of range passes the checker) is a ModelError."""
    session = settings.create_session(model)
    names = [o.name for o in session.get_outputs()]
    feeds = dict(inputs) if isinstance(inputs, Mapping) else {session.get_inputs()[0].name: inputs}
    return dict(zip(names, run_session(session, names, feeds), strict=True))


def max_abs_diff(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> float:
    """Largest absolute difference between two output dicts (same names; 0 between empty outputs)."""
    diffs = [np.max(np.abs(np.asarray(a[k], np.float64) - np.asarray(b[k], np.float64)), initial=0.0) for k in b]
    return float(np.max(diffs, initial=0.0))  # a NaN anywhere stays NaN (Python's max would drop it)
