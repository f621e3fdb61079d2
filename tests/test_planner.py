"""Planner: hand-computed optima, brute-force Pareto reference, objectives, upload charging and amortisation."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from rr_edge.baselines import neurosurgeon, offload_all
from rr_edge.netmodel import NetworkModel, fit_network_model
from rr_edge.pareto import sweep, tolerant_ranks
from rr_edge.planner import (
    Plan,
    PlanInputs,
    choose,
    correction_factor,
    evaluate_all,
    inputs_from_blocks,
    pareto,
    pareto_indices,
    plan_cost,
    plan_costs,
)

SPEC_KEYS = {"i", "j", "latency_ms", "energy_mJ", "offloaded_blocks", "upload_bytes"}


def link(rtt_ms: float = 1.0, bytes_per_ms: float = 1000.0) -> NetworkModel:
    return NetworkModel.affine(rtt_ms, bytes_per_ms)


def make(edge_ms, cloud_ms, boundary, weights=None, edge_mJ=None, **kw) -> PlanInputs:
    n = len(edge_ms)
    kw.setdefault("uplink", link())
    kw.setdefault("downlink", link())
    kw.setdefault("preloaded", weights is None)  # no weights given: no slice upload to charge
    return PlanInputs(
        edge_ms=edge_ms,
        edge_mJ=edge_mJ if edge_mJ is not None else edge_ms,
        cloud_ms=cloud_ms,
        upload_bytes=weights if weights is not None else [0] * n,
        boundary_bytes=boundary,
        **kw,
    )


def brute_force(inputs: PlanInputs) -> list[tuple[int, int, float, float]]:
    """O(N^3) reference: every (i, j) costed by explicit loops over the blocks."""
    n, c, K = inputs.n_blocks, inputs.e2e_correction, inputs.amortize_over
    up, down, tx, rx = inputs.uplink, inputs.downlink, inputs.tx_power_W, inputs.receive_power_W
    out = [(n - 1, n - 1, c * sum(inputs.edge_ms), c * sum(inputs.edge_mJ))]
    for i in range(-1, n):
        for j in range(i + 1, n):
            limit = inputs.max_slice_bytes
            if limit is not None and sum(inputs.upload_bytes[i + 1 : j + 1]) > limit:
                continue  # cannot run on that server
            message = inputs.max_message_bytes
            if message is not None and max(inputs.boundary_bytes[i + 1], inputs.boundary_bytes[j + 1]) > message:
                continue  # a tensor too big for one message
            lat = en = 0.0
            for k in range(n):
                if k <= i or k > j:
                    lat += c * inputs.edge_ms[k]
                    en += c * inputs.edge_mJ[k]
                else:
                    lat += inputs.cloud_ms[k]
                    en += inputs.idle_power_W * inputs.cloud_ms[k]
            ms = up.predict_ms(inputs.boundary_bytes[i + 1])
            lat += ms
            en += up.predict_mJ(inputs.boundary_bytes[i + 1]) if up.has_energy else tx * ms
            # the answer: the downlink's time less the one round trip both echo curves hold, and that share of its mJ
            b = inputs.boundary_bytes[j + 1]
            ms = max(down.predict_ms(b) - min(up.predict_ms(0), down.predict_ms(0)), 0.0)
            lat += ms
            en += down.predict_mJ(b) * ms / down.predict_ms(b) if down.has_energy else rx * ms
            if not inputs.preloaded and (i + 1, j) not in inputs.cached_slices:
                w = sum(inputs.upload_bytes[i + 1 : j + 1])
                wl = inputs.upload or up  # whole slice uploads have their own curve when profiled
                ms = wl.predict_ms(w)
                lat += ms / K
                en += (wl.predict_mJ(w) if wl.has_energy else tx * ms) / K
            out.append((i, j, lat, en))
    return out


def brute_pareto(points):
    front = []
    for p in points:
        dominated = any((q[2] <= p[2] and q[3] <= p[3]) and (q[2] < p[2] or q[3] < p[3]) for q in points)
        if not dominated:
            front.append(p)
    return front


def random_inputs(rng: np.random.Generator, n: int, **kw) -> PlanInputs:
    return PlanInputs(
        edge_ms=rng.uniform(0.5, 20, n),
        edge_mJ=rng.uniform(0.5, 50, n),
        cloud_ms=rng.uniform(0.05, 4, n),
        upload_bytes=rng.integers(0, 2_000_000, n),
        boundary_bytes=rng.integers(1_000, 3_000_000, n + 1),
        uplink=NetworkModel.affine(rng.uniform(0.5, 5), rng.uniform(5e3, 1e5)),
        downlink=NetworkModel.affine(rng.uniform(0.5, 5), rng.uniform(5e3, 1e5)),
        idle_power_W=rng.uniform(0.1, 2),
        tx_power_W=rng.uniform(0.5, 3),
        rx_power_W=rng.uniform(0.3, 2),
        **kw,
    )


# ---- hand-computed optima -------------------------------------------------------------------------------------


def test_all_local_optimum_when_the_network_is_slow():
    # 3 blocks of 1 ms each on the edge; any transfer costs >= 1000 ms.
    inp = make([1, 1, 1], [0.1, 0.1, 0.1], [10, 10, 10, 10], uplink=link(1000.0), downlink=link(1000.0))
    best = choose(inp, "latency")
    assert (best.i, best.j, best.offloaded_blocks, best.upload_bytes) == (2, 2, 0, 0)
    assert best.latency_ms == pytest.approx(3.0)
    assert best.objective == "latency"


def test_start_on_cloud_optimum_i_minus_one():
    # block 0 is expensive on the edge and its input is tiny; block 1 is cheap; its input (boundary 1) is huge.
    # Each link costs 1 ms per message: a request and its answer pay that once, so the answer adds bytes / 1000 ms.
    # (-1, 0): 0 + up(10)=1.01 + cloud 1 + answer(5000)=5 + tail 1 = 8.01
    # (-1, 1): up 1.01 + cloud 2 + answer(10)=0.01 = 3.02   <- optimum
    # ( 0, 1): head 100 + ...  ; all local: 101
    inp = make([100, 1], [1, 1], [10, 5000, 10])
    best = choose(inp, "latency")
    assert (best.i, best.j) == (-1, 1)
    assert best.latency_ms == pytest.approx(1.01 + 2 + 0.01)


def test_two_split_optimum_with_a_tail():
    # middle block heavy on the edge, first and last cheap; boundary 0 and 3 huge, 1 and 2 small.
    # (0, 1): head 1 + up(100)=1.1 + cloud 1 + answer(100)=0.1 + tail 1 = 4.2 -- every other plan is worse
    inp = make([1, 50, 1], [1, 1, 1], [1e6, 100, 100, 1e6])
    best = choose(inp, "latency")
    assert (best.i, best.j) == (0, 1)
    assert best.latency_ms == pytest.approx(4.2)
    assert best.breakdown["tail_ms"] == pytest.approx(1.0)


def test_no_tail_optimum_j_is_last_block():
    # (0, 2): head 1 + up(100)=1.1 + cloud 2 + answer(100)=0.1 = 4.2 beats (0, 1) = 1 + 1.1 + 1 + 0.1 + 50
    inp = make([1, 50, 50], [1, 1, 1], [1e6, 100, 100, 100])
    best = choose(inp, "latency")
    assert (best.i, best.j) == (0, 2)
    assert best.latency_ms == pytest.approx(4.2)


def test_energy_objective_prefers_idle_waiting():
    # Edge: 10 ms / 100 mJ per block. Cloud: 30 ms per block, idle 0.1 W, tx 1 W.
    # all local: 20 ms, 200 mJ;  (-1, 1): up 1.01 + 60 + answer 0.01 = 61.02 ms, 1.02 + 6 = 7.02 mJ
    inp = make([10, 10], [30, 30], [10, 10, 10], edge_mJ=[100, 100], idle_power_W=0.1, tx_power_W=1.0)
    fast, frugal = choose(inp, "latency"), choose(inp, "energy")
    assert (fast.i, fast.j) == (1, 1)
    assert (frugal.i, frugal.j) == (-1, 1)
    assert frugal.energy_mJ == pytest.approx(1.02 + 6.0)
    front = pareto(evaluate_all(inp))
    assert (front[0].i, front[-1].i) == (1, -1)


def test_slo_gives_least_energy_within_the_deadline():
    inp = make([10, 10], [30, 30], [10, 10, 10], edge_mJ=[100, 100], idle_power_W=0.1, tx_power_W=1.0)
    assert (choose(inp, slo_ms=100).i, choose(inp, slo_ms=100).objective) == (-1, "slo")
    tight = choose(inp, "slo", slo_ms=25)
    assert (tight.i, tight.j, tight.objective) == (1, 1, "slo")
    unmet = choose(inp, "slo", slo_ms=1)
    assert (unmet.i, unmet.j, unmet.objective) == (1, 1, "slo-unmet")
    with pytest.raises(ValueError):
        choose(inp, "slo")
    with pytest.raises(ValueError):
        choose(inp, "fastest")


def test_pareto_objective_picks_a_front_member():
    inp = random_inputs(np.random.default_rng(3), 12)
    front = pareto(evaluate_all(inp))
    knee = choose(inp, "pareto")
    assert (knee.i, knee.j) in {(p.i, p.j) for p in front}


# ---- upload charging, caching, amortisation, correction ---------------------------------------------------------


def test_weight_upload_charged_unless_preloaded_and_amortised():
    # (-1, 0) uploads 1000 weight bytes: 1 + 1000/1000 = 2 ms
    inp = make([100], [1], [10, 10], weights=[1000])
    charged = plan_cost(inp, -1, 0)
    assert charged.upload_bytes == 1000
    assert charged.breakdown["weight_upload_ms"] == pytest.approx(2.0)
    assert charged.latency_ms == pytest.approx(1.01 + 1 + 0.01 + 2.0)
    pre = plan_cost(replace(inp, preloaded=True), -1, 0)
    assert (pre.upload_bytes, pre.latency_ms) == (0, pytest.approx(1.01 + 1 + 0.01))
    cached = plan_cost(replace(inp, cached_slices=frozenset({(0, 0)})), -1, 0)
    assert cached.latency_ms == pytest.approx(pre.latency_ms)
    amort = plan_cost(replace(inp, amortize_over=4), -1, 0)
    assert amort.latency_ms == pytest.approx(1.01 + 1 + 0.01 + 0.5)


def test_weight_uploads_use_the_measured_upload_curve_and_activations_the_uplink():
    upload = NetworkModel.affine(50.0, 100.0)  # 50 ms + 10 us per byte: what slice uploads measured
    inp = make([5, 5], [1, 1], [100, 100, 100], weights=[1000, 3000], upload=upload)
    p = plan_cost(inp, -1, 1)
    assert p.breakdown["weight_upload_ms"] == pytest.approx(upload.predict_ms(4000))  # not the echo uplink's 5 ms
    assert p.breakdown["uplink_ms"] == pytest.approx(link().predict_ms(100))
    without = plan_cost(replace(inp, upload=None), -1, 1)
    assert without.breakdown["weight_upload_ms"] == pytest.approx(link().predict_ms(4000))
    # the dearer upload keeps the weights home: everything local wins with the measured curve, not without it
    assert (choose(inp, "latency").i, choose(replace(inp, upload=None), "latency").i) == (1, -1)


def test_upload_cost_moves_the_optimum():
    # Offloading block 1 saves 10 ms of compute but its weights take 1 + 100 ms to upload.
    inp = make([1, 20], [1, 1], [1e6, 100, 100], weights=[0, 100_000])
    assert (choose(inp).i, choose(inp).j) == (1, 1)
    pre = choose(replace(inp, preloaded=True))
    assert (pre.i, pre.j) == (0, 1)
    assert choose(replace(inp, amortize_over=1000)).offloaded_blocks == 1
    assert choose(replace(inp, cached_slices=frozenset({(1, 1)}))).j == 1


def test_e2e_correction_scales_edge_compute_only():
    inp = make([10, 10], [1, 1], [1e9, 1e9, 1e9], e2e_correction=0.5)
    local = plan_cost(inp, 1, 1)
    assert (local.latency_ms, local.energy_mJ) == (pytest.approx(10.0), pytest.approx(10.0))
    assert correction_factor(15.0, [10.0, 10.0]) == pytest.approx(0.75)
    assert correction_factor(0.0, [10.0]) == 1.0


# ---- table, pareto, reference -------------------------------------------------------------------------------------


def poly_link() -> NetworkModel:
    sizes = np.logspace(3, 7, 12)
    x = sizes / sizes.max()
    fit = fit_network_model(sizes, 2.0 + 300.0 * x + 200.0 * x**2, 0.3 + 50.0 * x)
    assert fit.chosen.kind == "poly4"
    return fit.chosen


def pwl_upload(fixed_ms: float = 30.0, bytes_per_ms: float = 400.0, curve: float = 3e-10) -> NetworkModel:
    """A measured slice-upload curve: a fixed cost, then slower than the echo link (validation + fsync on top)."""
    sizes = np.logspace(5, 7, 7)
    model = fit_network_model(sizes, fixed_ms + sizes / bytes_per_ms + curve * sizes**2).pwl
    assert model is not None
    return model


@pytest.mark.parametrize("uplink", ["affine", "affine+energy", "poly", "upload-pwl", "upload-affine"])
def test_table_matches_direct_costs_and_dedupes_local_plans(uplink):
    inp = random_inputs(np.random.default_rng(7), 9, cached_slices=frozenset({(2, 5)}), amortize_over=3)
    if uplink == "affine+energy":
        inp = replace(inp, uplink=replace(inp.uplink, energy_coeffs=(0.4, 2e-5)))
    elif uplink == "poly":
        inp = replace(inp, uplink=poly_link(), downlink=poly_link())
    elif uplink == "upload-pwl":
        inp = replace(inp, upload=pwl_upload())
    elif uplink == "upload-affine":
        inp = replace(inp, upload=NetworkModel.affine(25.0, 300.0, energy_coeffs=(1.0, 1e-4)))
    table = evaluate_all(inp)
    i, j, lat, en = table.flat()
    assert len(table) == lat.size == 9 * 10 // 2 + 1
    assert int(np.sum(i == j)) == 1 and (i[0], j[0]) == (8, 8)
    assert np.all(np.isfinite(lat)) and np.all(np.isfinite(en))
    assert np.all(np.isinf(table.latency_ms).sum() == table.latency_ms.size - lat.size)
    ref = {(a, b): (x, y) for a, b, x, y in brute_force(inp)}
    for a, b, x, y in zip(i, j, lat, en, strict=True):
        assert ref[(int(a), int(b))] == (pytest.approx(x, rel=1e-9), pytest.approx(y, rel=1e-9))
        p = plan_cost(inp, int(a), int(b))
        assert (p.latency_ms, p.energy_mJ) == (pytest.approx(x, rel=1e-9), pytest.approx(y, rel=1e-9))


@pytest.mark.parametrize("n,seed", [(1, 0), (2, 1), (5, 2), (12, 3), (25, 4), (40, 5)])
@pytest.mark.parametrize("variant", ["affine", "poly", "cached", "upload-pwl", "limited", "messages"])
def test_pareto_complete_and_non_dominated_against_brute_force(n, seed, variant):
    rng = np.random.default_rng(seed)
    inp = random_inputs(rng, n, preloaded=bool(seed % 2) and variant == "affine")
    if variant == "poly":  # non-affine upload: the dense path
        inp = replace(inp, uplink=poly_link(), downlink=poly_link())
    elif variant == "upload-pwl":  # measured slice uploads, piecewise linear: the dense path
        inp = replace(inp, upload=pwl_upload())
    elif variant == "cached":  # cheaper cells that break the row/column structure
        cells = {(int(a), int(b)) for a, b in rng.integers(0, n, (4, 2)) if a <= b}
        inp = replace(inp, cached_slices=frozenset(cells | {(0, n - 1)}), amortize_over=2)
    elif variant == "limited":  # the server refuses slices over 3 MB: such plans cannot run, whatever they cost
        inp = replace(inp, max_slice_bytes=3e6, preloaded=bool(seed % 2))
    elif variant == "messages":  # tensors over the message limit cannot be sent: about half the boundaries
        inp = replace(inp, max_message_bytes=float(np.median(inp.boundary_bytes)))
    front = pareto(evaluate_all(inp))
    ref = brute_pareto(brute_force(inp))
    assert sorted((p.i, p.j) for p in front) == sorted((a, b) for a, b, _, _ in ref)
    lat = [p.latency_ms for p in front]
    assert lat == sorted(lat)
    for p in front:
        for q in front:
            assert not (q.latency_ms <= p.latency_ms and q.energy_mJ < p.energy_mJ) or p is q


@pytest.mark.parametrize("seed", [11, 12])
def test_pruned_pareto_paths_are_exact_on_large_tables(seed):
    # 150 blocks -> 11,326 plans; fast but hungry edge, slow but frugal cloud: a front of hundreds of plans.
    # The pruned paths (separable, with cached cells, dense) against a plain sweep over every plan.
    rng = np.random.default_rng(seed)
    n = 150
    inp = PlanInputs(
        edge_ms=rng.uniform(0.5, 5, n), edge_mJ=rng.uniform(5, 50, n), cloud_ms=rng.uniform(0.5, 20, n),
        upload_bytes=rng.integers(0, 200_000, n), boundary_bytes=rng.integers(1_000, 300_000, n + 1),
        uplink=link(1.0, 5e4), downlink=link(1.0, 5e4), idle_power_W=0.2, tx_power_W=1.0,
    )  # fmt: skip
    variants = {
        "affine": inp,
        "cached": replace(inp, cached_slices=frozenset({(3, 90), (0, 149), (40, 41), (7, 7)})),
        "poly": replace(inp, uplink=poly_link()),
        "upload-pwl": replace(inp, upload=pwl_upload(1.0, 4e4, 1e-12)),
    }
    for name, variant in variants.items():
        table = evaluate_all(variant)
        i, j, lat, en = table.flat()
        plain = pareto_indices(lat, en, lambda k, i=i, j=j: (j - i)[k])
        front = pareto(table)
        got = sorted((p.i, p.j) for p in front)
        assert got == sorted(zip(i[plain].tolist(), j[plain].tolist(), strict=True)), name
        assert len(front) > 100, name


def test_fractional_upload_bytes_cost_the_same_in_the_table_and_per_plan():
    """Upload sizes given as fractions (an estimate) are whole bytes everywhere: the table's cells, `plan_cost`
    and the plan's reported upload_bytes agree."""
    inp = make([5.0] * 4, [1.0] * 4, [100] * 5, weights=[0.4, 1000.4, 0.4, 2500.6], upload=link(0.0, 1.0))
    table = evaluate_all(inp)
    for i, j in [(-1, 0), (-1, 2), (0, 3), (1, 2)]:
        plan = plan_cost(inp, i, j)
        assert plan.upload_bytes == sum(round(w) for w in inp.upload_bytes[i + 1 : j + 1])
        assert table.latency_ms[i + 1, j] == pytest.approx(plan.latency_ms, rel=1e-12)
        assert plan_costs(inp, [i], [j])[0] == plan


