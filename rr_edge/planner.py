"""Partition planner: every plan (i, j) at once, the Pareto set over (latency, edge energy), the chosen plan. Pure.

The cost model is `rr_edge.costmodel` (re-exported here). With prefix sums, a plan's cost splits into a part that
depends only on its first cloud block r = i + 1 and a part that depends only on its last cloud block j:

    latency(r, j) = row_ms[r] + col_ms[j] (+ upload(r, j) when the upload curve is not affine)
    row_ms[r] = c * edge_ms[0..r-1] + up(boundary[r]) - cloud_prefix[r] (- b * weight_prefix[r] + a, folded upload)
    col_ms[j] = cloud_prefix[j+1] + answer(boundary[j+1]) + c * edge_ms[j+1..N-1] (+ b * weight_prefix[j+1])

where answer(b) = down(b) less the round trip both curves hold (`PlanInputs.answer`), and likewise for energy.
`evaluate_all` builds these vectors in O(N); the (N+1) x N matrices of all plans are
materialised only when asked for. `pareto` uses the structure to discard whole rows and columns of dominated plans
in O(N) and examines the few remaining cells exactly, so planning a 1,000-block model takes milliseconds.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from rr_edge.costmodel import (
    BREAKDOWN,
    Plan,
    PlanInputs,
    correction_factor,
    inputs_from_blocks,
    plan_cost,
    plan_costs,
    transfer_mJ,
)
from rr_edge.errors import ArgumentError
from rr_edge.pareto import pareto_indices, separable_candidates, sweep

__all__ = [
    "BREAKDOWN", "OBJECTIVES", "Plan", "PlanInputs", "PlanTable", "choose", "correction_factor", "evaluate_all",
    "inputs_from_blocks", "pareto", "pareto_indices", "plan_cost", "plan_costs",
]  # fmt: skip

OBJECTIVES = ("latency", "energy", "pareto", "slo")


@dataclass(frozen=True)
class Upload:
    """A slice-upload cost that is not affine in bytes: evaluated per cell from the weight prefix sums."""

    weight_prefix: np.ndarray  # bytes, N+1 entries
    inputs: PlanInputs

    def cost(self, r: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ms, mJ) per inference of uploading blocks r..j (K-amortised)."""
        wb = self.weight_prefix[np.asarray(j) + 1] - self.weight_prefix[r]
        ms = np.asarray(self.inputs.weight_link.predict_ms(wb))
        mj = np.asarray(transfer_mJ(self.inputs.weight_link, wb, ms, self.inputs.tx_power_W))
        k = float(self.inputs.amortize_over)
        return ms / k, mj / k


