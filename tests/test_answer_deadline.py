"""How long a request waits for the server's answer: about as long as the plan's network models predict, at most
`RunnerConfig.timeout_s` (`_Link.answer_s`). A request in flight when the link went dead waited out the whole fixed
deadline (30 s by default) before it finished locally.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import rr_server
from rr_edge.client import Client
from rr_edge.netmodel import NetworkModel
from rr_edge.offload import plan_slices
from rr_edge.runner import ANSWER_FACTOR, ANSWER_MARGIN_S, Runner, RunnerConfig, RunResult, _Link
from tests._server_process import ServerProcess

LINK = NetworkModel.affine(rtt_ms=2.0, bandwidth_bytes_per_ms=1e4)  # 2 ms + 0.1 ms per kB each way


def _answered(bytes_up: int = 40_000, bytes_down: int = 10_000, remote_ms: float = 30.0) -> RunResult:
    return RunResult({}, False, remote_ms, remote_ms=remote_ms, server_ms=5.0, bytes_up=bytes_up, bytes_down=bytes_down)


def test_the_wait_is_the_predicted_round_trip_times_the_factor_plus_the_margin() -> None:
    link = _Link(LINK, LINK, expected_cloud_ms=50.0)
    link.last = _answered()
    expected_ms = (2.0 + 40_000 / 1e4) + (2.0 + 10_000 / 1e4) + 50.0  # up, down (the last answer's size), server
    assert expected_ms < 100  # the link models charge no separate fixed cost for the answer
    assert link.answer_s(40_000, 30.0) == pytest.approx(ANSWER_MARGIN_S + ANSWER_FACTOR * expected_ms / 1e3, rel=0.05)
    assert link.answer_s(4_000_000, 30.0) > link.answer_s(40_000, 30.0)  # a larger request waits longer
    assert link.answer_s(4_000_000, 1.5) == 1.5  # never past the configured deadline


def test_without_models_or_before_any_answer_the_wait_is_the_configured_deadline() -> None:
    assert _Link().answer_s(40_000, 30.0) == 30.0
    link = _Link(LINK, LINK, expected_cloud_ms=50.0)
    assert link.answer_s(40_000, 30.0) == 30.0  # the first answer may hold the server session's first run


def test_a_link_slowed_past_the_wait_gets_longer_waits() -> None:
    """A round trip that timed out is learnt as one that took the whole wait (a lower bound), so a link slowed down
    to 3 s round trips times out a few times, not on every request, before a wait covers it."""
    link = _Link(LINK, LINK, expected_cloud_ms=50.0)
    link.update(_answered(remote_ms=70.0))
    waits = [link.answer_s(40_000, 30.0)]
    while waits[-1] < 3.0 and len(waits) < 20:
        link.timed_out(40_000, 1e3 * waits[-1])
        waits.append(link.answer_s(40_000, 30.0))
    assert waits == sorted(waits) and len(waits) <= 4


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


@pytest.fixture(scope="module")
def in_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    config = rr_server.ServerConfig(data_dir=tmp_path_factory.mktemp("deadline"), listen="127.0.0.1:0")
    with rr_server.Server(config) as s, Client(str(s.address)) as c:
        yield c


@pytest.mark.parametrize("adaptive", [True, False])
def test_each_modelinfer_call_gets_the_wait_of_its_request(chain, in_process, monkeypatch, adaptive) -> None:
    """One ModelInfer per request (no stream): its deadline is the configured one for the first request, then the
    predicted wait; with `adaptive_deadline=False`, always the configured one."""
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
    assert deadlines[0] == 20.0
    if adaptive:
        assert all(d < 2.0 for d in deadlines[1:])
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
