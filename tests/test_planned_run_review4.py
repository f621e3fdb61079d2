"""`rr-edge run` on a dead or changing link (found by a testbed review): a switch of split mid-run blocked every
request, local ones too, for as long as an upload's deadline; the tiny status query and load of a slice the server
already held waited that long too; re-plans that kept the split reset the doubling wait before the offloading plan
was tried again; and a large drift waited out the gap between re-plans."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from conftest import Clock
from onnx import TensorProto, helper, numpy_helper

from rr_edge.client import Client, ClientOptions, slice_id_of
from rr_edge.commands import _planned_run
from rr_edge.commands._planned_run import MAX_REPLAN_GAP, MAX_RETRY_S, STEADY_REQUESTS, URGENT_DRIFT, PlannedRun
from rr_edge.errors import ServerUnavailable
from rr_edge.netmodel import NetworkModel
from rr_edge.offload import make_runner, plan_slices
from rr_edge.runner import Runner, RunnerConfig, RunResult
from rr_edge.slicing import Slicer
from tests._server_process import ServerProcess
from tests._server_support import IR_VERSION, serving
from tests.test_planned_run_review5 import offloading_report

GENEROUS_S = 30.0  # how long a test waits for something that takes well under a second
LOCAL = (3, 3)  # the four-conv chain run all locally


def report(i: int, j: int) -> Any:
    """What PlannedRun reads of a plan report."""
    breakdown = {"weight_upload_ms": 0.0}
    even = SimpleNamespace(plan=lambda i, j: SimpleNamespace(latency_ms=1.0, energy_mJ=1.0))  # local never better
    return SimpleNamespace(
        chosen=SimpleNamespace(i=i, j=j, breakdown=breakdown),
        inputs=SimpleNamespace(amortize_over=1),
        table=even,
        blocks=5,
        options={},
    )


class RunnerEnergy:
    """No meter: each request is the runner's own run."""

    def run(self, runner: Any, x: Any, remaining: int) -> RunResult:
        return runner.run(x)

    def finish(self, runner: Any, x: Any) -> None:
        pass


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path / "data")
    yield proc
    proc.stop()  # SIGKILL ends a stopped process too


def _x(graph: Any) -> np.ndarray:
    return np.random.default_rng(0).standard_normal(graph.inputs[0].shape).astype(np.float32)


def late_plan_run(
    slicer: Slicer, graph: Any, client: Client, config: RunnerConfig, x: np.ndarray, late: Any = None
) -> PlannedRun:
    """A run that starts local, without a plan, and is given `late` (default: plan (0, 2)) when it plans again after
    the retry wait."""
    late = report(0, 2) if late is None else late

    def runner_for(split, r, later):  # type: ignore[no-untyped-def]
        return make_runner(slicer, graph, split, client, config=config, connect_later=later)

    return PlannedRun(runner_for,
                      lambda remaining: late, lambda r, runner, remaining: r, LOCAL, None,
                      RunnerEnergy(), x, 0.01)  # fmt: skip


# -- the status query and load of a cached slice keep the per-call deadline --------------------------------------------


def test_a_cached_slice_on_a_server_that_stopped_answering_fails_within_the_call_timeout(server: ServerProcess) -> None:
    """With an upload's predicted time the whole ensure_slice had the upload's deadline: timeout + 12 MB at the
    minimum bandwidth of 1 MB/s, 13 s, for a status query of a slice the server already held (review: 14.6 s)."""
    w = numpy_helper.from_array(np.ones((1024, 3072), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1024])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3072])],
        [w],
    )
    opset = [helper.make_opsetid("", 17)]
    data = helper.make_model(graph, opset_imports=opset, ir_version=IR_VERSION).SerializeToString()
    with Client(server.address, ClientOptions(timeout_s=1.0)) as client:
        sid = client.ensure_slice(data, "m", load=True)
        assert client.slice_status(sid).cached
        with server.hung():
            start = time.monotonic()
            with pytest.raises(ServerUnavailable):
                client.ensure_slice(data, "m", load=True, busy_wait_s=0, expected_s=0.05, slice_id=sid)
            waited = time.monotonic() - start
    upload_deadline = 1.0 + len(data) / ClientOptions().min_bandwidth_bytes_per_s
    assert upload_deadline > 12 and waited < upload_deadline / 2


# -- a runner switched to mid-run connects in the background -----------------------------------------------------------


