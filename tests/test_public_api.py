"""The public surfaces: every name in __all__ resolves, and the edge API works sync and async on a tiny model."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import rr_edge
import rr_server
from rr_edge import api


@pytest.mark.parametrize("package", [rr_edge, rr_server])
def test_all_names_resolve(package):
    assert package.__all__ == sorted(package.__all__) or package is rr_server
    for name in package.__all__:
        assert getattr(package, name) is not None, name


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        rr_edge.nope  # noqa: B018


@pytest.fixture(scope="module")
def tiny_server(tmp_path_factory):
    from tests._server_support import conv_model

    base = tmp_path_factory.mktemp("api")
    path = base / "tiny.onnx"
    path.write_bytes(conv_model())
    with rr_server.Server(rr_server.ServerConfig(data_dir=base / "data", listen="127.0.0.1:0")) as server:
        yield server.address, path


def test_sync_and_async_runner_match_local(tiny_server):
    address, path = tiny_server
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    with rr_edge.connect(address, "api-edge") as node:
        n = len(node.blocks(path).blocks)
        with node.runner(path, (-1, n - 1)) as run:  # everything on the server
            remote = run.run(x)
        with node.runner(path, (n - 1, n - 1)) as run:  # everything local
            local = run(x)
    assert remote.fallback is False and remote.remote_ms > 0
    np.testing.assert_allclose(next(iter(remote.outputs.values())), next(iter(local.values())), rtol=1e-5, atol=1e-6)

    async def main() -> dict:
        async with rr_edge.connect_async(address, "api-edge") as node:
            assert len((await node.blocks(path)).blocks) == n
            async with await node.runner(path, (-1, n - 1)) as runner:
                result = await runner.run(x)
                assert not result.fallback and not runner.replan_needed  # no network models: nothing to drift
            return result.outputs

    out = asyncio.run(main())
    np.testing.assert_allclose(next(iter(out.values())), next(iter(local.values())), rtol=1e-5, atol=1e-6)


def test_plan_without_network_profile_says_what_to_do(tiny_server):
    address, path = tiny_server
    with rr_edge.connect(address, "never-profiled") as node, pytest.raises(rr_edge.RoadRunnerError, match="netprofile"):
        node.plan(Path(path), wait_s=0)


def test_a_node_shared_by_threads_makes_its_meter_and_loads_a_model_once(tiny_server, monkeypatch):
    """AsyncEdgeNode invites concurrent calls: two meters were made (one never closed) and a model loaded per call."""
    address, path = tiny_server
    made, loaded = [], []
    real_select, real_load = api.select_meter, api.load_model

    def slow_select(*args, **kwargs):  # type: ignore[no-untyped-def]
        time.sleep(0.1)  # a meter's probe takes a while: the window two callers met in
        made.append(real_select(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(api, "select_meter", slow_select)

    def slow_load(p):  # type: ignore[no-untyped-def]
        time.sleep(0.1)
        loaded.append(p)
        return real_load(p)

    monkeypatch.setattr(api, "load_model", slow_load)
    with rr_edge.connect(address, "api-threads", energy="model") as node:
        with ThreadPoolExecutor(4) as pool:
            meters = set(pool.map(lambda _: id(node.meter), range(4)))
            graphs = set(pool.map(lambda _: id(node.blocks(path)), range(4)))
    assert len(made) == 1 and len(meters) == 1 and len(loaded) == 1 and len(graphs) == 1


def test_a_closed_node_and_bad_arguments_raise_the_packages_errors(tiny_server):
    address, path = tiny_server
    node = rr_edge.connect(address, "api-closed")
    with pytest.raises(TypeError, match="a split \\(i, j\\) of two ints"):
        node.runner(path, "2,9")  # type: ignore[arg-type]
    last = np.int64(len(node.blocks(path).blocks) - 1)
    with node.runner(path, (last, last)) as run:  # numpy's ints are ints
        assert run.slices.split == (last, last)
    node.close()
    with pytest.raises(rr_edge.ServerUnavailable, match="closed"):
        node.runner(path, (-1, int(last)))  # it would have run everything locally, for good
    node.close()  # twice is fine
    with pytest.raises(rr_edge.ServerUnavailable, match="this client is closed"):
        node.plan(path, wait_s=0)  # gRPC's own error was a bare ValueError ("Cannot invoke RPC on closed channel!")


def _gather_model() -> bytes:
    """ids[1,5] int64 -> Gather over a 10-row table -> y: an id past the table is a bad value, not a bad shape."""
    from onnx import TensorProto, helper, numpy_helper

    table = numpy_helper.from_array(np.arange(40, dtype=np.float32).reshape(10, 4), "table")
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 5])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5, 4])
    graph = helper.make_graph([helper.make_node("Gather", ["table", "ids"], ["y"])], "gather", [ids], [y], [table])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def test_bad_values_and_bad_arguments_are_the_packages_errors(tiny_server, tmp_path):
    """ONNX Runtime's own InvalidArgument reached the app for an id past a Gather's table (not a RoadRunnerError,
    not even a ValueError); invalid settings were bare ValueErrors, and RunnerConfig(timeout_s=0) was taken: every
    request then timed out and the server was taken for down."""
    address, _ = tiny_server
    path = tmp_path / "gather.onnx"
    path.write_bytes(_gather_model())
    with rr_edge.connect(address, "api-values") as node:
        with node.runner(path, (0, 0)) as run:  # everything local
            with pytest.raises(rr_edge.InputError, match="refused this request's values"):
                run.run(np.full((1, 5), 99, np.int64))
            assert run.run(np.arange(5, dtype=np.int64)[None]).outputs["y"].shape == (1, 5, 4)
        for bad in (lambda: node.plan(path, objective="bogus", wait_s=0), lambda: node.profile(path, sample=0),
                    lambda: node.netprofile(max_mb=0), lambda: node.runner(path, (5, 2)),
                    lambda: node.plan(path, wait_s=float("nan")), lambda: node.plan(path, wait_s=-1)):  # fmt: skip
            with pytest.raises(rr_edge.ArgumentError):
                bad()
    for bad_config in ({"timeout_s": 0}, {"retry_interval_s": -1}, {"timeout_s": float("nan")}):
        with pytest.raises(rr_edge.ArgumentError, match="RunnerConfig"):
            rr_edge.RunnerConfig(**bad_config)


def test_a_model_file_replaced_on_disk_is_loaded_again(tiny_server, tmp_path):
    """A node kept the first version of a file for good: a new model at the same path ran as the old one."""
    address, _ = tiny_server
    path = tmp_path / "m.onnx"
    path.write_bytes(_gather_model())
    with rr_edge.connect(address, "api-stale") as node:
        assert node.blocks(path).inputs[0].name == "ids"
        from tests._server_support import conv_model

        path.write_bytes(conv_model())
        assert node.blocks(path).inputs[0].name == "x"


def test_replan_counts_drift_from_the_new_plan_and_switch_gives_its_runner(tiny_server):
    """The documented loop re-planned on every request: replan never marked the runner planned, and no call made
    the runner of a new split."""
    import dataclasses

    from rr_edge.netmodel import NetworkModel
    from rr_edge.profiles import DirectionProfile, NetworkProfile
    from tests._server_support import conv_model

    address, path = tiny_server
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    fast = DirectionProfile((), "affine", 0.0, 0.0, NetworkModel.affine(0.001, 1e9).to_dict())  # far above loopback
    with rr_edge.connect(address, "api-replan") as node:
        node.profile(path, sample=1.0, seed=0)
        node.client.report_network_profile("api-replan", NetworkProfile(fast, fast, "model", time.time()))
        report = node.plan(path, wait_s=30)
        n = report.blocks
        report = dataclasses.replace(report, chosen=report.table.plan(-1, n - 1))  # everything on the server
        run = node.runner(path, report)
        assert "costs=" not in repr(report) and "chosen=Plan(" in repr(report)  # 14,000 characters (walkthrough)
        for _ in range(20):
            result = run.run(x)
            assert "outputs" not in repr(result) and "total_ms=" in repr(result)  # 20,000 with a classifier's logits
            if run.replan_needed:
                break
        assert run.replan_needed, "loopback never drifted from a 1 GB/ms link"
        report = node.replan(path, report, run)
        assert not run.replan_needed  # drift counts from the new plan
        same = dataclasses.replace(report, chosen=report.table.plan(-1, n - 1))
        assert node.switch(path, run, same) is run
        local = dataclasses.replace(report, chosen=report.table.plan(n - 1, n - 1))
        other = node.switch(path, run, local)
        assert other is not run and other.slices.split == (n - 1, n - 1)
        assert not other.run(x).fallback
        other.close()
        # a plan of another model: refused, not run at its split nor re-planned with a cost model error (review)
        bigger = path.parent / "bigger.onnx"
        bigger.write_bytes(conv_model(channels=16, out_channels=16, seed=1))
        with pytest.raises(rr_edge.ArgumentError, match="another model than bigger .1 blocks too, unlike its own fr"):
            node.runner(bigger, report)  # it said "another model (1 blocks), not bigger (1 blocks)" (walkthrough)
        with node.runner(bigger, (0, 0)) as its_runner, pytest.raises(rr_edge.ArgumentError, match="another model"):
            node.replan(bigger, report, its_runner)


def test_arguments_of_the_wrong_type_are_named_before_any_work(tiny_server):
    """Each raised an AttributeError from deep inside (`'tuple' object has no attribute 'costs'`, `'dict' object has
    no attribute 'tls'`), and a node id with a space was refused only by the server, read as "no network profile"
    (walkthrough)."""
    address, _ = tiny_server
    with pytest.raises(TypeError, match="server is a str, not tuple"):
        rr_edge.connect(tiny_server, node="n")
    for kw, said in (
        ({"options": {"timeout_s": 5}}, r"options is a ClientOptions, not dict \(ClientOptions\(\*\*options\)\?\)"),
        ({"settings": {"provider": "cpu"}}, "settings is an OrtSettings, not dict"),
        ({"power": 5.0}, "power is a PowerSpec, not float"),
    ):
        with pytest.raises(TypeError, match=said):
            rr_edge.connect(address, node="n", **kw)
    for node, said in (("has space", "must be .*, no spaces"), ("", "is empty")):
        with pytest.raises(rr_edge.ArgumentError, match=f"node: a node id {said}"):
            rr_edge.connect(address, node=node)
    with pytest.raises(TypeError, match="node is a str, not int"):
        rr_edge.connect(address, node=5)  # type: ignore[arg-type]
    with pytest.raises(rr_edge.MeterError, match="unknown energy meter 'bogus'"):
        rr_edge.connect(address, node="n", energy="bogus")
    with rr_edge.connect(address, node="n") as node:
        with pytest.raises(TypeError, match="report is a PlanReport, not tuple"):
            node.replan("m.onnx", (2, 8), None)  # type: ignore[arg-type]
        with pytest.raises(
            TypeError, match="runner is a Runner, not AsyncRunner .an AsyncRunner goes to AsyncEdgeNode"
        ):
            node.switch("m.onnx", api.AsyncRunner(None), None)  # type: ignore[arg-type]

    async def async_switch() -> None:
        async with rr_edge.connect_async(address, node="n") as anode:
            await anode.switch("m.onnx", object(), None)  # type: ignore[arg-type]

    with pytest.raises(TypeError, match="runner is an AsyncRunner, not object"):
        asyncio.run(async_switch())


def test_closing_a_node_closes_its_runners_and_they_stop_probing(tiny_server, monkeypatch):
    """A runner still open when its node closed kept its stream's threads and probed the closed client every
    retry interval. Closing the node closes its runners; one used after finishes locally, saying why, probing
    nothing."""
    address, path = tiny_server
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    node = rr_edge.connect(address, "api-close-runners")
    n = len(node.blocks(path).blocks)
    closed: list[object] = []
    for name in ("close", "close_if_idle"):  # the node closes a runner idle at once, a busy one after the connection
        real = getattr(rr_edge.Runner, name)
        monkeypatch.setattr(rr_edge.Runner, name, lambda self, real=real: closed.append(self) or real(self))
    # a probe wait of a nanosecond: any request after the first would start a probe, were it to probe at all
    offloading = node.runner(path, (-1, n - 1), rr_edge.RunnerConfig(retry_interval_s=1e-9))
    assert not offloading.run(x).fallback
    node.close()
    assert closed == [offloading]
    probes: list[object] = []
    monkeypatch.setattr(offloading, "_probe", lambda: probes.append(1))
    for _ in range(3):
        result = offloading.run(x)
        assert result.fallback and "closed" in result.error
    for thread in threading.enumerate():  # a probe runs in a thread of its own: the ones started have run
        if thread.name == "rr-probe":
            thread.join(30)
    assert probes == []


def test_wrong_arguments_are_type_errors_and_a_closed_node_makes_no_meter(tiny_server):
    """switch with a split and runner with a dict of settings were AttributeErrors from deep inside; a closed node
    asked to profile made a new energy meter (a Jetson sampler, an NVML handle) that nothing closed (found by
    review)."""
    address, path = tiny_server
    node = rr_edge.connect(address, "api-args", energy="model")
    run = node.runner(path, (0, 0))
    with pytest.raises(TypeError, match="switch takes the PlanReport"):
        node.switch(path, run, (0, 0))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="config is a RunnerConfig, not dict"):
        node.runner(path, (0, 0), {"timeout_s": 1})  # type: ignore[arg-type]
    node.close()
    with pytest.raises(rr_edge.ServerUnavailable):
        node.profile(path)
    assert node._meter is None
