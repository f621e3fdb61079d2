"""Network model: both fits on a known affine link, held-out errors, extrapolation, EW drift and serialisation."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from rr_edge.netmodel import (
    AFFINE,
    POLY4,
    PWL,
    NetworkModel,
    answer_ms,
    fit_network_model,
    round_trip_ms,
    round_trip_overlap_ms,
    split_network_ms,
)

RTT_MS = 2.0
BYTES_PER_MS = 80_000.0  # 80 MB/s, the paper's link


def profile(rng: np.random.Generator, noise: float = 0.02, repeats: int = 3):
    sizes = np.repeat(np.logspace(3, np.log10(256e6), 16).round(), repeats)  # 1 KB .. 256 MB
    times = (RTT_MS + sizes / BYTES_PER_MS) * rng.normal(1.0, noise, sizes.size).clip(0.9, 1.1)
    energy = (0.5 + sizes * 2e-5) * rng.normal(1.0, noise, sizes.size).clip(0.9, 1.1)
    return sizes, times, energy


def test_affine_link_recovered_by_every_fit_and_no_polynomial_chosen():
    sizes, times, energy = profile(np.random.default_rng(0))
    fit = fit_network_model(sizes, times, energy)
    rtt, ms_per_byte = fit.affine.coeffs
    assert rtt == pytest.approx(RTT_MS, rel=0.05)
    assert 1.0 / ms_per_byte == pytest.approx(BYTES_PER_MS, rel=0.03)
    probe = np.logspace(3, np.log10(256e6), 40)
    truth = RTT_MS + probe / BYTES_PER_MS
    assert fit.poly is not None and fit.poly.kind == POLY4
    assert np.max(np.abs(fit.poly.predict_ms(probe) / truth - 1)) < 0.1
    assert np.max(np.abs(fit.affine.predict_ms(probe) / truth - 1)) < 0.05
    assert fit.pwl is not None and np.max(np.abs(fit.pwl.predict_ms(probe) / truth - 1)) < 0.05
    # on a straight line the piecewise-linear curve is as good as the line, within noise: either may be chosen
    assert fit.chosen.kind in (AFFINE, PWL)
    assert fit.affine_error < 0.05 and np.isfinite(fit.poly_error) and fit.pwl_error < 0.05
    far = np.array([512e6, 1e9])  # beyond the profile, where weight uploads of big slices land
    assert np.max(np.abs(fit.chosen.predict_ms(far) / (RTT_MS + far / BYTES_PER_MS) - 1)) < 0.05
    d = fit.to_dict()
    assert d["chosen"] == fit.chosen.kind and {"affine_error", "poly_error", "pwl_error"} <= set(d)
    json.dumps(d)
    assert fit.chosen.predict_mJ(1e6) == pytest.approx(0.5 + 20.0, rel=0.05)


def test_polynomial_chosen_when_the_link_is_not_affine():
    sizes = np.logspace(3, 8, 14)
    x = sizes / sizes.max()
    times = 5.0 + 400.0 * x + 3000.0 * x**2  # congestion: super-linear in size
    fit = fit_network_model(sizes, times)
    assert fit.chosen.kind == POLY4
    assert fit.poly_error < 0.9 * fit.affine_error


def test_piecewise_linear_chosen_for_a_token_bucket_link():
    """tc tbf / burst allowances: the first BURST bytes go at line rate, the rest at the shaped rate. One line over
    1 KB .. 256 MB misses the bulk rate; the pwl curve follows both regimes and extrapolates with the bulk rate."""
    burst, line_bytes_per_ms = 2e6, 1e6
    sizes = np.repeat(np.logspace(3, np.log10(256e6), 19).round(), 3)
    rng = np.random.default_rng(3)

    def link(b):
        return 0.3 + np.minimum(b, burst) / line_bytes_per_ms + np.maximum(b - burst, 0) / BYTES_PER_MS

    fit = fit_network_model(sizes, link(sizes) * rng.normal(1.0, 0.01, sizes.size).clip(0.97, 1.03))
    assert fit.chosen.kind == PWL and fit.pwl_error < 0.5 * fit.affine_error
    probe = np.logspace(3, 9, 60)  # up to 1 GB, four times beyond the profile
    rel = np.abs(fit.chosen.predict_ms(probe) / link(probe) - 1)
    assert np.max(rel) < 0.1 and np.median(rel) < 0.02  # worst next to the knee, which falls between two sizes
    assert 1.0 / fit.chosen.slope_ms_per_byte == pytest.approx(BYTES_PER_MS, rel=0.03)
    assert np.all(np.diff(fit.chosen.predict_ms(probe)) >= 0)
    a, b = fit.chosen.affine_lower_bound()  # a line below the curve everywhere (the planner prunes with it)
    assert np.all(a + b * probe <= fit.chosen.predict_ms(probe))
    assert np.all(a + b * np.asarray(fit.chosen.knots) <= np.asarray(fit.chosen.coeffs))
    back = NetworkModel.from_dict(json.loads(json.dumps(fit.chosen.to_dict())))
    assert back == fit.chosen
    with pytest.raises(ValueError, match="knots"):
        NetworkModel(PWL, (1.0, 2.0), knots=(10.0, 5.0))
    with pytest.raises(ValueError, match="knots"):
        NetworkModel(PWL, (1.0, 2.0, 3.0), knots=(1.0, 5.0))


def test_a_curve_that_predicts_bigger_messages_faster_is_never_chosen():
    """A sharp knee (1 GB/s up to 2 MB, 80 MB/s beyond) bends the quartic into a dip: its held-out error beats the
    others, yet it would cost a 200 MB message below a 100 MB one. The next best curve is chosen instead."""
    sizes = 2.0 ** np.arange(10, 29)  # 1 KiB .. 256 MiB
    times = np.where(sizes < 2e6, 0.3 + sizes / 1e6, 0.3 + sizes / BYTES_PER_MS)
    fit = fit_network_model(sizes, times)
    assert fit.poly is not None and not fit.poly.non_decreasing()
    assert fit.poly_error < min(fit.pwl_error, 0.9 * fit.affine_error)  # the best score, alone
    assert fit.chosen.kind == PWL and any("poly4 not chosen" in note for note in fit.notes)
    probe = np.geomspace(512, 1e9, 2000)
    assert np.all(np.diff(fit.chosen.predict_ms(probe)) >= 0)
    # the check covers the whole line: the range fitted, and the linear continuation on both sides of it
    rise_then_fall = NetworkModel(POLY4, (1.0, 2.0, -3.0, 0.0, 0.0), 1.0, 0.0, 1.0, 1.0)  # peak at t = 1/3
    assert not rise_then_fall.non_decreasing()
    assert replace(rise_then_fall, hi_bytes=0.3).non_decreasing()
    with pytest.raises(ValueError, match="must not be negative"):  # nor can its continuation fall
        replace(rise_then_fall, hi_bytes=0.3, slope_ms_per_byte=-1.0)
    assert fit.affine.non_decreasing() and fit.pwl is not None and fit.pwl.non_decreasing()


def test_energy_fitted_on_the_sizes_with_a_reading():
    """A meter window too short for the smallest message reads 0 (or nothing): the other sizes still give the energy
    curve; with fewer than two sizes read, none is fitted, and the notes say why."""
    sizes, times, energy = profile(np.random.default_rng(2))
    energy[sizes == sizes.min()] = 0.0
    energy[sizes == sizes.max()] = np.nan
    fit = fit_network_model(sizes, times, energy)
    assert fit.chosen.energy_coeffs is not None
    assert fit.chosen.predict_mJ(1e6) == pytest.approx(0.5 + 20.0, rel=0.05)
    assert any("energy fitted without sizes [1000, 256000000]" in note for note in fit.notes)
    energy[sizes != sizes[0]] = -1.0
    energy[sizes == sizes[0]] = 1.0
    none = fit_network_model(sizes, times, energy)
    assert none.chosen.energy_coeffs is None and none.affine.energy_coeffs is None
    assert any(note.startswith("energy not fitted") for note in none.notes)


def test_predictions_vectorised_non_negative_and_sane_outside_the_range():
    sizes = np.logspace(3, 7, 10)
    x = sizes / sizes.max()
    fit = fit_network_model(sizes, 1.0 + 100.0 * x + 50.0 * x**2)
    poly = fit.poly
    assert poly is not None
    out = poly.predict_ms(np.array([[0.0, 1e3], [1e7, 1e9]]))
    assert out.shape == (2, 2) and np.all(out >= 0)
    assert isinstance(poly.predict_ms(1e5), float)
    # beyond the largest profiled size the curve grows linearly (no quartic blow-up), and stays monotone
    far = poly.predict_ms(np.array([1e7, 1e8, 1e9]))
    assert np.all(np.diff(far) > 0)
    assert far[2] < 1e3 * far[0]
    assert NetworkModel.affine(0.0, 1.0).predict_ms(-5.0) == 0.0


def test_ew_update_and_drift_detection():
    model = NetworkModel.affine(1.0, 1000.0, alpha=0.5)  # 1000 bytes: 2 ms
    assert not model.drifted()
    same = model.update(1000, 2.0)
    assert same.drift == pytest.approx(1.0) and not same.drifted()
    slow = model.update(1000, 3.0)  # observed 1.5x -> drift 1.25: exactly 25%, not more
    assert slow.drift == pytest.approx(1.25) and not slow.drifted(0.25)
    slower = slow.update(1000, 3.0)  # 1.375
    assert slower.drifted(0.25)
    assert slower.predict_ms(1000) == pytest.approx(2.0 * 1.375)
    rebased = slower.rebased()
    assert not rebased.drifted() and rebased.predict_ms(1000) == pytest.approx(2.75)
    batch = model.update([1000, 1000], [3.0, 3.0])
    assert batch.drift == pytest.approx(slower.drift)
    faster = model.update([1000] * 10, [1.0] * 10)
    assert faster.drifted() and faster.drift < 0.75
    with pytest.raises(ValueError):
        model.update([1, 2], [1.0])
    zero = NetworkModel.affine(0.0, 100.0)  # a curve at 0 ms for 0 bytes: no ratio to it exists
    assert zero.update(0, 1.0).drift == 1.0
    assert zero.update([0, 100], [1.0, 2.0], alpha=0.5).drift == pytest.approx(1.5)  # only the 100 bytes count


def test_a_request_and_its_answer_pay_the_links_round_trip_once():
    """Each curve is an echo call's time, so each holds one round trip of the link (40 ms here); a request sent up
    and its answer sent down make one round trip, not two (found by review: 85 ms predicted where 42 were spent)."""
    up = NetworkModel.affine(40.0, 1000.0)
    down = NetworkModel.affine(45.0, 2000.0)  # its calls cost 5 ms more: that part is the answer's own
    assert round_trip_overlap_ms(up, down) == pytest.approx(40.0)
    assert round_trip_ms(up, down, 1000, 4000) == pytest.approx(40.0 + 1.0 + 5.0 + 2.0)
    assert answer_ms(up, down, np.array([0.0, 4000.0])) == pytest.approx([5.0, 7.0])
    assert isinstance(answer_ms(up, down, 4000), float)
    slower = replace(up, drift=2.0)  # the round trip is the drifted curves' smaller fixed cost
    assert round_trip_overlap_ms(slower, down) == pytest.approx(45.0)
    assert round_trip_ms(slower, down, 1000, 4000) == pytest.approx(82.0 + 2.0)
    # a measured round trip is shared as the planner charges it: the fixed cost with the uplink
    assert split_network_ms(48.0, up, down, 1000, 4000) == pytest.approx((41.0, 7.0))


def test_round_trip_through_dict_and_json():
    sizes, times, energy = profile(np.random.default_rng(1))
    fit = fit_network_model(sizes, times, energy)
    for m in (fit.affine, fit.poly, fit.pwl, fit.chosen.update(1e6, 50.0)):
        assert m is not None
        back = NetworkModel.from_dict(json.loads(json.dumps(m.to_dict())))
        assert back == m
    with pytest.raises(ValueError):
        NetworkModel.from_dict({"coeffs": [1, 2]})
    with pytest.raises(ValueError):
        NetworkModel.from_dict({"kind": "cubic", "coeffs": [1, 2]})
    # a NaN or an infinity anywhere made planning fail with an IndexError deep in the Pareto sweep
    affine = {"kind": "affine", "coeffs": [1.0, 1e-5]}
    pwl = {"kind": "pwl", "coeffs": [1.0, 2.0], "knots": [1.0, 10.0]}
    for bad in (
        {**affine, "energy_coeffs": [float("nan"), 0.0]},
        {**affine, "drift": float("inf")},
        {**affine, "scale_bytes": 0.0},
        {**pwl, "slope_ms_per_byte": float("nan")},
        {**pwl, "knots": [1.0, float("inf")]},
    ):
        with pytest.raises(ValueError, match="finite|positive"):
            NetworkModel.from_dict(bad)


def test_bad_profiles_rejected():
    with pytest.raises(ValueError):
        fit_network_model([1000, 1000], [1.0, 1.1])  # one distinct size
    with pytest.raises(ValueError):
        fit_network_model([1000, 2000], [1.0, 0.0])
    with pytest.raises(ValueError):
        fit_network_model([1000, 2000, 3000], [1.0, 2.0])
    small = fit_network_model([1000, 2000], [1.5, 2.0])  # two sizes: affine only, no held-out error
    assert small.chosen.kind == AFFINE and small.poly is None and small.pwl is None
    assert small.affine.predict_ms(3000) == pytest.approx(2.5)


def test_a_hand_built_pwl_curve_goes_on_with_its_slope_and_its_lower_bound_holds() -> None:
    """A pwl curve given without hi_bytes (inf, as from_dict reads a null) was flat past its last knot while the
    planner's affine lower bound took the slope there: the bound lay above the curve and pruned the cheapest plans
    from the Pareto set (found by review)."""
    curve = NetworkModel(PWL, (0.0, 1.0), knots=(0.0, 1000.0), slope_ms_per_byte=1.0)
    assert (curve.lo_bytes, curve.hi_bytes) == (0.0, 1000.0)
    assert curve.predict_ms(2e6) == pytest.approx(1.0 + (2e6 - 1000.0))
    a, b = curve.affine_lower_bound()
    for nbytes in (0.0, 500.0, 1000.0, 2e6, 1e9):
        assert a + b * nbytes <= curve.predict_ms(nbytes)
    assert NetworkModel.from_dict({**curve.to_dict(), "hi_bytes": None}).hi_bytes == 1000.0


def test_two_probe_sizes_scale_the_fixed_cost_and_the_cost_per_byte_apart():
    """A link whose round trip went from 2 to 50 ms at the same bandwidth: echoes of 1 KiB and 256 KiB give both
    terms back. One factor fitted at 256 KiB (what the probe did) made every byte 10x dearer: 16 MiB at 2.1 s
    instead of 260 ms."""
    sizes, times, _ = profile(np.random.default_rng(3), noise=0.0)
    fit = fit_network_model(sizes, times)
    now = lambda nbytes: 50.0 + nbytes / BYTES_PER_MS  # noqa: E731 - the link as it is now
    small, large = (1024.0, now(1024.0)), (262144.0, now(262144.0))
    for model in (fit.affine, fit.pwl, fit.poly):
        assert model is not None
        probed = model.rescaled(small, large)
        assert probed.predict_ms(large[0]) == pytest.approx(large[1], rel=1e-6)
        assert probed.predict_ms(small[0]) == pytest.approx(small[1], rel=1e-6)
        assert probed.predict_ms(16 * 2**20) == pytest.approx(now(16 * 2**20), rel=0.05)
        one_factor = model.update(large[0], large[1], alpha=1.0)
        assert one_factor.predict_ms(16 * 2**20) > 3 * now(16 * 2**20)
        a, b = probed.affine_lower_bound()  # the planner's pruning bound still lies under the curve
        for nbytes in (0.0, 1024.0, 1e6, 3e8, 1e10):
            assert a + b * nbytes <= probed.predict_ms(nbytes) + 1e-9
        assert NetworkModel.from_dict(json.loads(json.dumps(probed.to_dict()))) == probed
        rebased = probed.rebased().update(1e6, probed.predict_ms(1e6) * 2.0, alpha=1.0)  # a runner's drift after
        assert rebased.fixed_drift == probed.fixed_drift and rebased.drifted()
    affine = fit.affine.rescaled(small, large)
    assert affine.affine_terms() == pytest.approx((50.0, 1.0 / BYTES_PER_MS), rel=1e-6)
    assert NetworkModel.from_dict({"kind": "affine", "coeffs": [1.0, 1e-5]}).fixed_drift == 1.0  # stored before


def test_probe_times_the_two_factors_cannot_meet_give_one_factor_at_the_larger_size():
    model = NetworkModel.affine(2.0, 1000.0)
    for small in ((1024.0, 9.0), (1024.0, 10.0)):  # the small echo as slow as the large one (noise)
        probed = model.rescaled(small, (262144.0, 9.0))
        assert probed.fixed_drift == 1.0 and probed.predict_ms(262144.0) == pytest.approx(9.0)
    steep = model.rescaled((1024.0, 1.0), (262144.0, 500.0))  # a fixed cost that would be negative
    assert steep.fixed_drift == 1.0 and steep.predict_ms(262144.0) == pytest.approx(500.0)


def test_a_rescaled_curves_energy_scales_its_fixed_part_as_its_fixed_time():
    """Bandwidth 10x, the round trip as it was: the fixed time stays, and so must the fixed energy (it had been
    scaled by the per-byte factor: a metered small transfer costed 10x too cheap; found by review)."""
    sizes = np.array([1e3, 1e4, 1e5, 1e6, 1e7])
    fit = fit_network_model(sizes, 1.0 + sizes / 1000.0, 2.0 + sizes * 1e-3)
    model = fit.affine
    now = lambda n: 1.0 + n / 10_000.0  # noqa: E731
    probed = model.rescaled((1024.0, now(1024.0)), (262144.0, now(262144.0)))
    assert probed.drift == pytest.approx(0.1, rel=1e-3) and probed.fixed_drift == pytest.approx(10.0, rel=1e-3)
    assert probed.predict_mJ(0.0) == pytest.approx(model.predict_mJ(0.0), rel=1e-3)
    assert probed.predict_mJ(1e7) == pytest.approx(2.0 + 1e7 * 1e-4, rel=1e-3)
    terms = probed.energy_terms()
    assert terms is not None and terms[0] == pytest.approx(float(probed.predict_mJ(0.0)))
