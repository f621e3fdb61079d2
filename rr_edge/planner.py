"""Partition planner: cost of every plan (i, j) and the Pareto set over (latency, edge energy). Pure, no I/O.

A plan (i, j), -1 <= i <= j <= N-1, runs blocks 0..i on the edge, i+1..j on the cloud and j+1..N-1 on the edge.
i == j offloads nothing (all those plans are one plan; it is reported once, as i = j = N-1); i = -1 starts on the
cloud; j = N-1 returns the model output. Cost of an offloading plan, per inference:

    latency_ms = c * edge_ms[0..i]                      head, c = e2e correction (whole-model ms / sum of block ms)
               + up(boundary[i+1]) + W / K              input of block i+1 sent up; W = up(weight bytes of i+1..j)
               + c_cloud * cloud_ms[i+1..j]             cloud compute
               + down(boundary[j+1])                    input of block j+1 (the model output when j = N-1) sent down
               + c * edge_ms[j+1..N-1]                  tail
    energy_mJ  = c * edge_mJ[head + tail]
               + transfer energy (network model's mJ, else tx_power_W x transfer ms; weights / K)
               + idle_power_W x cloud ms                the edge waits for the cloud

W is charged unless the slice is already on the server (``preloaded`` or ``cached_slices``); K = ``amortize_over``.
Every plan is evaluated at once with prefix sums over the upper triangle of (i, j): O(N^2) work, no Python loops.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from rr_edge.netmodel import NetworkModel
from rr_edge.pareto import pareto_indices

OBJECTIVES = ("latency", "energy", "pareto", "slo")
_BREAKDOWN = (
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

    Per block (N entries): ``edge_ms``, ``edge_mJ`` (edge compute), ``cloud_ms``, ``weight_bytes`` (slice upload).
    ``boundary_bytes`` (N+1): boundary k is the tensor entering block k; k = 0 the model input, k = N its output.
    ``cached_slices``: block ranges (first, last), inclusive, whose slice the server already holds.
    ``e2e_correction`` scales edge compute (ms and mJ); ``cloud_correction`` scales cloud ms.
    """

    edge_ms: np.ndarray
    edge_mJ: np.ndarray
    cloud_ms: np.ndarray
    weight_bytes: np.ndarray
    boundary_bytes: np.ndarray
    uplink: NetworkModel
    downlink: NetworkModel
    idle_power_W: float = 0.0
    tx_power_W: float = 0.0
    preloaded: bool = False
    cached_slices: frozenset[tuple[int, int]] = field(default_factory=frozenset)
    amortize_over: int = 1
    e2e_correction: float = 1.0
    cloud_correction: float = 1.0

    def __post_init__(self) -> None:
        n = np.asarray(self.edge_ms).size
        if n < 1:
            raise ValueError("a model needs at least one block")
        for name in ("edge_ms", "edge_mJ", "cloud_ms", "weight_bytes"):
            object.__setattr__(self, name, _vec(name, getattr(self, name), n))
        object.__setattr__(self, "boundary_bytes", _vec("boundary_bytes", self.boundary_bytes, n + 1))
        object.__setattr__(self, "cached_slices", frozenset((int(a), int(b)) for a, b in self.cached_slices))
        if int(self.amortize_over) < 1:
            raise ValueError("amortize_over must be >= 1")
        for name in ("idle_power_W", "tx_power_W", "e2e_correction", "cloud_correction"):
            v = float(getattr(self, name))
            if not np.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be finite and non-negative")

    @property
    def n_blocks(self) -> int:
        return int(self.edge_ms.size)


def correction_factor(whole_model_ms: float, block_ms: Iterable[float]) -> float:
    """E2E correction: measured whole-model latency / sum of the per-block latencies (1.0 if unknown)."""
    total = float(np.sum(np.fromiter(block_ms, dtype=np.float64)))
    if not whole_model_ms or whole_model_ms <= 0 or total <= 0:
        return 1.0
    return float(whole_model_ms) / total


