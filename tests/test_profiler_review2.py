"""Profiling, found by a second review: a model over protobuf's 2 GiB limit, a registration that netprofile or a
failed profile overwrote, an energy too small for the server, thread counts and rounds without bounds."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from _server_support import start_server
from onnx import TensorProto, helper, numpy_helper

import rr_edge.commands.run as run_command
import rr_edge.netprofile as netprofile
from rr_edge import slicing
from rr_edge.blocks import analyze
from rr_edge.cli import main
from rr_edge.client import Client
from rr_edge.errors import ArgumentError, ModelError
from rr_edge.meters.base import EnergyReading, Meter
from rr_edge.netprofile import fit_direction, run_netprofile
from rr_edge.profiler import (
    ProfileConfig,
    TimingPolicy,
    _energy_per_run,
    _measure_rounds,
    run_profile,
)
from rr_edge.profiles import NetworkProfile, NetworkSample
from rr_edge.session import OrtSettings, max_threads
from rr_edge.slicing import Slicer
from rr_proto.limits import MIN_ENERGY_MJ

FAST = TimingPolicy(warmup_runs=1, min_runs=3, min_time_s=0.0)
CONFIG = ProfileConfig(sample=1.0, seed=0, timing=FAST, e2e_timing=FAST, sweep=FAST)
ONE_THREAD = OrtSettings(intra_op_threads=1)
DEAD = ["--server", "127.0.0.1:1", "--node", "n", "--timeout", "2"]  # nothing listens on port 1


def matmul_chain(widths: tuple[int, ...] = (8, 16, 64, 8)) -> onnx.ModelProto:
    """MatMul + Relu layers of the given widths: blocks of three different weight sizes."""
    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for k, (a, b) in enumerate(itertools.pairwise(widths)):
        inits.append(numpy_helper.from_array(rng.standard_normal((a, b)).astype(np.float32), f"w{k}"))
        nodes += [
            helper.make_node("MatMul", [prev, f"w{k}"], [f"m{k}"]),
            helper.make_node("Relu", [f"m{k}"], [f"y{k}"]),
        ]
        prev = f"y{k}"
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, widths[0]])],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, widths[-1]])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[str]:
    srv = start_server(tmp_path / "server")
    try:
        yield srv.address
    finally:
        srv.stop(grace=0.5)


def _warnings(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    found = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and text in r.getMessage()]
    caplog.clear()
    return found


# -- 1. a model over protobuf's 2 GiB limit -----------------------------------------------------------------------


def test_a_model_over_the_protobuf_limit_reports_its_blocks_without_the_whole_model_run(
    server: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A 2.2 GB model was profiled block by block, then crashed with protobuf's EncodeError serializing it whole for
    the end-to-end run, and nothing reached the server. With the limit lowered below the whole model and its largest
    block (no gigabytes allocated), that block is left out and the whole-model run skipped, each with a warning, and
    the other blocks are reported."""
    model = matmul_chain()
    graph = analyze(model, "chain")
    slicer = Slicer(model, graph, sampled_shapes=True)
    sizes = {b.index: len(slicer.slice(b.index, b.index).SerializeToString()) for b in graph.blocks}
    big = max(sizes, key=lambda k: sizes[k])
    limit = sorted(sizes.values())[-2]
    assert limit < sizes[big] and limit < len(model.SerializeToString())
    monkeypatch.setattr(slicing, "MAX_MODEL_BYTES", limit)
    caplog.set_level("WARNING", logger="rr_edge.profiler")
    with Client(server) as client:
        result = run_profile(client, "edge-big", model, "chain", settings=ONE_THREAD, config=CONFIG)
        assert result.model_run is None and result.model_bytes is None
        assert {m.block_index for m in result.layers} == {b.index for b in graph.blocks} - {big}
        assert client.list_measured_signatures("edge-big") == {m.signature for m in result.layers}
    block, whole = _warnings(caplog, "over protobuf's 2 GiB limit")
    assert block.startswith(f"block chain[{big}] is over") and block.endswith("not profiled")
    assert whole.startswith("model 'chain' is over") and whole.endswith("profiled without its whole-model run")


def test_whole_model_bytes_over_the_limit_is_a_model_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(slicing, "MAX_MODEL_BYTES", 100)
    model = matmul_chain()
    model.opset_import.append(helper.make_opsetid("com.unused", 1))  # the trimmed copy's path too
    for m in (matmul_chain(), model):
        with pytest.raises(ModelError, match="over protobuf's 2 GiB limit"):
            slicing.whole_model_bytes(m, "model 'chain'")


