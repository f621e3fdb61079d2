"""Cost model of one partition plan: inputs, the plan value object and its cost by direct sums. Pure, no I/O.

A plan (i, j), -1 <= i <= j <= N-1, runs blocks 0..i on the edge, i+1..j on the cloud and j+1..N-1 on the edge.
i == j offloads nothing (all those plans are one plan; it is reported once, as i = j = N-1); i = -1 starts on the
cloud; j = N-1 returns the model output. Cost of an offloading plan, per inference:

    latency_ms = c * edge_ms[0..i]                      head, c = e2e correction (whole-model ms / sum of block ms)
               + up(boundary[i+1]) + W / K              input of block i+1 sent up; W = upload(slice bytes i+1..j)
               + c_cloud * cloud_ms[i+1..j]             cloud compute
               + down(boundary[j+1]) - rt               input of block j+1 (the model output when j = N-1) sent down
               + c * edge_ms[j+1..N-1]                  tail
    energy_mJ  = c * edge_mJ[head + tail]
               + transfer energy (network model's mJ, else tx_power_W x uplink / upload ms and rx_power_W x
                                 downlink ms; weights / K)
               + idle_power_W x cloud ms                the edge waits for the cloud

``rt`` = min(up(0), down(0)): both echo curves hold one round trip of the link, and a request with its answer makes
one (`rr_edge.netmodel.round_trip_overlap_ms`); the breakdown's ``downlink_ms`` is the answer's time beyond it.

``upload`` is the measured cost of a whole slice upload (the edge's hashing, the transfer, the server's validation,
durable write and session opening; `rr_edge.netprofile`), ``up`` / ``down`` the echo transfer curves; without an
upload curve W is costed with ``up``. W is charged for every offloaded slice (a weightless slice still costs one
message) unless the server already holds it (``preloaded`` or ``cached_slices``); K = ``amortize_over``.
``Plan.upload_bytes`` is that slice's bytes (0 when nothing is uploaded); activation bytes are in the
breakdown (``uplink_bytes``, ``downlink_bytes``).
`plan_cost` is the reference implementation; `rr_edge.planner` evaluates every plan at once with the same model.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rr_edge.errors import ArgumentError
from rr_edge.netmodel import NetworkModel, answer_ms

BREAKDOWN = (  # keys of Plan.breakdown: *_ms add up to latency_ms, *_mJ to energy_mJ
    "head_ms", "uplink_ms", "weight_upload_ms", "cloud_ms", "downlink_ms", "tail_ms",
    "compute_mJ", "transfer_mJ", "weight_upload_mJ", "idle_mJ", "uplink_bytes", "downlink_bytes",
)  # fmt: skip


def _vec(name: str, v: Any, n: int) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64).ravel()
    if a.shape != (n,):
        raise ValueError(f"{name} must have {n} entries, got {a.size}")
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        raise ValueError(f"{name} must be finite and non-negative")
    return a


@dataclass(frozen=True)
class PlanInputs:
    """Everything the cost model needs for one model on one edge node (units: ms, mJ, bytes, W).

    Per block (N entries): ``edge_ms``, ``edge_mJ`` (edge compute), ``cloud_ms``, ``upload_bytes`` (what the block
    adds to an uploaded slice: its weights and its serialized nodes, `Block.slice_bytes`; rounded to whole bytes).
    ``boundary_bytes`` (N+1): boundary k is the tensor entering block k; k = 0 the model input, k = N its output.
    ``cached_slices``: block ranges (first, last), inclusive, whose slice the server already holds.
    ``e2e_correction`` scales edge compute (ms and mJ); ``cloud_correction`` scales cloud ms.
    ``upload``: the curve of whole slice uploads (None: the ``uplink`` curve).
    ``tx_power_W`` / ``rx_power_W``: the edge's power while sending / receiving, for transfers whose network model has
    no metered energy (``rx_power_W`` None: as ``tx_power_W``).
    ``max_slice_bytes``: the server's limit on one slice (`ServerInfo.max_slice_bytes`; None: no limit). A plan whose
    middle slice is larger cannot run there, whether uploaded or preloaded: its cost is +inf. A slice's ONNX bytes
    are more than its blocks' ``upload_bytes`` (its graph's inputs and outputs, value infos, opset imports, framing):
    ``slice_overhead_bytes`` (N entries, None: none) bounds what each block adds beyond them, and the limit is checked
    against both (on ``upload_bytes`` alone, plans were chosen whose slice the server then refused: review).
    ``local_only``: blocks the server does not run (`Block.offloadable`: an op outside the standard ONNX domains); a
    plan that offloads one cannot run either.
    ``max_message_bytes``: the largest message between the edge and the server (the smaller of the two ends'
    limits; None: no limit); a plan whose tensors sent up or down are larger cannot run either.
    ``refused_slices``: block ranges (first, last), inclusive, whose slice the server refused (`rr-edge run` learns
    them as it runs); a plan that offloads one of them cannot run either.
    """

    edge_ms: np.ndarray
    edge_mJ: np.ndarray
    cloud_ms: np.ndarray
    upload_bytes: np.ndarray
    boundary_bytes: np.ndarray
    uplink: NetworkModel
    downlink: NetworkModel
    idle_power_W: float = 0.0
    tx_power_W: float = 0.0
    rx_power_W: float | None = None
    preloaded: bool = False
    cached_slices: frozenset[tuple[int, int]] = field(default_factory=frozenset)
    amortize_over: int = 1
    e2e_correction: float = 1.0
    cloud_correction: float = 1.0
    upload: NetworkModel | None = None
    max_slice_bytes: float | None = None
    slice_overhead_bytes: np.ndarray | None = None
    local_only: frozenset[int] = field(default_factory=frozenset)
    max_message_bytes: float | None = None
    refused_slices: frozenset[tuple[int, int]] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        n = np.asarray(self.edge_ms).size
        if n < 1:
            raise ValueError("a model needs at least one block")
        for name in ("edge_ms", "edge_mJ", "cloud_ms", "upload_bytes"):
            object.__setattr__(self, name, _vec(name, getattr(self, name), n))
        object.__setattr__(self, "upload_bytes", np.round(self.upload_bytes))  # whole bytes, as every plan reports
        object.__setattr__(self, "boundary_bytes", _vec("boundary_bytes", self.boundary_bytes, n + 1))
        if self.slice_overhead_bytes is not None:
            object.__setattr__(self, "slice_overhead_bytes", _vec("slice_overhead_bytes", self.slice_overhead_bytes, n))
        object.__setattr__(self, "cached_slices", frozenset((int(a), int(b)) for a, b in self.cached_slices))
        object.__setattr__(self, "local_only", frozenset(int(k) for k in self.local_only))
        object.__setattr__(self, "refused_slices", frozenset((int(a), int(b)) for a, b in self.refused_slices))
        if any(not 0 <= k < n for k in self.local_only):
            raise ValueError(f"local_only holds blocks outside 0..{n - 1}")
        check_amortize_over(self.amortize_over)
        for name in ("max_slice_bytes", "max_message_bytes"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive (None: no limit)")
        for name in ("idle_power_W", "tx_power_W", "receive_power_W", "e2e_correction", "cloud_correction"):
            v = float(getattr(self, name))
            if not np.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be finite and non-negative")

    @property
    def refuses_some(self) -> bool:
        """Whether `refused` holds for some plan (then a plan's cost is no longer a row term plus a column term)."""
        n = self.n_blocks
        too_big = self.max_message_bytes is not None and bool(np.any(self.boundary_bytes > self.max_message_bytes))
        return too_big or bool(self.refused_slices) or bool(self.refused(0, n - 1))

    @property
    def receive_power_W(self) -> float:
        return self.tx_power_W if self.rx_power_W is None else float(self.rx_power_W)

    @property
    def n_blocks(self) -> int:
        return int(self.edge_ms.size)

    def refused(self, r: Any, j: Any) -> Any:
        """Whether the plan offloading blocks r..j cannot run: its middle slice (`upload_bytes` and
        `slice_overhead_bytes`) is over `max_slice_bytes` or holds a block of `local_only`, or the tensors it sends up
        (boundary r) or down (boundary j+1) are over `max_message_bytes`, or it is one of `refused_slices`
        (broadcasts over index arrays)."""
        out = np.zeros(np.broadcast(r, j).shape, dtype=bool)
        for first, last in self.refused_slices:
            out |= (np.asarray(r) == first) & (np.asarray(j) == last)
        if self.max_message_bytes is not None:
            too_big = self.boundary_bytes > self.max_message_bytes
            out |= too_big[r] | too_big[np.asarray(j) + 1]
        if self.max_slice_bytes is not None:
            overhead = 0.0 if self.slice_overhead_bytes is None else self.slice_overhead_bytes
            prefix = np.concatenate(([0.0], np.cumsum(self.upload_bytes + overhead)))
            out |= prefix[np.asarray(j) + 1] - prefix[r] > self.max_slice_bytes
        if self.local_only:
            marks = np.zeros(self.n_blocks)
            marks[list(self.local_only)] = 1
            counts = np.concatenate(([0.0], np.cumsum(marks)))
            out |= counts[np.asarray(j) + 1] - counts[r] > 0
        return out

    def answer(self, nbytes: Any) -> tuple[Any, Any]:
        """(ms, edge mJ) that an answer of ``nbytes`` bytes adds to its request's round trip: the downlink's time
        less the round trip the uplink's already holds (`rr_edge.netmodel.answer_ms`), and that share of the
        downlink's energy (metered, or ``receive_power_W`` x ms). Scalars or arrays, as given."""
        ms = answer_ms(self.uplink, self.downlink, nbytes)
        if not self.downlink.has_energy:
            return ms, self.receive_power_W * ms
        full = np.asarray(self.downlink.predict_ms(nbytes))
        share = np.divide(ms, full, out=np.zeros(full.shape), where=full > 0)
        mJ = np.asarray(self.downlink.predict_mJ(nbytes)) * share
        return ms, float(mJ) if mJ.ndim == 0 else mJ

    @property
    def weight_link(self) -> NetworkModel:
        """The curve slice weight uploads are costed with."""
        return self.upload if self.upload is not None else self.uplink


def check_amortize_over(k: Any) -> None:
    """ArgumentError unless `k` is a whole number of requests >= 1 (a float such as 3.0 will do); infinity and NaN
    had failed in `int` with its own OverflowError and ValueError (review)."""
    whole = isinstance(k, numbers.Integral) or (isinstance(k, numbers.Real) and math.isfinite(k) and k % 1 == 0)
    if isinstance(k, bool) or not whole or k < 1:
        raise ArgumentError(f"amortize_over must be a whole number of requests >= 1, got {k!r}")


def correction_factor(whole_model_ms: float, block_ms: Iterable[float], fallback: float = 1.0) -> float:
    """E2E correction: measured whole-model latency / sum of the per-block latencies (`fallback` if unknown)."""
    total = float(np.sum(np.fromiter(block_ms, dtype=np.float64)))
    if not whole_model_ms or whole_model_ms <= 0 or total <= 0:
        return fallback
    return float(whole_model_ms) / total


def inputs_from_blocks(blocks: Sequence[Mapping[str, Any]], **kw: Any) -> PlanInputs:
    """PlanInputs from SPEC §3 block dicts (``input_bytes``, ``output_bytes``, ``param_bytes``) plus the other fields.

    boundary k = input_bytes of block k, boundary N = output_bytes of the last block; upload_bytes = ``slice_bytes``
    where the dicts have it (`Block.to_json` does), else param_bytes.
    """
    if not blocks:
        raise ValueError("a model needs at least one block")
    boundary = [int(b["input_bytes"]) for b in blocks] + [int(blocks[-1]["output_bytes"])]
    upload = [int(b.get("slice_bytes", b["param_bytes"])) for b in blocks]
    return PlanInputs(upload_bytes=np.array(upload), boundary_bytes=np.array(boundary), **kw)


@dataclass(frozen=True)
class Plan:
    """One partition: edge 0..i, cloud i+1..j, edge j+1..N-1, with its predicted cost per inference."""

    i: int
    j: int
    latency_ms: float
    energy_mJ: float
    offloaded_blocks: int
    upload_bytes: int  # bytes of the slice that must be uploaded (0 when nothing offloaded or already cached)
    breakdown: dict[str, float] = field(default_factory=dict, compare=False)
    objective: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """SPEC §6 `plan --json` entry; ``objective`` is added when the plan was chosen by `choose`. A plan that cannot
        run (its slice is over the server's limit) has null latency and energy."""
        d: dict[str, Any] = {
            "i": self.i, "j": self.j, "latency_ms": _finite(self.latency_ms), "energy_mJ": _finite(self.energy_mJ),
            "offloaded_blocks": self.offloaded_blocks, "upload_bytes": self.upload_bytes,
        }  # fmt: skip
        if self.objective is not None:
            d["objective"] = self.objective
        return d


def _finite(x: float) -> float | None:
    return x if np.isfinite(x) else None


def plan_cost(inputs: PlanInputs, i: int, j: int) -> Plan:
    """Cost of one plan (i, j) with its breakdown, by direct sums (the reference the matrix form must match)."""
    n = inputs.n_blocks
    if not -1 <= i <= j <= n - 1:
        raise ArgumentError(f"invalid plan ({i}, {j}); need -1 <= i <= j <= {n - 1}")
    c, K = float(inputs.e2e_correction), int(inputs.amortize_over)
    if i == j:
        i = j = n - 1
    head = c * float(inputs.edge_ms[: i + 1].sum())
    tail = c * float(inputs.edge_ms[j + 1 :].sum())
    compute_mJ = c * float(inputs.edge_mJ[: i + 1].sum() + inputs.edge_mJ[j + 1 :].sum())
    parts = dict.fromkeys(BREAKDOWN, 0.0)
    wbytes = 0
    if j > i:
        up_b, down_b = float(inputs.boundary_bytes[i + 1]), float(inputs.boundary_bytes[j + 1])
        cloud = float(inputs.cloud_correction) * float(inputs.cloud_ms[i + 1 : j + 1].sum())
        up_ms, (down_ms, down_mJ) = inputs.uplink.predict_ms(up_b), inputs.answer(down_b)
        xfer = transfer_mJ(inputs.uplink, up_b, up_ms, inputs.tx_power_W) + down_mJ
        w_ms = w_mJ = 0.0
        if not inputs.preloaded and (i + 1, j) not in inputs.cached_slices:
            wbytes = int(inputs.upload_bytes[i + 1 : j + 1].sum())
            full_ms = inputs.weight_link.predict_ms(float(wbytes))
            w_ms = full_ms / K
            w_mJ = transfer_mJ(inputs.weight_link, float(wbytes), full_ms, inputs.tx_power_W) / K
        parts.update(
            uplink_ms=up_ms, weight_upload_ms=w_ms, cloud_ms=cloud, downlink_ms=down_ms, transfer_mJ=xfer,
            weight_upload_mJ=w_mJ, idle_mJ=inputs.idle_power_W * cloud, uplink_bytes=up_b, downlink_bytes=down_b,
        )  # fmt: skip
    parts.update(head_ms=head, tail_ms=tail, compute_mJ=compute_mJ)
    latency = sum(parts[k] for k in BREAKDOWN if k.endswith("_ms"))
    energy = sum(parts[k] for k in BREAKDOWN if k.endswith("_mJ"))
    if j > i and inputs.refused(i + 1, j):
        latency = energy = np.inf
    return Plan(i, j, float(latency), float(energy), j - i, wbytes, {k: float(v) for k, v in parts.items()})


def plan_costs(inputs: PlanInputs, i: Sequence[int] | np.ndarray, j: Sequence[int] | np.ndarray) -> list[Plan]:
    """`plan_cost` of many plans at once, by prefix sums (same figures, O(N + len(i)))."""
    n, c, K = inputs.n_blocks, float(inputs.e2e_correction), int(inputs.amortize_over)
    ii, jj = np.asarray(i, dtype=np.int64).ravel(), np.asarray(j, dtype=np.int64).ravel()
    if ii.shape != jj.shape or np.any(ii < -1) or np.any(ii > jj) or np.any(jj > n - 1):
        raise ArgumentError(f"invalid plans; need -1 <= i <= j <= {n - 1}")
    off = jj > ii
    ii, jj = np.where(off, ii, n - 1), np.where(off, jj, n - 1)
    r, j1 = ii + 1, jj + 1
    pe, pj, pc, pw = (np.concatenate(([0.0], np.cumsum(v))) for v in
                      (inputs.edge_ms, inputs.edge_mJ, inputs.cloud_ms, inputs.upload_bytes))  # fmt: skip
    bb = inputs.boundary_bytes
    z = np.zeros(ii.size)
    up_b, down_b = np.where(off, bb[r], 0.0), np.where(off, bb[j1], 0.0)
    up_ms = np.where(off, inputs.uplink.predict_ms(bb[r]), 0.0)
    ans_ms, ans_mJ = inputs.answer(bb[j1])
    down_ms = np.where(off, ans_ms, 0.0)
    xfer = np.where(off, transfer_mJ(inputs.uplink, bb[r], up_ms, inputs.tx_power_W) + ans_mJ, 0.0)
    cloud = np.where(off, (pc[j1] - pc[r]) * float(inputs.cloud_correction), 0.0)
    cached = np.array([(int(a), int(b)) in inputs.cached_slices for a, b in zip(r, jj, strict=True)], dtype=bool)
    charged = off & ~cached & (not inputs.preloaded)
    wbytes = np.where(charged, pw[j1] - pw[r], 0.0)
    link = inputs.weight_link
    full_ms = np.asarray(link.predict_ms(wbytes))
    w_ms = np.where(charged, full_ms / K, 0.0)
    w_mJ = np.where(charged, np.asarray(transfer_mJ(link, wbytes, full_ms, inputs.tx_power_W)) / K, 0.0)
    cols = {
        "head_ms": c * pe[r], "uplink_ms": up_ms, "weight_upload_ms": w_ms, "cloud_ms": cloud,
        "downlink_ms": down_ms, "tail_ms": c * (pe[n] - pe[j1]), "compute_mJ": c * (pj[r] + pj[n] - pj[j1]),
        "transfer_mJ": xfer + z, "weight_upload_mJ": w_mJ, "idle_mJ": inputs.idle_power_W * cloud,
        "uplink_bytes": up_b, "downlink_bytes": down_b,
    }  # fmt: skip
    over = off & inputs.refused(r, jj)
    lat = np.where(over, np.inf, sum(v for k, v in cols.items() if k.endswith("_ms")))
    en = np.where(over, np.inf, sum(v for k, v in cols.items() if k.endswith("_mJ")))
    rows = [
        dict(zip(BREAKDOWN, vals, strict=True)) for vals in zip(*(cols[k].tolist() for k in BREAKDOWN), strict=True)
    ]
    return [
        Plan(int(a), int(b), float(x), float(y), int(b - a), int(w), bd)
        for a, b, x, y, w, bd in zip(ii, jj, np.asarray(lat), np.asarray(en), wbytes, rows, strict=True)
    ]


def transfer_mJ(model: NetworkModel, nbytes: Any, ms: Any, power_W: float) -> Any:
    """Edge energy (mJ) of a transfer: the network model's energy if profiled, else the radio's power (W) in that
    direction x time (ms)."""
    return model.predict_mJ(nbytes) if model.has_energy else power_W * ms