@dataclass(frozen=True)
class PlanTable:
    """Every distinct plan of one PlanInputs, indexed [r, j] with r = i + 1 (0..N) and j (0..N-1).

    Valid cells: j >= r (i < j: something offloaded) and the all-local plan at [N, N-1] (i = j = N-1).
    A cell's cost is ``row[r] + col[j]`` (+ ``upload.cost(r, j)`` when the upload curve is not affine; then
    ``bound`` holds row/column vectors of a lower bound used for pruning) (- ``fixes`` for slices already cached).
    """

    inputs: PlanInputs
    row_ms: np.ndarray
    col_ms: np.ndarray
    row_mJ: np.ndarray
    col_mJ: np.ndarray
    local: tuple[float, float]
    upload: Upload | None = None
    bound: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None
    fixes: tuple[tuple[int, int, float, float], ...] = ()
    _cache: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    @property
    def n_blocks(self) -> int:
        return self.inputs.n_blocks

    def __len__(self) -> int:
        n = self.n_blocks
        return n * (n + 1) // 2 + 1

    def values(self, r: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(latency_ms, energy_mJ) of valid cells [r, j] (index arrays)."""
        r, j = np.asarray(r), np.asarray(j)
        lat = self.row_ms[r] + self.col_ms[j]
        en = self.row_mJ[r] + self.col_mJ[j]
        if self.upload is not None:
            w_ms, w_mJ = self.upload.cost(r, j)
            lat += w_ms
            en += w_mJ
        for fr, fj, f_ms, f_mJ in self.fixes:
            hit = (r == fr) & (j == fj)
            lat[hit] -= f_ms
            en[hit] -= f_mJ
        is_local = r == self.n_blocks
        refused = ~is_local & self.inputs.refused(np.minimum(r, self.n_blocks - 1), j)
        lat[refused] = en[refused] = np.inf
        lat[is_local], en[is_local] = self.local
        return lat, en

    def _matrices(self) -> tuple[np.ndarray, np.ndarray]:
        if "lat" not in self._cache:
            n = self.n_blocks
            lat = np.add.outer(self.row_ms, self.col_ms)
            en = np.add.outer(self.row_mJ, self.col_mJ)
            if self.upload is not None:
                w_ms, w_mJ = self.upload.cost(np.arange(n + 1)[:, None], np.arange(n)[None, :])
                lat += w_ms
                en += w_mJ
            for fr, fj, f_ms, f_mJ in self.fixes:
                lat[fr, fj] -= f_ms
                en[fr, fj] -= f_mJ
            bad = _invalid(n) | self.inputs.refused(np.arange(n + 1)[:, None].clip(max=n - 1), np.arange(n)[None, :])
            lat[bad] = np.inf
            en[bad] = np.inf
            lat[-1, -1], en[-1, -1] = self.local
            self._cache.update(lat=lat, en=en)
        return self._cache["lat"], self._cache["en"]

    @property
    def latency_ms(self) -> np.ndarray:
        """(N+1) x N matrix of plan latency (ms); +inf in invalid cells. Built on first use."""
        return self._matrices()[0]

    @property
    def energy_mJ(self) -> np.ndarray:
        """(N+1) x N matrix of plan edge energy (mJ); +inf in invalid cells. Built on first use."""
        return self._matrices()[1]

    def plan(self, i: int, j: int) -> Plan:
        """Plan (i, j) with its breakdown (any i == j is the all-local plan)."""
        return plan_cost(self.inputs, i, j)

    def flat(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(i, j, latency_ms, energy_mJ) of every distinct plan as 1-D arrays, the all-local plan first."""
        n = self.n_blocks
        r, j = _triangle(n)
        r_all = np.concatenate(([n], r))
        j_all = np.concatenate(([n - 1], j))
        lat, en = self.values(r_all, j_all)
        return r_all - 1, j_all, lat, en


@lru_cache(maxsize=8)
def _triangle(n: int) -> tuple[np.ndarray, np.ndarray]:
    r, j = np.triu_indices(n + 1, k=0, m=n)  # r = i + 1 in 0..N-1, j >= r
    return r, j


@lru_cache(maxsize=8)
def _invalid(n: int) -> np.ndarray:
    bad = np.tril(np.ones((n + 1, n), dtype=bool), k=-1)  # j < r, i.e. j <= i
    bad[n, n - 1] = False  # the all-local plan
    bad.flags.writeable = False
    return bad


def _upload_terms(inputs: PlanInputs) -> tuple[tuple[float, float] | None, tuple[float, float] | None]:
    """Affine (per message, per byte) terms of the slice upload's ms and mJ, or None where not affine."""
    link = inputs.weight_link
    ms = link.affine_terms()
    if link.has_energy:
        return ms, link.energy_terms()
    return ms, None if ms is None else (inputs.tx_power_W * ms[0], inputs.tx_power_W * ms[1])


def evaluate_all(inputs: PlanInputs) -> PlanTable:
    """Latency (ms) and edge energy (mJ) of every plan, by prefix sums (see the module docstring)."""
    n, c, K = inputs.n_blocks, float(inputs.e2e_correction), int(inputs.amortize_over)
    pe = np.concatenate(([0.0], np.cumsum(inputs.edge_ms))) * c
    pj = np.concatenate(([0.0], np.cumsum(inputs.edge_mJ))) * c
    pc = np.concatenate(([0.0], np.cumsum(inputs.cloud_ms))) * float(inputs.cloud_correction)
    pw = np.concatenate(([0.0], np.cumsum(inputs.upload_bytes)))
    bb = inputs.boundary_bytes
    up_ms = np.asarray(inputs.uplink.predict_ms(bb))
    up_mJ = transfer_mJ(inputs.uplink, bb, up_ms, inputs.tx_power_W)
    down_ms, down_mJ = (np.asarray(v) for v in inputs.answer(bb))
    idle = float(inputs.idle_power_W)
    row_ms = pe + up_ms - pc  # per r: head + uplink - cloud prefix
    col_ms = pc[1:] + down_ms[1:] + (pe[n] - pe[1:])  # per j: cloud prefix + downlink + tail
    row_mJ = pj + up_mJ - idle * pc
    col_mJ = idle * pc[1:] + down_mJ[1:] + (pj[n] - pj[1:])
    upload, bound = None, None
    fixes: list[tuple[int, int, float, float]] = []
    if not inputs.preloaded:
        ms_terms, mj_terms = _upload_terms(inputs)
        exact = ms_terms is not None and mj_terms is not None
        if not exact:  # a lower bound for pruning; the exact cost is added per cell
            upload = Upload(pw, inputs)
            ms_terms = inputs.weight_link.affine_lower_bound()
            link = inputs.weight_link  # max(e0 f + e1 x, 0) * drift >= (e0 f + e1 x) * drift, f its fixed_drift
            e, d, f, tx = link.energy_coeffs, link.drift, link.fixed_drift, inputs.tx_power_W
            mj_terms = (e[0] * f * d, e[1] * d) if e is not None else (tx * ms_terms[0], tx * ms_terms[1])
        assert ms_terms is not None and mj_terms is not None
        folded = (
            row_ms + (ms_terms[0] - ms_terms[1] * pw) / K, col_ms + ms_terms[1] * pw[1:] / K,
            row_mJ + (mj_terms[0] - mj_terms[1] * pw) / K, col_mJ + mj_terms[1] * pw[1:] / K,
        )  # fmt: skip  # upload a + b * (pw[j+1] - pw[r]), folded into rows and columns
        if exact:
            row_ms, col_ms, row_mJ, col_mJ = folded
        else:
            bound = folded
        for a, b in sorted(inputs.cached_slices):
            if 0 <= a <= b < n:  # the server holds this slice: take its upload back out
                wb = float(pw[b + 1] - pw[a])
                ms = float(inputs.weight_link.predict_ms(wb))
                fixes.append((a, b, ms / K, float(transfer_mJ(inputs.weight_link, wb, ms, inputs.tx_power_W)) / K))
    local = (float(pe[n]), float(pj[n]))
    return PlanTable(inputs, row_ms, col_ms, row_mJ, col_mJ, local, upload, bound, tuple(fixes))


def _front_cells(table: PlanTable) -> tuple[np.ndarray, np.ndarray]:
    """(r, j) of the Pareto plans, by increasing latency; ties keep the fewest offloaded blocks."""
    n = table.n_blocks
    if table.inputs.refuses_some:  # some plans cannot run: cells are no longer bounded by rows + columns
        r, j = _triangle(n)
        r, j = np.concatenate(([n], r)), np.concatenate(([n - 1], j))
        lat, en = table.values(r, j)
        keep = pareto_indices(lat, en, lambda k: j[k] - r[k] + 1)
        return r[keep], j[keep]
    special_r = np.array([n] + [f[0] for f in table.fixes], dtype=np.intp)
    special_j = np.array([n - 1] + [f[1] for f in table.fixes], dtype=np.intp)
    sp_l, sp_e = table.values(special_r, special_j)
    rl, cl, re, ce = table.bound or (table.row_ms, table.col_ms, table.row_mJ, table.col_mJ)
    r, j = separable_candidates(rl[:n], cl, re[:n], ce, table.values, sp_l, sp_e)
    flat = np.unique(np.concatenate((r * n + j, special_r * n + special_j)))
    r, j = flat // n, flat % n
    lat, en = table.values(r, j)
    keep = sweep(lat, en, j - r + 1, flat)
    return r[keep], j[keep]


def pareto(table: PlanTable) -> list[Plan]:
    """Mutually non-dominated plans over (latency_ms, energy_mJ), sorted by latency, with their breakdowns."""
    r, j = _front_cells(table)
    return plan_costs(table.inputs, r - 1, j)


def _knee(front: Sequence[Plan]) -> Plan:
    lat = np.array([p.latency_ms for p in front])
    en = np.array([p.energy_mJ for p in front])
    nl = (lat - lat.min()) / max(float(np.ptp(lat)), 1e-300)
    ne = (en - en.min()) / max(float(np.ptp(en)), 1e-300)
    return front[int(np.argmin(nl**2 + ne**2))]


def check_objective(objective: str, slo_ms: float | None = None) -> None:
    """ArgumentError unless `objective` is one of OBJECTIVES (with the `slo_ms` that "slo" needs) and `slo_ms`, when
    given, a finite number of ms > 0: NaN, 0 or a negative deadline was taken and no plan met it (the fastest came
    back as "slo-unmet"), and "100" failed as a TypeError after the server had been asked (review)."""
    if objective not in OBJECTIVES:
        raise ArgumentError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    if objective == "slo" and slo_ms is None:
        raise ArgumentError("objective 'slo' needs slo_ms")
    if slo_ms is not None and (
        isinstance(slo_ms, bool) or not isinstance(slo_ms, numbers.Real) or not math.isfinite(slo_ms) or slo_ms <= 0
    ):
        raise ArgumentError(f"slo_ms must be a finite number of milliseconds > 0, got {slo_ms!r}")


def choose(inputs: PlanInputs | PlanTable, objective: str = "latency", slo_ms: float | None = None) -> Plan:
    """The chosen plan (``objective`` field set), from the Pareto set.

    latency: fastest (least energy among equals); energy: least energy (fastest among equals); pareto: the knee
    (closest to the utopia point after min-max normalisation); slo (or any objective with ``slo_ms``): least energy
    with latency <= slo_ms — when no plan meets it, the fastest plan with objective "slo-unmet".
    """
    check_objective(objective, slo_ms)
    table = inputs if isinstance(inputs, PlanTable) else evaluate_all(inputs)
    front = pareto(table)
    if objective == "slo" or slo_ms is not None:
        assert slo_ms is not None
        ok = [p for p in front if p.latency_ms <= slo_ms]
        plan, name = (ok[-1], "slo") if ok else (front[0], "slo-unmet")
    elif objective == "latency":
        plan, name = front[0], objective
    elif objective == "energy":
        plan, name = front[-1], objective
    else:
        plan, name = _knee(front), objective
    return Plan(**{**plan.__dict__, "objective": name})