def test_pareto_ties_keep_one_plan_with_fewest_offloaded_blocks():
    idx = pareto_indices(np.array([1.0, 1.0, 2.0, 0.5]), np.array([1.0, 1.0, 0.5, 3.0]), lambda k: -k)
    assert idx.tolist() == [3, 1, 2]


def tie_prone_inputs(seed: int) -> PlanInputs:
    """Small whole numbers and tenths: many plans cost exactly the same, summed in different orders."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 7))
    tenths = lambda k, hi: rng.integers(0, hi, k) / 10  # noqa: E731
    return PlanInputs(
        edge_ms=tenths(n, 12), edge_mJ=tenths(n, 12), cloud_ms=tenths(n, 6), upload_bytes=[0] * n,
        boundary_bytes=rng.integers(0, 3, n + 1) * 100.0,
        uplink=NetworkModel.affine(float(rng.integers(0, 8)) / 10, 1000.0),
        downlink=NetworkModel.affine(float(rng.integers(0, 8)) / 10, 1000.0),
        idle_power_W=float(rng.integers(0, 3)) / 2, tx_power_W=1.0, rx_power_W=0.5, preloaded=True,
    )  # fmt: skip


@pytest.mark.parametrize("seeds", [range(0, 300), range(300, 600)])
def test_plans_that_cost_the_same_are_equal_however_their_sums_round(seeds):
    """Plans of equal cost differ in their last bits (the table sums rows and columns, a plan its blocks): that
    noise kept a plan on the front beside an equal one that dominates it, and chose a plan twice as slow as an
    all-local one of the same energy for the energy objective (found by review)."""
    tol = 1e-9
    for seed in seeds:
        inputs = tie_prone_inputs(seed)
        table = evaluate_all(inputs)
        front = pareto(table)
        for p in front:
            for q in front:
                assert p is q or not (q.latency_ms <= p.latency_ms + tol and q.energy_mJ <= p.energy_mJ + tol), seed
        every = brute_force(inputs)
        for _, _, lat, en in every:  # every plan is matched or beaten by one on the front
            assert any(p.latency_ms <= lat + tol and p.energy_mJ <= en + tol for p in front), seed
        fastest = min(lat for _, _, lat, _ in every)
        frugal = min(en for _, _, _, en in every)
        by_latency, by_energy = choose(table, "latency"), choose(table, "energy")
        assert by_latency.latency_ms == pytest.approx(fastest, abs=tol), seed
        least_energy_among_fastest = min(en for _, _, lat, en in every if lat <= fastest + tol)
        fastest_among_frugal = min(lat for _, _, lat, en in every if en <= frugal + tol)
        assert by_latency.energy_mJ == pytest.approx(least_energy_among_fastest, abs=tol), seed
        assert by_energy.energy_mJ == pytest.approx(frugal, abs=tol), seed
        assert by_energy.latency_ms == pytest.approx(fastest_among_frugal, abs=tol), seed


def test_costs_one_bit_apart_are_equal_wherever_they_fall():
    """Rounding to a grid of the tolerance parted two energies one bit apart that straddled a grid line, and the
    4 ms plan stayed on the front beside a 2 ms plan of the same energy (found by review)."""
    mid = 0.7000000000005  # a midpoint of the 1e-12 grid of a scale of 1.0
    hi = np.nextafter(mid, 1.0)
    lo = np.nextafter(hi, 0.0)
    assert lo < hi
    keep = sweep(np.array([2.0, 4.0, 0.5]), np.array([hi, lo, 1.0]), np.array([0, 3, 1]), np.arange(3))
    assert keep.tolist() == [2, 0]
    assert tolerant_ranks(np.array([1.0, np.inf, lo, hi, np.inf, -np.inf])).tolist() == [2, 3, 1, 1, 3, 0]


def test_plans_over_the_servers_slice_limit_are_never_chosen():
    """Offloading everything is fastest, but the server takes slices of at most 2 blocks: the planner and every
    baseline keep within that, and a plan over it reports no cost (it cannot run)."""
    fast_cloud = make([50.0] * 4, [1.0] * 4, [100] * 5, weights=[1000] * 4, preloaded=True, max_slice_bytes=2000)
    table = evaluate_all(fast_cloud)
    chosen = choose(table, "latency")
    assert chosen.j - chosen.i == 2 and np.isfinite(chosen.latency_ms)
    assert all(p.j - p.i <= 2 for p in pareto(table))
    assert np.isinf(table.latency_ms[0, 3]) and np.isinf(table.plan(-1, 3).latency_ms)
    assert offload_all(fast_cloud).to_dict()["latency_ms"] is None
    ns = neurosurgeon(fast_cloud)
    assert ns.j - ns.i <= 2 and np.isfinite(ns.latency_ms)
    with pytest.raises(ValueError, match="max_slice_bytes must be positive"):
        replace(fast_cloud, max_slice_bytes=0)


def test_plans_that_send_a_tensor_over_the_message_limit_are_never_chosen():
    """Offloading from block 1 is fastest, but its input (boundary 1) is larger than one message may be: every
    request fell back and was retried (found by review). Plans that send it are refused; others stay."""
    fast_cloud = make([50.0] * 4, [1.0] * 4, [100, 5000, 100, 100, 100], preloaded=True, max_message_bytes=1000)
    table = evaluate_all(fast_cloud)
    for p in [*pareto(table), choose(table, "latency"), choose(table, "energy")]:
        assert 0 not in (p.i, p.j), p  # boundary 1 goes neither up (i = 0) nor down (j = 0)
    assert np.isinf(table.plan(0, 3).latency_ms) and np.isinf(table.plan(-1, 0).latency_ms)
    assert np.isfinite(table.plan(-1, 3).latency_ms)  # the model input is small
    assert neurosurgeon(fast_cloud).i != 0
    with pytest.raises(ValueError, match="max_message_bytes must be positive"):
        replace(fast_cloud, max_message_bytes=0)


def test_plans_that_offload_a_block_the_server_does_not_run_are_never_chosen():
    """A block of ops outside the standard ONNX domains (ONNX Runtime's QLinear* contrib ops of a quantized model)
    is refused by every server: the planner planned to offload it, and the run failed (found by an end-to-end
    sweep). Plans around it stay possible."""
    fast_cloud = make([50.0] * 4, [1.0] * 4, [100] * 5, preloaded=True, local_only={2})
    table = evaluate_all(fast_cloud)
    for p in [*pareto(table), choose(table, "latency"), choose(table, "energy")]:
        assert not p.i < 2 <= p.j, p  # block 2 never in the middle slice
    assert choose(table, "latency").i < choose(table, "latency").j  # still offloads the blocks around it
    assert np.isinf(table.plan(1, 2).latency_ms) and np.isinf(table.latency_ms[0, 3])
    assert offload_all(fast_cloud).to_dict()["latency_ms"] is None
    ns = neurosurgeon(fast_cloud)
    assert not ns.i < 2 <= ns.j and np.isfinite(ns.latency_ms)
    with pytest.raises(ValueError, match="local_only"):
        replace(fast_cloud, local_only={4})


def test_plan_json_shape_is_spec_section_6():
    inp = make([1, 50, 1], [1, 1, 1], [1e6, 100, 100, 1e6])
    front = pareto(evaluate_all(inp))
    for p in front:
        d = p.to_dict()
        assert set(d) == SPEC_KEYS
        assert all(isinstance(d[k], int) for k in ("i", "j", "offloaded_blocks", "upload_bytes"))
        json.dumps(d)
    chosen = choose(inp, "energy").to_dict()
    assert set(chosen) == SPEC_KEYS | {"objective"} and chosen["objective"] == "energy"
    assert isinstance(front[0], Plan)


def test_inputs_from_block_dicts_and_validation():
    blocks = [
        {"input_bytes": 600, "output_bytes": 400, "param_bytes": 10},
        {"input_bytes": 400, "output_bytes": 40, "param_bytes": 20},
    ]
    inp = inputs_from_blocks(
        blocks, edge_ms=[1, 2], edge_mJ=[1, 2], cloud_ms=[0.1, 0.2], uplink=link(), downlink=link()
    )
    assert inp.boundary_bytes.tolist() == [600, 400, 40]
    assert inp.upload_bytes.tolist() == [10, 20]  # the weights, where a dict does not say what a slice carries
    sized = [{**blocks[0], "slice_bytes": 15}, {**blocks[1], "slice_bytes": 27}]
    assert inputs_from_blocks(
        sized, **{k: getattr(inp, k) for k in ("edge_ms", "edge_mJ", "cloud_ms", "uplink", "downlink")}
    ).upload_bytes.tolist() == [15, 27]
    with pytest.raises(ValueError, match="boundary_bytes"):
        make([1, 2], [1, 1], [1, 2])
    with pytest.raises(ValueError, match="non-negative"):
        make([1, -2], [1, 1], [1, 2, 3])
    with pytest.raises(ValueError, match="amortize_over"):
        make([1], [1], [1, 2], amortize_over=0)
    with pytest.raises(ValueError):
        plan_cost(make([1], [1], [1, 2]), 1, 0)


@pytest.mark.parametrize("variant", ["affine", "poly", "preloaded", "upload-pwl"])
def test_vectorised_plan_costs_match_the_reference(variant):
    rng = np.random.default_rng(21)
    inp = random_inputs(rng, 30, cached_slices=frozenset({(4, 20), (0, 29)}), amortize_over=5)
    if variant == "poly":
        inp = replace(inp, uplink=poly_link(), downlink=poly_link())
    elif variant == "upload-pwl":
        inp = replace(inp, upload=pwl_upload())
    elif variant == "preloaded":
        inp = replace(inp, preloaded=True)
    i = np.array([-1, -1, 3, 3, 0, 29, 10, 28, -1])
    j = np.array([29, 20, 20, 3, 0, 29, 12, 29, 0])
    for got, (a, b) in zip(plan_costs(inp, i, j), zip(i, j, strict=True), strict=True):
        ref = plan_cost(inp, int(a), int(b))
        assert (got.i, got.j, got.offloaded_blocks, got.upload_bytes) == (
            ref.i,
            ref.j,
            ref.offloaded_blocks,
            ref.upload_bytes,
        )
        assert got.latency_ms == pytest.approx(ref.latency_ms, rel=1e-9)
        assert got.energy_mJ == pytest.approx(ref.energy_mJ, rel=1e-9)
        assert got.breakdown == pytest.approx(ref.breakdown, rel=1e-9, abs=1e-9)
    with pytest.raises(ValueError):
        plan_costs(inp, [2], [1])


def test_e2e_correction_calibrates_the_block_predictions_to_the_measured_whole_model():
    from rr_edge.client import Prediction
    from rr_edge.offload import e2e_correction

    preds = [Prediction(f"s{k}", ms, 1.0, "predicted", "predicted", "model") for k, ms in enumerate((4.0, 6.0))]
    assert e2e_correction(15.0, preds, fallback=0.8) == pytest.approx(1.5)  # 15 ms measured / 10 ms predicted
    assert e2e_correction(0.0, preds, fallback=0.8) == pytest.approx(0.8)  # model never run whole: server ratio
    assert e2e_correction(0.0, preds, fallback=0.0) == 1.0


def test_the_server_cache_is_asked_only_about_plans_that_can_meet_the_deadline() -> None:
    """With a deadline, the cache queries went to the least-energy plans whether or not they met it: all four to
    plans of 93-103 ms against a 65 ms deadline (found by review)."""
    from types import SimpleNamespace

    from rr_edge.offload import _worth_asking

    link = NetworkModel.affine(1.0, 1000.0)
    inputs = PlanInputs(edge_ms=[10] * 5 + [1], edge_mJ=[10] * 5 + [1], cloud_ms=[20] * 5 + [1],
                        upload_bytes=[100_000] * 6, boundary_bytes=[100] * 7, uplink=link, downlink=link,
                        idle_power_W=0.1, tx_power_W=1.0)  # fmt: skip
    chosen = choose(inputs, "slo", 65.0)
    asked = _worth_asking(SimpleNamespace(chosen=chosen, options={"objective": "slo", "slo_ms": 65.0}, inputs=inputs))
    free = replace(inputs, preloaded=True)
    assert asked and all(plan_cost(free, i, j).latency_ms <= 65.0 for i, j in asked)
