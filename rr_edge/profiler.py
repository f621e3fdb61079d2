"""DNN profiler: time (and meter) a random sample of a model's unique blocks on this node.

    select_signatures   which unique signatures to measure: ceil(p x unique), at least one, none already measured,
                        the one with the most FLOPs among them and the others drawn at random
    time_runs           warm up, then repeat until both a minimum count and a minimum measured time are reached
    profile_model       each chosen block as a standalone slice in ONNX Runtime with the node's `OrtSettings`, energy
                        per run from the meter (the metered mean power x the median run time), plus the whole model
                        end to end against the sum of its blocks
    report_profile      upload the profiled slices (so the server times its own cloud row) and stream the reports
    run_profile         all of it against a server, as `rr-edge profile` does: the node registers once its profile
                        is made, so that a model that fails leaves its registration as it was

The core (`select_signatures`, `time_runs`, `profile_model`) talks to no server: sessions and meters are passed in.
A signature shared by several blocks is measured once, on its first block. The end-to-end record compares the whole
model's latency with the sum over *all* blocks of their standalone latencies: blocks outside the sample get a short
sweep (`ProfileConfig.sweep`) whose figures are used only for that sum, never reported as measurements. A model over
protobuf's 2 GiB limit on one message (its weights in a file of external data) is profiled without its whole-model
run, and a block over it is not profiled, each with a warning (`rr_edge.slicing.model_bytes`).
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from rr_edge._status import retry_unreachable
from rr_edge.blocks import Block, BlockGraph, analyze
from rr_edge.errors import ArgumentError, ModelError, ServerError, ServerUnavailable
from rr_edge.meters.base import EnergyReading, Meter
from rr_edge.profiles import BlockFeatures, LatencyStats, LayerMeasurement, ModelMeasurement
from rr_edge.progress import Progress
from rr_edge.session import OrtSettings, random_feeds, run_session
from rr_edge.slicing import Slicer, model_bytes, whole_model_bytes
from rr_proto.limits import MAX_ENERGY_MJ, MIN_ENERGY_MJ

if TYPE_CHECKING:
    from rr_edge.client import Client

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MAX_UPLOAD_BYTES",
    "DEFAULT_SAMPLE",
    "ProfileConfig",
    "ProfileResult",
    "Progress",
    "TimingPolicy",
    "features_of",
    "profile_model",
    "report_profile",
    "run_profile",
    "select_signatures",
    "time_runs",
    "wait_for_cloud",
    "wait_for_cloud_timings",
]

DEFAULT_SAMPLE = 0.3
DEFAULT_MAX_UPLOAD_BYTES = 64 * 1024 * 1024

# progress(stage, done, total, label): stage is "blocks", "sweep", "model" or "upload".


@dataclass(frozen=True)
class TimingPolicy:
    """How long to time one runnable: `warmup_runs` untimed, then at least `min_runs` runs and `min_time_s` of
    measured time (and at least the meter's `min_window_s`), stopping at `max_runs` runs or after `max_time_s`
    seconds regardless, warm-ups and every round included (at least one run is timed).

    With `rounds` > 1 (blocks in `profile_model`), the runs are split into that many passes taken round-robin over
    all the blocks being profiled, each pass with one warm-up run of its own: every block's samples then span the
    whole profiling session, so a burst of load elsewhere on the machine does not skew one block's figures. Each
    pass times at least one run, so `rounds` is at most `min_runs` (3000 rounds of a 10-run policy timed 3000 runs,
    past its `max_time_s`: review).
    """

    warmup_runs: int = 3
    min_runs: int = 10
    min_time_s: float = 0.5
    max_runs: int = 100_000
    max_time_s: float = 30.0
    rounds: int = 1

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.min_runs < 1 or self.warmup_runs < 0:
            raise ArgumentError("rounds and min_runs must be >= 1, warmup_runs >= 0")
        if self.rounds > self.min_runs:
            raise ArgumentError(f"rounds ({self.rounds}) must be at most min_runs ({self.min_runs}): each times a run")
        if not (0 <= self.min_time_s < math.inf and 0 < self.max_time_s < math.inf):  # NaN too: no clock reaches it
            raise ArgumentError(
                f"min_time_s must be finite and >= 0, max_time_s finite and > 0; got {self.min_time_s}, "
                f"{self.max_time_s}"
            )

    def per_round(self, r: int, spent_s: float = 0.0) -> TimingPolicy:
        """The policy of pass `r` (from 0) of `rounds`, for a runnable that spent `spent_s` seconds (less than
        `max_time_s`) in the passes before: its share of the runs and of the minimum time, and an even share of the
        time left with the passes after it."""
        n = self.rounds
        return replace(
            self,
            warmup_runs=self.warmup_runs if r == 0 else min(self.warmup_runs, 1),
            min_runs=math.ceil(self.min_runs / n),
            min_time_s=self.min_time_s / n,
            max_runs=max(self.max_runs // n, 1),
            max_time_s=(self.max_time_s - spent_s) / (n - r),
            rounds=1,
        )


DEFAULT_TIMING = TimingPolicy(rounds=3)
DEFAULT_E2E_TIMING = TimingPolicy(warmup_runs=1, min_runs=5, min_time_s=0.5)
DEFAULT_SWEEP_TIMING = TimingPolicy(warmup_runs=1, min_runs=3, min_time_s=0.0)


@dataclass(frozen=True)
class ProfileConfig:
    """What to profile and how long. `seed=None` draws a seed (reported in the result)."""

    sample: float = DEFAULT_SAMPLE
    seed: int | None = None
    timing: TimingPolicy = DEFAULT_TIMING
    whole_model: bool = True
    e2e_timing: TimingPolicy = DEFAULT_E2E_TIMING
    sweep: TimingPolicy = DEFAULT_SWEEP_TIMING
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES

    def __post_init__(self) -> None:
        if not 0.0 < self.sample <= 1.0:
            raise ArgumentError(f"sample must be in (0, 1], got {self.sample}")


@dataclass
class ProfileResult:
    """What one profiling run measured. `slices` holds the ONNX bytes of each profiled block (by signature)."""

    model: str
    seed: int
    unique_signatures: int
    already_measured: int
    layers: list[LayerMeasurement]
    model_run: ModelMeasurement | None
    settings: OrtSettings
    energy_source: str
    energy_measured: bool
    elapsed_s: float = 0.0
    slices: dict[str, bytes] = field(default_factory=dict, repr=False)
    model_bytes: bytes | None = field(default=None, repr=False)  # the whole model, for the server to time

    def to_json(self, node: str = "") -> dict[str, Any]:
        """The `rr-edge profile --json` object (SPEC section 6) plus extras."""
        return {
            "node": node,
            "model": self.model,
            "unique_signatures": self.unique_signatures,
            "already_measured": self.already_measured,
            "seed": self.seed,
            "profiled": [m.to_json() for m in self.layers],
            "whole_model": self.model_run.to_json() if self.model_run else None,
            "settings": {
                "execution_provider": self.settings.provider,
                "intra_op_threads": self.settings.intra_op_threads,
                "inter_op_threads": self.settings.inter_op_threads,
                "graph_optimization": self.settings.graph_optimization,
            },
            "energy_source": self.energy_source,
            "energy_measured": self.energy_measured,
            "elapsed_s": round(self.elapsed_s, 3),
        }


# -- pure core -------------------------------------------------------------------------------------------------


def sample_size(unique: int, sample: float) -> int:
    """ceil(sample x unique), at least 1 (rounded first so that 0.3 x 10 is 3, not 4)."""
    if unique <= 0:
        return 0
    return max(1, math.ceil(round(sample * unique, 9)))


def select_signatures(
    signatures: Sequence[str],
    measured: Collection[str],
    sample: float,
    seed: int | None,
    cost: Mapping[str, float] | None = None,
) -> list[str]:
    """Signatures to profile, in first-appearance order: ceil(sample x unique) of the model's unique signatures,
    drawn (seeded) among those not in `measured`; fewer when fewer remain, none when all are measured. With `cost`
    (say, each signature's FLOPs) the costliest of those is always one of them, the others drawn: predictions of
    blocks no node measured extrapolate badly upward, and a first profile of vit_b_16 that drew a Transpose, a Concat
    and a Gather predicted its encoder blocks 350x too fast (first-use review)."""
    unique = list(dict.fromkeys(signatures))
    done = set(measured)
    candidates = sorted(s for s in unique if s not in done)
    k = min(sample_size(len(unique), sample), len(candidates))
    first = [max(candidates, key=lambda s: (cost.get(s, 0.0), s))] if cost and k else []
    rest = [s for s in candidates if s not in first]
    chosen = set(first) | set(random.Random(seed).sample(rest, k - len(first)))
    return [s for s in unique if s in chosen]


def time_runs(
    run: Callable[[], object],
    policy: TimingPolicy = DEFAULT_TIMING,
    *,
    min_window_s: float = 0.0,
    spent_s: float = 0.0,
    clock: Callable[[], float] = time.perf_counter,
) -> list[float]:
    """Per-run wall times (ms) of `run` under `policy`, after its warm-up runs; `max_time_s` bounds the warm-ups and
    the timed runs together, `spent_s` seconds of it already spent (warm-ups run before the call)."""
    start = clock() - spent_s
    _warm_up(run, policy, start, clock)
    min_time = max(policy.min_time_s, min_window_s)
    times: list[float] = []
    timed_from = clock()
    while True:
        t0 = clock()
        run()
        t1 = clock()
        times.append((t1 - t0) * 1000.0)
        if len(times) >= policy.min_runs and t1 - timed_from >= min_time:
            break
        if len(times) >= policy.max_runs or t1 - start >= policy.max_time_s:
            break
    return times


def _warm_up(run: Callable[[], object], policy: TimingPolicy, start: float, clock: Callable[[], float]) -> None:
    """The policy's warm-up runs, fewer once `max_time_s` has passed since `start`."""
    for _ in range(policy.warmup_runs):
        if clock() - start >= policy.max_time_s:
            return
        run()


def features_of(block: Block) -> BlockFeatures:
    return BlockFeatures(block.ops, block.flops, block.param_bytes, block.input_bytes, block.output_bytes)


class _Timed:
    """A session with its inputs, ready to be timed."""

    def __init__(self, onnx_bytes: bytes, settings: OrtSettings, label: str) -> None:
        try:
            self.session = settings.create_session(onnx_bytes)
        except ModelError as exc:
            raise ModelError(f"{label}: {exc}") from None
        self.feeds = random_feeds(self.session)
        self.label = label

    def __call__(self) -> object:
        try:
            return run_session(self.session, None, self.feeds)
        except ModelError as exc:
            raise ModelError(f"{self.label}: {exc}") from None


def _measure(
    timed: Callable[[], object],
    policy: TimingPolicy,
    meter: Meter | None,
    *,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[list[float], EnergyReading | None]:
    """Run times (ms) of one pass, and the meter's reading over its timed runs (None without a meter, or once it
    has failed: the runs are timed all the same, and the profile reports them without energy)."""
    if meter is None:
        return time_runs(timed, policy, clock=clock), None
    start = clock()
    _warm_up(timed, policy, start, clock)
    token = meter.start_unless_failed("compute")
    try:
        window_s = meter.min_window_s if token is not None else 0.0
        times = time_runs(
            timed, replace(policy, warmup_runs=0), min_window_s=window_s, spent_s=clock() - start, clock=clock
        )
    finally:  # closed however the runs end (a Jetson window has a sampler thread)
        reading = meter.stop_unless_failed(token)
    return times, reading


def _measure_rounds(
    timeds: Sequence[_Timed],
    policy: TimingPolicy,
    meter: Meter | None,
    progress: Progress | None = None,
    *,
    clock: Callable[[], float] = time.perf_counter,
) -> list[tuple[LatencyStats, float | None]]:
    """Latency statistics and energy per run of each runnable, over `policy.rounds` round-robin passes; a runnable
    whose `max_time_s` is spent (warm-ups included) sits out the passes left.

    The energy per run is the mean power over the metered windows times the median run time, so that it describes
    the same typical run as the latency (the window's energy divided by the number of runs is a mean, which a few
    slow runs on a busy machine inflate several times over)."""
    times: list[list[float]] = [[] for _ in timeds]
    windows: list[list[EnergyReading | None]] = [[] for _ in timeds]
    spent = [0.0 for _ in timeds]
    steps = policy.rounds * len(timeds)
    for r in range(policy.rounds):
        for i, timed in enumerate(timeds):
            if progress:
                progress("blocks", r * len(timeds) + i, steps, timed.label)
            if spent[i] >= policy.max_time_s:
                continue
            start = clock()
            t, reading = _measure(timed, policy.per_round(r, spent[i]), meter, clock=clock)
            spent[i] += clock() - start
            times[i].extend(t)
            windows[i].append(reading)
    if progress:
        progress("blocks", steps, steps, "")
    stats = [LatencyStats.of(t) for t in times]
    return [(latency, _energy_per_run(w, latency.median_ms)) for latency, w in zip(stats, windows, strict=True)]


def _energy_per_run(windows: Sequence[EnergyReading | None], median_ms: float) -> float | None:
    """mJ of a run of `median_ms` at the mean power of the metered windows (None unless every window has a reading)."""
    readings = [w for w in windows if w is not None and w.energy_mJ is not None]
    elapsed_s = sum(w.elapsed_s for w in readings)
    if not readings or len(readings) < len(windows) or elapsed_s <= 0:
        return None
    energy = sum(float(w.energy_mJ or 0.0) for w in readings) / elapsed_s * median_ms / 1000.0
    # no energy rather than a reading the server refuses with the whole report (the latencies with it)
    if not (math.isfinite(energy) and energy > 0):  # a counter that did not move (some VMs), rails that read 0 mA
        log.warning("the meter read no positive energy (%r mJ per run): reported without energy", energy)
        return None
    if not MIN_ENERGY_MJ <= energy <= MAX_ENERGY_MJ:  # a few nJ (review: 1e-7 mJ lost the whole report)
        log.warning(
            "the meter read %.3g mJ per run, outside the %g..%g mJ the server takes: reported without energy",
            energy,
            MIN_ENERGY_MJ,
            MAX_ENERGY_MJ,
        )
        return None
    return energy


def profile_model(
    model: onnx.ModelProto,
    graph: BlockGraph,
    *,
    measured: Collection[str] = (),
    settings: OrtSettings | None = None,
    meter: Meter | None = None,
    config: ProfileConfig | None = None,
    progress: Progress | None = None,
) -> ProfileResult:
    """Profile a sample of `graph`'s unique signatures not in `measured` (see the module docstring)."""
    cfg = config or ProfileConfig()
    s = (settings or OrtSettings()).resolved()
    seed = cfg.seed if cfg.seed is not None else random.randrange(2**31)
    started = time.perf_counter()
    signatures = [b.signature for b in graph.blocks]
    unique = list(dict.fromkeys(signatures))
    first_block: dict[str, Block] = {}
    for block in graph.blocks:
        first_block.setdefault(block.signature, block)
    chosen = select_signatures(signatures, measured, cfg.sample, seed, {b.signature: b.flops for b in graph.blocks})
    log.info(
        "%s: %d blocks, %d unique signatures, %d already measured, profiling %d",
        graph.model,
        len(graph.blocks),
        len(unique),
        len(set(unique) & set(measured)),
        len(chosen),
    )
    slicer = Slicer(model, graph, sampled_shapes=True)  # the server times these slices too, on made-up inputs
    source = meter.source if meter is not None else ""
    layers: list[LayerMeasurement] = []
    slices: dict[str, bytes] = {}
    medians: dict[str, float] = {}
    timeds = []
    for sig in chosen:
        block = first_block[sig]
        label = f"{graph.model}[{block.index}]"
        data = _block_bytes(slicer, block, label)
        if data is not None:
            slices[sig] = data
            timeds.append(_Timed(data, s, label))
    chosen = [sig for sig in chosen if sig in slices]
    for sig, (latency, energy) in zip(chosen, _measure_rounds(timeds, cfg.timing, meter, progress), strict=True):
        block = first_block[sig]
        medians[sig] = latency.median_ms
        data = slices[sig]
        layers.append(
            LayerMeasurement(sig, block.index, features_of(block), latency, energy, source, slice_bytes=len(data))
        )
        log.debug("block %d %s: median %.3f ms cv %.3f", block.index, sig[:12], latency.median_ms, latency.cv)
    del timeds
    model_run, whole = None, None
    if cfg.whole_model:
        try:
            whole = whole_model_bytes(model, f"model {graph.model!r}")
        except ModelError as exc:  # too large to run from memory: the blocks' measurements are reported all the same
            log.warning("%s: profiled without its whole-model run", exc)
        else:
            model_run = _whole_model(whole, graph, slicer, medians, s, meter, cfg, progress)
    return ProfileResult(
        model=graph.model,
        seed=seed,
        unique_signatures=len(unique),
        already_measured=len(set(unique) & set(measured)),
        layers=layers,
        model_run=model_run,
        settings=s,
        energy_source=source,
        energy_measured=bool(meter is not None and meter.measured),
        elapsed_s=time.perf_counter() - started,
        slices=slices,
        model_bytes=whole,
    )


def _block_bytes(slicer: Slicer, block: Block, label: str) -> bytes | None:
    """The ONNX bytes of `block` alone; None, with a warning, when it is too large to run from memory."""
    piece = slicer.slice(block.index, block.index)
    try:
        return model_bytes(piece, f"block {label}")
    except ModelError as exc:  # model_bytes' only error
        log.warning("%s: not profiled", exc)
        return None


def _whole_model(
    whole_bytes: bytes,
    graph: BlockGraph,
    slicer: Slicer,
    medians: dict[str, float],
    settings: OrtSettings,
    meter: Meter | None,
    cfg: ProfileConfig,
    progress: Progress | None,
) -> ModelMeasurement:
    rest = [b for b in {b.signature: b for b in reversed(graph.blocks)}.values() if b.signature not in medians]
    rest.sort(key=lambda b: b.index)
    for k, block in enumerate(rest):
        if progress:
            progress("sweep", k, len(rest), f"{graph.model}[{block.index}]")
        label = f"{graph.model}[{block.index}]"
        data = model_bytes(slicer.slice(block.index, block.index), f"block {label}")
        times = time_runs(_Timed(data, settings, label), cfg.sweep)
        medians[block.signature] = float(np.median(times))
    if progress and rest:  # the last block's sweep done: the bar stopped one short of it (found by review)
        progress("sweep", len(rest), len(rest), "")
    if progress:
        progress("model", 0, 1, graph.model)
    whole = _Timed(whole_bytes, settings, graph.model)
    [(latency, energy)] = _measure_rounds([whole], cfg.e2e_timing, meter)
    if progress:
        progress("model", 1, 1, graph.model)
    total = sum(medians[b.signature] for b in graph.blocks)
    source = meter.source if meter is not None and energy is not None else ""
    signatures = tuple(b.signature for b in graph.blocks)
    return ModelMeasurement(graph.model_key, signatures, latency, total, energy, source)


# -- against a server -------------------------------------------------------------------------------------------


def report_profile(
    client: Client,
    node_id: str,
    result: ProfileResult,
    *,
    upload_slices: bool = True,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    progress: Progress | None = None,
) -> tuple[int, int]:
    """Upload each profiled block's slice up to `max_upload_bytes` (setting its `slice_id`), and the whole model
    when it was run whole and fits the limit too (the server then times it: the cloud's whole-model latency), then
    stream the layer and whole-model reports. Updates `result` in place; returns the server's accepted counts."""
    if upload_slices:
        limit = max_upload_bytes
        try:
            info = client.server_info()
            if info.max_slice_bytes > 0:
                limit = min(limit, info.max_slice_bytes)
        except Exception as exc:  # noqa: BLE001 - the limit is an optimisation; the report must still go out
            log.debug("GetServerInfo failed (%s); using the local slice limit", exc)
        too_big = []
        try:
            for k, layer in enumerate(result.layers):
                data = result.slices.get(layer.signature)
                if progress:
                    progress("upload", k, len(result.layers), layer.signature[:12])
                if data is None or len(data) > limit:
                    too_big.append(f"block {layer.block_index}")
                    continue
                slice_id = _upload_or_warn(client, data, f"{result.model}[{layer.block_index}]")
                if slice_id:
                    result.layers[k] = replace(layer, slice_id=slice_id)
            if progress:
                progress("upload", len(result.layers), len(result.layers), "")
            whole = result.model_bytes
            if result.model_run is not None and whole is not None:
                if len(whole) <= limit:
                    slice_id = _upload_or_warn(client, whole, result.model)
                    if slice_id:
                        result.model_run = replace(result.model_run, slice_id=slice_id)
                else:
                    too_big.append("the whole model")
        except ServerUnavailable as exc:  # a slow link past the deadline, or the server gone: report what was measured
            log.warning(
                "uploads for the server to time stopped (%s); the measurements are reported, the cloud's latency of "
                "the blocks not uploaded is predicted",
                exc,
            )
        if too_big:
            log.warning(
                "not uploaded for the server to time, over the %.3g MiB limit (--max-upload-mb, or the server's "
                "--max-slice-mb): %s; the cloud's latency of these is predicted instead",
                limit / 2**20,
                ", ".join(too_big),
            )
    models = [result.model_run] if result.model_run is not None else []
    return client.report_layer_profiles(node_id, result.settings, result.layers, models)


def _upload_or_warn(client: Client, data: bytes, label: str) -> str:
    """Upload a slice for the server to time; its slice id, or "" with a warning when the server refuses it as a
    slice (the measurements are reported all the same, and the cloud's latency of it is predicted)."""
    try:
        return client.upload_slice(data, label=label).slice_id
    except ServerError as exc:
        if isinstance(exc, ServerUnavailable) or exc.code not in ("INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"):
            raise
        log.warning("the server refused %s for timing (%s); its cloud latency is predicted instead", label, exc)
        return ""


def run_profile(
    client: Client,
    node_id: str,
    model: onnx.ModelProto,
    name: str,
    *,
    settings: OrtSettings | None = None,
    meter: Meter | None = None,
    config: ProfileConfig | None = None,
    register: bool = True,
    progress: Progress | None = None,
) -> ProfileResult:
    """Profile what the node has not measured yet, register it (with this machine's descriptor), report the profile.
    The node registers only once the profile is made: a model that fails to analyse or to run leaves the setup the
    node is registered with, which its measurements were made with, as it was."""
    from rr_edge.device import describe_device, registered_device, setup_changes

    s = (settings or OrtSettings()).resolved()
    cfg = config or ProfileConfig()
    graph = analyze(model, name)
    device, changes, measured = None, {}, set()
    if register:
        device = describe_device(s, energy_source=meter.source if meter else "")
        registered = registered_device(client, node_id)
        if registered is not None:  # a new node has measured nothing (and the server would say NOT_FOUND)
            changes = setup_changes(registered, device)
            measured = client.list_measured_signatures(node_id)
    else:
        measured = client.list_measured_signatures(node_id)
    if changes and measured:
        log.warning(
            "node %r has %d block(s) measured with another setup (%s): its row now mixes both; profile this setup "
            "as another --node to keep them apart",
            node_id,
            len(measured),
            ", ".join(f"{k} {old} -> {new}" for k, (old, new) in changes.items()),
        )
    result = profile_model(model, graph, measured=measured, settings=s, meter=meter, config=cfg, progress=progress)
    n = len(result.layers)
    what = f"reporting the profile ({n} block{'s' * (n != 1)} measured)"  # to a server restarting meanwhile: wait

    def report() -> None:
        if device is not None:
            client.register_node(node_id, device)
        report_profile(client, node_id, result, max_upload_bytes=cfg.max_upload_bytes, progress=progress)

    retry_unreachable(report, what, closed=lambda: client.closed)
    return result


def wait_for_cloud(
    client: Client,
    graphs: Mapping[str, BlockGraph],
    expected: Collection[str],
    whole: Collection[str] | None = None,
    *,
    poll_s: float = 0.5,
    stall_s: float = 30.0,
    max_s: float = 900.0,
) -> tuple[set[str], set[str]]:
    """Wait for the server's cloud profiler: poll until the cloud node has measured every `expected` signature and
    timed every model of `whole` (default: every model of `graphs`) whole, or nothing moved for `stall_s`, or `max_s`
    passed. Returns (measured signatures of the models' blocks, models timed whole).

    The server times uploaded slices in the background, between requests; a plan made before it has uses predicted
    cloud latencies where measured ones were coming."""
    wanted_whole = set(graphs) if whole is None else set(whole)
    cloud = client.server_info().cloud_node_id
    features: dict[str, BlockFeatures] = {}
    for graph in graphs.values():
        for b in graph.blocks:
            features.setdefault(b.signature, features_of(b))
    sigs = sorted(features)
    first_block = {name: (graph.blocks[0].signature, graph.model_key) for name, graph in graphs.items()}
    start = last_change = time.monotonic()
    last_count = -1
    while True:
        preds = client.predict(cloud, sigs, [features[s] for s in sigs]).by_signature
        done = {s for s, p in preds.items() if p.latency_provenance == "measured"}
        timed = {  # a model's whole-run query: one of its signatures, and the model
            name
            for name, (sig, key) in first_block.items()
            if client.predict(cloud, [sig], [features[sig]], model=key).model_latency_ms > 0
        }
        if len(done) + len(timed) != last_count:
            last_count, last_change = len(done) + len(timed), time.monotonic()
        now = time.monotonic()
        finished = set(expected) <= done and wanted_whole <= timed
        if finished or now - last_change > stall_s or now - start > max_s:
            return done, timed
        time.sleep(poll_s)


def wait_for_cloud_timings(client: Client, graph: BlockGraph, result: ProfileResult, limit_s: float) -> dict[str, Any]:
    """After `report_profile`: wait up to `limit_s` for the server to time the slices `result` uploaded (and the whole
    model, if it went up). A summary: uploaded, measured, whole_model_timed, waited_s."""
    uploaded = {m.signature for m in result.layers if m.slice_id}
    whole = [graph.model] if result.model_run is not None and result.model_run.slice_id else []
    t0 = time.monotonic()
    measured, timed = wait_for_cloud(client, {graph.model: graph}, uploaded, whole, stall_s=limit_s, max_s=limit_s)
    return {
        "uploaded": len(uploaded),
        "measured": len(uploaded & measured),
        "whole_model_timed": graph.model in timed,
        "waited_s": round(time.monotonic() - t0, 3),
    }
