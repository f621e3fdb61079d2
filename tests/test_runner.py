"""Runner against an in-process server: stream and unary agree, local plans need no server, drift asks to re-plan."""

from __future__ import annotations

import contextlib
import dataclasses
import re
import time
import urllib.request

import numpy as np
import pytest

import rr_server
from rr_edge.blocks import analyze
from rr_edge.client import Client, ClientOptions, slice_id_of
from rr_edge.errors import InputError, ServerBusy, ServerError, ServerUnavailable
from rr_edge.measure import measure_splits
from rr_edge.meters.model import PowerSpec
from rr_edge.netmodel import NetworkModel
from rr_edge.offload import make_runner, plan_slices
from rr_edge.runner import Runner, RunnerConfig, RunResult, modelled_mJ
from rr_edge.slicing import Slicer, whole_model_bytes
from tools.bench_runner import conv_chain


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    with rr_server.Server(rr_server.ServerConfig(data_dir=tmp_path_factory.mktemp("rt"), listen="127.0.0.1:0")) as s:
        assert s.address is not None
        with Client(s.address) as c:
            yield c


def _x(graph) -> np.ndarray:
    return np.random.default_rng(0).standard_normal(graph.inputs[0].shape).astype(np.float32)


def test_chain_has_one_block_per_conv(chain):
    _, graph, _ = chain
    assert len(graph.blocks) == 4


@pytest.mark.parametrize("split", [(-1, 3), (0, 2), (1, 1), (2, 3)])
def test_stream_and_unary_runs_equal_the_local_model(chain, client, split):
    model, graph, slicer = chain
    x = _x(graph)
    local = make_runner(slicer, graph, (3, 3), None)(x)
    for stream in (True, False):
        with make_runner(slicer, graph, split, client, config=RunnerConfig(stream=stream)) as runner:
            for _ in range(3):
                result = runner.run(x)
                assert result.fallback is False
                assert (result.remote_ms > 0) == (split[0] != split[1])
                if split[0] != split[1]:  # the server says how long it ran the slice, the rest was the network's
                    assert result.server_ms is not None and 0 < result.server_ms < result.remote_ms
                np.testing.assert_allclose(result.outputs["y3"], local["y3"], rtol=1e-5, atol=1e-6)


def test_inputs_that_do_not_fit_the_model_are_refused_before_any_work(chain, client):
    """A wrong array went to the server (a wasted round trip) and came back as ONNX Runtime's own error; a wrong
    name was a KeyError, a list a ValueError from dict()."""
    model, graph, slicer = chain
    x = _x(graph)
    name = graph.inputs[0].name
    with make_runner(slicer, graph, (-1, 3), client) as runner:
        for bad, fragment in (
            (x.astype(np.float64), f"got float64 {list(x.shape)} (x.astype(np.float32) converts it)"),
            (x.astype(">f4"), "got >f4"),  # big-endian: converted the same way
            (x[:, :1], f"got float32 {list(x[:, :1].shape)};"),  # another shape: no conversion said
            (x[0], "got float32"),
            ({"other": x}, f"input {name!r}: got nothing"),
            ({name: x.tolist()}, "got a list"),
            ([x], "not list"),
        ):
            with pytest.raises(InputError, match=re.escape(fragment)) as err:
                runner.run(bad)
            assert f"the model takes {name!r} float32 {list(x.shape)}" in str(err.value) or bad.__class__ is list
        with pytest.raises(InputError, match="unknown input\\(s\\) 'unused'"):  # a misspelt name, say (walkthrough)
            runner.run({name: x, "unused": x})
        result = runner.run({name: x})
        assert result.fallback is False and not runner.server_down
    assert issubclass(InputError, ValueError)


def test_a_model_input_no_node_reads_is_taken_at_every_split(client):
    """`rr-edge run` asks for an array per model input, also for one no node reads; the runner of a split whose first
    part is a slice (which does not take it) refused it as unknown (review)."""
    from onnx import TensorProto, helper

    model = conv_chain(layers=3)
    model.graph.input.append(helper.make_tensor_value_info("u", TensorProto.FLOAT, [1]))
    graph = analyze(model, "unused")
    feed = {"x": np.ones(graph.inputs[0].shape, np.float32), "u": np.ones([1], np.float32)}
    last = len(graph.blocks) - 1
    expected = make_runner(Slicer(model, graph), graph, (last, last), None)(feed)
    for split in [(-1, 0), (0, 1), (0, last), (-1, last)]:
        with make_runner(Slicer(model, graph), graph, split, client) as runner:
            result = runner.run(feed)
            with pytest.raises(InputError, match="unknown input\\(s\\) 'v'"):
                runner.run({**feed, "v": feed["u"]})
        assert not result.fallback, split
        np.testing.assert_allclose(result.outputs["y2"], expected["y2"], rtol=1e-5, atol=1e-6)


def test_a_runner_has_its_middle_slice_open_on_the_server_before_the_first_request(chain, tmp_path):
    """Upload and load are one-time costs the runner pays when it starts (its `upload_ms`), not the first request."""
    _, graph, slicer = chain
    with (
        rr_server.Server(rr_server.ServerConfig(data_dir=tmp_path, listen="127.0.0.1:0")) as s,
        Client(str(s.address)) as c,
    ):
        runner = make_runner(slicer, graph, (0, 2), c)
        assert runner.slices.middle is not None and runner.upload_ms > 0 and not runner.server_down
        status = c.slice_status(slice_id_of(runner.slices.middle))
        assert status.cached and status.loaded
        assert not runner.run(_x(graph)).fallback


