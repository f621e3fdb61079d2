"""Network profiler: log-spaced sizes, synthetic-link fits, and a loopback profile against `rr-server` run as a
subprocess (a separate process, so client and server do not share one interpreter lock)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _retry import retry_once
from _server_process import ServerProcess

from rr_edge.client import Client, slice_id_of
from rr_edge.echo import PER_CALL, STREAMED
from rr_edge.errors import ArgumentError, ServerBusy, ServerError
from rr_edge.meters import ModelMeter, PowerSpec
from rr_edge.netmodel import NetworkModel
from rr_edge.netprofile import (
    NetProfileConfig,
    fit_direction,
    log_sizes,
    measure_direction,
    probe_slice,
    profile_network,
    run_netprofile,
    summary,
)
from rr_edge.profiles import DirectionProfile, NetworkProfile, NetworkSample


def test_log_sizes() -> None:
    sizes = log_sizes(1024, 256 * 1024 * 1024)
    assert sizes[0] == 1024 and sizes[-1] == 256 * 1024 * 1024 and len(sizes) == 19
    assert all(b == 2 * a for a, b in zip(sizes, sizes[1:], strict=False))
    assert len(log_sizes(1024, 1024 * 1024, 2)) == 21
    assert NetProfileConfig(max_mb=1).sizes()[-1] == 1024 * 1024
    with pytest.raises(ValueError):
        NetProfileConfig(max_mb=0.001)
    with pytest.raises(ValueError, match="over the 1024 MiB rr-server echoes"):
        NetProfileConfig(max_mb=2000)  # refused before its sweep sent 2 GB for the server to refuse the last size


def test_probe_slice_carries_its_bytes_as_weights_onnx_runtime_must_process() -> None:
    """An upload probe is as big as asked, its weights do not compress, and they feed a MatMul: the server's ONNX
    Runtime packs them when it opens the probe, as it prepares a real slice's weights (an unused initializer would be
    dropped at no cost, and the probe would time no load)."""
    import onnx
    import onnxruntime as ort

    data = probe_slice(3 * 2**20 + 500, seed=1)
    model = onnx.load_from_string(data)
    (weights,) = model.graph.initializer
    assert [n.op_type for n in model.graph.node] == ["MatMul"] and weights.name in model.graph.node[0].input
    assert len(weights.raw_data) == 3 * 2**20 and 0 < len(data) - len(weights.raw_data) < 200
    assert probe_slice(3 * 2**20 + 500, seed=2) != data  # another seed, other bytes (another slice id)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    x = np.ones((1, len(weights.raw_data) // 1024), np.float32)
    assert session.run(None, {"x": x})[0].shape == (1, 256)


def test_building_a_probe_holds_at_most_three_times_its_size() -> None:
    """make_graph and make_model copy what they are given: a probe built with its weights first held 5x its size at
    the peak (1.28 GB for 256 MiB). Peak RSS of a fresh process building a 64 MiB probe, over its peak before."""
    import subprocess
    import sys

    code = (
        "import resource, rr_edge.netprofile as n; peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss;"
        "n.probe_slice(1024); before = peak(); data = n.probe_slice(64 * 2**20); print((peak() - before) * 1024)"
    )
    grown = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert grown < 3.5 * 64 * 2**20


class MeteredModel(ModelMeter):
    """The power model standing in for a real meter on a fake clock: netprofile meters a real meter's transfers
    only (a power model's figures are its watts x the times, which the planner takes at plan time)."""

    measured = True


def test_synthetic_affine_link_is_recovered() -> None:
    """Transfers on a fake clock: 2 ms RTT + 80 MB/s, with +-3% noise; the affine model wins and recovers both."""
    now = [0.0]
    rng = np.random.default_rng(0)
    rtt_ms, bytes_per_ms = 2.0, 80_000.0

    def transfer(n: int) -> None:
        now[0] += (rtt_ms + n / bytes_per_ms) * (1 + rng.uniform(-0.03, 0.03)) / 1000.0

    meter = MeteredModel(PowerSpec(active_w=10.0, idle_w=1.0, net_tx_w=2.0))
    meter.clock = lambda: now[0]
    samples = measure_direction(
        transfer, log_sizes(1024, 64 * 1024 * 1024), 3, meter=meter, activity="tx", clock=lambda: now[0]
    )
    direction = fit_direction(samples)
    assert direction.chosen_model == "affine"
    assert 0 <= direction.affine_error < 0.05 and direction.affine_error <= direction.poly4_error
    model = NetworkModel.from_dict(direction.model)
    assert model.rtt_ms == pytest.approx(rtt_ms, rel=0.1)
    assert 1.0 / model.coeffs[1] == pytest.approx(bytes_per_ms, rel=0.03)
    # energy was metered (modelled: 3 W while sending) and fitted too
    assert all(s.energy_mJ is not None for s in samples)
    assert model.predict_mJ(8e6) == pytest.approx(3.0 * (rtt_ms + 8e6 / bytes_per_ms), rel=0.05)


def _link_ms(n: float) -> float:
    return 0.3 + n / 80_000.0  # 0.3 ms + 80 MB/s


def test_a_slow_link_ends_the_sweep_where_a_transfer_takes_longer_than_max_transfer_s() -> None:
    """A 10 Mbit/s link on a fake clock: the default sweep to 256 MiB took about 45 minutes there (and its largest
    transfers ran past their deadlines). The sweep stops at the first size over the limit, taking well under a
    minute, and the fit still costs a 64 MiB message as the link sends it."""
    now = [0.0]

    def slow(n: int) -> None:
        now[0] += (5.0 + n / 1250.0) / 1000.0  # 5 ms + 1.25 MB/s

    sizes = log_sizes(1024, 256 * 2**20)
    samples = measure_direction(slow, sizes, 3, min_time_s=0.1, clock=lambda: now[0], max_transfer_s=3.0)
    measured = sorted({s.bytes for s in samples})
    assert measured == sizes[: len(measured)] and measured[-1] == 4 * 2**20  # 4 MiB: 3.36 s, the first over 3 s
    assert now[0] < 60.0
    model = NetworkModel.from_dict(fit_direction(samples).model)
    assert model.predict_ms(64 * 2**20) == pytest.approx(5.0 + 64 * 2**20 / 1250.0, rel=0.02)
    now[0] = 0.0
    assert len({s.bytes for s in measure_direction(slow, sizes, 3, clock=lambda: now[0])}) == len(sizes)  # 0: all
    assert now[0] > 20 * 60  # one direction of the old sweep: over 20 minutes
    now[0] = 0.0  # a limit below every size's time: the sweep still goes on until the bandwidth shows
    glacial = measure_direction(slow, sizes, 1, clock=lambda: now[0], max_transfer_s=0.001)
    assert max(s.bytes for s in glacial) == 32 * 1024  # 31.2 ms: the first at 4x the 1 KiB time (5.8 ms) or more
    model = NetworkModel.from_dict(fit_direction(glacial).model)
    assert model.predict_ms(64 * 2**20) == pytest.approx(5.0 + 64 * 2**20 / 1250.0, rel=0.05)


def test_a_direction_whose_times_do_not_grow_is_refused_and_a_flat_upload_curve_dropped() -> None:
    """A sweep stopped at its second size (a limit of 0.5 ms on a 200 Mbit/s link) fitted a slope of 0: a profile
    that cost 64 MiB as 2.5 ms, and the planner offloaded 45 MB of weights on it (2 s measured, 7.6 ms predicted)."""
    from rr_edge.netprofile import with_bandwidth

    flat = fit_direction([NetworkSample(n, 2.46) for n in (1024, 2048) for _ in range(3)], "uplink")
    with pytest.raises(ValueError, match="bandwidth cannot be told"):
        with_bandwidth(flat, "uplink")
    assert with_bandwidth(flat, "upload") is None  # uploads then costed with the uplink curve
    sloped = fit_direction([NetworkSample(n, _link_ms(n)) for n in (1024, 2048, 4096)], "uplink")
    assert with_bandwidth(sloped, "uplink") is sloped


def test_busy_refusals_are_waited_out_outside_the_timing() -> None:
    """A server with no stream slot free refuses a transfer as busy. Retried inside the timed call (as the client
    retries by default), its pauses counted as transfer time: 891 ms for a 1 ms echo. The measurement waits a
    refusal out untimed, and starts an energy window with one in it again; a server busy for good still fails."""
    now = [0.0]
    calls = [0]

    def advance(s: float) -> None:
        now[0] += s

    def transfer(n: int) -> None:
        calls[0] += 1
        if calls[0] % 3 == 0:  # every third attempt is refused after a 1 ms round trip
            advance(0.001)
            raise ServerBusy("UploadSlice: RESOURCE_EXHAUSTED: all slots in use", 0.25)
        advance(_link_ms(n) / 1000.0)

    meter = MeteredModel(PowerSpec(active_w=10.0, idle_w=1.0, net_tx_w=2.0))
    meter.clock = lambda: now[0]
    sizes = [1024, 2**20]
    samples = measure_direction(transfer, sizes, 3, meter=meter, clock=lambda: now[0], sleep=advance)
    assert calls[0] > 3 * len(sizes) and len(samples) == 3 * len(sizes)
    for s in samples:
        assert s.ms == pytest.approx(_link_ms(s.bytes))
        assert s.energy_mJ == pytest.approx(3.0 * _link_ms(s.bytes))  # 2 W sending over 1 W idle

    def refused(n: int) -> None:
        advance(0.001)
        raise ServerBusy("busy", 0.25)

    with pytest.raises(ServerBusy):
        measure_direction(refused, sizes, 3, clock=lambda: now[0], sleep=advance)


def test_a_power_model_is_not_fitted_and_a_failed_transfer_closes_its_window() -> None:
    """A power model's transfer energy, fitted, kept the watts of the day of the profile: a plan with another class
    costed transfers at the old watts, 3.4x below what run then charged (found by review). It is not recorded. A
    transfer that fails inside a real meter's window closed no window, and a Jetson sampler ran on."""
    now = [0.0]

    def transfer(n: int) -> None:
        now[0] += _link_ms(n) / 1000.0

    model = ModelMeter(PowerSpec(active_w=10.0, idle_w=1.0, net_tx_w=2.0))
    model.clock = lambda: now[0]
    samples = measure_direction(transfer, [1024, 2**20], 3, meter=model, clock=lambda: now[0])
    assert samples and all(s.energy_mJ is None for s in samples)

    metered = MeteredModel(PowerSpec(active_w=10.0, idle_w=1.0, net_tx_w=2.0))
    metered.clock = lambda: now[0]
    opened: list[object] = []
    start, stop = metered.start, metered.stop
    metered.start = lambda activity="compute": opened.append(start(activity)) or opened[-1]  # type: ignore[method-assign]
    metered.stop = lambda token: (opened.remove(token), stop(token))[1]  # type: ignore[method-assign]
    calls = [0]

    def fails_in_the_energy_pass(n: int) -> None:
        calls[0] += 1
        if calls[0] > 6:  # the timed sweep passes, then the server goes away
            raise ServerError("Echo.Send: UNAVAILABLE: connection reset")
        transfer(n)

    with pytest.raises(ServerError):
        measure_direction(fails_in_the_energy_pass, [1024, 2**20], 3, meter=metered, clock=lambda: now[0])
    assert opened == []


def test_transfers_timed_at_zero_are_left_out_of_the_fit(caplog: pytest.LogCaptureFixture) -> None:
    """A transfer faster than the clock reads 0 ms; with relative weights that one size would pull the whole line
    to zero (64 MB in 0.07 ms). It is dropped, with a warning naming its size; a small positive time stays."""
    sizes = log_sizes(1024, 256 * 1024 * 1024)
    samples = [NetworkSample(n, 0.0 if n == 1024 else _link_ms(n)) for n in sizes for _ in range(3)]
    samples.append(NetworkSample(2048, float("nan")))
    with caplog.at_level(logging.WARNING, logger="rr_edge.netprofile"):
        direction = fit_direction(samples, "uplink")
    model = NetworkModel.from_dict(direction.model)
    assert model.predict_ms(64 * 2**20) == pytest.approx(_link_ms(64 * 2**20), rel=0.02)
    assert len(direction.samples) == 3 * (len(sizes) - 1) and all(s.ms > 0 for s in direction.samples)
    assert "uplink: 3 transfer(s) of 1024 bytes" in caplog.text and "of 2048 bytes" in caplog.text
    quick = [NetworkSample(n, 0.02 if n == 1024 else _link_ms(n)) for n in sizes]  # in-process loopback: real
    fitted = fit_direction(quick)
    assert fitted.samples == tuple(quick) and NetworkModel.from_dict(fitted.model).predict_ms(1024) < 0.1
    with pytest.raises(ValueError, match="fewer than two message sizes"):
        fit_direction([NetworkSample(1024, 1.0), NetworkSample(2048, 0.0)])


def test_energy_fitted_without_unread_sizes_and_its_source_said_per_direction(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A meter window too short for 1 KB reads 0 mJ: the other sizes still give the direction's energy curve. When
    fewer than two sizes have a reading the planner costs the direction with the declared power model, and the
    summary says "model" for it, not the meter's name."""
    sizes = log_sizes(1024, 64 * 1024 * 1024)

    def mj(n: int) -> float:
        return 0.0 if n == 1024 else 2.0 * _link_ms(n)  # 2 W while sending

    up = fit_direction([NetworkSample(n, _link_ms(n), mj(n)) for n in sizes for _ in range(3)], "uplink")
    with caplog.at_level(logging.WARNING, logger="rr_edge.netprofile"):
        down = fit_direction([NetworkSample(n, _link_ms(n), mj(n) if n <= 2048 else None) for n in sizes])
    assert NetworkModel.from_dict(up.model).predict_mJ(8e6) == pytest.approx(2.0 * _link_ms(8e6), rel=0.02)
    assert [s.energy_mJ for s in up.samples if s.bytes == 1024] == [None] * 3  # a 0 mJ reading is no reading
    assert down.model["energy_coeffs"] is None and "energy not fitted" in caplog.text
    out = summary(NetworkProfile(up, down, "rapl", 0.0))
    assert out["energy_source"] == "rapl"  # the meter that read the samples
    assert out["uplink"]["energy_source"] == "rapl" and out["downlink"]["energy_source"] == "model"
    assert out["uplink"]["energy_mJ"]["1024"] is None
    # a profile stored before the field existed reads the same way
    old = DirectionProfile((NetworkSample(1024, 1.0), NetworkSample(2048, 2.0)), "affine", -1.0, -1.0,
                           NetworkModel.affine(0.5, 2000.0).to_dict())  # fmt: skip
    assert summary(NetworkProfile(old, old, "rapl", 0.0))["uplink"]["energy_source"] == "model"


@pytest.fixture(scope="module")
def server_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = ServerProcess(tmp_path_factory.mktemp("rr-net") / "d", "--log-level", "WARNING")
    try:
        yield server.address
    finally:
        server.terminate(timeout=15)


def _held_out_error(client: Client, config: NetProfileConfig, held_out: list[int], transfer: str) -> tuple[str, float]:
    """Chosen model and its mean |relative error| on sizes it was not fitted on. Profile sizes and held-out sizes
    are measured together (interleaved, as the profiler measures), so a change of load on this shared machine
    between two measurement sessions cannot pass for a modelling error."""
    call = client.echo_send if transfer == "up" else client.echo_receive
    samples = measure_direction(call, config.sizes() + held_out, config.repeats, min_time_s=config.min_time_s, seed=1)
    fitted = fit_direction([s for s in samples if s.bytes not in held_out])
    model = NetworkModel.from_dict(fitted.model)
    errors = []
    for n in held_out:
        measured = float(np.median([s.ms for s in samples if s.bytes == n]))
        errors.append(abs(model.predict_ms(n) - measured) / measured)
    return fitted.chosen_model, float(np.mean(errors))


_LOOPBACK = NetProfileConfig(max_mb=16, repeats=3, upload_min_mb=0.25, upload_max_mb=4)


def _loopback_profile(client: Client, node: str) -> NetworkProfile:
    meter = ModelMeter(PowerSpec(active_w=10.0, idle_w=1.0, net_tx_w=1.5, net_rx_w=1.0))
    return run_netprofile(client, node, _LOOPBACK, meter=meter)


def test_loopback_profile_against_server(server_process: str) -> None:
    """What a loopback profile holds and what the server stores of it, whatever the load on this machine (the
    checks of its times are in the slow test below)."""
    config = _LOOPBACK
    with Client(server_process) as client:
        profile = _loopback_profile(client, "net-edge")
        assert {s.bytes for s in profile.uplink.samples} == set(config.sizes())
        for n in config.sizes():
            assert sum(s.bytes == n for s in profile.downlink.samples) >= 3
        assert profile.energy_source == "model"
        assert STREAMED in profile.uplink.notes and STREAMED in profile.downlink.notes  # as requests travel
        assert profile.upload is not None and STREAMED not in profile.upload.notes  # uploads are calls of their own
        stored = client.get_network_profile("net-edge")
        assert stored is not None and stored.uplink.chosen_model == profile.uplink.chosen_model
        assert stored.downlink.samples == profile.downlink.samples
        assert stored.upload == profile.upload
        out = summary(profile)
        for name in ("uplink", "downlink", "upload"):
            d = getattr(profile, name)
            assert d.chosen_model in ("affine", "poly4", "pwl") and out[name]["chosen_model"] == d.chosen_model
            assert d.affine_error >= 0 and d.poly4_error >= 0 and d.pwl_error >= 0
        # upload probes: one size per probe model (weights rounded down to whole 1 KiB rows + ~100 bytes of ONNX),
        # each uploaded >= 3 times, and none of them stored on the server
        sizes = sorted({s.bytes for s in profile.upload.samples})
        assert all(-1024 < b - w < 200 for b, w in zip(sizes, config.upload_sizes(), strict=True))
        assert all(sum(s.bytes == n for s in profile.upload.samples) >= 3 for n in sizes)
        assert not any(client.slice_status(slice_id_of(probe_slice(n, seed=k))).cached
                       for k, n in enumerate(config.upload_sizes()))  # fmt: skip


@pytest.mark.slow
@retry_once
def test_loopback_profile_predicts_what_it_did_not_measure(server_process: str) -> None:
    """Times, so in the slow tier and tried twice (a shared machine's load can bend one sweep): the fitted curves
    predict sizes between the profiled ones, and an upload costs more than echoing its bytes up."""
    with Client(server_process) as client:
        profile = _loopback_profile(client, "net-edge-timed")
        # an upload costs more than echoing the same bytes up (hashing, validation, fsync on top of the transfer)
        assert profile.upload is not None
        upload, uplink = (NetworkModel.from_dict(d.model) for d in (profile.upload, profile.uplink))
        assert upload.predict_ms(4 * 2**20) > uplink.predict_ms(4 * 2**20)

        # held-out sizes: between the profiled ones (x 1.5), across the range
        held_out = [1536, 48 * 1024, 1536 * 1024, 12 * 1024 * 1024]
        for name, transfer in (("uplink", "up"), ("downlink", "down")):
            chosen, error = _held_out_error(client, _LOOPBACK, held_out, transfer)
            assert error < 0.20, f"{name}: chosen {chosen} misses held-out sizes by {error:.0%}"


def test_the_echo_stream_is_closed_before_the_upload_probes(tmp_path: Path) -> None:
    """A 16-worker server has one stream slot for echo streams and uploads alike: the echo stream, kept open through
    the upload probes, had every probe refused as busy (60 s, then no upload curve; found by review)."""
    from _server_support import serving

    config = NetProfileConfig(
        max_mb=4, min_bytes=4096, repeats=2, min_time_s=0.0, warmup=1, upload_min_mb=1 / 16, upload_max_mb=4
    )  # up to 4 MiB: on a loaded host, times up to 256 KiB did not always grow with size (no curve to fit)
    with serving(tmp_path, workers=16) as (server, _), Client(str(server.address)) as client:
        assert server.stream_slots.capacity["other"] == 1
        profile = profile_network(client, config)
    assert profile.upload is not None and STREAMED in profile.uplink.notes


def test_a_server_without_the_echo_stream_is_timed_with_one_call_per_transfer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A server from before EchoService.Exchange answers it UNIMPLEMENTED: the sweep falls back to Send / Receive
    calls, and each direction says so (its small messages hold a call's start-up)."""
    import grpc
    from _server_support import serving

    import rr_server.server
    from rr_proto.roadrunner.v1 import roadrunner_pb2 as rr

    def without_exchange(servicer, server):  # type: ignore[no-untyped-def]  # the handlers an older server had
        handlers = {
            "Send": grpc.stream_unary_rpc_method_handler(
                servicer.Send, rr.SendRequest.FromString, rr.SendResponse.SerializeToString
            ),
            "Receive": grpc.unary_stream_rpc_method_handler(
                servicer.Receive, rr.ReceiveRequest.FromString, rr.ReceiveResponse.SerializeToString
            ),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("roadrunner.v1.EchoService", handlers),))

    monkeypatch.setattr(rr_server.server.rr_grpc, "add_EchoServiceServicer_to_server", without_exchange)
    config = NetProfileConfig(max_mb=4, repeats=2, min_time_s=0.0, upload_max_mb=0)  # growing even on a loaded host
    with (
        caplog.at_level(logging.WARNING, logger="rr_edge.echo"),  # another test may have raised the package's level
        serving(tmp_path) as (server, _),
        Client(str(server.address)) as client,
    ):
        profile = profile_network(client, config)
    assert PER_CALL in profile.uplink.notes and PER_CALL in profile.downlink.notes
    assert {s.bytes for s in profile.uplink.samples} == set(config.sizes())
    assert "no EchoService.Exchange" in caplog.text


def test_a_sweep_stopped_by_max_transfer_s_says_so_and_builds_no_probe_past_it(
    server_process: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Against a real server behind an emulated 50 MB/s link (each transfer and upload first sleeps its bytes' time)
    and a 50 ms limit: each direction measures a run of the smallest sizes, every one but the largest under the limit
    at its first transfer, its notes say where it stopped, and upload probes are built only for the sizes reached
    (they used to be built all at once). Loopback alone, with a 1 ms limit, stopped at 128 KiB on a loaded machine,
    where times had not grown yet: no bandwidth could be fitted (a CI run)."""
    import rr_edge.netprofile as netprofile
    from rr_edge.client import Client as RealClient
    from rr_edge.echo import EchoStream

    rate = 50e6  # bytes per second
    exchange, upload = EchoStream.exchange, RealClient.upload_slice

    def slow_exchange(self, send_bytes: int, reply_bytes: int) -> None:  # type: ignore[no-untyped-def]
        time.sleep((send_bytes + reply_bytes) / rate)
        exchange(self, send_bytes, reply_bytes)

    def slow_upload(self, data: bytes, *args: Any, **kwargs: Any) -> Any:  # type: ignore[no-untyped-def]
        time.sleep(len(data) / rate)
        return upload(self, data, *args, **kwargs)

    monkeypatch.setattr(EchoStream, "exchange", slow_exchange)
    monkeypatch.setattr(RealClient, "upload_slice", slow_upload)
    built: list[int] = []
    real = netprofile.probe_slice
    monkeypatch.setattr(netprofile, "probe_slice", lambda n, seed=0: built.append(n) or real(n, seed))
    config = NetProfileConfig(max_mb=16, repeats=1, min_time_s=0.0, upload_min_mb=0.25, upload_max_mb=64,
                              max_transfer_s=0.05)  # fmt: skip
    with Client(server_process) as client:
        profile = profile_network(client, config)
    assert profile.upload is not None
    for name, d, planned in (("uplink", profile.uplink, config.sizes()), ("downlink", profile.downlink, config.sizes()),
                             ("upload", profile.upload, config.upload_sizes())):  # fmt: skip
        firsts = {}
        for s in d.samples:  # in the order timed, per size: the first is the sweep's
            firsts.setdefault(s.bytes, s.ms)
        sizes = sorted(firsts)
        assert len(sizes) < len(planned), name
        # each size before the last stayed under the limit, or under 4x the fastest time (no bandwidth yet)
        assert all(firsts[n] <= 50.0 or firsts[n] < 4 * firsts[sizes[0]] for n in sizes[:-1]), name
        assert any("not measured" in note for note in d.notes), name
    reached = {s.bytes for s in profile.upload.samples}  # the probes' real sizes: weights and a small graph
    assert sorted(built) == config.upload_sizes()[: len(reached)]


def test_upload_probes_keep_within_the_servers_slice_limit(tmp_path: Path) -> None:
    """A server that takes slices of at most 8 MiB: the probes stop there (they used to be refused, failing the
    whole profile after both echo directions were measured); with room for fewer than two, there are none. (Sizes up
    to a few MiB: below one, loopback upload times are the server's fixed costs, and a curve with no slope is
    dropped.)"""
    server = ServerProcess(tmp_path / "d", "--log-level", "WARNING", "--max-slice-mb", "8")
    # echoes to 4 MiB: up to 256 KiB, loopback times may not grow at all, and such a direction is refused
    config = NetProfileConfig(max_mb=4, repeats=1, min_time_s=0.0, upload_min_mb=0.125, upload_max_mb=32)
    try:
        with Client(server.address) as client:
            profile = profile_network(client, config)
            assert profile.upload is not None
            sizes = sorted({s.bytes for s in profile.upload.samples})
            assert len(sizes) >= 2 and max(sizes) <= 8 * 2**20 < len(probe_slice(config.upload_sizes()[-1]))
            tight = replace(config, upload_min_mb=4, upload_max_mb=16)  # 4 MiB fits, 8 and 16 MiB do not
            assert profile_network(client, tight).upload is None
    finally:
        server.terminate(timeout=15)


def test_failed_upload_probes_keep_the_two_measured_directions(
    server_process: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Upload probes run after both echo sweeps: one refused for a reason other than a busy server (here the
    server's disk, as it would say RESOURCE_EXHAUSTED) had discarded the whole profile, minutes of measuring on a slow
    link. The two directions are kept and uploads are costed with the uplink; a server gone still fails it."""
    from rr_edge.errors import ServerUnavailable

    config = NetProfileConfig(max_mb=1, repeats=1, min_time_s=0.0, upload_min_mb=0.0625, upload_max_mb=1)
    with Client(server_process) as client:
        real = client.upload_slice

        def full_disk(data: bytes, *args: object, **kwargs: object) -> object:
            if len(data) > 2**19:
                raise ServerError("UploadSlice: RESOURCE_EXHAUSTED: no space left on the server's disk")
            return real(data, *args, **kwargs)

        client.upload_slice = full_disk  # type: ignore[method-assign]
        with caplog.at_level(logging.WARNING, logger="rr_edge.netprofile"):
            profile = profile_network(client, config)
        assert profile.upload is None and profile.uplink.samples and profile.downlink.samples
        assert "upload probes failed" in caplog.text and "no space left" in caplog.text

        def gone(*args: object, **kwargs: object) -> object:
            raise ServerUnavailable("the server went away")

        client.upload_slice = gone  # type: ignore[method-assign]
        with pytest.raises(ServerUnavailable):
            profile_network(client, config)


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [("min_bytes", 0, "min_bytes"), ("repeats", 0, "repeats"), ("upload_max_mb", 0.1, "upload_max_mb")],
)
def test_a_config_that_cannot_sweep_is_refused_with_its_field_named(field: str, value: float, says: str) -> None:
    """min_bytes 0 had passed and failed later in log_sizes with a bare ZeroDivisionError (found by review)."""
    with pytest.raises(ArgumentError, match=says):
        NetProfileConfig(**{field: value})


def test_netprofile_command_json(server_process: str, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from rr_edge.cli import main

    argv = ["netprofile", "--server", server_process, "--node", "cli-net", "--max-mb", "1", "--energy", "model",
            "--upload-max-mb", "0", "--json"]  # fmt: skip
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["node"] == "cli-net" and out["energy_source"] == "model" and out["energy_measured"] is False
    for d in ("uplink", "downlink"):
        assert out[d]["chosen_model"] in ("affine", "poly4", "pwl") and out[d]["max_bytes"] == 1024 * 1024
        assert out[d]["affine_error"] >= 0
    assert out["upload"] is None  # --upload-max-mb 0: no probes
    with pytest.raises(SystemExit):  # fewer than three probe sizes: a usage error, naming the flag
        main(argv[:-3] + ["--upload-max-mb", "0.2"])
    assert "--upload-max-mb: 0 (no upload probes) or at least 0.25" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(argv[:-1] + ["--max-transfer-s", "-1"])
    assert "--max-transfer-s" in capsys.readouterr().err
