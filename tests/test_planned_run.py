"""`rr-edge run` switching splits: a plan made late when the server comes up, a re-plan after network drift, and a
return to the network after a re-plan went local (found by an adversarial review: a run that started before its
server, or that went local during a brief slowdown, stayed local for good)."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from conftest import Clock

from rr_edge.commands import _planned_run
from rr_edge.commands._planned_run import MAX_REPLAN_GAP, MAX_RETRY_S, PlannedRun
from rr_edge.errors import ModelError, PredictionsPending, ServerBusy, ServerError, ServerUnavailable
from rr_edge.runner import RunResult

LOCAL = (4, 4)


def report(i: int, j: int, upload_ms: float = 0.0) -> Any:
    breakdown = {"weight_upload_ms": upload_ms}
    even = SimpleNamespace(plan=lambda i, j: SimpleNamespace(latency_ms=1.0, energy_mJ=1.0))  # local never better
    return SimpleNamespace(
        chosen=SimpleNamespace(i=i, j=j, breakdown=breakdown),
        inputs=SimpleNamespace(amortize_over=1),
        table=even,
        blocks=5,
        options={},
    )


class FakeRunner:
    made_ready = 0

    def __init__(self, split: tuple[int, int]) -> None:
        self.split, self.replan_needed, self.upload_ms, self.closed = split, False, 0.0, False
        self.refused: ServerError | None = None  # `Runner.refused`: the server refused its slice in the background

    def mark_planned(self) -> None:
        self.replan_needed = False

    def connect(self) -> bool:
        return self.refused is None

    @property
    def server_down(self) -> bool:
        return self.refused is not None

    def close(self, wait_s: float | None = None) -> None:
        self.closed = True


class FakeEnergy:
    def run(self, runner: FakeRunner, x: np.ndarray, remaining: int) -> RunResult:
        return RunResult({}, runner.refused is not None, 1.0)  # a refused slice: every request runs locally

    def finish(self, runner: FakeRunner, x: np.ndarray) -> None:
        pass


def planned_run(first: Any, plan: Any = None, replan: Any = None) -> PlannedRun:
    def make_runner(split: tuple[int, int], report: Any, connect_later: bool) -> FakeRunner:
        return FakeRunner(split)

    split = LOCAL if first is None else (first.chosen.i, first.chosen.j)
    return PlannedRun(
        make_runner,
        plan,
        replan or (lambda r, runner, remaining: r),
        split,
        first,
        FakeEnergy(),
        np.zeros(1),
        1.0,
        background=False,
    )


def test_a_run_that_started_before_its_server_plans_once_the_server_answers(clock: Clock) -> None:
    tries: list[float] = []
    offloading = report(0, 2)

    def plan(remaining: int) -> Any:
        tries.append(clock.t)
        if len(tries) < 4:
            raise ServerUnavailable("UNAVAILABLE: connection refused", "UNAVAILABLE")
        return offloading

    run = planned_run(None, plan)
    for _ in range(200):
        clock.t += 0.5
        run.request(remaining=10)
    assert [b - a for a, b in zip(tries, tries[1:], strict=False)] == [1.0, 2.0, 4.0]  # from 1 s, doubling
    assert [(s.split, s.report) for s in run.segments] == [(LOCAL, None), ((0, 2), offloading)]
    assert run.first_report is offloading and run.runner.split == (0, 2)


def test_a_server_busy_or_still_refitting_is_asked_again(clock: Clock) -> None:
    """A server just back up is often busy or refitting: planning gave up for good on either (found by review)."""
    answers: list[Any] = [ServerBusy("busy", 0.1), PredictionsPending("refitting"), report(0, 2)]

    def plan(remaining: int) -> Any:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    run = planned_run(None, plan)
    for _ in range(40):
        clock.t += 1.0
        run.request(remaining=10)
    assert not answers and run.split == (0, 2)


def test_a_late_plan_that_keeps_the_local_split_starts_a_segment_of_its_own(clock: Clock) -> None:
    """The requests run before any plan stay marked as such (the late plan's report overwrote theirs)."""
    local = report(*LOCAL)
    run = planned_run(None, lambda remaining: local)
    for _ in range(5):
        clock.t += 1.0
        run.request(remaining=10)
    assert [(s.split, s.report) for s in run.segments] == [(LOCAL, None), (LOCAL, local)]


def test_a_server_that_cannot_plan_this_node_is_not_asked_again(clock: Clock) -> None:
    tries: list[int] = []

    def plan(remaining: int) -> Any:
        tries.append(remaining)
        raise ModelError("node 'cam' has no network profile on the server")

    run = planned_run(None, plan)
    for _ in range(50):
        clock.t += 1.0
        run.request(remaining=10)
    assert len(tries) == 1 and run.split == LOCAL
    # the requests after the answer ran locally for the server's reason, not for want of a server (found by review)
    first, after = run.segments
    assert first.no_plan == _planned_run.NO_SERVER and first.end == after.first
    assert after.report is None and after.no_plan.endswith("has no network profile on the server")


def test_a_run_that_closes_closes_its_runner_even_when_the_last_energy_window_fails(clock: Clock) -> None:
    class FailingEnergy(FakeEnergy):
        def finish(self, runner: FakeRunner, x: np.ndarray) -> None:
            raise ServerUnavailable("a top-up run of the window failed", "UNAVAILABLE")

    run = PlannedRun(lambda split, r, _: FakeRunner(split), None, lambda r, runner, remaining: r, (0, 2), report(0, 2),
                     FailingEnergy(), np.zeros(1), 1.0, background=False)  # fmt: skip
    with pytest.raises(ServerUnavailable):
        run.close()
    assert run.runner.closed and run.segments[-1].end == 0


def test_a_re_plan_that_went_local_tries_the_network_plan_again_later(clock: Clock) -> None:
    offloading, local = report(0, 2, upload_ms=7.0), report(*LOCAL)
    run = planned_run(offloading, replan=lambda r, runner, remaining: local)
    run.runner.replan_needed = True  # the network slowed down
    run.request(remaining=100)
    assert run.split == LOCAL and run.replans == 1
    for _ in range(3):  # still slow whenever it is tried again: local, with longer and longer waits
        waited = 0.0
        while run.split == LOCAL:
            clock.t += 0.25
            waited += 0.25
            run.request(remaining=100)
        assert run.split == (0, 2) and run.report is offloading
        run.runner.replan_needed = True
        run.request(remaining=100)
        assert run.split == LOCAL
    assert waited == 4.0  # 1, 2, then 4 s
    assert [s.split for s in run.segments] == [(0, 2), LOCAL] * 4
    assert run.predicted_upload_ms == 7.0  # once: the slice stays on the server between the tries
    while run.split == LOCAL:
        clock.t += 0.25
        run.request(remaining=100)
    for _ in range(_planned_run.STEADY_REQUESTS):  # the network serves again: a later slowdown waits 1 s again
        run.request(remaining=100)
    assert run._retry_s == 1.0


def test_the_waits_stop_doubling_at_a_minute(clock: Clock) -> None:
    run = planned_run(None, lambda remaining: (_ for _ in ()).throw(ServerUnavailable("down", "UNAVAILABLE")))
    for _ in range(2000):
        clock.t += 1.0
        run.request(remaining=10)
    assert run._retry_s == MAX_RETRY_S


def test_a_re_plan_spreads_an_upload_over_the_requests_left(clock: Clock) -> None:
    """Late in a run a new slice's upload has few requests to pay for it (it was spread over all of them)."""
    asked: list[int] = []
    run = planned_run(report(0, 2), replan=lambda r, runner, remaining: asked.append(remaining) or r)
    run.runner.replan_needed = True
    run.request(remaining=42)
    assert asked == [42]


def test_a_drift_re_plan_is_made_outside_the_requests_energy_window(clock: Clock) -> None:
    """The late plan and the link probe closed the energy window before asking the server; the drift re-plan did
    not, and its planning time was billed to the requests (3-12% each; found by review)."""
    events: list[str] = []

    class Recording(FakeEnergy):
        def finish(self, runner: FakeRunner, x: np.ndarray) -> None:
            events.append("finish")

    run = planned_run(report(0, 2), replan=lambda r, runner, remaining: events.append("replan") or r)
    run._energy = Recording()
    run.runner.replan_needed = True
    run.request(remaining=10)
    assert events == ["finish", "replan"]


def test_no_plan_is_made_after_the_last_request(clock: Clock) -> None:
    run = planned_run(report(0, 2), replan=lambda r, runner, remaining: report(*LOCAL))
    run.runner.replan_needed = True
    run.request(remaining=0)
    assert run.replans == 0 and run.split == (0, 2)


def test_re_plans_that_keep_the_split_come_ever_further_apart(clock: Clock) -> None:
    """A steady link timed unevenly (a CPU-throttled edge) drifted past the threshold every three or four requests:
    364 re-plans in 1500 requests, 35 ms each. Re-plans that keep the split double the gap to the next (to 32);
    one that changes the split resets it."""
    offloading = report(0, 2)
    asked: list[int] = []
    run = planned_run(offloading, replan=lambda r, runner, remaining: asked.append(run.done) or offloading)
    for _ in range(200):
        run.runner.replan_needed = True  # noise: every request looks drifted
        run.request(remaining=1000)
    gaps = [b - a for a, b in zip(asked, asked[1:], strict=False)]
    assert gaps[:6] == [2, 4, 8, 16, 32, 32] and run.replans == len(asked) < 12
    other = report(1, 3)
    run._replan = lambda r, runner, remaining: asked.append(run.done) or other
    while run.split != (1, 3):
        run.runner.replan_needed = True
        run.request(remaining=1000)
    run._replan = lambda r, runner, remaining: asked.append(run.done) or other
    run.runner.replan_needed = True
    run.request(remaining=1000)
    assert asked[-1] - asked[-2] == 1  # the split changed: the next drift is re-planned at once


def test_a_run_planned_local_probes_the_link_after_doubling_waits(clock: Clock) -> None:
    """A local plan measures no network: a link that got faster went unnoticed for the rest of the run."""
    local, offloading = report(*LOCAL), report(0, 2)
    probes: list[float] = []

    def probe(r: Any, remaining: int) -> Any:
        probes.append(clock.t)
        return offloading if len(probes) == 3 else local

    run = PlannedRun(lambda split, r, _: FakeRunner(split), None, lambda r, runner, remaining: r, LOCAL, local,
                     FakeEnergy(), np.zeros(1), 1.0, probe=probe, background=False)  # fmt: skip
    while run.split == LOCAL:
        clock.t += 0.25
        run.request(remaining=100)
    assert [t - 1000.0 for t in probes] == [1.0, 2.0, 4.0]  # after --retry-interval, then waits doubling from it
    assert run.split == (0, 2) and run.first_report is offloading
    run.runner.replan_needed = True  # slow again: local, then the offloading plan is tried again later
    run._replan = lambda r, runner, remaining: local
    run.request(remaining=100)
    assert run.split == LOCAL


def test_two_splits_that_each_make_the_other_look_better_swap_ever_less_often(clock: Clock) -> None:
    """Each re-plan chooses the split the run left last (on a shaped link, each split's transfers made the other
    look faster): going back to it doubles the gap between re-plans as keeping a split does; resetting it, the run
    swapped on every other request (testbed review: 96 switches in 800 requests, a third of the run switching)."""
    a, b = report(0, 2), report(1, 3)
    run = planned_run(a, replan=lambda r, runner, remaining: b if r is a else a)
    for _ in range(400):
        run.runner.replan_needed = True  # the link drifts on every request, never by URGENT_DRIFT
        run.request(remaining=1000)
    gaps = [s.end - s.first for s in run.segments[:-1]]
    assert len(run.segments) < 20 and gaps[-1] == MAX_REPLAN_GAP
    assert gaps == sorted(gaps)  # ever further apart, up to the longest gap


def test_a_forced_split_whose_slice_the_server_refused_runs_locally_and_says_so_once(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """A split forced without a plan has no other plan to give way to: its requests run locally, one warning."""

    def refused(split: tuple[int, int], report: Any, connect_later: bool) -> FakeRunner:
        runner = FakeRunner(split)
        runner.refused = ServerError("UploadSlice: RESOURCE_EXHAUSTED: slice too big", "RESOURCE_EXHAUSTED")
        return runner

    # as `run --split 0,2` runs when the server could not be asked for a plan: no plan, none made later
    run = PlannedRun(refused, None, lambda r, runner, remaining: r, (0, 2), None, FakeEnergy(), np.zeros(1), 1.0,
                     background=False)  # fmt: skip
    with caplog.at_level(logging.WARNING, logger=_planned_run.__name__):
        for _ in range(5):
            assert run.request(remaining=100).fallback
    assert run.split == (0, 2) and len(run.segments) == 1
    assert caplog.text.count("the server refused plan 0,2: every request runs here") == 1