def test_a_server_that_refuses_the_slice_fails_the_runner_at_start_and_only_then(chain, tmp_path):
    """Refused when the runner starts (here: over the server's size cap; the same for a slice its ONNX Runtime
    cannot open), the plan cannot work with this server: a clear error. Refused later, when the runner has to upload
    again (a server restarted on a fresh data dir and a smaller cap), the request completes locally."""
    _, graph, slicer = chain
    x = _x(graph)
    small = dict(listen="127.0.0.1:0", max_slice_bytes=1024)
    with rr_server.Server(rr_server.ServerConfig(data_dir=tmp_path / "a", **small)) as s, Client(str(s.address)) as c:
        with pytest.raises(ServerError, match="exceeds the server's limit") as err:
            make_runner(slicer, graph, (0, 2), c)
        assert err.value.code == "RESOURCE_EXHAUSTED"
    with rr_server.Server(rr_server.ServerConfig(data_dir=tmp_path / "b", listen="127.0.0.1:0")) as s:
        address = str(s.address)
        with Client(address) as c:
            runner = make_runner(slicer, graph, (0, 2), c, config=RunnerConfig(stream=False, retry_interval_s=60))
            assert not runner.run(x).fallback
            s.stop()
            config = rr_server.ServerConfig(data_dir=tmp_path / "c", listen=address, max_slice_bytes=1024)
            with rr_server.Server(config):
                result = runner.run(x)  # NOT_FOUND on the new server, whose cap then refuses the upload
    assert result.fallback and runner.server_down and "not cached on this server" in result.error
    np.testing.assert_allclose(result.outputs["y3"], make_runner(slicer, graph, (3, 3), None)(x)["y3"], rtol=1e-5)


def test_a_plan_that_offloads_needs_a_server(chain):
    _, graph, slicer = chain
    with pytest.raises(ValueError, match="needs a remote executor"):
        Runner(plan_slices(slicer, len(graph.blocks), 0, 2))


def test_a_runner_whose_client_was_closed_finishes_its_requests_locally(chain, tmp_path, monkeypatch):
    """gRPC's error for a closed channel is a bare ValueError: it came out of Runner.run, and out of the runner's
    health probe thread on every retry interval."""
    _, graph, slicer = chain
    x = _x(graph)
    crashed: list[BaseException] = []
    monkeypatch.setattr("threading.excepthook", lambda args: crashed.append(args.exc_value))
    with rr_server.Server(rr_server.ServerConfig(data_dir=tmp_path, listen="127.0.0.1:0")) as s:
        client = Client(s.address)
        with make_runner(slicer, graph, (0, 2), client, config=RunnerConfig(retry_interval_s=0.05)) as runner:
            assert runner.run(x).fallback is False
            client.close()
            for _ in range(5):
                result = runner.run(x)
                assert result.fallback is True and "closed" in result.error  # each says why, not the first only
                time.sleep(0.06)  # past the retry interval: the runner probes the server again
        with pytest.raises(ServerUnavailable, match="this client is closed"):
            client.server_info()
        assert client.healthy() is False
    assert crashed == []


def test_unreachable_server_at_start_runs_locally(chain):
    _, graph, slicer = chain
    x = _x(graph)
    with Client("127.0.0.1:1") as dead:
        runner = make_runner(slicer, graph, (0, 2), dead, config=RunnerConfig(timeout_s=2, retry_interval_s=60))
        result = runner.run(x)
    assert result.fallback and runner.server_down
    np.testing.assert_allclose(result.outputs["y3"], make_runner(slicer, graph, (3, 3), None)(x)["y3"], rtol=1e-5)


@pytest.mark.parametrize("stream", [True, False])
def test_an_error_status_from_the_server_finishes_the_request_locally(tmp_path, stream):
    """Not only an unreachable server: a refusal (here RESOURCE_EXHAUSTED, the middle's 512 KiB input being over
    the server's message limit) completes the request locally, and the runner stays local until it recovers."""
    model = conv_chain(layers=3, size=128)
    graph = analyze(model, "big")
    slicer = Slicer(model, graph)
    x = _x(graph)
    config = rr_server.ServerConfig(data_dir=tmp_path, listen="127.0.0.1:0", max_message_bytes=4096)
    with rr_server.Server(config) as s, Client(str(s.address), ClientOptions(chunk_bytes=1024)) as small:
        runner = make_runner(slicer, graph, (0, 1), small, config=RunnerConfig(stream=stream, retry_interval_s=60))
        with runner:
            first, second = runner.run(x), runner.run(x)
    assert first.fallback and "RESOURCE_EXHAUSTED" in first.error and runner.server_down
    assert second.fallback and second.error.startswith("server down")  # not asked again, until the retry interval
    np.testing.assert_allclose(first.outputs["y2"], make_runner(slicer, graph, (2, 2), None)(x)["y2"], rtol=1e-5)