def inputs_from_blocks(blocks: Sequence[Mapping[str, Any]], **kw: Any) -> PlanInputs:
    """PlanInputs from SPEC §3 block dicts (``input_bytes``, ``output_bytes``, ``param_bytes``) plus the other fields.

    boundary k = input_bytes of block k, boundary N = output_bytes of the last block; weight_bytes = param_bytes.
    """
    if not blocks:
        raise ValueError("a model needs at least one block")
    boundary = [int(b["input_bytes"]) for b in blocks] + [int(blocks[-1]["output_bytes"])]
    weights = [int(b["param_bytes"]) for b in blocks]
    return PlanInputs(weight_bytes=np.array(weights), boundary_bytes=np.array(boundary), **kw)


@dataclass(frozen=True)
class Plan:
    """One partition: edge 0..i, cloud i+1..j, edge j+1..N-1, with its predicted cost per inference."""

    i: int
    j: int
    latency_ms: float
    energy_mJ: float
    offloaded_blocks: int
    upload_bytes: int  # slice weight bytes that must be uploaded (0 when nothing offloaded or already cached)
    breakdown: dict[str, float] = field(default_factory=dict, compare=False)
    objective: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """SPEC §6 `plan --json` entry; ``objective`` is added when the plan was chosen by `choose`."""
        d: dict[str, Any] = {
            "i": self.i, "j": self.j, "latency_ms": self.latency_ms, "energy_mJ": self.energy_mJ,
            "offloaded_blocks": self.offloaded_blocks, "upload_bytes": self.upload_bytes,
        }  # fmt: skip
        if self.objective is not None:
            d["objective"] = self.objective
        return d


def plan_cost(inputs: PlanInputs, i: int, j: int) -> Plan:
    """Cost of one plan (i, j) with its breakdown, by direct sums (the reference the matrix form must match)."""
    n = inputs.n_blocks
    if not -1 <= i <= j <= n - 1:
        raise ValueError(f"invalid plan ({i}, {j}); need -1 <= i <= j <= {n - 1}")
    c, K = float(inputs.e2e_correction), int(inputs.amortize_over)
    if i == j:
        i = j = n - 1
    head = c * float(inputs.edge_ms[: i + 1].sum())
    tail = c * float(inputs.edge_ms[j + 1 :].sum())
    compute_mJ = c * float(inputs.edge_mJ[: i + 1].sum() + inputs.edge_mJ[j + 1 :].sum())
    parts = dict.fromkeys(_BREAKDOWN, 0.0)
    wbytes = 0
    if j > i:
        up_b, down_b = float(inputs.boundary_bytes[i + 1]), float(inputs.boundary_bytes[j + 1])
        cloud = float(inputs.cloud_correction) * float(inputs.cloud_ms[i + 1 : j + 1].sum())
        up_ms, down_ms = inputs.uplink.predict_ms(up_b), inputs.downlink.predict_ms(down_b)
        xfer = _transfer_mJ(inputs.uplink, up_b, up_ms, inputs.tx_power_W)
        xfer += _transfer_mJ(inputs.downlink, down_b, down_ms, inputs.tx_power_W)
        w_ms = w_mJ = 0.0
        if not inputs.preloaded and (i + 1, j) not in inputs.cached_slices:
            wbytes = int(inputs.weight_bytes[i + 1 : j + 1].sum())
            full_ms = inputs.uplink.predict_ms(float(wbytes))
            w_ms = full_ms / K
            w_mJ = _transfer_mJ(inputs.uplink, float(wbytes), full_ms, inputs.tx_power_W) / K
        parts.update(
            uplink_ms=up_ms, weight_upload_ms=w_ms, cloud_ms=cloud, downlink_ms=down_ms, transfer_mJ=xfer,
            weight_upload_mJ=w_mJ, idle_mJ=inputs.idle_power_W * cloud, uplink_bytes=up_b, downlink_bytes=down_b,
        )  # fmt: skip
    parts.update(head_ms=head, tail_ms=tail, compute_mJ=compute_mJ)
    latency = sum(parts[k] for k in _BREAKDOWN if k.endswith("_ms"))
    energy = sum(parts[k] for k in _BREAKDOWN if k.endswith("_mJ"))
    return Plan(i, j, float(latency), float(energy), j - i, wbytes, {k: float(v) for k, v in parts.items()})


