"""Network profiler: time (and meter) uploads and downloads of 1 KB .. max MB to the server, fit each direction.

Both directions are timed on one open `EchoService.Exchange` stream, as an edge's inference requests travel on
theirs: the uplink's transfers carry the payload and get an empty answer, the downlink's are empty and answered by
the payload (`rr_edge.echo.EchoStream`). A server without Exchange is timed with one call per transfer instead,
`EchoService.Send` and `EchoService.Receive`, each direction noting which. A third curve, ``upload``, times whole
slice uploads of `upload_min_mb` .. `upload_max_mb` (`SliceService.UploadSlice` with ``probe`` set, of a valid ONNX
model carrying that many random weight bytes), each after the status query the runner makes first: the edge hashes
the bytes, asks whether the server holds them, streams them, and the server verifies, validates and writes them
durably and opens them in ONNX Runtime before it answers, then discards them. That is what making a slice's weights
ready on the server costs beyond the link (the runner has a slice opened in the same call that uploads it); the
planner costs weight uploads with this curve (the echo uplink alone predicted about half of the measured upload time
on the testbed). Sizes are log-spaced (`points_per_octave` per doubling) and each is repeated, in shuffled rounds
over the sizes (see `measure_direction`); a few small warm-up transfers open the connection first. The sweep adapts
to the link: sizes are first timed once each, smallest first, and the first size whose transfer takes longer than
`max_transfer_s` is the largest measured (on a 10 Mbit/s link the full 256 MiB sweep took about 45 minutes and its
largest transfers ran past their deadlines); larger messages are costed by continuing the chosen curve in a straight
line (`rr_edge.netmodel`: a pwl curve with the slope of its top sizes, the others with the affine fit's), and the
direction's notes say where the sweep stopped. Energy, where a meter is given, is metered per size over consecutive
transfers lasting at least the meter's minimum window, and divided per transfer. Fits come from
`rr_edge.netmodel.fit_network_model`: the 4th-order polynomial, the affine model and the piecewise-linear curve,
each with its held-out error, and the chosen one."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from rr_edge._status import retry_unreachable
from rr_edge.echo import echo_transfers
from rr_edge.errors import ArgumentError, ServerBusy, ServerError, ServerUnavailable
from rr_edge.meters.base import Meter, fill_window
from rr_edge.netmodel import NetworkModel, fit_network_model
from rr_edge.profiles import DirectionProfile, NetworkProfile, NetworkSample
from rr_edge.progress import Progress

if TYPE_CHECKING:
    from rr_edge.client import Client

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MAX_MB",
    "NetProfileConfig",
    "fit_direction",
    "log_sizes",
    "measure_direction",
    "probe_slice",
    "profile_network",
    "run_netprofile",
]

DEFAULT_MAX_MB = 256
MAX_ECHO_MB = 1024  # the most rr-server echoes in one transfer (its max_echo_bytes)
MAX_UPLOAD_PROBE_MB = 1024  # rr-server's default slice limit (and protobuf's 2 GiB per message is near)
DEFAULT_UPLOAD_MAX_MB = 64
DEFAULT_UPLOAD_MIN_MB = 1 / 16  # 64 KiB: the fixed costs of a small slice's upload are measured, not extrapolated
DEFAULT_MIN_TIME_S = 0.1
DEFAULT_MAX_TRANSFER_S = 3.0  # the first size whose transfer takes longer is the largest one measured
PROBE_COLUMNS = 256  # output width of an upload probe's MatMul: its weights come in rows of 4 x this many bytes
PROBE_OVERHEAD_BYTES = 256  # an upload probe's graph and framing beyond its weight bytes (about 100 in practice)
MAX_TRANSFERS_PER_SIZE = 500
# The most samples per direction rr-server takes in one report (rr_server.profile_servicer.MAX_NETWORK_SAMPLES; the edge
# does not import the server): a sweep over more was measured in full, then refused, and lost.
MAX_NETWORK_SAMPLES = 10_000
BUSY_WAIT_S = 60.0  # longest a measurement waits out a server with no stream slot free, in all
MiB = 1024 * 1024


@dataclass(frozen=True)
class NetProfileConfig:
    """Sizes from `min_bytes` to `max_mb` MiB, `points_per_octave` per doubling; each size is transferred at least
    `repeats` times and for at least `min_time_s` (small messages get many transfers, so their medians hold up
    on a busy machine). The first size whose transfer takes longer than `max_transfer_s` (0: no limit) is the
    largest measured in its direction."""

    max_mb: float = DEFAULT_MAX_MB
    min_bytes: int = 1024
    points_per_octave: int = 1
    repeats: int = 3
    min_time_s: float = DEFAULT_MIN_TIME_S
    warmup: int = 3
    chunk_bytes: int | None = None  # default: the client's chunk size
    upload_min_mb: float = DEFAULT_UPLOAD_MIN_MB
    upload_max_mb: float = DEFAULT_UPLOAD_MAX_MB  # 0: no upload probes (weight uploads then use the uplink curve)
    max_transfer_s: float = DEFAULT_MAX_TRANSFER_S
    stream: bool = True  # time on one open echo stream (False: one echo call per transfer, as before Exchange)

    def __post_init__(self) -> None:
        for name in ("max_mb", "min_time_s", "upload_min_mb", "upload_max_mb", "max_transfer_s"):
            if not math.isfinite(getattr(self, name)):
                raise ArgumentError(f"{name} must be a finite number, got {getattr(self, name)}")
        if min(self.min_time_s, self.upload_min_mb, self.upload_max_mb, self.max_transfer_s) < 0:
            raise ArgumentError("min_time_s, upload_min_mb, upload_max_mb and max_transfer_s must be >= 0")
        if self.min_bytes < 1:
            raise ArgumentError(f"min_bytes must be at least 1, got {self.min_bytes}")
        if self.max_mb * MiB < 2 * self.min_bytes:
            raise ArgumentError(f"max size {self.max_mb} MB must be at least twice {self.min_bytes} bytes")
        if self.max_mb > MAX_ECHO_MB:  # else the sweep would send up to there before the server refused
            raise ArgumentError(f"max_mb {self.max_mb:g} MiB is over the {MAX_ECHO_MB} MiB rr-server echoes")
        if self.repeats < 1 or self.points_per_octave < 1:
            raise ArgumentError("repeats and points_per_octave must be >= 1")
        if self.upload_max_mb > MAX_UPLOAD_PROBE_MB:
            raise ArgumentError(f"upload probes of at most {MAX_UPLOAD_PROBE_MB} MiB, got {self.upload_max_mb:g}")
        if self.upload_max_mb and self.upload_min_mb * MiB < 4 * PROBE_COLUMNS:  # else its sizes round to 0 bytes
            raise ArgumentError(
                f"upload_min_mb must be at least one probe row of {4 * PROBE_COLUMNS} bytes, got {self.upload_min_mb}"
            )
        if self.upload_max_mb and not 0 < 4 * self.upload_min_mb <= self.upload_max_mb:
            raise ArgumentError(
                f"upload probes need 0 < 4 x upload_min_mb <= upload_max_mb (three sizes or more), got "
                f"{self.upload_min_mb} and {self.upload_max_mb} MB; upload_max_mb = 0 turns them off"
            )

    def sizes(self) -> list[int]:
        return log_sizes(self.min_bytes, int(self.max_mb * MiB), self.points_per_octave)

    def upload_sizes(self) -> list[int]:
        """Weight bytes of the upload probes (a probe model rounds them down to whole rows of 1 KiB and adds about 100
        bytes of graph; the curve is fitted to the probes' real sizes)."""
        if not self.upload_max_mb:
            return []
        return log_sizes(int(self.upload_min_mb * MiB), int(self.upload_max_mb * MiB), self.points_per_octave)


def probe_slice(weight_bytes: int, seed: int = 0) -> bytes:
    """A valid ONNX model, y = x @ w with w an FP32 initializer of ``weight_bytes`` (rounded down to whole rows of
    PROBE_COLUMNS) random bytes: what an upload probe sends. Random bytes, so nothing on the way can compress them;
    a MatMul, so that the server's ONNX Runtime processes every weight when it opens the probe, as it does a slice's
    (its CPU provider packs a constant MatMul operand, as it reorders convolution weights)."""
    import onnx
    from onnx import TensorProto, helper

    rows = max(1, weight_bytes // (4 * PROBE_COLUMNS))
    weights = onnx.TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[rows, PROBE_COLUMNS])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, rows])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, PROBE_COLUMNS])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "upload_probe", [x], [y], [weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    # the bytes go in last, into the model's own initializer: make_graph and make_model copy what they are given,
    # and a probe built with its bytes first held 4-5x its size at the peak (3x now: the bytes, the proto's copy and
    # the serialized one)
    model.graph.initializer[0].raw_data = np.random.default_rng(seed).bytes(4 * rows * PROBE_COLUMNS)
    return model.SerializeToString()


def log_sizes(min_bytes: int, max_bytes: int, points_per_octave: int = 1) -> list[int]:
    """Log-spaced sizes from min_bytes to max_bytes inclusive (distinct, increasing)."""
    octaves = math.log2(max_bytes / min_bytes)
    n = max(int(math.ceil(octaves * points_per_octave - 1e-9)), 1)
    sizes = np.unique(np.round(np.geomspace(min_bytes, max_bytes, n + 1)).astype(np.int64))
    return [int(s) for s in sizes]


def measure_direction(
    transfer: Callable[[int], object],
    sizes: Sequence[int],
    repeats: int,
    *,
    min_time_s: float = 0.0,
    meter: Meter | None = None,
    activity: str = "tx",
    clock: Callable[[], float] = time.perf_counter,
    sleep: Callable[[float], object] = time.sleep,
    progress: Callable[[int, int, int], None] | None = None,
    seed: int = 0,
    max_transfer_s: float = 0.0,
    prepare: Callable[[int], object] | None = None,
) -> list[NetworkSample]:
    """At least `repeats` timed transfers and `min_time_s` of transfer time for every size; energy per transfer
    when metered.

    A first round times every size once, smallest first, and sets its target count (max(repeats, min_time_s / its
    time), at most MAX_TRANSFERS_PER_SIZE and MAX_NETWORK_SAMPLES / the number of sizes: the server refuses a
    direction of more samples); it ends at the first size whose transfer takes longer than `max_transfer_s` (0: no
    limit; the second size at the earliest, as a fit needs two), and the sizes above it are not measured. Then the
    remaining transfers of every size are spaced evenly over as many rounds as the most-sampled size needs, each
    round in a shuffled (seeded) order. A burst of load from elsewhere on the machine thus touches all sizes alike
    instead of bending one stretch of the curve.

    `prepare(size)`, when given, runs once per size before its first transfer, outside the timing (an upload
    probe is built there, so only the probes of the sizes reached take memory).

    A transfer the server refuses as busy (ServerBusy: no stream slot free; `transfer` should not retry it itself)
    is waited out outside the timing and the energy window, for up to BUSY_WAIT_S in all.
    """
    ascending = sorted({int(s) for s in sizes})
    per_size = max(min(MAX_TRANSFERS_PER_SIZE, MAX_NETWORK_SAMPLES // max(len(ascending), 1)), 1)
    times: dict[int, list[float]] = {s: [] for s in ascending}
    rng = random.Random(seed)
    waited_s = 0.0

    def wait_out(exc: ServerBusy) -> None:
        nonlocal waited_s
        pause_s = exc.pause_s()
        if waited_s + pause_s > BUSY_WAIT_S:
            raise exc
        waited_s += pause_s
        sleep(pause_s)

    def timed(size: int) -> None:
        while True:
            t0 = clock()
            try:
                transfer(size)
            except ServerBusy as exc:
                wait_out(exc)
                continue
            times[size].append((clock() - t0) * 1000.0)
            return

    order: list[int] = []
    for size in ascending:
        if progress:
            progress(len(order), len(ascending), size)
        if prepare is not None:
            prepare(size)
        timed(size)
        order.append(size)
        if max_transfer_s and _past_limit(times[size][0], min(times[s][0] for s in order), max_transfer_s, len(order)):
            break
    times = {s: times[s] for s in order}
    target = {s: min(max(repeats, math.ceil(min_time_s * 1000.0 / max(times[s][0], 1e-3))), per_size) for s in order}
    rounds = max(target.values())
    for r in range(1, rounds):
        due = [s for s in order if len(times[s]) < min(target[s], math.ceil((r + 1) * target[s] / rounds))]
        rng.shuffle(due)
        for size in due:
            timed(size)
        if progress:
            progress(sum(len(times[s]) >= target[s] for s in order), len(order), 0)
    if progress:
        progress(len(order), len(order), 0)
    energy: dict[int, float | None] = dict.fromkeys(times)
    # A power model's figures are its watts x these times: fitted, they kept the watts of the day of the profile, and
    # a plan with another class or config costed transfers at the old ones (found by review). The planner takes its
    # current watts x the fitted time instead.
    if meter is not None and meter.measured:
        for size in times:
            while True:  # a window with a busy refusal in it is dropped and started again
                token = meter.start(activity)
                try:
                    count = fill_window(meter, token, functools.partial(transfer, size), at_least=1)
                except ServerBusy as exc:
                    meter.stop(token)
                    wait_out(exc)
                    continue
                except BaseException:  # a Jetson sampler thread would run on for the life of the node
                    meter.stop(token)
                    raise
                reading = meter.stop(token)
                break
            energy[size] = reading.energy_mJ / count if reading.energy_mJ is not None else None
    return [NetworkSample(size, ms, energy[size]) for size in times for ms in times[size]]


def _past_limit(ms: float, fastest_ms: float, max_transfer_s: float, sizes: int) -> bool:
    """Whether the sweep ends at a size whose first transfer took `ms`: over the limit, with the two sizes a fit
    needs, and at four times the fastest transfer so far or more (a sweep stopped while every time was the round
    trip fitted no bandwidth at all: a slope of 0, every message free). The fastest, not the smallest size's: the
    sweep's first transfer, slowed by warming up, took 20-30 ms on a loaded machine, more than a quarter of 16 MiB's."""
    return ms > max_transfer_s * 1000.0 and sizes >= 2 and ms >= 4 * fastest_ms


def fit_direction(samples: Sequence[NetworkSample], name: str = "network") -> DirectionProfile:
    """The fits of one direction (via rr_edge.netmodel) and the chosen one, from its valid samples only.

    A sample whose time is not a positive finite number (0: faster than the clock can tell) is dropped, and an
    energy reading that is not one (a meter window too short to count) is cleared; each is logged with its size.
    The profile keeps the samples it was fitted on. Raises ArgumentError (a ValueError) when fewer than two sizes
    have a valid time.
    """
    kept = _valid_samples(samples, name)
    if len({s.bytes for s in kept}) < 2:
        raise ArgumentError(f"{name}: fewer than two message sizes have a positive time; cannot fit a network model")
    metered = any(s.energy_mJ is not None for s in samples)
    energies = [math.nan if s.energy_mJ is None else s.energy_mJ for s in kept]
    fit = fit_network_model([s.bytes for s in kept], [s.ms for s in kept], energies if metered else None)
    if metered and fit.chosen.energy_coeffs is None:
        log.warning(
            "%s: energy not fitted (%s); the planner costs it with the declared power model", name, "; ".join(fit.notes)
        )
    return DirectionProfile(
        samples=tuple(kept),
        chosen_model=fit.chosen.kind,
        poly4_error=_finite(fit.poly_error),
        affine_error=_finite(fit.affine_error),
        model=fit.chosen.to_dict(),
        pwl_error=_finite(fit.pwl_error),
        notes=fit.notes,
    )


def with_bandwidth(d: DirectionProfile, name: str) -> DirectionProfile | None:
    """`d`, if its curve grows with message size. A curve that does not costs every message, of any size, the same:
    a sweep stopped at its second size fitted a slope of 0 on a 200 Mbit/s link, and the planner offloaded 45 MB of
    weights on it (2 s measured, 7.6 ms predicted). Then the echo directions are an ArgumentError; the upload curve
    is dropped (None, with a warning), weight uploads being costed with the uplink's."""
    model, top = NetworkModel.from_dict(d.model), max(s.bytes for s in d.samples)
    # relative: a flat profile's fitted slope is round-off (about 1e-19 ms/byte), positive about half the time
    if model.slope_ms_per_byte * top > 1e-9 * model.predict_ms(top):
        return d
    why = f"{name}: transfer times did not grow with message size up to {top:,} bytes"
    if name == "upload":
        log.warning("%s; weight uploads are costed with the uplink curve", why)
        return None
    raise ArgumentError(f"{why}, so the link's bandwidth cannot be told; profile larger messages (--max-mb)")


def _valid_samples(samples: Sequence[NetworkSample], name: str) -> list[NetworkSample]:
    """Samples with a positive finite time, with their energy cleared where it is not a positive finite number."""
    for size, n in Counter(s.bytes for s in samples if not _positive(s.ms)).items():
        log.warning("%s: %d transfer(s) of %d bytes left out of the fit: not timed at a positive ms", name, n, size)
    for size in sorted({s.bytes for s in samples if s.energy_mJ is not None and not _positive(s.energy_mJ)}):
        log.warning("%s: no energy for %d bytes (the meter read no positive energy): left out of its fit", name, size)
    return [
        s if s.energy_mJ is None or _positive(s.energy_mJ) else replace(s, energy_mJ=None)
        for s in samples
        if _positive(s.ms)
    ]


def _positive(v: float) -> bool:
    return math.isfinite(v) and v > 0


def _finite(v: float) -> float:
    return float(v) if math.isfinite(v) else -1.0


def _upload_probe_sizes(cfg: NetProfileConfig, max_slice_bytes: int) -> list[int]:
    """Weight bytes of the upload probes whose model fits the server's slice limit (0: none); none when fewer than
    two fit (weight uploads are then costed with the uplink curve)."""
    sizes = cfg.upload_sizes()
    fitting = [n for n in sizes if not max_slice_bytes or n + PROBE_OVERHEAD_BYTES <= max_slice_bytes]
    if len(fitting) < len(sizes):
        log.info("upload probes limited to the server's slice limit of %d bytes", max_slice_bytes)
    if len(fitting) < 2 and sizes:
        log.warning("fewer than two upload probes fit the server's slice limit: uploads are costed with the uplink")
        return []
    return fitting


def _stop_note(measured: Sequence[NetworkSample], planned: Sequence[int], max_transfer_s: float) -> tuple[str, ...]:
    """The note on a sweep that stopped before its largest size (none when it did not)."""
    largest = max(s.bytes for s in measured)
    if largest >= max(planned):
        return ()
    return (
        f"sizes over {largest / MiB:.3g} MiB not measured: a transfer of that size took over {max_transfer_s:g} s "
        "(max_transfer_s, --max-transfer-s); larger messages are costed by continuing the chosen curve in a straight "
        "line",
    )


def profile_network(
    client: Client,
    config: NetProfileConfig | None = None,
    *,
    meter: Meter | None = None,
    progress: Progress | None = None,
) -> NetworkProfile:
    """Measure both directions against the server `client` is connected to and fit them."""
    cfg = config or NetProfileConfig()
    with contextlib.ExitStack() as stack:
        up, down, how = echo_transfers(client, stack, cfg.chunk_bytes, cfg.warmup, cfg.min_bytes, cfg.stream)
        return _profile(client, cfg, (up, down, how, stack.close), meter, progress)


def _profile(
    client: Client,
    cfg: NetProfileConfig,
    echo: tuple[Callable[[int], object], Callable[[int], object], str, Callable[[], None]],
    meter: Meter | None,
    progress: Progress | None,
) -> NetworkProfile:
    """The sweep: `echo` is (uplink transfer, downlink transfer, how they travel, what ends them), ended before
    the upload probes (an open echo stream took the one stream slot a small server has for them: review)."""
    up, down, how, end_echo = echo
    sizes = cfg.sizes()
    probe_sizes = _upload_probe_sizes(cfg, client.server_info().max_slice_bytes if cfg.upload_sizes() else 0)
    probes: dict[int, bytes] = {}  # by weight bytes, built as the sweep reaches them (outside the timing)

    def build_probe(n: int) -> None:
        probes[n] = probe_slice(n, seed=n)

    def upload_probe(n: int) -> object:
        return client.upload_slice(probes[n], "netprofile upload probe", probe=True, busy_wait_s=0)

    def measure(
        name: str,
        transfer: Callable[[int], object],
        direction_sizes: list[int],
        activity: str,
        prepare: Callable[[int], object] | None = None,
    ) -> DirectionProfile | None:
        def report(done: int, total: int, size: int) -> None:
            if progress:
                progress(name, done, total, f"{size / MiB:.3g} MiB" if size else "")

        samples = measure_direction(
            transfer,
            direction_sizes,
            cfg.repeats,
            min_time_s=cfg.min_time_s,
            meter=meter,
            activity=activity,
            progress=report,
            prepare=prepare,
            max_transfer_s=cfg.max_transfer_s,
        )
        stopped = _stop_note(samples, direction_sizes, cfg.max_transfer_s)
        if prepare is not None:  # a probe is its weight bytes and a small graph: fitted to the bytes sent
            samples = [replace(s, bytes=len(probes[s.bytes])) for s in samples]
        fitted = fit_direction(samples, name)
        timed = () if prepare is not None else (how,)  # the upload probes are calls of their own
        d = with_bandwidth(replace(fitted, notes=fitted.notes + stopped + timed), name)
        if d is not None:
            log.info("%s: chosen %s (held-out error poly4 %.3f, affine %.3f)", name, d.chosen_model,
                     d.poly4_error, d.affine_error)  # fmt: skip
        return d

    uplink, downlink = measure("uplink", up, sizes, "tx"), measure("downlink", down, sizes, "rx")
    assert uplink is not None and downlink is not None  # with_bandwidth raises for them
    end_echo()
    upload = None
    if probe_sizes:
        try:
            upload = measure("upload", upload_probe, probe_sizes, "tx", prepare=build_probe)
        except (ArgumentError, ServerError) as exc:  # the two curves measured so far are kept
            if isinstance(exc, ServerUnavailable):
                raise
            log.warning("upload probes failed, slice uploads are costed with the uplink curve: %s", exc)
    return NetworkProfile(
        uplink=uplink,
        downlink=downlink,
        energy_source=meter.source if meter is not None else "",
        measured_at=time.time(),
        upload=upload,
    )


def run_netprofile(
    client: Client,
    node_id: str,
    config: NetProfileConfig | None = None,
    *,
    meter: Meter | None = None,
    register: bool = True,
    progress: Progress | None = None,
) -> NetworkProfile:
    """Register the node (keeping the timing setup it is registered with: `with_timing_setup`), profile the link,
    report the profile to the server."""
    if register:
        from rr_edge.device import describe_device, registered_device, with_timing_setup

        device = describe_device(energy_source=meter.source if meter else "")
        registered = registered_device(client, node_id)
        client.register_node(node_id, device if registered is None else with_timing_setup(device, registered))
    profile = profile_network(client, config, meter=meter, progress=progress)
    report = functools.partial(client.report_network_profile, node_id, profile)
    retry_unreachable(report, "reporting the network profile", closed=lambda: client.closed)
    return profile


def _errors(d: DirectionProfile) -> dict[str, float]:
    """Held-out error of each kind of curve (negative: not fitted, e.g. too few sizes)."""
    return {"poly4": d.poly4_error, "affine": d.affine_error, "pwl": d.pwl_error}


def summary(profile: NetworkProfile) -> dict[str, Any]:
    """JSON summary of a profile (the `rr-edge netprofile --json` object)."""

    def direction(d: DirectionProfile) -> dict[str, Any]:
        sizes = sorted({s.bytes for s in d.samples})
        by_size = {b: [s.ms for s in d.samples if s.bytes == b] for b in sizes}
        model = d.model
        bandwidth = None
        if model.get("kind") == "affine" and model["coeffs"][1] > 0:
            bandwidth = 1.0 / model["coeffs"][1] / 1000.0  # bytes per ms -> MB/s
        elif model.get("slope_ms_per_byte", 0) > 0:
            bandwidth = 1.0 / model["slope_ms_per_byte"] / 1000.0
        return {
            "chosen_model": d.chosen_model,
            **{f"{kind}_error": error if error >= 0 else None for kind, error in _errors(d).items()},  # null: none
            "bandwidth_MBps": bandwidth,
            "sizes": len(sizes),
            "max_bytes": sizes[-1] if sizes else 0,
            "median_ms": {str(b): float(np.median(v)) for b, v in by_size.items()},
            "energy_mJ": {str(b): next((s.energy_mJ for s in d.samples if s.bytes == b), None) for b in sizes},
            # what the planner's energy of these transfers comes from: the meter's readings when they were fitted,
            # otherwise the declared power model (never the meter's name for a modelled figure)
            "energy_source": profile.energy_source if model.get("energy_coeffs") is not None else "model",
            "model": model,
            "notes": list(d.notes),
        }

    return {
        "uplink": direction(profile.uplink),
        "downlink": direction(profile.downlink),
        "upload": direction(profile.upload) if profile.upload is not None else None,
        "energy_source": profile.energy_source,
        "measured_at": profile.measured_at,
    }
