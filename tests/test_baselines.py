"""Baselines: hand-computed single-split choices, fair costing of Neurosurgeon's own estimates, upload charging."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from rr_edge.baselines import (
    BASELINES,
    all_baselines,
    neurosurgeon,
    neurosurgeon_non_offloaded,
    offload_all,
    offload_none,
    roadrunner_preoffloaded,
    single_split_costs,
)
from rr_edge.errors import ArgumentError
from rr_edge.netmodel import NetworkModel
from rr_edge.planner import PlanInputs, choose, plan_cost

SPEC_KEYS = {"i", "j", "latency_ms", "energy_mJ", "offloaded_blocks", "upload_bytes"}


def make(edge_ms, cloud_ms, boundary, weights=None, edge_mJ=None, **kw) -> PlanInputs:
    """Link both ways: 1 ms + 1 byte/us; no weights given -> nothing to upload (pre-loaded)."""
    return PlanInputs(
        edge_ms=edge_ms, edge_mJ=edge_mJ if edge_mJ is not None else edge_ms, cloud_ms=cloud_ms,
        upload_bytes=weights if weights is not None else [0] * len(edge_ms), boundary_bytes=boundary,
        uplink=NetworkModel.affine(1.0, 1000.0), downlink=NetworkModel.affine(1.0, 1000.0),
        preloaded=kw.pop("preloaded", weights is None), **kw,
    )  # fmt: skip


def random_inputs(rng: np.random.Generator, n: int, **kw) -> PlanInputs:
    return PlanInputs(
        edge_ms=rng.uniform(0.5, 20, n), edge_mJ=rng.uniform(0.5, 50, n), cloud_ms=rng.uniform(0.05, 4, n),
        upload_bytes=rng.integers(0, 2_000_000, n), boundary_bytes=rng.integers(1_000, 3_000_000, n + 1),
        uplink=NetworkModel.affine(rng.uniform(0.5, 5), rng.uniform(5e3, 1e5)),
        downlink=NetworkModel.affine(rng.uniform(0.5, 5), rng.uniform(5e3, 1e5)),
        idle_power_W=rng.uniform(0.1, 2), tx_power_W=rng.uniform(0.5, 3), rx_power_W=rng.uniform(0.3, 2), **kw,
    )  # fmt: skip


# link: 1 ms + 1 byte/us each way; a request and its answer pay the 1 ms once. Boundaries: model input 1e6 bytes,
# then 100, 100, output 100. Single splits (weights pre-loaded): i=-1: 1001 + 3 + 0.1; i=0: 1 + 1.1 + 2 + 0.1 = 4.2;
# i=1: 51 + 1.1 + 1 + 0.1; local 101
HEAVY_TAIL = dict(edge_ms=[1, 50, 50], cloud_ms=[1, 1, 1], boundary=[1e6, 100, 100, 100])


def test_offload_none_and_all():
    inp = make(**HEAVY_TAIL, weights=[0, 1000, 1000])
    none, everything = offload_none(inp), offload_all(inp)
    assert (none.i, none.j, none.latency_ms) == (2, 2, pytest.approx(101.0))
    assert (everything.i, everything.j, everything.upload_bytes) == (-1, 2, 2000)
    assert everything.latency_ms == pytest.approx(1001 + 3 + 0.1 + 3.0)


def test_neurosurgeon_single_split_with_and_without_upload():
    inp = make(**HEAVY_TAIL, weights=[0, 1000, 1000])
    ns = neurosurgeon(inp)
    assert (ns.i, ns.j, ns.upload_bytes, ns.latency_ms) == (0, 2, 0, pytest.approx(4.2))
    nso = neurosurgeon_non_offloaded(inp)
    assert (nso.i, nso.upload_bytes, nso.latency_ms) == (0, 2000, pytest.approx(4.2 + 3.0))


def test_non_offloaded_decision_upload_aware_or_not():
    inp = make(**HEAVY_TAIL, weights=[0, 1e6, 1e6])  # uploading blocks 1..2 costs 2001 ms
    aware = neurosurgeon_non_offloaded(inp)
    assert (aware.i, aware.j) == (2, 2)  # i=0 would cost 2005.2, i=1: 53.2 + 1001
    naive = neurosurgeon_non_offloaded(inp, upload_aware=False)
    assert (naive.i, naive.latency_ms) == (0, pytest.approx(4.2 + 2001.0))


def test_neurosurgeon_decides_on_its_estimates_but_is_costed_with_the_truth():
    inp = make(**HEAVY_TAIL)
    fooled = replace(inp, edge_ms=np.array([1.0, 0.1, 0.1]))  # its predictor thinks the edge is fast
    ns = neurosurgeon(inp, predicted=fooled)
    assert (ns.i, ns.j, ns.latency_ms) == (2, 2, pytest.approx(101.0))
    assert neurosurgeon(inp).latency_ms == pytest.approx(4.2)


def test_two_splits_beat_neurosurgeon_when_the_output_is_large():
    # model output 1e6 bytes: a single split must send it back (1001 ms); two splits keep the tail local.
    inp = make([1, 50, 1], [1, 1, 1], [1e6, 100, 100, 1e6], weights=[0, 1000, 0])
    ns = neurosurgeon(inp)
    assert (ns.i, ns.latency_ms) == (2, pytest.approx(52.0))
    ours = choose(inp)
    assert (ours.i, ours.j, ours.latency_ms) == (0, 1, pytest.approx(4.2 + 2.0))
    pre = roadrunner_preoffloaded(inp)
    assert (pre.i, pre.j, pre.latency_ms, pre.upload_bytes) == (0, 1, pytest.approx(4.2), 0)


def test_energy_objective_for_neurosurgeon():
    inp = make([10, 10], [30, 30], [10, 10, 10], edge_mJ=[100, 100], idle_power_W=0.1, tx_power_W=1.0)
    assert neurosurgeon(inp, objective="latency").i == 1
    assert neurosurgeon(inp, objective="energy").i == -1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_single_split_costs_match_the_planner(seed):
    rng = np.random.default_rng(seed)
    inp = random_inputs(rng, 15, amortize_over=4, cached_slices=frozenset({(5, 14)}))
    if seed == 2:  # measured slice uploads have their own curve
        inp = replace(inp, upload=NetworkModel.affine(40.0, 200.0))
    lat, en = single_split_costs(inp)
    for i in range(-1, 15):
        p = plan_cost(inp, i, 14)
        assert (lat[i + 1], en[i + 1]) == (pytest.approx(p.latency_ms), pytest.approx(p.energy_mJ))


def test_all_baselines_keys_and_json_shape():
    inp = random_inputs(np.random.default_rng(9), 10)
    out = all_baselines(inp)
    assert tuple(out) == BASELINES
    for plan in out.values():
        assert set(plan.to_dict()) == SPEC_KEYS
    best, pre = choose(inp), roadrunner_preoffloaded(inp)
    for name, plan in out.items():
        ours = pre if name == "neurosurgeon" else best  # Neurosurgeon has its weights pre-loaded
        assert ours.latency_ms <= plan.latency_ms + 1e-9


def test_neurosurgeon_breaks_a_tie_in_the_last_bit_by_energy() -> None:
    """Two single splits of equal latency (1.7 ms) that differ in the last bit: the energy tie-break was skipped and
    the costlier one chosen (found by review)."""
    inp = PlanInputs(
        edge_ms=[0.3, 0.6, 0.4, 0.4], edge_mJ=[0.4, 0.6, 1.1, 0.5], cloud_ms=[0.4, 0.1, 0.0, 0.1],
        upload_bytes=[0, 0, 0, 0], boundary_bytes=[100, 200, 200, 100, 100],
        uplink=NetworkModel.affine(0.2, 1000.0), downlink=NetworkModel.affine(0.7, 1000.0),
        idle_power_W=1.0, tx_power_W=1.0, rx_power_W=0.5, preloaded=True,
    )  # fmt: skip
    lat, en = single_split_costs(inp)
    assert lat[0] != lat[1] and lat[0] == pytest.approx(lat[1]) and en[0] < en[1]  # i = -1 and i = 0
    assert neurosurgeon(inp, objective="latency").i == -1


def test_amortize_over_is_a_whole_number_of_requests() -> None:
    """K = 2.5 was taken, and divided as 2 by one path and 2.5 by another (found by review)."""
    base = dict(edge_ms=[1.0], edge_mJ=[1.0], cloud_ms=[1.0], upload_bytes=[0], boundary_bytes=[1, 1],
                uplink=NetworkModel.affine(0.1, 1e3), downlink=NetworkModel.affine(0.1, 1e3))  # fmt: skip
    for k in (2.5, 0, True):
        with pytest.raises(ArgumentError, match="whole number of requests"):
            PlanInputs(**base, amortize_over=k)  # type: ignore[arg-type]
    assert PlanInputs(**base, amortize_over=3.0).amortize_over == 3.0
