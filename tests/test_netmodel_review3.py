"""Network profile and link model (review 3): a sweep the server would refuse, models that predict inf or NaN, the
upload curve after a link probe, flat profiles taken for a bandwidth, and upload probes of 0 bytes."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from _server_support import start_server

from rr_edge.client import Client
from rr_edge.errors import ArgumentError, ServerError
from rr_edge.meters.model import DEFAULT_POWER
from rr_edge.netmodel import NetworkModel
from rr_edge.netprofile import (
    MAX_NETWORK_SAMPLES,
    NetProfileConfig,
    fit_direction,
    measure_direction,
    with_bandwidth,
)
from rr_edge.offload import Costs, with_link
from rr_edge.profiles import DirectionProfile, NetworkProfile, NetworkSample
from rr_server import profile_servicer


def _fast_link_sweep(config: NetProfileConfig) -> list[NetworkSample]:
    """What `measure_direction` times of `config`'s sizes on a 2 GB/s link with a 0.1 ms round trip (a clock that
    advances by each transfer's time, so nothing waits)."""
    now = [0.0]

    def transfer(n: int) -> None:
        now[0] += (0.1 + n / 2e6) / 1000.0

    return measure_direction(
        transfer,
        config.sizes(),
        config.repeats,
        min_time_s=config.min_time_s,
        clock=lambda: now[0],
        max_transfer_s=config.max_transfer_s,
    )


def test_the_sample_limit_is_the_servers() -> None:
    assert MAX_NETWORK_SAMPLES == profile_servicer.MAX_NETWORK_SAMPLES


def test_a_fine_sweep_on_a_fast_link_is_one_the_server_accepts(tmp_path: Path) -> None:
    """--points-per-octave 3 on loopback measured 14,685 samples per direction; the server refused the report."""
    config = NetProfileConfig(points_per_octave=3)
    samples = _fast_link_sweep(config)
    assert {s.bytes for s in samples} == set(config.sizes())  # every size measured, each several times
    assert min(sum(s.bytes == n for s in samples) for n in config.sizes()) >= config.repeats
    assert len(samples) <= MAX_NETWORK_SAMPLES
    direction = fit_direction(samples, "uplink")
    server = start_server(tmp_path)
    try:
        with Client(server.address) as client:
            client.register_node("fine")
            client.report_network_profile("fine", NetworkProfile(direction, direction, "", time.time()))
            back = client.get_network_profile("fine")
    finally:
        server.stop(grace=1)
    assert back is not None and len(back.uplink.samples) == len(samples)


_BAD_MODELS = {
    "hi_bytes -inf": {"kind": "poly4", "coeffs": [1, 1, 0, 0, 0], "scale_bytes": 1e6, "hi_bytes": float("-inf")},
    "lo_bytes > hi_bytes": {"kind": "poly4", "coeffs": [1, 1, 0, 0, 0], "lo_bytes": 1e9, "hi_bytes": 1e3},
    "negative lo_bytes": {"kind": "affine", "coeffs": [1, 1e-5], "lo_bytes": -1.0},
    "poly4 coefficients of 1e308": {"kind": "poly4", "coeffs": [1, 1e308, 1e308, 0, 0], "hi_bytes": 1e9},
    "1e308 ms per byte": {"kind": "affine", "coeffs": [1, 1e308]},
    "1e308 ms per byte past the range": {"kind": "pwl", "coeffs": [1, 2], "knots": [1, 2], "slope_ms_per_byte": 1e308},
    "1e308 mJ per byte": {"kind": "affine", "coeffs": [1, 1e-5], "energy_coeffs": [1, 1e308]},
}


@pytest.mark.parametrize("name", sorted(_BAD_MODELS))
def test_a_model_that_predicts_no_finite_time_is_refused(name: str) -> None:
    with pytest.raises(ValueError):
        NetworkModel.from_dict(_BAD_MODELS[name])