def test_closing_a_runner_ends_its_stream_cleanly(chain, tmp_path):
    """Closing half-closes the ModelStreamInfer stream: the server counts it OK, not CANCELLED."""
    _, graph, slicer = chain
    config = rr_server.ServerConfig(data_dir=tmp_path, listen="127.0.0.1:0", metrics_port=0)
    with rr_server.Server(config) as s, Client(str(s.address)) as c:
        with make_runner(slicer, graph, (0, 2), c, config=RunnerConfig(stream=True)) as runner:
            assert not runner.run(_x(graph)).fallback
        text = urllib.request.urlopen(f"http://127.0.0.1:{s.metrics_port}/metrics", timeout=5).read().decode()
    assert 'rr_requests_total{code="OK",method="ModelStreamInfer"} 1.0' in text
    assert 'code="CANCELLED",method="ModelStreamInfer"' not in text


def test_around_local_wraps_local_onnx_runtime_runs_only(chain, client):
    """The hook (a meter of local compute, the testbed's CPU throttle) sees head and tail, never the remote call;
    with the server gone, the fallback middle runs locally inside it too."""
    _, graph, slicer = chain
    x = _x(graph)
    events: list[str] = []

    @contextlib.contextmanager
    def around():
        events.append("enter")
        yield
        events.append("exit")

    with make_runner(slicer, graph, (0, 2), client, around_local=around) as runner:
        result = runner.run(x)
    assert not result.fallback and result.remote_ms > 0
    assert events == ["enter", "exit"] * 2  # head, tail
    events.clear()
    with Client("127.0.0.1:1") as dead:
        config = RunnerConfig(timeout_s=2, retry_interval_s=60)
        assert make_runner(slicer, graph, (0, 2), dead, config=config, around_local=around).run(x).fallback
    assert events == ["enter", "exit"] * 3  # head, middle (fallback), tail


def test_network_drift_asks_for_a_replan(chain, client):
    _, graph, slicer = chain
    x = _x(graph)
    optimistic = NetworkModel.affine(rtt_ms=1e-4, bandwidth_bytes_per_ms=1e9)  # predicts ~0 ms: reality drifts
    slices = plan_slices(slicer, len(graph.blocks), 0, 2)
    with Runner(slices, client, uplink=optimistic, downlink=optimistic) as runner:
        assert not runner.replan_needed
        for _ in range(5):
            runner.run(x)
        assert runner.replan_needed
    honest = NetworkModel.affine(rtt_ms=1e6, bandwidth_bytes_per_ms=1e9)  # predicts far slower than reality
    with Runner(slices, client, uplink=honest, downlink=honest, config=RunnerConfig(drift_threshold=0.25)) as runner:
        runner.run(x)
        # a stream's first round trip holds its set-up, 2-3x a steady one: not learnt (a plan's first request on
        # loopback had asked for a re-plan, walkthrough)
        assert runner.drift_factor == 1.0
        runner.run(x)
        assert not runner.replan_needed  # one observation moves the EW estimate by alpha = 0.2 only
        drift = runner.drift_factor
        runner.close()  # the next request opens a new stream: its first answer is not learnt either
        runner.run(x)
        assert runner.drift_factor == drift
        runner.run(x)
        assert runner.replan_needed  # drift works both ways


@pytest.mark.parametrize(("server_ms", "replan"), [(9.7, False), (0.7, True)])
def test_a_drift_asks_for_a_replan_only_when_it_matters_to_the_round_trip(server_ms: float, replan: bool) -> None:
    """Transfers of 0.3 ms predicted at 0.1: a 200% drift, which is 2% of a 10 ms round trip and 20% of a 1 ms one.
    On loopback such sub-millisecond noise re-planned a 50-request run 7 to 10 times (found by review)."""
    from rr_edge.runner import _Link

    model = NetworkModel.affine(rtt_ms=0.05, bandwidth_bytes_per_ms=1e9)  # each direction: 0.05 ms
    link = _Link(model, model)
    for _ in range(20):
        trip = server_ms + 0.3
        link.update(RunResult({}, False, trip, remote_ms=trip, server_ms=server_ms, bytes_up=64, bytes_down=64))
    assert link.uplink is not None and link.uplink.drift > 2.5  # the network is 3x its model
    assert link.drifted(0.25) is replan
    link.rebase()
    assert not link.drifted(0.25)


def test_a_new_streams_first_answer_after_a_wait_ran_out_is_learnt() -> None:
    """A wait that ran out drops the stream, so the next answer comes on a new one: not learnt either, it reset the
    backoff, and a link slowed to between one wait and two was never learnt nor re-planned (review)."""
    from rr_edge.runner import _Link

    model = NetworkModel.affine(rtt_ms=1.0, bandwidth_bytes_per_ms=1e9)
    link = _Link(model, model)
    slow = RunResult({}, False, 50.0, remote_ms=50.0, server_ms=0.0, bytes_up=64, bytes_down=64)
    link.update(slow, learn=False)  # a first answer, nothing amiss: not learnt
    assert link.uplink is not None and link.uplink.drift == 1.0
    link.missed(64, 10.0)
    link.update(slow, learn=False)  # after a missed wait: learnt
    assert link.uplink.drift > 1.0 and link.backoff == 1.0


