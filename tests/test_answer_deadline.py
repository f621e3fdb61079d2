"""How long a request waits for the server's answer: about as long as the plan's network models predict, at most
`RunnerConfig.timeout_s` (`_Link.answer_s`). A request in flight when the link went dead waited out the whole fixed
deadline (30 s by default) before it finished locally.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import rr_server
from rr_edge.client import Client
from rr_edge.netmodel import NetworkModel, round_trip_ms
from rr_edge.offload import plan_slices
from rr_edge.runner import ANSWER_FACTOR, ANSWER_MARGIN_S, Runner, RunnerConfig, RunResult, _Link
from tests._server_process import ServerProcess

LINK = NetworkModel.affine(rtt_ms=2.0, bandwidth_bytes_per_ms=1e4)  # 2 ms + 0.1 ms per kB each way


def _answered(bytes_up: int = 40_000, bytes_down: int = 10_000, server_ms: float = 5.0) -> RunResult:
    return RunResult({}, False, 30.0, remote_ms=30.0, server_ms=server_ms, bytes_up=bytes_up, bytes_down=bytes_down)


def _wait_s(link: _Link, bytes_up: int, bytes_down: int, server_ms: float) -> float:
    """The wait `answer_s` is meant to give, from the same network models."""
    assert link.uplink is not None and link.downlink is not None
    expected_ms = round_trip_ms(link.uplink, link.downlink, bytes_up, bytes_down) + server_ms
    return link.backoff * (ANSWER_MARGIN_S + ANSWER_FACTOR * expected_ms / 1e3)


def test_the_wait_is_the_expected_round_trip_times_the_factor_plus_the_margin() -> None:
    link = _Link(LINK, LINK, expected_cloud_ms=50.0)
    assert link.answer_s(40_000, 30.0) == pytest.approx(_wait_s(link, 40_000, 40_000, 50.0))  # answer as large
    link.update(_answered(bytes_down=4_000_000))
    assert link.answer_s(40_000, 30.0) == pytest.approx(_wait_s(link, 40_000, 4_000_000, 50.0))  # the answer's too
    assert link.answer_s(40_000, 1.5) == 1.5  # never past the configured deadline
    assert _Link().answer_s(40_000, 30.0) == 30.0  # without network models nor an answer: the configured deadline


def test_without_network_models_the_wait_expects_the_longest_round_trip_lately() -> None:
    """A runner of a split has no network models: it waited the whole deadline for every answer of a hung server."""
    link = _Link()
    link.update(_answered())  # a round trip of 30 ms, 40 kB up
    assert link.answer_s(40_000, 30.0) == pytest.approx(ANSWER_MARGIN_S + ANSWER_FACTOR * 0.030)
    link.update(RunResult({}, False, 900.0, remote_ms=900.0, bytes_up=40_000))  # one slow round trip is expected
    link.update(_answered())  # from then on, less SERVER_MS_DECAY per answer
    slow_s = 0.9 * 0.900
    assert link.answer_s(40_000, 30.0) == pytest.approx(ANSWER_MARGIN_S + ANSWER_FACTOR * slow_s)
    assert link.answer_s(4_000, 30.0) == pytest.approx(ANSWER_MARGIN_S + ANSWER_FACTOR * slow_s)
    assert link.answer_s(120_000, 30.0) == pytest.approx(ANSWER_MARGIN_S + ANSWER_FACTOR * 3 * slow_s)  # 3x larger
    link.missed(40_000, 1e3 * link.answer_s(40_000, 30.0))
    assert link.answer_s(40_000, 30.0) == pytest.approx(2 * (ANSWER_MARGIN_S + ANSWER_FACTOR * slow_s))
    assert link.answer_s(40_000, 1.5) == 1.5


def test_the_wait_expects_the_longest_server_run_reported_lately_when_slower_than_predicted() -> None:
    link = _Link(LINK, LINK, expected_cloud_ms=50.0)
    link.update(_answered(server_ms=5.0))
    link.update(_answered(server_ms=1500.0))  # one slow run (a session opened again) is expected from then on
    link.update(_answered(server_ms=5.0))
    assert link.server_ms == pytest.approx(0.9 * 1500.0)
    assert link.answer_s(40_000, 30.0) == pytest.approx(_wait_s(link, 40_000, 10_000, 0.9 * 1500.0))
    for _ in range(60):
        link.update(_answered(server_ms=5.0))  # and forgotten, down to the prediction when the server is faster
    assert link.answer_s(40_000, 30.0) == pytest.approx(_wait_s(link, 40_000, 10_000, 50.0))


def test_a_wait_that_ran_out_doubles_the_next_one_and_a_second_in_a_row_is_learnt() -> None:
    """The first wait shorter than the deadline that runs out is not learnt as network time (a slow server had made
    a 20-95x drift of it, review); the second in a row is, as a lower bound (a link slowed past the waits had
    stalled request after request without a re-plan, review). An answer resets both."""
    link = _Link(LINK, LINK, expected_cloud_ms=50.0)
    link.update(_answered())
    first, models = link.answer_s(40_000, 30.0), (link.uplink, link.downlink)
    link.missed(40_000, 1e3 * first)
    assert link.answer_s(40_000, 30.0) == pytest.approx(2 * first)
    assert (link.uplink, link.downlink) == models  # nothing learnt
    link.update(_answered())
    assert link.answer_s(40_000, 30.0) == pytest.approx(first, rel=0.05) and link.misses == 0
    link.missed(40_000, 1e3 * first)
    link.missed(40_000, 2e3 * first)
    assert link.moved() > 10  # 2.5 s of round trip against some 60 ms predicted: learnt
    assert link.answer_s(40_000, 30.0) > 4 * first
    for _ in range(20):
        link.missed(40_000, 30_000.0)
    assert link.answer_s(40_000, 30.0) == 30.0


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path / "data")
    yield proc
    proc.stop()


def _x(graph) -> np.ndarray:  # type: ignore[no-untyped-def]
    return np.random.default_rng(0).standard_normal(graph.inputs[0].shape).astype(np.float32)


def test_a_request_to_a_hung_server_waits_the_predicted_time_not_the_deadline(chain, server) -> None:
    """The default 30 s deadline, a server that stops answering after the first request (SIGSTOP: what a dead link
    looks like): the request waits about as long as its round trip was predicted to take, then finishes locally."""
    _, graph, slicer = chain
    x = _x(graph)
    slices = plan_slices(slicer, len(graph.blocks), 0, 2)
    with Client(server.address) as client:
        runner = Runner(
            slices, client, RunnerConfig(retry_interval_s=60), uplink=LINK, downlink=LINK, expected_cloud_ms=5.0
        )
        assert runner.config.timeout_s == 30.0
        assert not runner.run(x).fallback
        wait_s = runner.link.answer_s(runner.link.last.bytes_up, runner.config.timeout_s)  # type: ignore[union-attr]
        assert wait_s < 2.0
        with server.hung():
            late = runner.run(x)
        runner.close()
    assert late.fallback and f"no stream answer within {wait_s:.1f} s" in late.error
    np.testing.assert_allclose(late.outputs["y3"], Runner(plan_slices(slicer, len(graph.blocks), 3, 3))(x)["y3"])


def test_the_first_request_of_a_runner_waits_the_expected_time_too(chain, server) -> None:
    """A runner's first answer is waited for as long as any other (as large as its request): a split switched to
    mid-run whose link died before its first answer waited the whole 30 s (review)."""
    _, graph, slicer = chain
    slices = plan_slices(slicer, len(graph.blocks), 0, 2)
    with Client(server.address) as client:
        runner = Runner(slices, client, RunnerConfig(retry_interval_s=60), uplink=LINK, downlink=LINK)
        _waits_its_answer_time_for_a_hung_server(runner, server, _x(graph))


def test_a_runner_without_network_models_waits_for_a_hung_server_about_its_round_trips(chain, server) -> None:
    _, graph, slicer = chain
    x = _x(graph)
    with Client(server.address) as client:
        runner = Runner(plan_slices(slicer, len(graph.blocks), 0, 2), client, RunnerConfig(retry_interval_s=60))
        assert runner.link.uplink is None and runner.config.timeout_s == 30.0
        assert not runner.run(x).fallback
        _waits_its_answer_time_for_a_hung_server(runner, server, x)


def _waits_its_answer_time_for_a_hung_server(runner: Runner, server: ServerProcess, x: np.ndarray) -> None:
    """A request to the hung server waits `answer_s` (about a second here: far less than the deadline, 30 s, also when
    a loaded machine slows the round trips it learnt from), then finishes locally, saying how long it waited; the
    runner is closed."""
    wait_s = runner.link.answer_s(int(x.nbytes), runner.config.timeout_s)
    assert wait_s < runner.config.timeout_s / 3
    with server.hung():
        result = runner.run(x)
    runner.close()
    assert result.fallback and f"no stream answer within {wait_s:.1f} s" in result.error


@pytest.fixture(scope="module")
def in_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    config = rr_server.ServerConfig(data_dir=tmp_path_factory.mktemp("deadline"), listen="127.0.0.1:0")
    with rr_server.Server(config) as s, Client(str(s.address)) as c:
        yield c


@pytest.mark.parametrize("adaptive", [True, False])
def test_each_modelinfer_call_gets_the_wait_of_its_request(chain, in_process, monkeypatch, adaptive) -> None:
    """One ModelInfer per request (no stream): its deadline is the wait expected for it (the client adds nothing to
    a deadline given); with `adaptive_deadline=False`, always the configured one."""
    _, graph, slicer = chain
    x = _x(graph)
    deadlines: list[float] = []
    real_infer = in_process.infer

    def recorded(slice_id, inputs, timeout_s=None, outputs=()):  # type: ignore[no-untyped-def]
        deadlines.append(timeout_s)
        return real_infer(slice_id, inputs, timeout_s, outputs)

    monkeypatch.setattr(in_process, "infer", recorded)
    config = RunnerConfig(timeout_s=20.0, stream=False, adaptive_deadline=adaptive)
    slices = plan_slices(slicer, len(graph.blocks), 0, 2)
    runner = Runner(slices, in_process, config, uplink=LINK, downlink=LINK, expected_cloud_ms=5.0)
    results = [runner.run(x) for _ in range(3)]
    runner.close()
    assert not any(r.fallback for r in results)
    if adaptive:
        assert all(d < 2.0 for d in deadlines)
    else:
        assert deadlines == [20.0] * 3


@pytest.mark.parametrize("flag", [[], ["--fixed-timeout"]], ids=["default", "fixed"])
def test_rr_edge_run_waits_adaptively_unless_told_not_to(chain, in_process, tmp_path, monkeypatch, capsys, flag):
    """`rr-edge run --fixed-timeout` gives every answer the whole --timeout; without it the runner's wait adapts."""
    import onnx

    from rr_edge import cli
    from rr_edge.commands import run as run_command

    model, graph, _ = chain
    path, x = tmp_path / "chain.onnx", tmp_path / "x.npy"
    onnx.save(model, path)
    np.save(x, _x(graph))
    configs: list[RunnerConfig] = []

    def recorded(**kw):  # type: ignore[no-untyped-def]
        configs.append(RunnerConfig(**kw))
        return configs[-1]

    monkeypatch.setattr(run_command, "RunnerConfig", recorded)
    argv = ["run", str(path), "--server", in_process.address, "--node", "n", "--split", "0,2", "--input", str(x),
            "--repeat", "2", "--json", *flag]  # fmt: skip
    assert cli.main(argv) == 0
    assert json.loads(capsys.readouterr().out)["fallback_requests"] == 0
    assert [c.adaptive_deadline for c in configs] == [not flag]