def test_the_server_refuses_a_report_whose_model_predicts_nan(tmp_path: Path) -> None:
    """It stored one (hi_bytes -inf: every time NaN), and every later plan of the node raised IndexError."""
    samples = tuple(NetworkSample(b, 0.5 + b / 1e5) for b in (1024, 4096, 16384))
    bad = DirectionProfile(samples, "poly4", 0.1, 0.05, _BAD_MODELS["hi_bytes -inf"])
    good = DirectionProfile(samples, "affine", 0.1, 0.05, {"kind": "affine", "coeffs": [0.5, 1e-5]})
    server = start_server(tmp_path)
    try:
        with Client(server.address) as client:
            client.register_node("nan")
            with pytest.raises(ServerError, match="INVALID_ARGUMENT"):
                client.report_network_profile("nan", NetworkProfile(bad, good, "", time.time()))
            assert client.get_network_profile("nan") is None
    finally:
        server.stop(grace=1)


def _probed(link: NetworkModel, rtt_ms: float, bytes_per_ms: float) -> NetworkModel:
    """`link` rescaled as `replan_with_probe` does, by two echoes over a link of `rtt_ms` and `bytes_per_ms`."""
    return link.rescaled(*((n, rtt_ms + n / bytes_per_ms) for n in (1024, 262144)))


def test_the_upload_curve_moves_apart_as_the_uplinks_fixed_cost_and_rate_do() -> None:
    uplink = NetworkModel.affine(5.0, 1e4)  # 5 ms per echo, 10 MB/s
    upload = NetworkModel.affine(40.0, 1e4)  # 40 ms per slice upload (two round trips and the server's work)
    costs = Costs((), (), 1.0, uplink, uplink, DEFAULT_POWER, upload=upload)

    slower_trip = with_link(costs, _probed(uplink, 105.0, 1e4), uplink).upload  # round trip x21, rate the same
    assert slower_trip is not None
    assert slower_trip.predict_ms(0) == pytest.approx(21 * 40.0)  # was 40: the fixed cost stayed
    assert slower_trip.predict_ms(65536) - slower_trip.predict_ms(0) == pytest.approx(6.5536)

    slower_rate = with_link(costs, _probed(uplink, 5.0, 1e3), uplink)  # rate / 10, round trip the same
    assert slower_rate.upload is not None
    assert slower_rate.upload.predict_ms(0) == pytest.approx(40.0)  # was 400: the fixed cost took the byte factor
    assert slower_rate.upload.predict_ms(65536) - slower_rate.upload.predict_ms(0) == pytest.approx(65.536)

    back = with_link(slower_rate, _probed(uplink, 5.0, 1e4), uplink).upload  # the link as profiled again
    assert back is not None
    assert back.predict_ms(np.array([0.0, 65536.0])) == pytest.approx(upload.predict_ms(np.array([0.0, 65536.0])))


@pytest.mark.parametrize("sizes", [2, 3, 4, 5])
def test_a_flat_profile_has_no_bandwidth(sizes: int) -> None:
    """Equal medians at every size fitted a slope of about +-1e-19 ms/byte, which passed `slope > 0` half the time."""
    for t in np.linspace(0.1, 50.0, 40):
        samples = [NetworkSample(1024 << k, float(t)) for k in range(sizes) for _ in range(3)]
        with pytest.raises(ArgumentError, match="did not grow"):
            with_bandwidth(fit_direction(samples, "uplink"), "uplink")


def test_a_fast_links_small_slope_is_a_bandwidth() -> None:
    samples = [NetworkSample(1024 << k, 0.1 + (1024 << k) / 2e6) for k in range(11) for _ in range(3)]  # to 1 MiB
    direction = fit_direction(samples, "uplink")
    assert with_bandwidth(direction, "uplink") is direction


def test_upload_probes_of_less_than_a_row_are_refused() -> None:
    """1e-7 MiB rounded to probes of 0 bytes, and upload_sizes() raised ZeroDivisionError."""
    for tiny in (1e-7, 0.5 / 1048576, 1000 / 1048576):
        with pytest.raises(ArgumentError, match="upload_min_mb"):
            NetProfileConfig(upload_min_mb=tiny, upload_max_mb=1)
    assert NetProfileConfig(upload_min_mb=1 / 1024, upload_max_mb=1).upload_sizes()[0] == 1024
    assert NetProfileConfig(upload_min_mb=1e-7, upload_max_mb=0).upload_sizes() == []  # no probes: nothing to size