def test_a_round_trip_as_predicted_moves_no_drift_on_a_link_with_a_long_round_trip() -> None:
    """Each curve holds the link's 40 ms round trip, and a request with its answer makes one: a round trip of
    40 + 1 + 1 ms is what the plan predicted, so neither curve drifts. Charged 2 round trips, it had pulled both
    drifts toward 0.5 and asked for a re-plan (found by review)."""
    from rr_edge.runner import _Link

    model = NetworkModel.affine(rtt_ms=40.0, bandwidth_bytes_per_ms=1000.0)
    link = _Link(model, model)
    for _ in range(20):
        trip = 5.0 + 42.0
        link.update(RunResult({}, False, trip, remote_ms=trip, server_ms=5.0, bytes_up=1000, bytes_down=1000))
    assert link.uplink is not None and link.downlink is not None
    assert link.uplink.drift == pytest.approx(1.0) and link.downlink.drift == pytest.approx(1.0)
    assert not link.drifted(0.25)
    for _ in range(20):  # the link's round trip doubles: both curves learn it
        trip = 5.0 + 84.0
        link.update(RunResult({}, False, trip, remote_ms=trip, server_ms=5.0, bytes_up=1000, bytes_down=1000))
    assert link.uplink.drift == pytest.approx(2.0, rel=0.02) and link.drifted(0.25)


def test_network_drift_is_told_from_the_servers_own_run_time(chain, client):
    """The server reports its run time with each answer, so the network's share of a round trip is measured, not
    guessed from the plan's cloud prediction: a prediction of 1000 s for the slice no longer hides that the network
    is slower than its model."""
    _, graph, slicer = chain
    x = _x(graph)
    optimistic = NetworkModel.affine(rtt_ms=1e-4, bandwidth_bytes_per_ms=1e9)
    slices = plan_slices(slicer, len(graph.blocks), 0, 2)
    with Runner(slices, client, uplink=optimistic, downlink=optimistic, expected_cloud_ms=1e6) as runner:
        for _ in range(5):
            runner.run(x)
        assert runner.replan_needed and runner.link.uplink is not None
        assert runner.link.uplink.drift > 1.25  # slower than its model, as it is (not "0 ms, faster")


def test_replan_uses_the_measured_network_and_counts_the_running_slice_as_cached(chain, client):
    from rr_edge.client import Prediction
    from rr_edge.meters.model import DEFAULT_POWER
    from rr_edge.offload import Costs, make_plan, replan

    _, graph, slicer = chain
    x = _x(graph)

    def preds(ms: float) -> tuple[Prediction, ...]:
        return tuple(Prediction(b.signature, ms, ms * 10, "measured", "measured", "model") for b in graph.blocks)

    optimistic = NetworkModel.affine(rtt_ms=1e-4, bandwidth_bytes_per_ms=1e9)
    costs = Costs(preds(10.0), preds(0.1), 1.0, optimistic, optimistic, DEFAULT_POWER)
    report = make_plan(graph, costs, objective="latency", amortize_over=100)
    assert (report.chosen.i, report.chosen.j) == (-1, 3)  # slow edge, fast cloud, free network: offload all
    with make_runner(slicer, graph, (-1, 3), client, report=report) as runner:
        for _ in range(5):
            runner.run(x)
        assert runner.replan_needed
        again = replan(report, graph, runner)
    assert again.costs.uplink.drift > 1.25 and again.options["objective"] == "latency"
    assert again.inputs.amortize_over == 100  # as planned, unless told the requests left:
    assert replan(report, graph, runner, amortize_over=7).inputs.amortize_over == 7
    assert (0, 3) in again.inputs.cached_slices
    assert again.chosen.upload_bytes == 0  # the running slice is on the server already


def test_measure_splits_records_each_middle_slice_upload(chain, client, monkeypatch):
    """The one-time cost of dynamic offloading that the demo charges a plan: the runner's whole `ensure_slice` call
    (status check, upload and the server's opening of the slice), none for a plan that offloads nothing."""
    _, graph, slicer = chain
    spent: list[float] = []
    ensure = client.ensure_slice

    def timed(*args, **kwargs) -> str:
        start = time.perf_counter()
        try:
            return ensure(*args, **kwargs)
        finally:
            spent.append(1e3 * (time.perf_counter() - start))

    monkeypatch.setattr(client, "ensure_slice", timed)
    measured = measure_splits(lambda s: make_runner(slicer, graph, s, client), [(0, 1), (3, 3)], _x(graph), 2)
    assert len(spent) == 1
    assert measured[(0, 1)].upload_ms >= spent[0] > 0
    assert measured[(3, 3)].upload_ms == 0


def test_measure_splits_runs_each_round_in_a_new_order(chain, client):
    """In a fixed order a split always followed the same one, whose after-effects then counted against it alone."""
    _, graph, slicer = chain
    order: list[tuple[int, int]] = []

    def runner_for(split: tuple[int, int]) -> Runner:
        runner = make_runner(slicer, graph, split, client)
        run = runner.run
        runner.run = lambda x: (order.append(split), run(x))[1]  # type: ignore[method-assign]
        return runner

    splits = [(0, 1), (0, 3), (1, 2), (3, 3)]
    measured = measure_splits(runner_for, splits, _x(graph), 6)
    rounds = [order[k : k + 4] for k in range(4, len(order), 4)]  # after one warm-up each, in the given order
    assert order[:4] == splits and len(rounds) == 6
    assert all(sorted(r) == splits for r in rounds)  # every split once per round
    assert len({tuple(r) for r in rounds}) > 1
    assert set(measured) == set(splits)


