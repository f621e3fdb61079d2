"""What the edge's set-up keeps, and what it accepts (found by review of a0f962d): a Slicer no longer keeps a
runner's slice bytes after the runner is gone (about the model's bytes again, for a whole run or an EdgeNode's life),
while plan -> runner still cuts the chosen middle slice once; a Costs built with lists plans again; and sizing a slice
copies no weight, as measured by the process's peak memory."""

from __future__ import annotations

import dataclasses
import gc
import json
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import rr_edge.api
import rr_server
from rr_edge import cli, local_model, onnx_io, slicing
from rr_edge.api import EdgeNode
from rr_edge.blocks import analyze
from rr_edge.client import Client
from rr_edge.commands import plan as plan_command
from rr_edge.offload import make_plan, make_runner, plan_with_server_cache
from rr_edge.slicing import Slicer
from tests.test_run_setup_review4 import _offloading_costs, _random_costs, _x, record_cuts
from tools.bench_runner import conv_chain


@pytest.fixture
def server(tmp_path) -> Iterator[str]:
    with rr_server.Server(rr_server.ServerConfig(data_dir=tmp_path / "server", listen="127.0.0.1:0")) as s:
        assert s.address is not None
        yield s.address


def _sliced_bytes() -> int:
    """What the slicer's allocations that are still alive hold, its local parts' arrays too (not the in-process
    server's copies of a slice)."""
    gc.collect()
    made_in = [tracemalloc.Filter(True, slicing.__file__), tracemalloc.Filter(True, local_model.__file__)]
    snapshot = tracemalloc.take_snapshot().filter_traces(made_in)
    return sum(stat.size for stat in snapshot.statistics("filename"))


@pytest.fixture
def traced() -> Iterator[None]:
    """Python's allocations traced: a slice's ONNX bytes are a Python bytes object, made in `rr_edge.slicing`."""
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()


def test_a_local_runners_bytes_go_with_it(traced):
    """A local runner's slice is the whole model; the slicer kept its bytes after the runner was closed and dropped,
    for the rest of the run or of an EdgeNode (72 MiB model: RSS +77 MiB; vgg16: 553 MB). The runner itself drops
    them once its session holds them: kept, a split's tail held its weights a second time (vgg16 split 7,15: 504 MB)."""
    model = conv_chain(layers=4, channels=256)  # 9.4 MB of weights
    graph = analyze(model, "chain")
    slicer = Slicer(model, graph)
    n = len(graph.blocks)
    before = _sliced_bytes()
    weights = sum(len(t.raw_data) for t in model.graph.initializer)
    for split in [(n - 1, n - 1), (0, 0)]:  # all local; a head and a tail
        runner = make_runner(slicer, graph, split, None)
        assert _sliced_bytes() - before < weights / 4, split
        runner.close()


def test_plan_to_runner_cuts_the_middle_once_and_the_closed_runner_keeps_nothing(server, monkeypatch, traced):
    """`rr-edge run`'s set-up: the plan asks the server about the chosen middle slice, the runner takes the same
    bytes (cut once); once the runner is closed and dropped, nothing holds them (the report, as run keeps it, does
    not)."""
    model = conv_chain(layers=4, channels=256)
    graph = analyze(model, "chain")
    slicer = Slicer(model, graph)
    with Client(server) as client:
        before = _sliced_bytes()
        cuts = record_cuts(monkeypatch)
        report = plan_with_server_cache(client, model, graph, _offloading_costs(graph), slicer)
        i, j = report.chosen.i, report.chosen.j
        assert i < j
        runner = make_runner(slicer, graph, (i, j), client, report=report)
        middle = len(runner.slices.middle or b"")
        assert middle > model.ByteSize() / 2
        assert cuts.count((i + 1, j)) == 1, cuts
        assert not runner.run(_x(graph)).fallback
        runner.close()
        del runner
        assert _sliced_bytes() - before < middle / 4
        assert report.chosen.i == i  # kept, as run keeps its reports


def test_edge_node_plan_to_runner_cuts_the_middle_once_and_keeps_nothing_after(server, tmp_path, monkeypatch, traced):
    """EdgeNode keeps one Slicer per model file for its life: `plan` then `runner` cuts the chosen middle slice
    once, and the closed and dropped runner's bytes are not kept by the node."""
    model = conv_chain(layers=4, channels=256)
    path = tmp_path / "chain.onnx"
    onnx.save(model, path)
    monkeypatch.setattr(
        rr_edge.api, "gather_costs", lambda client, node, graph, power, wait_s: _offloading_costs(graph)
    )
    with EdgeNode(server, "n") as node:
        graph = node.blocks(path)  # the model loaded before anything is traced
        before = _sliced_bytes()
        cuts = record_cuts(monkeypatch)
        report = node.plan(path)
        i, j = report.chosen.i, report.chosen.j
        assert i < j
        runner = node.runner(path, report)
        middle = len(runner.slices.middle or b"")
        assert cuts.count((i + 1, j)) == 1, cuts
        assert not runner.run(_x(graph)).fallback
        runner.close()
        del runner
        assert _sliced_bytes() - before < middle / 4


