"""`rr-edge run` after a refused slice and at its end (found by review): a split whose slice the server refused was
chosen and switched to again by every drift re-plan; the requests after going back from a refused late plan were
marked as run for want of a server; and a runner's upload in the background outlived its `close`, uncounted."""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import replace
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from rr_edge.client import Client, ClientOptions, Prediction, slice_id_of
from rr_edge.commands._planned_run import PlannedRun, without
from rr_edge.errors import ServerError, ServerUnavailable
from rr_edge.meters.model import DEFAULT_POWER
from rr_edge.netmodel import NetworkModel
from rr_edge.offload import Costs, PlanReport, make_plan, make_runner, plan_slices
from rr_edge.runner import Runner, RunnerConfig, RunResult

GENEROUS_S = 30.0  # how long a test waits for something that takes well under a second
REFUSAL = ServerError("RepositoryModelLoad: RESOURCE_EXHAUSTED: the server has not the memory to open it",
                      "RESOURCE_EXHAUSTED")  # fmt: skip


def _x(graph: Any) -> np.ndarray:
    return np.random.default_rng(0).standard_normal(graph.inputs[0].shape).astype(np.float32)


def offloading_report(graph: Any) -> PlanReport:
    """A plan of the chain on a slow edge, a fast cloud and a fast link: it offloads, and the plans' latencies are
    apart (no ties to break)."""
    edge = tuple(Prediction(b.signature, 20.0 + 10 * k, 5.0, "measured", "measured", "model")
                 for k, b in enumerate(graph.blocks))  # fmt: skip
    cloud = tuple(Prediction(b.signature, 1.0 + 0.1 * k, 0.0, "measured", "measured", "")
                  for k, b in enumerate(graph.blocks))  # fmt: skip
    link = NetworkModel.affine(0.5, 1e6)
    report = make_plan(graph, Costs(edge, cloud, 1.0, link, link, DEFAULT_POWER))
    assert report.chosen.i < report.chosen.j
    return report


def best_without(report: PlanReport, refused: set[tuple[int, int]]) -> tuple[int, int]:
    """The fastest plan of the report's table whose split is not refused (its objective is latency)."""
    i, j, lat, _ = report.table.flat()
    ok = np.array([(a, b) not in refused for a, b in zip(i.tolist(), j.tolist(), strict=True)])
    k = int(np.argmin(np.where(ok, lat, np.inf)))
    return int(i[k]), int(j[k])


class RefusingServer:
    """Opens every slice but `refused`'s (refused at open, after its upload); runs them in local ONNX Runtime."""

    def __init__(self, refused: bytes) -> None:
        self.refused, self.sessions, self.refusals = refused, {}, 0

    def ensure_slice(self, data: bytes, label: str = "", load: bool = False, **kw: Any) -> str:
        if data == self.refused:
            self.refusals += 1
            raise REFUSAL
        sid = kw.get("slice_id") or slice_id_of(data)
        self.sessions[sid] = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        return sid

    def infer(self, slice_id: str, inputs: Any, timeout_s: float) -> dict[str, np.ndarray]:
        s = self.sessions[slice_id]
        names = [o.name for o in s.get_outputs()]
        return dict(zip(names, s.run(names, dict(inputs)), strict=True))

    def healthy(self, timeout_s: float) -> bool:
        return True


class RunnerEnergy:
    def run(self, runner: Any, x: Any, remaining: int) -> RunResult:
        return runner.run(x)

    def finish(self, runner: Any, x: Any) -> None:
        pass