def test_a_power_model_charges_a_request_as_the_planner_predicts_it():
    """Local compute at active power, the server's reported run at idle, the rest of the round trip at tx / rx
    (shared by the link models, here by bytes): the measured side of the energy the planner predicts."""
    power = PowerSpec(active_w=10.0, idle_w=1.0, net_tx_w=2.0, net_rx_w=1.0)
    result = RunResult({}, False, total_ms=30.0, remote_ms=20.0, server_ms=5.0, bytes_up=3000, bytes_down=1000)
    # 10 W x 10 ms + 1 W x 5 ms + (1 + 2) W x 15 ms x 3/4 + (1 + 1) W x 15 ms x 1/4
    assert modelled_mJ(result, power, None, None) == pytest.approx(100.0 + 5.0 + 33.75 + 7.5)
    slow_up = NetworkModel.affine(rtt_ms=0.0, bandwidth_bytes_per_ms=1.0)  # uplink 3000 ms vs downlink 1 ms
    fast_down = NetworkModel.affine(rtt_ms=0.0, bandwidth_bytes_per_ms=1000.0)
    assert modelled_mJ(result, power, slow_up, fast_down) == pytest.approx(
        105.0 + 3.0 * 15.0 * 3000 / 3001 + 2.0 * 15.0 / 3001
    )
    unknown = RunResult({}, False, total_ms=30.0, remote_ms=20.0)  # a server that does not say: all of it waiting
    assert modelled_mJ(unknown, power, None, None) == pytest.approx(100.0 + 20.0)
    # ... unless the plan's cloud time is given: the rest is the network's, as the planner charged it
    unsaid = dataclasses.replace(result, server_ms=None)
    assert modelled_mJ(unsaid, power, None, None, expected_server_ms=5.0) == modelled_mJ(result, power, None, None)
    assert unknown.remote_parts(expected_server_ms=50.0) == (20.0, 0.0)  # never more than the round trip


def test_a_request_the_server_did_not_answer_is_charged_its_upload_at_tx_and_the_rest_of_its_wait_at_idle():
    """A 500 ms timeout after a 10 ms upload: 10 ms at tx power and 490 ms at idle (the whole wait had been charged
    at tx power as network time, found by review), then the local run at active power."""
    power = PowerSpec(active_w=10.0, idle_w=1.0, net_tx_w=2.0, net_rx_w=1.0)
    uplink = NetworkModel.affine(rtt_ms=0.0, bandwidth_bytes_per_ms=100.0)  # 1000 bytes: 10 ms
    downlink = NetworkModel.affine(rtt_ms=0.0, bandwidth_bytes_per_ms=100.0)
    timed_out = RunResult({}, True, total_ms=530.0, remote_ms=500.0, bytes_up=1000)
    expected = 10.0 * 30.0 + 1.0 * 490.0 + (1.0 + 2.0) * 10.0
    assert modelled_mJ(timed_out, power, uplink, downlink, expected_server_ms=5.0) == pytest.approx(expected)
    assert modelled_mJ(timed_out, power, None, None) == pytest.approx(10.0 * 30.0 + 1.0 * 500.0)  # no link: waiting
    never_sent = RunResult({}, True, total_ms=30.0)  # the server was down: all local
    assert modelled_mJ(never_sent, power, uplink, downlink) == pytest.approx(10.0 * 30.0)


def test_a_request_that_waited_for_the_server_before_finishing_locally_charges_the_wait_as_waiting(chain, tmp_path):
    """A request that waited 1 s for a server and then finished locally was charged at compute power for the whole
    second, 8x the modelled energy of a wait (found by review)."""
    model, graph, slicer = chain
    x = _x(graph)
    with rr_server.Server(rr_server.ServerConfig(data_dir=tmp_path, listen="127.0.0.1:0")) as server:
        real = server.repository.infer

        def slow(*args, **kwargs):  # type: ignore[no-untyped-def]
            time.sleep(1.0)
            return real(*args, **kwargs)

        with Client(str(server.address)) as client:
            runner = make_runner(slicer, graph, (0, 1), client, config=RunnerConfig(timeout_s=0.5, retry_interval_s=60))
            with runner:
                server.repository.infer = slow
                result = runner.run(x)
    assert result.fallback and "within 0.5 s" in result.error
    assert result.remote_ms >= 450 and result.bytes_up == x.nbytes
    power = PowerSpec(active_w=10.0, idle_w=1.0, net_tx_w=1.0, net_rx_w=1.0)
    local_ms = result.total_ms - result.remote_ms
    assert modelled_mJ(result, power, None, None) < 10.0 * local_ms + 2.0 * result.remote_ms + 1e-9