def test_a_plan_from_costs_given_as_lists(zoo):
    """Costs' annotations say tuple, but the dataclass takes lists too; the Neurosurgeon fit's cache key made
    make_plan raise TypeError (unhashable type: 'list') on them."""
    _, graph = zoo("resnet18")
    costs = _random_costs(graph, seed=20261214)
    listed = dataclasses.replace(costs, edge=list(costs.edge), cloud=list(costs.cloud))
    a, b = make_plan(graph, listed), make_plan(graph, costs)
    assert a.to_json() == b.to_json()
    assert {k: p.to_dict() for k, p in a.baselines.items()} == {k: p.to_dict() for k, p in b.baselines.items()}


def _peak_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc/self/status")


def _reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM back to the current RSS (Linux 4.0+)
    except OSError as exc:
        pytest.skip(f"cannot reset the peak RSS here: {exc}")


def test_slice_size_copies_no_weight():
    """`slice_size` sizes a slice from weight-less stand-ins: the process's peak memory (protobuf copies weights in
    native memory, which tracemalloc does not see) stays far below the 52 MB weight it sizes. Cutting the slice out
    to read ByteSize() copies the weight: the peak grows by its size."""
    model = conv_chain(layers=1, channels=1200, size=2)  # one 52 MB weight: copied into fresh pages (mmap)
    graph = analyze(model, "chain")
    slicer = Slicer(model, graph)
    weight = model.graph.initializer[0].ByteSize()
    n = len(graph.blocks)
    assert slicer.slice_size(n - 1, n - 1) > 0  # the stand-ins made (small), outside the measure
    _reset_peak()
    start = _peak_kib()
    size = slicer.slice_size(0, n - 1)
    grown = (_peak_kib() - start) * 1024
    assert size > weight
    assert grown < weight / 4, f"peak memory grew by {grown:,} bytes sizing a slice with a {weight:,}-byte weight"


def test_analyze_copies_no_weight():
    """`analyze` sizes each block's slice (`slice_bytes`) from its weights' dims and types: sizing them with
    ByteSize() had serialized each weight, the process's peak memory growing by the largest (vgg16: +287 MiB, 0.62 s
    of its 0.64 s analysis)."""
    model = conv_chain(layers=1, channels=1200, size=2)  # one 52 MB weight
    weight = model.graph.initializer[0].ByteSize()
    _reset_peak()
    start = _peak_kib()
    graph = analyze(model, "chain")
    grown = (_peak_kib() - start) * 1024
    assert sum(b.slice_bytes for b in graph.blocks) > weight
    assert grown < weight / 4, f"peak memory grew by {grown:,} bytes analysing a model with a {weight:,}-byte weight"


def test_rr_edge_run_cuts_the_planned_middle_slice_once(server, tmp_path, monkeypatch, capsys):
    """`rr-edge run`: its plan asks the server about the chosen middle slice, its first runner takes those bytes
    (the slicer keeps them in between), not cut again."""
    model = conv_chain(layers=4, channels=64)
    path = tmp_path / "chain.onnx"
    onnx.save(model, path)
    graph = analyze(model, "chain")
    np.save(tmp_path / "x.npy", _x(graph))
    monkeypatch.setattr(
        plan_command, "gather_costs", lambda client, node, graph, power, wait_s: _offloading_costs(graph)
    )
    cuts = record_cuts(monkeypatch)
    argv = ["run", str(path), "--server", server, "--node", "n", "--input", str(tmp_path / "x.npy"), "--json"]
    assert cli.main(argv) == 0
    ran = json.loads(capsys.readouterr().out)
    (i, j), *_ = ran["splits_used"]
    assert i < j and not ran["fallback"]
    assert cuts.count((i + 1, j)) == 1, cuts


def _tensors() -> list[onnx.TensorProto]:
    tensors = [
        numpy_helper.from_array(np.ones(shape, dtype), f"w{k}")
        for k, (shape, dtype) in enumerate(
            [((3, 4), np.float32), ((0,), np.int64), ((), np.float16), ((5, 7, 2), np.complex64), ((300,), np.bool_)]
        )
    ]
    full = numpy_helper.from_array(np.ones((200, 300), np.float32), "every_field")  # a two-byte length prefix
    full.doc_string, full.segment.begin, full.segment.end = "doc", 1, 3
    full.external_data.add(key="k", value="v")
    full.metadata_props.add(key="m", value="n")
    typed = helper.make_tensor("typed", onnx.TensorProto.FLOAT, [3], [1.0, 2.0, 3.0])  # float_data, no raw_data
    int4 = helper.make_tensor("int4", onnx.TensorProto.INT4, [3], [1, 2, 3], raw=False)  # under a byte an element
    return [*tensors, full, typed, int4]


@pytest.mark.parametrize("tensor", _tensors(), ids=lambda t: t.name)
def test_a_weights_size_without_its_data_is_its_byte_size(tensor):
    """`slice_size` counts a weight's raw data from its dims and type (upb's ByteSize serializes the tensor): every
    other field counted as ByteSize counts it, and the tensors it cannot count so are serialized."""
    assert onnx_io.tensor_size(tensor) == tensor.ByteSize()
