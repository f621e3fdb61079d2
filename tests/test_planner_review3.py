"""Planning core, third review: the slices asked about under an unmet deadline, the server's slice limit against the
bytes really uploaded, argument checks of the planner and the API, Neurosurgeon's regressor for "other" blocks."""

from __future__ import annotations

import math

import numpy as np
import pytest

import rr_server
from rr_edge.api import EdgeNode
from rr_edge.client import Client, ClientOptions, Prediction
from rr_edge.errors import ArgumentError
from rr_edge.meters.model import DEFAULT_POWER
from rr_edge.netmodel import NetworkModel
from rr_edge.neurosurgeon import fit
from rr_edge.offload import Costs, make_runner, plan_with_server_cache
from rr_edge.planner import PlanInputs, check_objective
from rr_edge.slicing import model_bytes, whole_model_bytes

FAST = NetworkModel.affine(rtt_ms=0.01, bandwidth_bytes_per_ms=1e6)


def _costs(graph, edge_ms: float, edge_mJ: float, cloud_ms: float, **kw) -> Costs:  # type: ignore[no-untyped-def]
    def preds(ms: float, mj: float) -> tuple[Prediction, ...]:
        return tuple(Prediction(b.signature, ms, mj, "measured", "measured", "model") for b in graph.blocks)

    return Costs(preds(edge_ms, edge_mJ), preds(cloud_ms, 0.0), 1.0, FAST, FAST, DEFAULT_POWER, **kw)


def test_with_the_deadline_unmet_a_plan_meeting_it_whose_slice_the_server_holds_is_found(chain, tmp_path):
    """Uploads dear (5 s each), so no plan met 25 ms and the fastest, all-local, was chosen ("slo-unmet"). The plans
    that would meet it with no upload were asked about only when their energy was below all-local's, which no
    offloading plan's is (the edge idles while the cloud runs): the one whose slice the server held was never found."""
    model, graph, slicer = chain
    dear_uploads = NetworkModel.affine(rtt_ms=5000.0, bandwidth_bytes_per_ms=1e6)
    costs = _costs(graph, edge_ms=10.0, edge_mJ=0.001, cloud_ms=0.1, upload=dear_uploads)
    with rr_server.Server(rr_server.ServerConfig(data_dir=tmp_path, listen="127.0.0.1:0")) as s, Client(s.address) as c:
        before = plan_with_server_cache(c, model, graph, costs, slicer, slo_ms=25.0)
        assert before.chosen.objective == "slo-unmet" and before.chosen.i == before.chosen.j
        c.upload_slice(slicer.slice(1, 2).SerializeToString(), "held")  # the middle slice of plan (0, 2)
        after = plan_with_server_cache(c, model, graph, costs, slicer, slo_ms=25.0)
    assert (after.chosen.i, after.chosen.j, after.chosen.objective) == (0, 2, "slo")
    assert after.chosen.latency_ms <= 25.0 and after.chosen.upload_bytes == 0


def test_with_a_deadline_no_plan_meets_a_faster_plan_whose_slice_the_server_holds_is_found(chain, tmp_path):
    """No plan meets 0.1 ms, so the fastest is chosen; with uploads dear that was all-local, and only plans meeting the
    deadline were asked about: a plan twice as fast whose slice the server held was never found (review: `plan
    --slo-ms 1` chose all-local at 56 ms over 43 ms without the deadline)."""
    model, graph, slicer = chain
    dear_uploads = NetworkModel.affine(rtt_ms=5000.0, bandwidth_bytes_per_ms=1e6)
    costs = _costs(graph, edge_ms=10.0, edge_mJ=0.001, cloud_ms=0.1, upload=dear_uploads)
    with rr_server.Server(rr_server.ServerConfig(data_dir=tmp_path, listen="127.0.0.1:0")) as s, Client(s.address) as c:
        before = plan_with_server_cache(c, model, graph, costs, slicer, slo_ms=0.1)
        assert before.chosen.objective == "slo-unmet" and before.chosen.i == before.chosen.j
        n = len(graph.blocks)
        c.upload_slice(whole_model_bytes(model), "held")  # the slice of plan (-1, n - 1): the fastest without
        after = plan_with_server_cache(c, model, graph, costs, slicer, slo_ms=0.1)  # an upload, over 0.1 ms still
    assert (after.chosen.i, after.chosen.j, after.chosen.objective) == (-1, n - 1, "slo-unmet")
    assert after.chosen.latency_ms < before.chosen.latency_ms and after.chosen.upload_bytes == 0


