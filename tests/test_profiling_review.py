"""Profiling and network profiling, found by review: amounts that are not finite numbers, errors that were never
computed, why a network curve was kept, upload probes built past the server's limit, runners left open."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

import rr_edge.netprofile as netprofile
from rr_edge.measure import measure_splits
from rr_edge.netmodel import fit_network_model
from rr_edge.netprofile import NetProfileConfig, fit_direction, summary
from rr_edge.profiler import TimingPolicy
from rr_edge.profiles import NetworkProfile, NetworkSample


@pytest.mark.parametrize("bad", [{"min_time_s": math.nan}, {"min_time_s": math.inf}, {"min_time_s": -1.0},
                                 {"max_time_s": math.nan}, {"max_time_s": 0.0}])  # fmt: skip
def test_a_timing_policy_needs_finite_times(bad) -> None:  # type: ignore[no-untyped-def]
    """min_time_s NaN timed every block until its 30 s cap (no clock reaches NaN)."""
    with pytest.raises(ValueError, match="finite"):
        TimingPolicy(**bad)


@pytest.mark.parametrize("bad", [{"max_mb": math.nan}, {"upload_max_mb": math.inf}, {"upload_max_mb": -1.0},
                                 {"min_time_s": math.nan}, {"upload_max_mb": 4096.0}])  # fmt: skip
def test_a_network_profile_needs_finite_sizes_within_the_limits(bad) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError):
        NetProfileConfig(**bad)


def test_errors_never_computed_are_null_and_notes_say_why_a_curve_was_kept() -> None:
    """With 3 sizes the quartic has no held-out error: the JSON said -1.0, which reads as the best of all."""
    samples = [NetworkSample(b, 0.3 + b / 1e5, None) for b in (1024, 2048, 4096) for _ in range(3)]
    direction = fit_direction(samples, "uplink")
    out = summary(NetworkProfile(uplink=direction, downlink=direction, energy_source="model", measured_at=0.0))
    assert out["uplink"]["poly4_error"] is None and out["uplink"]["affine_error"] >= 0
    assert isinstance(out["uplink"]["notes"], list)


def test_the_affine_curve_kept_over_a_slightly_better_one_is_said() -> None:
    """The affine model is kept unless another curve is better by 10%; a reader of the errors alone saw the
    lower one lose without a word."""
    sizes = np.logspace(10, 28, 19, base=2).round()
    rng = np.random.default_rng(1)
    for c in np.linspace(0, 200, 41):
        x = sizes / sizes.max()
        fit = fit_network_model(sizes, (2.0 + 1000 * x + c * x**2) * rng.lognormal(0, 0.03, sizes.size))
        best_other = min(fit.poly_error, fit.pwl_error)
        if fit.chosen.kind == "affine" and best_other < fit.affine_error:
            assert any(note.startswith("affine kept") for note in fit.notes), fit.notes
            return
    pytest.fail("no case where the affine curve was kept over a better one")


def test_upload_probes_past_the_servers_slice_limit_are_never_built() -> None:
    """With a 1 MiB limit and probes up to 256 MiB, every probe was built (776 MiB at the peak), then dropped. Only
    the sizes whose probe fits the limit are kept, and the overhead allowed for a probe's graph bounds the real one."""
    sizes = netprofile._upload_probe_sizes(NetProfileConfig(max_mb=1, upload_max_mb=256), max_slice_bytes=2**20)
    assert len(sizes) >= 2 and sizes[-1] == 2**20 // 2  # 1 MiB itself leaves no room for the graph
    assert all(len(netprofile.probe_slice(n)) <= n + netprofile.PROBE_OVERHEAD_BYTES for n in (1000, 2**16, 2**20))
    assert netprofile._upload_probe_sizes(NetProfileConfig(max_mb=1, upload_max_mb=256), max_slice_bytes=2**17) == []


def test_runners_made_before_one_fails_are_closed() -> None:
    """A runner that could not be made (the server refused its slice) left those made before it open, each holding
    a stream slot on the server."""
    closed = []

    class Made:
        upload_ms = 0.0

        def __init__(self, split: tuple[int, int]) -> None:
            self.split = split

        def close(self) -> None:
            closed.append(self.split)

    def runner_for(split):  # type: ignore[no-untyped-def]
        if split == (2, 2):
            raise RuntimeError("server refused the slice")
        return Made(split)

    with pytest.raises(RuntimeError, match="refused"):
        measure_splits(runner_for, [(0, 1), (2, 2)], np.zeros(1), 3)
    assert closed == [(0, 1)]


def test_a_slice_the_server_refuses_leaves_the_profile_reported(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """One slice the server would not take (here a contrib op of ONNX Runtime, which rr-server refuses in uploads)
    made `rr-edge profile` fail after every block was measured, and nothing was reported."""
    from _server_support import start_server
    from onnx import TensorProto, helper, numpy_helper

    from rr_edge.client import Client
    from rr_edge.profiler import ProfileConfig, run_profile

    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["a"]),
        helper.make_node("Gelu", ["a"], ["b"], domain="com.microsoft"),
        helper.make_node("MatMul", ["b", "w"], ["y"]),
    ]
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32), "w")
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 8]) for n in ("x", "y")]
    graph = helper.make_graph(nodes, "g", io[:1], io[1:], [w])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    server = start_server(tmp_path / "server", cloud_profiling=False)
    try:
        with Client(server.address) as client:
            config = ProfileConfig(sample=1.0, seed=0, timing=TimingPolicy(warmup_runs=0, min_runs=2, min_time_s=0.0))
            result = run_profile(client, "edge-a", model, "gelu", config=config)
            assert {m.slice_id for m in result.layers if "Gelu" in m.features.ops} == {""}  # refused, not timed
            assert any(m.slice_id for m in result.layers)  # the standard ones went up
            assert client.list_measured_signatures("edge-a") == {m.signature for m in result.layers}
    finally:
        server.stop(grace=1)


def test_uploads_cut_short_by_a_slow_link_leave_the_profile_reported(tmp_path, monkeypatch, caplog) -> None:  # type: ignore[no-untyped-def]
    """On a 2 Mbit/s link a slice upload passed its deadline and `rr-edge profile` exited with every measurement
    lost (found by review). The uploads stop; what was measured is reported."""
    from _server_support import start_server

    from rr_edge.client import Client
    from rr_edge.errors import ServerUnavailable
    from rr_edge.profiler import ProfileConfig, run_profile
    from tools.bench_runner import conv_chain

    server = start_server(tmp_path / "server", cloud_profiling=False)
    try:
        with Client(server.address) as client:
            real, calls = client.upload_slice, []

            def slow_link(data, label="", **kw):  # type: ignore[no-untyped-def]
                calls.append(label)
                if len(calls) > 1:
                    raise ServerUnavailable(
                        f"UploadSlice {label}: DEADLINE_EXCEEDED: Deadline Exceeded", "DEADLINE_EXCEEDED"
                    )
                return real(data, label, **kw)

            monkeypatch.setattr(client, "upload_slice", slow_link)
            config = ProfileConfig(sample=1.0, seed=0, timing=TimingPolicy(warmup_runs=0, min_runs=2, min_time_s=0.0))
            with caplog.at_level(logging.WARNING, logger="rr_edge.profiler"):
                result = run_profile(client, "edge-a", conv_chain(layers=4), "chain", config=config)
            assert len(calls) == 2 and sum(bool(m.slice_id) for m in result.layers) == 1  # no upload after the cut
            assert client.list_measured_signatures("edge-a") == {m.signature for m in result.layers}
            assert "uploads for the server to time stopped" in caplog.text
    finally:
        server.stop(grace=1)