def _slow_server_runner(chain, client, monkeypatch, run_s: float):  # type: ignore[no-untyped-def]
    """A runner of split 0,2 (one ModelInfer per request, 5 ms of server run predicted) that has had one answer,
    and the switch (an Event) that makes every server run take `run_s` more from then on."""
    from rr_server.repository import ModelRepository

    _, graph, slicer = chain
    real_infer = ModelRepository.infer
    slow = threading.Event()

    def infer(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        if slow.is_set():
            time.sleep(run_s)
        return real_infer(self, *args, **kwargs)

    monkeypatch.setattr(ModelRepository, "infer", infer)
    slices = plan_slices(slicer, len(graph.blocks), 0, 2)
    config = RunnerConfig(retry_interval_s=0.05, stream=False)
    runner = Runner(slices, client, config, uplink=LINK, downlink=LINK, expected_cloud_ms=5.0)
    assert not runner.run(_x(graph)).fallback
    runner.mark_planned()  # drift counts from here: that answer, slow on a loaded machine, had drifted (flaky in CI)
    return runner, slow


def test_a_server_slower_than_expected_is_waited_for_longer_not_taken_for_a_slow_link(chain, in_process, monkeypatch):
    """The server's runs take 1.2 s against 5 ms predicted (other edges' requests, a session opened again): the
    first such request runs out of its wait and finishes locally, but the network models learn nothing from it (it
    had made a 20-95x drift and an urgent re-plan away from a server that was only slow, review); the next request
    waits twice as long and is served, and from its reported run on the wait expects the server's time."""
    x = _x(chain[1])
    runner, slow = _slow_server_runner(chain, in_process, monkeypatch, 1.2)
    assert runner.link.answer_s(int(x.nbytes), runner.config.timeout_s) < 1.2
    slow.set()
    missed = runner.run(x)
    assert missed.fallback and "DEADLINE_EXCEEDED" in missed.error
    assert not runner.replan_needed and runner.drift_factor < 2
    deadline = time.monotonic() + 30
    while (served := runner.run(x)).fallback and time.monotonic() < deadline:  # local until the health check passed
        time.sleep(0.02)
    runner.close()
    assert not served.fallback and served.server_ms is not None and served.server_ms >= 1200
    assert not runner.replan_needed
    assert runner.link.answer_s(int(x.nbytes), runner.config.timeout_s) > ANSWER_MARGIN_S + ANSWER_FACTOR * 1.2


def test_a_server_that_stays_too_slow_is_taken_for_a_slow_link_on_the_second_wait_in_a_row(
    chain, in_process, monkeypatch
):
    """Every run takes 3 s against 5 ms predicted: the first wait runs out unlearnt, the doubled second one too, and
    that one asks for a re-plan (a link slowed down past the waits looks the same from the edge)."""
    x = _x(chain[1])
    runner, slow = _slow_server_runner(chain, in_process, monkeypatch, 3.0)
    slow.set()
    first = runner.run(x)
    assert first.fallback and not runner.replan_needed
    deadline = time.monotonic() + 30
    while runner.link.misses < 2 and time.monotonic() < deadline:  # local until the health check passed
        runner.run(x)
        time.sleep(0.02)
    runner.close()
    assert runner.link.misses == 2 and runner.replan_needed