def test_a_split_whose_slice_the_server_refused_gives_way_to_the_best_other_plan(
    chain: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each drift re-plan chose the refused split again (the planner knows nothing of refusals): its runner was made,
    refused, the run went back, drifted, and chose it again (review: 219 runners in 400 requests, 291 run locally).
    Now the refused split is never run: the switch to it is prepared and refused before any request runs on it, the
    run takes the best other plan of the refused plan's report, and a re-plan that chooses the refused split again
    keeps that one."""
    _, graph, slicer = chain
    x = _x(graph)
    n = len(graph.blocks)
    report_b = offloading_report(graph)  # the planner's choice, whenever asked
    b = (report_b.chosen.i, report_b.chosen.j)
    a = next(s for s in [(0, 2), (0, 3), (1, 3)] if s != b)
    server = RefusingServer(plan_slices(slicer, n, *b).middle or b"")
    config = RunnerConfig(stream=False, retry_interval_s=0.01)
    made: list[tuple[int, int]] = []

    def runner_for(split: tuple[int, int], report: Any, later: bool) -> Runner:
        made.append(split)
        return make_runner(slicer, graph, split, server, config=config, report=report, connect_later=later)

    monkeypatch.setattr(Runner, "replan_needed", property(lambda self: True))  # the link drifts on every request
    report_a = replace(report_b, chosen=report_b.table.plan(*a))
    run = PlannedRun(runner_for, None, lambda r, runner, remaining: report_b, a, report_a, RunnerEnergy(), x, 0.01)
    try:
        expected = best_without(report_b, {b})
        deadline = time.monotonic() + GENEROUS_S
        while run.split == a and time.monotonic() < deadline:  # b prepared and refused, then `expected` prepared
            assert not run.request(remaining=1000).fallback  # served on split a meanwhile
            time.sleep(0.001)
        assert run.split == expected and run.report is not None and run.report.chosen.i == expected[0]
        deadline = time.monotonic() + GENEROUS_S
        while (result := run.request(remaining=1000)).fallback and time.monotonic() < deadline:  # made ready
            time.sleep(0.001)
        assert not result.fallback, result.error
        for _ in range(20):  # the re-plans on every request that choose the refused split again keep this one
            run.request(remaining=1000)
    finally:
        run.close()
    assert server.refusals == 1 and made == [a, b, expected]
    assert [s.split for s in run.segments] == [a, expected]


def test_a_report_without_the_refused_splits_chooses_by_its_objective(chain: Any) -> None:
    _, graph, _ = chain
    report = offloading_report(graph)
    refused = {(report.chosen.i, report.chosen.j)}
    for _ in range(3):
        other = without(report, refused)
        assert other is not None and other.table is report.table
        split = (other.chosen.i, other.chosen.j)
        assert split == best_without(report, refused) and split not in refused
        assert other.chosen.latency_ms == report.table.plan(*split).latency_ms
        refused.add(split)


# -- a refused late plan -------------------------------------------------------------------------------------------


class FakeRunner:
    made_ready = 0

    def __init__(self, split: tuple[int, int], refused: ServerError | None) -> None:
        self.split, self.refused, self.replan_needed, self.upload_ms = split, refused, False, 0.0

    def mark_planned(self) -> None:
        pass

    def connect(self) -> bool:
        return self.refused is None

    @property
    def server_down(self) -> bool:
        return self.refused is not None

    def close(self, wait_s: float | None = None) -> None:
        pass


class FakeEnergy:
    def run(self, runner: FakeRunner, x: Any, remaining: int) -> RunResult:
        return RunResult({}, runner.refused is not None or runner.split[0] == runner.split[1], 1.0)

    def finish(self, runner: FakeRunner, x: Any) -> None:
        pass


@pytest.fixture
def no_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every retry wait over at once: the late plan is made after the first request."""
    from rr_edge.commands import _planned_run

    t = [1000.0]

    def tick() -> float:
        t[0] += 100.0
        return t[0]

    monkeypatch.setattr(_planned_run.time, "monotonic", tick)


def late_refused_run(graph: Any, late: Any) -> PlannedRun:
    b = (late.chosen.i, late.chosen.j)
    local = (len(graph.blocks) - 1,) * 2

    def runner_for(split: tuple[int, int], r: Any, later: bool) -> FakeRunner:
        return FakeRunner(split, REFUSAL if split == b else None)

    return PlannedRun(runner_for, lambda remaining: late, lambda r, runner, remaining: r, local, None,
                      FakeEnergy(), np.zeros(1), 1.0, background=False)  # fmt: skip


def test_a_refused_late_plan_gives_way_to_its_best_other_plan(chain: Any, no_wait: None) -> None:
    _, graph, _ = chain
    late = offloading_report(graph)
    run = late_refused_run(graph, late)
    for _ in range(3):
        run.request(remaining=100)
    expected = best_without(late, {(late.chosen.i, late.chosen.j)})
    assert run.split == expected and run.segments[-1].report is run.report is not None  # planned: no "no plan"


# -- closing a runner whose slice is uploading in the background ------------------------------------------------------


class SlowUpload:
    """An upload that takes `upload_s`, or until the client is closed (it then fails, as `Client` does)."""

    def __init__(self, upload_s: float) -> None:
        self.upload_s, self.closed = upload_s, False
        self.started, self.finished = threading.Event(), threading.Event()
        self.thread: threading.Thread | None = None

    def ensure_slice(self, data: bytes, label: str = "", load: bool = False, **kw: Any) -> str:
        self.thread = threading.current_thread()
        self.started.set()
        try:
            end = time.monotonic() + self.upload_s
            while time.monotonic() < end:
                if self.closed:
                    raise ServerUnavailable("UploadSlice: this client is closed", "UNAVAILABLE")
                time.sleep(0.005)  # the upload going on
            return kw.get("slice_id") or slice_id_of(data)
        finally:
            self.finished.set()

    def healthy(self, timeout_s: float) -> bool:
        return True


def uploading(chain: Any, remote: SlowUpload, timeout_s: float) -> Runner:
    """A runner switched to mid-run, its slice uploading in the background."""
    _, graph, slicer = chain
    config = RunnerConfig(timeout_s=timeout_s, stream=False)
    runner = make_runner(slicer, graph, (0, 2), remote, config=config, connect_later=True)
    assert runner.run(_x(graph)).fallback  # starts the upload
    assert remote.started.wait(GENEROUS_S)
    return runner


def test_closing_a_runner_waits_for_its_upload_and_counts_it(chain: Any) -> None:
    """`run` read the upload's time while it went on (0.0 in the summary), and the upload outlived the run. An
    upload about to end is waited for (a while: `STREAM_DRAIN_S`)."""
    remote = SlowUpload(upload_s=0.1)
    runner = uploading(chain, remote, timeout_s=GENEROUS_S)
    runner.close()
    assert remote.finished.is_set() and runner.upload_ms > 0
    assert remote.thread is not None
    remote.thread.join(GENEROUS_S)
    assert not remote.thread.is_alive()


def test_closing_a_runner_waits_for_an_upload_on_a_dead_link_only_its_timeout(
    chain: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """An upload that goes on past the call timeout (here shorter than `STREAM_DRAIN_S`) is counted up to the close
    and left to the client's close, which fails it: quietly (it logged "server failed" after the run had ended)."""
    remote = SlowUpload(upload_s=GENEROUS_S)
    runner = uploading(chain, remote, timeout_s=0.05)
    runner.close()
    assert not remote.finished.is_set()  # close did not wait for it
    counted = runner.upload_ms
    assert counted > 0
    with caplog.at_level(logging.INFO, logger="rr_edge.runner"):
        remote.closed = True  # `run` closes its client
        assert remote.thread is not None
        remote.thread.join(GENEROUS_S)
        assert not remote.thread.is_alive()
    assert runner.upload_ms == counted and not caplog.records  # counted once, nothing said


def test_a_runner_switched_to_on_a_dead_link_says_the_server_does_not_answer(
    chain: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Made with `connect_later` while the server is out of reach: once a health check went unanswered, its requests
    say so, not that the slice is being made ready on the server (testbed review: the whole of a link cut read as
    an upload in progress)."""
    _, graph, slicer = chain
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = RunnerConfig(timeout_s=1.0, retry_interval_s=0.01)
    with Client(f"127.0.0.1:{port}", ClientOptions(timeout_s=1.0)) as client:
        asked = threading.Event()  # the first health check is held until the first request has run
        healthy = client.healthy

        def held(*args: Any, **kw: Any) -> bool:
            asked.wait(GENEROUS_S)
            return healthy(*args, **kw)

        monkeypatch.setattr(client, "healthy", held)
        runner = make_runner(slicer, graph, (0, 2), client, config=config, connect_later=True)
        try:
            first = runner.run(_x(graph))
            asked.set()
            assert first.fallback and "made ready on the server" in first.error
            deadline = time.monotonic() + GENEROUS_S
            while "health check" not in (result := runner.run(_x(graph))).error and time.monotonic() < deadline:
                time.sleep(0.01)
            assert result.fallback and "UNAVAILABLE: the server does not answer its health check" in result.error
        finally:
            runner.close()