def test_no_plan_is_chosen_whose_slice_the_server_refuses_by_size(chain, tmp_path):
    """The limit was checked against the blocks' slice_bytes, but an uploaded slice also holds its graph's inputs and
    outputs, value infos and opset imports: with the limit between the two, the planner chose offloading everything
    and the server refused the slice when the run started."""
    model, graph, slicer = chain
    n = len(graph.blocks)
    planned = sum(b.slice_bytes for b in graph.blocks)
    real = len(model_bytes(slicer.slice(0, n - 1), "the model"))
    assert planned < real
    limit = (planned + real) // 2
    costs = _costs(graph, edge_ms=10.0, edge_mJ=1.0, cloud_ms=0.1, max_slice_bytes=limit)
    config = rr_server.ServerConfig(data_dir=tmp_path, listen="127.0.0.1:0", max_slice_bytes=limit)
    with rr_server.Server(config) as s, Client(s.address) as c:
        report = plan_with_server_cache(c, model, graph, costs, slicer, amortize_over=100)
        i, j, latency, _ = report.table.flat()
        for a, b, ms in zip(i, j, latency, strict=True):  # every plan left runnable is one the server takes
            if a < b and np.isfinite(ms):
                assert len(model_bytes(slicer.slice(a + 1, b), "slice")) <= limit
        assert report.chosen.i < report.chosen.j  # offloading still pays: a smaller slice was chosen
        x = np.random.default_rng(0).standard_normal(graph.inputs[0].shape).astype(np.float32)
        with make_runner(slicer, graph, (report.chosen.i, report.chosen.j), c) as runner:
            assert runner.run(x).fallback is False


@pytest.mark.parametrize("slo_ms", [math.nan, math.inf, -5.0, 0.0, "100", True])
def test_a_deadline_must_be_a_finite_number_of_ms_above_zero(slo_ms):
    """NaN, 0 and negative deadlines were taken (no plan met them: the fastest came back as "slo-unmet"), "100"
    failed as a TypeError inside the planner."""
    with pytest.raises(ArgumentError, match="slo_ms must be a finite number"):
        check_objective("latency", slo_ms)


@pytest.mark.parametrize("k", [math.inf, math.nan])
def test_amortize_over_infinity_or_nan_is_an_argument_error(k):
    """int() raised its own OverflowError (infinity) and a bare ValueError (NaN)."""
    with pytest.raises(ArgumentError, match="whole number of requests"):
        PlanInputs(
            edge_ms=[1.0], edge_mJ=[1.0], cloud_ms=[1.0], upload_bytes=[0], boundary_bytes=[1, 1],
            uplink=FAST, downlink=FAST, amortize_over=k,
        )  # fmt: skip


@pytest.mark.parametrize("kw", [{"slo_ms": math.nan}, {"slo_ms": "100"}, {"amortize_over": math.inf}])
def test_edge_node_plan_refuses_bad_arguments_before_asking_the_server(chain, tmp_path, kw):
    """Nothing listens at the address: an argument error must come before any call (a "100" deadline had been a
    TypeError after the server was asked, an infinite amortize_over an OverflowError)."""
    model, _, _ = chain
    path = tmp_path / "chain.onnx"
    path.write_bytes(model.SerializeToString())
    with EdgeNode("127.0.0.1:1", "n", options=ClientOptions(timeout_s=1.0)) as node:
        with pytest.raises(ArgumentError):
            node.plan(path, **kw)


def test_neurosurgeon_regresses_other_blocks_on_their_input_bytes():
    """Neurosurgeon sizes the layers that are not convolutions or fully connected by their data (neurons), as the
    module says; "other" blocks (a Transpose, a Concat: no FLOPs) were regressed on FLOPs, and every one came out at
    the mean of the sample."""

    def other(inp: float) -> dict[str, object]:
        return {"ops": ["Transpose"], "flops": 0, "input_bytes": inp, "output_bytes": inp, "param_bytes": 0}

    sizes = [1e4, 5e4, 1e5, 4e5, 8e5]
    model = fit([other(b) for b in sizes], [0.02 + 1e-6 * b for b in sizes])
    latency, _ = model.predict([other(2e6)])
    assert latency[0] == pytest.approx(0.02 + 1e-6 * 2e6, rel=1e-3)