def test_a_plans_slices_over_the_limit_are_a_model_error_and_never_asked_about(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A plan's slices were serialized with protobuf's own call: a split over the limit ended `run` with its
    EncodeError. Such a slice is a ModelError, and no server is asked whether it holds it."""
    from rr_edge.offload import _on_server, plan_slices

    model = matmul_chain()
    graph = analyze(model, "chain")
    slicer, n = Slicer(model, graph), len(graph.blocks)
    monkeypatch.setattr(slicing, "MAX_MODEL_BYTES", 100)
    for i, j in ((n - 1, n - 1), (-1, n - 1)):
        with pytest.raises(ModelError, match="over protobuf's 2 GiB limit"):
            plan_slices(slicer, n, i, j)
    assert _on_server(None, slicer, (-1, n - 1)) is False  # type: ignore[arg-type]  # never reaches the client


def test_run_takes_its_reference_from_the_file_when_the_model_is_over_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`rr-edge run` serialized the model for its local reference run and failed the same way. Over the limit the
    reference opens the file, its weights in external data, and the requests are checked against it."""
    path = tmp_path / "chain.onnx"
    onnx.save_model(matmul_chain(), path, save_as_external_data=True, location="chain.data", size_threshold=0)
    x = tmp_path / "x.npy"
    np.save(x, np.random.default_rng(1).standard_normal((1, 8)).astype(np.float32))
    opened: list[object] = []
    real = run_command.local_outputs

    def spy(settings: OrtSettings, model: Any, inputs: Any) -> Any:
        opened.append(model)
        return real(settings, model, inputs)

    from rr_edge.onnx_io import load_model

    model = load_model(path)  # as run loads it, its weights read in
    whole = len(model.SerializeToString())
    graph = analyze(model, "chain")
    largest = max(len(Slicer(model, graph).slice(k, k).SerializeToString()) for k in range(len(graph.blocks)))
    assert largest < whole
    monkeypatch.setattr(slicing, "MAX_MODEL_BYTES", largest)  # each block fits, the whole model does not
    monkeypatch.setattr(run_command, "local_outputs", spy)
    assert main(["run", str(path), *DEAD, "--split", "0,1", "--input", str(x), "--threads", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert opened == [str(path)] and out["max_abs_diff_vs_local"] < 1e-6  # its slices run here: the server is away


# -- 2. the registered timing setup -------------------------------------------------------------------------------


def _canned_network_profile(*args: object, **kwargs: object) -> NetworkProfile:
    """A link profile as netprofile measures it, without measuring (the registration is what is tested)."""
    samples = [NetworkSample(b, 0.3 + b / 1e5, None) for b in (1024, 2048, 4096, 8192) for _ in range(3)]
    direction = fit_direction(samples, "uplink")
    return NetworkProfile(uplink=direction, downlink=direction, energy_source="", measured_at=time.time())


def test_netprofile_keeps_the_timing_setup_the_node_is_registered_with(
    server: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """netprofile re-registered the node with the default threads ($RR_THREADS here): a profile with 1 thread, then
    netprofile, then a profile with 2 threads gave no warning (1 -> 2 was missed), and with 1 thread a false one."""
    monkeypatch.setenv("RR_THREADS", "3")
    monkeypatch.setattr(netprofile, "profile_network", _canned_network_profile)
    caplog.set_level("WARNING", logger="rr_edge.profiler")
    model = matmul_chain()
    with Client(server) as client:
        run_profile(client, "edge-n", model, "chain", settings=ONE_THREAD, config=CONFIG)
        run_netprofile(client, "edge-n")
        device = client.get_node("edge-n").device
        assert device["intra_op_threads"] == 1 and device["extra"]["ort_provider"] == ONE_THREAD.resolved().provider
        assert client.get_network_profile("edge-n") is not None
        run_profile(client, "edge-n", model, "chain", settings=ONE_THREAD, config=CONFIG)
        assert _warnings(caplog, "another setup") == []  # the same setup as the blocks'
        run_profile(client, "edge-n", model, "chain", settings=OrtSettings(intra_op_threads=2), config=CONFIG)
        (message,) = _warnings(caplog, "another setup")
        assert "intra_op_threads 1 -> 2" in message
        run_netprofile(client, "edge-new")  # a node netprofile registers first: this machine's descriptor
        assert client.get_node("edge-new").device["intra_op_threads"] == 3


def _unanalysable() -> onnx.ModelProto:
    """A model whose output depends on no input: analyze refuses it."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])
    graph = helper.make_graph([helper.make_node("Relu", ["missing"], ["y"])], "g", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def _unrunnable() -> onnx.ModelProto:
    """A model that analyses but ONNX Runtime cannot load (an operator of a domain it does not have)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])
    graph = helper.make_graph([helper.make_node("Foo", ["x"], ["y"], domain="com.example")], "g", [x], [y])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=9)


@pytest.mark.parametrize("bad", [_unanalysable, _unrunnable])
def test_a_profile_that_fails_leaves_the_nodes_registration_as_it_was(server: str, bad: Any) -> None:
    """run_profile registered the node before analysing the model: a profile that failed had already replaced the
    setup the node's blocks were measured with."""
    with Client(server) as client:
        run_profile(client, "edge-f", matmul_chain(), "chain", settings=ONE_THREAD, config=CONFIG)
        with pytest.raises(ModelError):
            run_profile(client, "edge-f", bad(), "bad", settings=OrtSettings(intra_op_threads=2), config=CONFIG)
        assert client.get_node("edge-f").device["intra_op_threads"] == 1


# -- 4. an energy below the server's minimum ------------------------------------------------------------------------


class Trickle(Meter):
    """A meter that reads a nanowatt: a positive energy, far below the least the server takes."""

    source = "rapl"

    def _begin(self, activity: str) -> None:
        return None

    def _end(self, state: Any, elapsed_s: float) -> float:
        return 1e-9 * elapsed_s * 1000.0


def test_an_energy_below_the_servers_minimum_is_left_out_not_the_report(
    server: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A positive energy below the server's 1e-6 mJ passed the edge's check (> 0) and the server refused the whole
    report, every latency with it. It is dropped like a zero one, with a warning."""
    tiny = [EnergyReading("rapl", True, MIN_ENERGY_MJ / 10, 1.0)]
    caplog.set_level("WARNING", logger="rr_edge.profiler")
    assert _energy_per_run(tiny, 1000.0) is None
    assert _warnings(caplog, "outside the 1e-06..3.6e+09 mJ the server takes")
    assert _energy_per_run([EnergyReading("rapl", True, 2 * MIN_ENERGY_MJ, 1.0)], 1000.0) == pytest.approx(2e-6)
    with Client(server) as client:
        result = run_profile(client, "edge-e", matmul_chain(), "chain", settings=ONE_THREAD, meter=Trickle(),
                             config=CONFIG)  # fmt: skip
        assert result.layers and all(m.energy_mJ is None for m in result.layers)
        assert client.list_measured_signatures("edge-e") == {m.signature for m in result.layers}


# -- 5. thread counts -----------------------------------------------------------------------------------------------


def test_thread_counts_above_a_few_per_cpu_are_refused_naming_where_they_came_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--threads 100000 (or $RR_THREADS) hung the profiler while ONNX Runtime created the threads."""
    most = max_threads()
    assert OrtSettings(intra_op_threads=most).resolved().intra_op_threads == most
    with pytest.raises(ArgumentError, match="intra_op_threads 100000 .* at most"):
        OrtSettings(intra_op_threads=100_000).resolved()
    monkeypatch.setenv("RR_THREADS", "100000")
    with pytest.raises(ArgumentError, match=r"\$RR_THREADS 100000"):
        OrtSettings().resolved()
    monkeypatch.delenv("RR_THREADS")
    path = tmp_path / "chain.onnx"
    onnx.save_model(matmul_chain(), path)
    for command in (["profile", str(path), *DEAD], ["run", str(path), *DEAD, "--input", str(tmp_path / "x.npy")]):
        assert main([*command, "--threads", "100000"]) == 2
        err = capsys.readouterr().err
        assert f"rr-edge {command[0]}: error: --threads 100000" in err and f"at most {most}" in err


# -- 6. rounds and the time cap -------------------------------------------------------------------------------------


def test_rounds_are_at_most_min_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--rounds 3000 overrode --min-runs 10: every round times a run, so it took 3000 samples."""
    with pytest.raises(ArgumentError, match=r"rounds \(11\) must be at most min_runs \(10\)"):
        TimingPolicy(min_runs=10, rounds=11)
    path = tmp_path / "chain.onnx"
    onnx.save_model(matmul_chain(), path)
    assert main(["profile", str(path), *DEAD, "--rounds", "3000"]) == 2
    assert "--rounds 3000 is more than --min-runs 10" in capsys.readouterr().err


class Ticking:
    """A runnable whose every run advances a fake clock by `step` seconds."""

    label = "ticking"

    def __init__(self, step: float) -> None:
        self.now, self.step, self.calls = 0.0, step, 0

    def __call__(self) -> None:
        self.now += self.step
        self.calls += 1

    def clock(self) -> float:
        return self.now


@pytest.mark.parametrize("meter", [None, Trickle()])
def test_max_time_bounds_every_round_and_warm_up_together(meter: Meter | None) -> None:
    """Each round had max_time_s / rounds for its timed runs, its warm-ups not counted and its minimum runs taken
    regardless: 3 rounds of a 1 s cap ran 1.44 s (of this fake clock). Now the runs of all rounds, warm-ups included,
    stop once the cap has passed (the run under way finishes)."""
    step = 1 / 16  # exact in binary floating point
    ticking = Ticking(step)
    policy = TimingPolicy(warmup_runs=3, min_runs=30, min_time_s=0.0, max_time_s=1.0, rounds=3)
    [(latency, _)] = _measure_rounds([ticking], policy, meter, clock=ticking.clock)  # type: ignore[list-item]
    assert ticking.calls * step <= policy.max_time_s + step
    assert latency.samples >= policy.rounds  # every round timed at least one run
    roomy = Ticking(step)  # a cap that is not reached: the minimum runs are all taken
    policy = TimingPolicy(warmup_runs=1, min_runs=6, min_time_s=0.0, rounds=3)
    [(latency, _)] = _measure_rounds([roomy], policy, meter, clock=roomy.clock)  # type: ignore[list-item]
    assert latency.samples == 6 and roomy.calls == 6 + 1 + 1 + 1  # a warm-up run per round