def test_a_switch_mid_run_on_a_hung_server_holds_no_request(
    chain: Any, server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run that started without a plan takes one while the server has stopped answering: its requests are served
    locally at once all along, no call to the server in the requests' thread (the new runner's upload had held them
    for the status query's deadline); the new split's requests say the server does not answer, and once it answers,
    the runner's health check uploads and opens the slice, and the requests are offloaded."""
    _, graph, slicer = chain
    x = _x(graph)
    expected = make_runner(slicer, graph, LOCAL, None)(x)["y3"]
    with Client(server.address, ClientOptions(timeout_s=5.0)) as client:
        callers: list[int] = []
        ensure = client.ensure_slice

        def recorded(*args: Any, **kw: Any) -> str:
            callers.append(threading.get_ident())
            return ensure(*args, **kw)

        monkeypatch.setattr(client, "ensure_slice", recorded)
        run = late_plan_run(slicer, graph, client, RunnerConfig(timeout_s=5.0, retry_interval_s=0.05), x)
        try:
            with server.hung():
                deadline = time.monotonic() + GENEROUS_S
                while run.split == LOCAL and time.monotonic() < deadline:  # planned after the retry wait, then
                    run.request(remaining=1000)  # prepared until the health check gives up
                switched = [run.request(remaining=1000) for _ in range(3)]
            assert run.split == (0, 2) and threading.get_ident() not in callers
            assert all(r.fallback and "does not answer its health check" in r.error for r in switched)
            for r in switched:
                np.testing.assert_allclose(r.outputs["y3"], expected, rtol=1e-4, atol=1e-5)
            deadline = time.monotonic() + GENEROUS_S
            while (result := run.request(remaining=1000)).fallback and time.monotonic() < deadline:
                time.sleep(0.01)
            assert not result.fallback, result.error
            np.testing.assert_allclose(result.outputs["y3"], expected, rtol=1e-4, atol=1e-5)
            assert callers and threading.get_ident() not in callers  # the slice was made ready in the background
        finally:
            run.close()


def test_a_switch_to_a_slice_the_server_refuses_gives_way_to_the_best_other_plan(
    chain: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The server refuses the new plan's slice (over its limit): with a warning, the run takes the best other plan of
    that plan's report, and says why its requests ran locally meanwhile: not "could not be reached to plan"."""
    _, graph, slicer = chain
    x = _x(graph)
    planned = offloading_report(graph)
    late = replace(planned, chosen=planned.table.plan(0, 2))  # a real report: it has other plans to give way to
    middle = plan_slices(slicer, len(graph.blocks), 0, 2).middle
    assert middle is not None
    with serving(tmp_path / "data", max_slice_bytes=len(middle) - 1) as (srv, _), Client(str(srv.address)) as client:
        run = late_plan_run(slicer, graph, client, RunnerConfig(retry_interval_s=0.05), x, late)
        try:
            deadline = time.monotonic() + GENEROUS_S
            with caplog.at_level(logging.WARNING, logger=_planned_run.__name__):
                while (run.report is None or run.preparing is not None) and time.monotonic() < deadline:
                    run.request(remaining=1000)
                    time.sleep(0.005)
            assert "refused plan 0,2" in caplog.text and run.split not in ((0, 2), LOCAL)
            assert [s.split for s in run.segments] == [LOCAL, run.split]  # no request ran on the refused split
            assert run.report is not None and run.segments[-1].report is run.report  # planned: no "no plan"
        finally:
            run.close()
        assert not client.slice_status(slice_id_of(middle)).cached


# -- the doubling wait before the offloading plan is tried again -------------------------------------------------------


class DriftingRunner:
    """A runner on a link where offloading is slightly worse than local: an offloading split always drifted (by a
    factor under `URGENT_DRIFT`), unless not `drifting`."""

    made_ready = 0

    def __init__(self, split: tuple[int, int], drifting: bool = True) -> None:
        self.split, self.drifting, self.upload_ms, self.replans = split, drifting, 0.0, 0
        self.drift_factor, self.refused = 1.3, None

    @property
    def replan_needed(self) -> bool:
        return self.drifting and self.split != LOCAL

    def mark_planned(self) -> None:
        pass

    def connect(self) -> bool:
        return self.refused is None

    @property
    def server_down(self) -> bool:
        return self.refused is not None

    def close(self, wait_s: float | None = None) -> None:
        pass


class TimedEnergy:
    """Each request takes 40 ms of the fake clock; it reached the server unless `fallback`."""

    def __init__(self, clock: Clock, fallback: bool = False) -> None:
        self.clock, self.fallback = clock, fallback

    def run(self, runner: Any, x: Any, remaining: int) -> RunResult:
        self.clock.t += 0.04
        offloaded = runner.split != LOCAL and not self.fallback
        return RunResult({}, self.fallback, 40.0, remote_ms=20.0 if offloaded else 0.0)

    def finish(self, runner: Any, x: Any) -> None:
        pass


@pytest.mark.parametrize("kept", [4, 5, 6])
def test_re_plans_that_keep_the_split_do_not_reset_the_wait_before_the_next_try(clock: Clock, kept: int) -> None:
    """Each try of the offloading plan drifts and is re-planned, kept a few times and then local: those re-plans
    resetting the wait, the split flipped every 2.3 s for good (review: 105 tries in 240 s). From the fifth kept
    re-plan on the gap to the next is 32 requests: the drifted requests in that gap, served by the server, had counted
    as a steady link and reset the wait too (review: 67 tries in 240 s)."""
    offloading, local = report(0, 2), report(*LOCAL)

    def replan(r: Any, runner: DriftingRunner, remaining: int) -> Any:
        runner.replans += 1  # the drifted curves need a few re-plans to win locally
        return offloading if runner.replans <= kept else local

    run = PlannedRun(lambda s, r, _: DriftingRunner(s), None, replan, (0, 2), offloading, TimedEnergy(clock),
                     np.zeros(1), 1.0, background=False)  # fmt: skip
    tries, last = [], run.split
    for _ in range(6000):  # 240 s
        run.request(remaining=10**6)
        if run.split != last and run.split == (0, 2):
            tries.append(clock.t)
        last = run.split
    gaps = [b - a for a, b in zip(tries, tries[1:], strict=False)]  # each: the wait, and the try's own requests
    assert 5 <= len(tries) <= 10
    # the wait doubling from 1 s, to a minute: each gap longer than the one before by that one's wait (2 s or more)
    assert all(b > a + 1.5 for a, b in zip(gaps, gaps[1:], strict=False) if b < MAX_RETRY_S)


def test_requests_the_server_did_not_serve_do_not_reset_the_wait(clock: Clock) -> None:
    """An offloading split whose requests all ran locally (the server down, or its slice still uploading) says
    nothing about the network: the wait goes on doubling."""
    offloading, local = report(0, 2), report(*LOCAL)
    drifting = [True]
    run = PlannedRun(lambda s, r, _: DriftingRunner(s, drifting[0]), None, lambda r, runner, remaining: local,
                     (0, 2), offloading, TimedEnergy(clock), np.zeros(1), 1.0, background=False)  # fmt: skip
    run.request(remaining=100)  # drifted: local
    drifting[0] = False  # from here no transfer, so no drift
    run._energy = TimedEnergy(clock, fallback=True)
    while run.split == LOCAL:  # the offloading plan is tried again after the wait
        run.request(remaining=100)
    for _ in range(2 * STEADY_REQUESTS):
        run.request(remaining=100)
    assert run._retry_s > 1.0
    run._energy = TimedEnergy(clock)
    for _ in range(STEADY_REQUESTS):
        run.request(remaining=100)
    assert run._retry_s == 1.0  # served: a later slowdown waits from the start again


# -- a large drift is re-planned at once -------------------------------------------------------------------------------


class SteadyRunner:
    def __init__(self, split: tuple[int, int]) -> None:
        self.split, self.upload_ms, self.drift_factor, self.refused, self.replan_needed = split, 0.0, 1.3, None, True

    def mark_planned(self) -> None:
        pass

    def connect(self) -> bool:
        return self.refused is None

    @property
    def server_down(self) -> bool:
        return self.refused is not None

    def close(self, wait_s: float | None = None) -> None:
        pass


def test_a_large_drift_is_re_planned_without_waiting_out_the_gap(clock: Clock) -> None:
    """Re-plans that kept the split spaced the next to 32 requests; a link that then went from 100 to 2 Mbit/s ran
    31 more requests at 463 ms (40 ms locally) before the re-plan (review)."""
    offloading = report(0, 2)
    asked: list[int] = []
    run = PlannedRun(lambda s, r, _: SteadyRunner(s), None, lambda r, runner, n: asked.append(run.done) or r,
                     (0, 2), offloading, TimedEnergy(clock), np.zeros(1), 1.0, background=False)  # fmt: skip
    for _ in range(100):  # a small drift (noise on a steady link): re-planned ever further apart
        run.request(remaining=1000)
    assert asked[-1] - asked[-2] == MAX_REPLAN_GAP
    run.runner.drift_factor = URGENT_DRIFT + 0.5  # type: ignore[attr-defined]
    before = len(asked)
    run.request(remaining=1000)
    assert len(asked) == before + 1  # at once, inside the gap


def test_the_runner_reports_how_far_the_network_moved_both_ways(chain: Any, tmp_path: Path) -> None:
    """`Runner.drift_factor` over a real server: a link predicted far too fast, or far too slow, moves past
    `URGENT_DRIFT` (the exponentially weighted drift falls by at most a fifth a request: five requests); drift counts
    again from the re-plan (`mark_planned`)."""
    _, graph, slicer = chain
    x = _x(graph)
    slices = plan_slices(slicer, len(graph.blocks), 0, 2)
    with serving(tmp_path / "data") as (srv, _), Client(str(srv.address)) as client:
        for rtt_ms in (1e-4, 1e6):
            model = NetworkModel.affine(rtt_ms=rtt_ms, bandwidth_bytes_per_ms=1e9)
            with Runner(slices, client, uplink=model, downlink=model) as runner:
                assert runner.drift_factor == 1.0
                for _ in range(5):
                    assert not runner.run(x).fallback
                assert runner.replan_needed and runner.drift_factor >= URGENT_DRIFT
                runner.mark_planned()
                assert runner.drift_factor == 1.0