@dataclass(frozen=True)
class PlanTable:
    """Every distinct plan as (N+1) x N matrices indexed [i + 1, j]; invalid cells (j <= i) hold +inf.

    The all-local plan sits at [N, N-1] (i = j = N-1); every other finite cell has i < j.
    """

    inputs: PlanInputs
    latency_ms: np.ndarray
    energy_mJ: np.ndarray

    def __len__(self) -> int:
        n = self.inputs.n_blocks
        return n * (n + 1) // 2 + 1

    def plan(self, i: int, j: int) -> Plan:
        """Plan (i, j) with its breakdown (any i == j is the all-local plan)."""
        return plan_cost(self.inputs, i, j)

    def flat(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(i, j, latency_ms, energy_mJ) of every distinct plan as 1-D arrays, the all-local plan first."""
        n = self.inputs.n_blocks
        r, j = _triangle(n)
        i_all = np.concatenate(([n - 1], r - 1))
        j_all = np.concatenate(([n - 1], j))
        return i_all, j_all, self.latency_ms[i_all + 1, j_all], self.energy_mJ[i_all + 1, j_all]


def _transfer_mJ(model: NetworkModel, nbytes: Any, ms: Any, tx_power_W: float) -> Any:
    return model.predict_mJ(nbytes) if model.has_energy else tx_power_W * ms


@lru_cache(maxsize=8)
def _triangle(n: int) -> tuple[np.ndarray, np.ndarray]:
    r, j = np.triu_indices(n + 1, k=0, m=n)  # r = i + 1 in 0..N-1, j >= r
    return r, j


@lru_cache(maxsize=8)
def _invalid(n: int) -> np.ndarray:
    bad = np.tril(np.ones((n + 1, n), dtype=bool), k=-1)  # j < r, i.e. j <= i
    bad[n, n - 1] = False  # the all-local plan
    return bad


def _upload_terms(inputs: PlanInputs) -> tuple[tuple[float, float] | None, tuple[float, float] | None]:
    """Affine (per message, per byte) terms of the slice upload's ms and mJ, or None where not affine."""
    ms = inputs.uplink.affine_terms()
    if inputs.uplink.has_energy:
        return ms, inputs.uplink.energy_terms()
    return ms, None if ms is None else (inputs.tx_power_W * ms[0], inputs.tx_power_W * ms[1])


def evaluate_all(inputs: PlanInputs) -> PlanTable:
    """Latency (ms) and edge energy (mJ) of every plan, as (N+1) x N matrices, by prefix sums and broadcasting."""
    n, c, K = inputs.n_blocks, float(inputs.e2e_correction), int(inputs.amortize_over)
    pe = np.concatenate(([0.0], np.cumsum(inputs.edge_ms))) * c
    pj = np.concatenate(([0.0], np.cumsum(inputs.edge_mJ))) * c
    pc = np.concatenate(([0.0], np.cumsum(inputs.cloud_ms))) * float(inputs.cloud_correction)
    bb = inputs.boundary_bytes
    up_ms = np.asarray(inputs.uplink.predict_ms(bb))
    down_ms = np.asarray(inputs.downlink.predict_ms(bb))
    up_mJ = _transfer_mJ(inputs.uplink, bb, up_ms, inputs.tx_power_W)
    down_mJ = _transfer_mJ(inputs.downlink, bb, down_ms, inputs.tx_power_W)
    idle = float(inputs.idle_power_W)
    # row r = i + 1 (0..N), column j (0..N-1); j + 1 indexes prefix sums and boundaries of the tail
    row_ms = pe[:] + up_ms - pc  # head + uplink - cloud prefix, per r
    col_ms = pc[1:] + down_ms[1:] + (pe[n] - pe[1:])  # cloud prefix + downlink + tail, per j
    row_mJ = pj + up_mJ - idle * pc
    col_mJ = idle * pc[1:] + down_mJ[1:] + (pj[n] - pj[1:])
    pw = np.concatenate(([0.0], np.cumsum(inputs.weight_bytes)))
    folded = False
    if not inputs.preloaded:
        ms_terms, mj_terms = _upload_terms(inputs)
        if ms_terms is not None and mj_terms is not None:  # affine upload: cost(r..j) = a + b (pw[j+1] - pw[r])
            row_ms = row_ms + (ms_terms[0] - ms_terms[1] * pw) / K
            col_ms = col_ms + ms_terms[1] * pw[1:] / K
            row_mJ = row_mJ + (mj_terms[0] - mj_terms[1] * pw) / K
            col_mJ = col_mJ + mj_terms[1] * pw[1:] / K
            folded = True
    lat = np.add.outer(row_ms, col_ms)
    energy = np.add.outer(row_mJ, col_mJ)
    if not inputs.preloaded and not folded:
        wbytes = np.subtract.outer(-pw, -pw[1:])  # weight bytes of blocks r..j
        w_ms = np.asarray(inputs.uplink.predict_ms(wbytes))
        w_mJ = _transfer_mJ(inputs.uplink, wbytes, w_ms, inputs.tx_power_W)
        if K > 1:
            w_ms *= 1.0 / K
            w_mJ *= 1.0 / K
        lat += w_ms
        energy += w_mJ
    if not inputs.preloaded:
        for a, b in inputs.cached_slices:
            if 0 <= a <= b < n:  # the server holds this slice: take its upload back out
                wb = float(pw[b + 1] - pw[a])
                ms = float(inputs.uplink.predict_ms(wb))
                lat[a, b] -= ms / K
                energy[a, b] -= float(_transfer_mJ(inputs.uplink, wb, ms, inputs.tx_power_W)) / K
    bad = _invalid(n)
    lat[bad] = np.inf
    energy[bad] = np.inf
    lat[n, n - 1], energy[n, n - 1] = pe[n], pj[n]
    return PlanTable(inputs, lat, energy)


def pareto(table: PlanTable) -> list[Plan]:
    """Mutually non-dominated plans over (latency_ms, energy_mJ), sorted by latency."""
    n = table.inputs.n_blocks
    idx = pareto_indices(table.latency_ms, table.energy_mJ, lambda k: k % n - k // n + 1)  # j - i
    return [table.plan(int(k // n) - 1, int(k % n)) for k in idx]


def _knee(front: Sequence[Plan]) -> Plan:
    lat = np.array([p.latency_ms for p in front])
    en = np.array([p.energy_mJ for p in front])
    nl = (lat - lat.min()) / max(np.ptp(lat), 1e-300)
    ne = (en - en.min()) / max(np.ptp(en), 1e-300)
    return front[int(np.argmin(nl**2 + ne**2))]


def choose(inputs: PlanInputs | PlanTable, objective: str = "latency", slo_ms: float | None = None) -> Plan:
    """The chosen plan (``objective`` field set), from the Pareto set.

    latency: fastest (least energy among equals); energy: least energy (fastest among equals); pareto: the knee
    (closest to the utopia point after min-max normalisation); slo (or any objective with ``slo_ms``): least energy
    with latency <= slo_ms — when no plan meets it, the fastest plan with objective "slo-unmet".
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    table = inputs if isinstance(inputs, PlanTable) else evaluate_all(inputs)
    front = pareto(table)
    if objective == "slo" or slo_ms is not None:
        if slo_ms is None:
            raise ValueError("objective 'slo' needs slo_ms")
        ok = [p for p in front if p.latency_ms <= slo_ms]
        plan, name = (ok[-1], "slo") if ok else (front[0], "slo-unmet")
    elif objective == "latency":
        plan, name = front[0], objective
    elif objective == "energy":
        plan, name = front[-1], objective
    else:
        plan, name = _knee(front), objective
    return Plan(**{**plan.__dict__, "objective": name})