def test_a_server_with_no_upload_slot_free_is_busy_not_refusing(chain, tmp_path):
    """Many edges starting at once take every stream slot for uploads: RESOURCE_EXHAUSTED then, at start, used to
    fail the runner as if the server refused the plan. It starts locally and connects once a slot is free."""
    import queue

    from _server_support import Stubs

    _, graph, slicer = chain
    x = _x(graph)
    config = rr_server.ServerConfig(data_dir=tmp_path, listen="127.0.0.1:0", workers=4)  # one slot for uploads
    with rr_server.Server(config) as s, Client(str(s.address)) as c:
        stubs = Stubs.connect(str(s.address))
        held: queue.Queue = queue.Queue()
        hold = stubs.slices.UploadSlice.future(iter(held.get, None), timeout=30)  # open, and idle
        deadline = time.monotonic() + 10
        while s.stream_slots.in_use["other"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        start = time.monotonic()
        runner = make_runner(slicer, graph, (0, 2), c, config=RunnerConfig(retry_interval_s=0.1))
        assert runner.server_down and runner.run(x).fallback
        # while the slot stays taken, each health check finds the server busy: the next comes after its pushback,
        # not twice as late each time (16 edges kept some local for 36% of their requests: soak review)
        while runner._last_probe - start < 3:  # noqa: SLF001 - the probe's schedule is what is checked
            assert runner.run(x).fallback
            time.sleep(0.05)
        assert runner._probe_wait_s <= 1.0 and isinstance(runner._down_error, ServerBusy)  # noqa: SLF001
        held.put(None)
        with contextlib.suppress(Exception):
            hold.result()
        deadline = time.monotonic() + 30
        while runner.run(x).fallback:
            assert time.monotonic() < deadline, "the runner never connected"
            time.sleep(0.05)
        runner.close()
        stubs.close()


def test_a_dropped_streaming_runner_ends_its_request_thread(chain, client):
    """Without close(), gRPC's thread reading the stream's requests waited on the runner's queue for ever."""
    import gc
    import threading

    _, graph, slicer = chain
    before = threading.active_count()
    for _ in range(5):
        runner = make_runner(slicer, graph, (0, 2), client, config=RunnerConfig(stream=True))
        runner.run(_x(graph))
        del runner
        gc.collect()
    deadline = time.monotonic() + 10
    while threading.active_count() > before + 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= before + 1


def test_the_upload_of_a_planned_slice_may_take_what_the_plan_predicts(chain, client, monkeypatch):
    """The upload's deadline was timeout_s + bytes at 1 MB/s: on a 2 Mbit/s link a 25 MB slice never finished and was
    sent again every minute (found by review). With the plan's prediction, it may take three times that."""
    from rr_edge.client import Prediction
    from rr_edge.meters.model import DEFAULT_POWER
    from rr_edge.offload import Costs, make_plan

    _, graph, slicer = chain

    def preds(ms: float) -> tuple[Prediction, ...]:
        return tuple(Prediction(b.signature, ms, ms * 10, "measured", "measured", "model") for b in graph.blocks)

    slow = NetworkModel.affine(rtt_ms=1.0, bandwidth_bytes_per_ms=0.25)  # 250 bytes/s: uploads take a while
    report = make_plan(graph, Costs(preds(1e9), preds(0.1), 1.0, slow, slow, DEFAULT_POWER), amortize_over=10**9)
    assert report.chosen.i < report.chosen.j
    asked: list[float | None] = []
    real = client.upload_slice

    def upload_slice(data, label="", **kw):  # type: ignore[no-untyped-def]
        asked.append(kw.get("timeout_s"))
        return real(data, label, **kw)

    monkeypatch.setattr(client, "upload_slice", upload_slice)
    with make_runner(slicer, graph, (report.chosen.i, report.chosen.j), client, report=report) as runner:
        middle = len(runner.slices.middle or b"")
    predicted_s = slow.predict_ms(middle) / 1e3
    assert asked == [pytest.approx(client.options.timeout_s + 3 * predicted_s)]
    client.ensure_slice(runner.slices.middle or b"")  # without a prediction: the default deadline
    assert asked[-1] is None


def test_a_tensor_sequence_output_comes_back_as_a_list():
    """A model with a sequence-typed output: the runner's output handling read `.flags` of ONNX Runtime's list and
    `rr-edge run` ended in a traceback, even with everything local."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    seq = helper.make_tensor_sequence_value_info("parts", TensorProto.FLOAT, [1, 4])
    nodes = [helper.make_node("Tanh", ["x"], ["a"]), helper.make_node("SequenceConstruct", ["a", "a"], ["parts"])]
    model = helper.make_model(helper.make_graph(nodes, "seq_out", [x], [seq]),
                              opset_imports=[helper.make_opsetid("", 18)], ir_version=9)  # fmt: skip
    graph = analyze(model)
    last = len(graph.blocks) - 1
    with make_runner(Slicer(model, graph), graph, (last, last), None) as runner:
        parts = runner.run(np.ones((1, 4), np.float32)).outputs["parts"]
    assert isinstance(parts, list) and len(parts) == 2
    np.testing.assert_allclose(parts[0], np.tanh(np.ones((1, 4))), rtol=1e-6)


def test_a_plan_whose_slice_the_server_holds_wins_though_another_was_chosen_first(chain, tmp_path):
    """Only the chosen plan's slice was looked up on the server: with uploads dear, all-local was chosen, though
    the server already held the slice of the plan that offloads everything (1.7x faster on the testbed)."""
    from rr_edge.client import Prediction
    from rr_edge.meters.model import DEFAULT_POWER
    from rr_edge.offload import Costs, plan_with_server_cache

    model, graph, slicer = chain

    def preds(ms: float) -> tuple[Prediction, ...]:
        return tuple(Prediction(b.signature, ms, ms * 10, "measured", "measured", "model") for b in graph.blocks)

    fast = NetworkModel.affine(rtt_ms=0.01, bandwidth_bytes_per_ms=1e6)
    dear_uploads = NetworkModel.affine(rtt_ms=5000.0, bandwidth_bytes_per_ms=1e6)  # any upload: 5 s
    costs = Costs(preds(10.0), preds(0.1), 1.0, fast, fast, DEFAULT_POWER, upload=dear_uploads)
    n = len(graph.blocks)
    with rr_server.Server(rr_server.ServerConfig(data_dir=tmp_path, listen="127.0.0.1:0")) as s, Client(s.address) as c:
        before = plan_with_server_cache(c, model, graph, costs, slicer)
        assert before.chosen.i == before.chosen.j  # nothing on the server yet: local
        c.upload_slice(whole_model_bytes(model), "held")  # the model, as the profiler uploads it to time it whole
        after = plan_with_server_cache(c, model, graph, costs, slicer)
    assert (after.chosen.i, after.chosen.j) == (-1, n - 1) and after.chosen.upload_bytes == 0


def test_offloading_every_block_sends_the_model_the_profiler_uploaded(chain):
    """Cut out anew, the slice of all the blocks had bytes (and an id) of its own: a run offloading everything after
    `profile` uploaded the model a second time and kept two copies on the server (a new user's walkthrough)."""
    from rr_edge.client import slice_id_of
    from rr_edge.offload import plan_slices

    model, graph, slicer = chain
    n = len(graph.blocks)
    slices = plan_slices(slicer, n, -1, n - 1)
    assert slices.middle == whole_model_bytes(model) and slices.middle_id == slice_id_of(whole_model_bytes(model))


def test_a_model_listing_its_weights_as_inputs_is_cut_not_sent_whole():
    """Weights listed as graph inputs (old exporters) are inputs a caller may override in ONNX Runtime, which then
    folds no constants from them: the slice of all the blocks is cut, and drops them, as before."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from rr_edge.blocks import analyze
    from rr_edge.offload import plan_slices

    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    x, w_in = (helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in (("x", [1, 4]), ("w", [4, 4])))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x, w_in], [y], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    blocks = analyze(model, "old")
    n = len(blocks.blocks)
    middle = plan_slices(Slicer(model, blocks), n, -1, n - 1).middle
    assert middle is not None and middle != whole_model_bytes(model)
    assert [i.name for i in onnx.load_from_string(middle).graph.input] == ["x"]


def test_a_probe_of_the_link_replans_a_run_planned_local(chain, client):
    """A plan made on a profile of a slow link stays local; one echo each way over the real (loopback) link shows it
    fast, and the plan made with that measurement offloads (a run planned local at 20 Mbit/s stayed local after the
    link went to 200)."""
    from rr_edge.client import Prediction
    from rr_edge.meters.model import DEFAULT_POWER
    from rr_edge.offload import Costs, make_plan, replan_with_probe

    _, graph, _ = chain

    def preds(ms: float) -> tuple[Prediction, ...]:
        return tuple(Prediction(b.signature, ms, ms * 10, "measured", "measured", "model") for b in graph.blocks)

    slow = NetworkModel.affine(rtt_ms=5.0, bandwidth_bytes_per_ms=1.0)  # 1 kB/s as profiled
    report = make_plan(graph, Costs(preds(50.0), preds(0.1), 1.0, slow, slow, DEFAULT_POWER), amortize_over=100)
    assert report.chosen.i == report.chosen.j
    probed = replan_with_probe(client, report, graph, amortize_over=100)
    assert probed.chosen.i < probed.chosen.j
    assert probed.costs.uplink.drift < 0.01 and not probed.costs.uplink.drifted()  # measured, and planned with


def test_a_request_this_side_cannot_send_fails_alone_and_the_stream_recovers(chain, client, monkeypatch):
    """gRPC draws a stream's requests in its own thread: one that failed to serialize half-closed the stream, and
    its error came back for every request after it, with no fallback, and from close() (found by review)."""
    import rr_edge.client as client_module

    _, graph, slicer = chain
    x = _x(graph)
    real = client_module.framing.serialize_infer_request

    def second_fails(slice_id, batch, request_id=""):  # type: ignore[no-untyped-def]
        if request_id == "1" and not failed:
            failed.append(request_id)
            raise ValueError("cannot serialize this request")
        return real(slice_id, batch, request_id=request_id)

    failed: list[str] = []
    monkeypatch.setattr(client_module.framing, "serialize_infer_request", second_fails)
    with make_runner(slicer, graph, (-1, len(graph.blocks) - 1), client) as runner:
        assert not runner.run(x).fallback
        with pytest.raises(ValueError, match="cannot serialize"):
            runner.run(x)
        after = [runner.run(x) for _ in range(3)]
        assert not any(r.fallback for r in after) and not runner.server_down
    assert failed == ["1"]  # and close() above did not raise


def test_a_string_tensor_counts_the_bytes_it_is_sent_as() -> None:
    """numpy counts 4 bytes per character of a str array and 8 per element of an object array (its pointers); the
    wire sends each string's UTF-8 bytes and a 4-byte length, and the drift learnt against numpy's count."""
    from rr_edge.runner import wire_bytes

    text = ["a" * 100, "é" * 50, "", "xyz"]  # UTF-8: 100, 100, 0 and 3 bytes
    for array in (np.array(text), np.array(text, dtype=object)):
        assert wire_bytes({"s": array}) == 203 + 4 * 4
    assert wire_bytes({"s": np.array(text), "x": np.zeros((2, 3), np.float32)}) == 219 + 24


def test_a_replan_costs_slice_uploads_at_the_uplinks_new_speed() -> None:
    """The slice upload curve is the same link as the uplink: a re-plan after the uplink slowed 10x had costed a new
    slice's upload at the old speed, and chose a split whose upload then took 10x its prediction (found by review)."""
    from rr_edge.meters.model import DEFAULT_POWER
    from rr_edge.offload import Costs, with_link

    up, upload = NetworkModel.affine(5.0, 1000.0), NetworkModel.affine(20.0, 500.0)
    costs = Costs((), (), 1.0, up, up, DEFAULT_POWER, upload=upload)
    slower = up.update(1000, 60.0, alpha=1.0)  # 10x its 6 ms
    moved = with_link(costs, slower, up)
    assert moved.upload is not None and moved.upload.predict_ms(1e6) == pytest.approx(10 * upload.predict_ms(1e6))
    assert not (moved.upload.drifted() or moved.uplink.drifted())  # the plan is made with them
    again = with_link(moved, moved.uplink.update(1000, 30.0, alpha=1.0), up)  # from there, half the time
    assert again.upload is not None and again.upload.predict_ms(1e6) == pytest.approx(5 * upload.predict_ms(1e6))
    assert with_link(dataclasses.replace(costs, upload=None), slower, up).upload is None


def test_a_plans_energy_source_names_the_meter_of_the_network_fits() -> None:
    """On a GPU node, profile meters blocks with NVML and netprofile transfers with RAPL: a plan summing both was
    labelled "model,nvml" (found by review)."""
    from rr_edge.client import Prediction
    from rr_edge.meters.model import DEFAULT_POWER
    from rr_edge.offload import Costs

    link = NetworkModel.affine(1.0, 1000.0)
    edge = (Prediction("s", 1.0, 5.0, "measured", "measured", "nvml"),)
    costs = Costs(edge, edge, 1.0, link, link, DEFAULT_POWER, transfer_energy_source="rapl")
    assert costs.energy_source == "model,nvml,rapl"
    assert dataclasses.replace(costs, transfer_energy_source="").energy_source == "model,nvml"


def test_a_string_input_takes_str_the_same_whether_offloaded_or_not(tmp_path):
    """A string input fed bytes got another answer offloaded (the codec decodes them to text) than locally (ONNX
    Runtime compared their repr, b'a'), and a float array for it went to the server first (found by review); a lone
    surrogate could not be sent, and broke the stream for every request after it. All are refused before any work;
    str, as numpy str or objects, runs and gives one answer either way."""
    from onnx import TensorProto, helper

    s = helper.make_tensor_value_info("s", TensorProto.STRING, [4])
    eq = helper.make_tensor_value_info("e", TensorProto.BOOL, [4])
    nodes = [helper.make_node("Identity", ["s"], ["t"]), helper.make_node("Equal", ["t", "a"], ["e"])]
    a = helper.make_tensor("a", TensorProto.STRING, [1], [b"a"])
    model = helper.make_model(helper.make_graph(nodes, "streq", [s], [eq], [a]), ir_version=9,
                              opset_imports=[helper.make_opsetid("", 19)])  # fmt: skip  # Equal of strings: 19
    graph = analyze(model, "streq")
    slicer = Slicer(model, graph)
    n = len(graph.blocks)
    with rr_server.Server(rr_server.ServerConfig(data_dir=tmp_path, listen="127.0.0.1:0")) as server:
        with Client(str(server.address)) as client:
            for split in ((-1, n - 1), (n - 1, n - 1)):
                with make_runner(slicer, graph, split, client if split[0] < split[1] else None) as runner:
                    for bad, fragment in (
                        (np.array([b"a", b"x", b"a", b"y"], dtype=object), "holding bytes: decode them to str"),
                        (np.zeros(4, np.float32), "got float32 [4]"),
                        (np.array(["a", "\udcff", "a", "y"]), "holding text that is not UTF-8"),
                    ):
                        with pytest.raises(InputError, match=re.escape(fragment)):
                            runner.run({"s": bad})
                    for good in (np.array(["a", "x", "a", "y"]), np.array(["a", "x", "a", "y"], dtype=object)):
                        result = runner.run({"s": good})
                        assert not result.fallback and result.outputs["e"].tolist() == [True, False, True, False]
