"""A switch of split mid-run is prepared in a thread of its own while the runner it leaves serves: made in the
requests' thread, it held the run for as long as opening the new runner's sessions took, and the new split's requests
then ran locally until its slice was uploaded and opened on the server."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from rr_edge.client import Client, ClientOptions, Prediction
from rr_edge.commands import _planned_run
from rr_edge.commands._planned_run import CONNECT_TRIES, PlannedRun
from rr_edge.errors import ModelError
from rr_edge.meters.model import DEFAULT_POWER
from rr_edge.netmodel import NetworkModel
from rr_edge.offload import Costs, make_plan, make_runner, plan_slices
from rr_edge.runner import Runner, RunnerConfig, RunResult
from tests._server_support import serving
from tests.test_planned_run_review4 import RunnerEnergy, _x, report

GENEROUS_S = 30.0  # how long a test waits for something that takes well under a second


def test_a_switch_serves_on_the_split_it_leaves_until_the_new_one_is_ready(
    chain: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Split (0, 2) offloads; a re-plan chooses (1, 3), whose slice's upload is held: meanwhile every request is
    still served by the server on (0, 2), in the requests' thread nothing waits for the upload, and no other plan is
    made; once the slice is ready, the run switches, and the first request of (1, 3) is served by the server too."""
    _, graph, slicer = chain
    x = _x(graph)
    expected = make_runner(slicer, graph, (3, 3), None)(x)["y3"]
    new_middle = plan_slices(slicer, len(graph.blocks), 1, 3).middle
    release, uploading = threading.Event(), threading.Event()
    callers: list[int] = []
    replans: list[int] = []
    with serving(tmp_path / "data") as (srv, _), Client(str(srv.address), ClientOptions(timeout_s=5.0)) as client:
        ensure = client.ensure_slice

        def held(data: bytes, *args: Any, **kw: Any) -> str:
            if data == new_middle:
                callers.append(threading.get_ident())
                uploading.set()
                assert release.wait(GENEROUS_S)
            return ensure(data, *args, **kw)

        monkeypatch.setattr(client, "ensure_slice", held)
        config = RunnerConfig(timeout_s=5.0, retry_interval_s=0.05)

        def runner_for(split: tuple[int, int], r: Any, later: bool) -> Runner:
            return make_runner(slicer, graph, split, client, config=config, connect_later=later)

        def replan(r: Any, runner: Runner, remaining: int) -> Any:
            replans.append(len(replans))
            return report(1, 3)

        monkeypatch.setattr(Runner, "replan_needed", property(lambda self: True))  # the link drifts on each request
        run = PlannedRun(runner_for, None, replan, (0, 2), report(0, 2), RunnerEnergy(), x, 0.05)
        try:
            results = [run.request(remaining=1000)]
            assert uploading.wait(GENEROUS_S) and run.preparing is not None
            for _ in range(5):
                results.append(run.request(remaining=1000))
            assert run.split == (0, 2) and replans == [0]  # served on (0, 2), no re-plan while preparing
            release.set()
            deadline = time.monotonic() + GENEROUS_S
            while run.split == (0, 2) and time.monotonic() < deadline:
                results.append(run.request(remaining=1000))
                time.sleep(0.001)
            results.append(run.request(remaining=1000))
        finally:
            run.close()
    assert run.split == (1, 3) and [s.split for s in run.segments] == [(0, 2), (1, 3)]
    assert callers and threading.get_ident() not in callers
    assert not [r.error for r in results if r.fallback]  # no request ran locally, before the switch or after it
    for r in results:
        np.testing.assert_allclose(r.outputs["y3"], expected, rtol=1e-4, atol=1e-5)
    assert run.made_ready == 2 and run.upload_ms > 0


class HeldRunner:
    """A runner whose `connect` waits for `connected` and then says `up` (False: the server out of reach or busy);
    `tries` counts the calls."""

    made_ready = 0

    def __init__(self, split: tuple[int, int], connected: threading.Event, up: bool = True) -> None:
        self.split, self.connected, self.up, self.refused = split, connected, up, None
        self.replan_needed, self.upload_ms, self.closed, self.tries = True, 0.0, False, 0
        self.server_down, self.next_check_s = split[0] < split[1], 0.0

    def mark_planned(self) -> None:
        pass

    def connect(self) -> bool:
        self.tries += 1
        if not self.connected.wait(GENEROUS_S):
            raise RuntimeError("never connected")
        self.server_down = not self.up
        return self.up

    def close(self, wait_s: float | None = None) -> None:
        self.closed = True
        self.upload_ms = 7.0  # what it took so far


class PlainEnergy:
    def run(self, runner: Any, x: Any, remaining: int) -> RunResult:
        return RunResult({}, runner.server_down, 1.0)

    def finish(self, runner: Any, x: Any) -> None:
        pass


def held_run(connected: threading.Event, up: bool = True, background: bool = True, **kw: Any) -> PlannedRun:
    """A run on (0, 2), served by the server, whose re-plans choose (1, 3) (`kw`: the re-plan's report's fields)."""
    made: list[HeldRunner] = []

    def runner_for(split: tuple[int, int], r: Any, later: bool) -> HeldRunner:
        made.append(HeldRunner(split, connected, up) if later else HeldRunner(split, threading.Event()))
        made[-1].server_down = False if not later else made[-1].server_down
        return made[-1]

    new = report(1, 3)
    for name, value in kw.items():
        setattr(new, name, value)
    run = PlannedRun(runner_for, None, lambda r, runner, n: new, (0, 2), report(0, 2), PlainEnergy(), np.zeros(1),
                     1.0, background=background)  # fmt: skip
    run.made = made  # type: ignore[attr-defined]
    return run


def test_a_run_that_ends_while_a_switch_is_prepared_closes_its_runner_without_waiting_for_the_upload() -> None:
    connected = threading.Event()
    run = held_run(connected)
    made = run.made  # type: ignore[attr-defined]
    try:
        run.request(remaining=10)
        preparing = run.preparing
        assert preparing is not None and preparing.made.result(GENEROUS_S) is made[1]
        run.close()  # returns: the upload is left to end on its own
        assert not preparing.ready.done()  # still uploading: not waited for
        assert made[0].closed and made[1].closed and run.preparing is None
        assert run.upload_ms == 14.0  # both runners' uploads counted
        assert [s.split for s in run.segments] == [(0, 2)] and run.predicted_upload_ms == 0.0  # (1, 3) never ran
    finally:
        connected.set()


def test_a_split_whose_slice_the_server_did_not_take_is_not_switched_to_while_the_server_serves(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The server busy or out of reach for the new slice, `CONNECT_TRIES` times: the run stays on the split the
    server serves (it had switched, and run every request locally), and re-plans again only after a doubled gap."""
    connected = threading.Event()
    connected.set()
    run = held_run(connected, up=False, background=False)
    made = run.made  # type: ignore[attr-defined]
    with caplog.at_level(logging.WARNING, logger=_planned_run.__name__):
        results = [run.request(remaining=10)]
        assert run.preparing is None and run.split == (0, 2) and made[1].closed
        assert made[1].tries == CONNECT_TRIES and "staying on plan 0,2" in caplog.text
        results.append(run.request(remaining=10))
        assert len(made) == 2  # the gap doubled: no re-plan at the next request
        results.append(run.request(remaining=10))
        assert len(made) == 3  # the one after
    assert not any(r.fallback for r in results)
    run.close()


def test_a_split_whose_slice_the_server_did_not_take_is_switched_to_when_the_server_serves_nothing() -> None:
    connected = threading.Event()
    connected.set()
    run = held_run(connected, up=False, background=False)
    run.runner.server_down = True  # type: ignore[attr-defined]  # the split running is no better off
    run.request(remaining=10)
    assert run.split == (1, 3) and run.preparing is None  # its own health check goes on from here
    run.close()


def test_a_switch_away_from_a_split_worse_than_local_runs_locally_until_the_slice_is_ready() -> None:
    """The re-plan predicts the split running slower than running every block here (a link that slowed down a lot):
    the new split runs as soon as its runner is made, locally until its slice is ready, as before."""
    connected = threading.Event()
    slow_here = SimpleNamespace(plan=lambda i, j: SimpleNamespace(latency_ms=1.0 if i == j else 9.0, energy_mJ=1.0))
    run = held_run(connected, table=slow_here)
    made = run.made  # type: ignore[attr-defined]
    try:
        results = [run.request(remaining=10)]
        deadline = time.monotonic() + GENEROUS_S
        while run.split == (0, 2) and time.monotonic() < deadline:  # made: switched at once
            results.append(run.request(remaining=10))
            time.sleep(0.001)
        assert run.split == (1, 3) and not any(r.fallback for r in results)
        assert run.request(remaining=10).fallback  # (1, 3), local until its slice is ready
        connected.set()
        while made[1].server_down and time.monotonic() < deadline:
            time.sleep(0.001)
        assert not run.request(remaining=10).fallback
        assert made[1].tries == 1  # the preparation's try; its health check would take over
    finally:
        connected.set()
        run.close()


def test_an_error_in_connect_is_logged_and_the_run_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(HeldRunner):
        def connect(self) -> bool:
            raise RuntimeError("a bug in the health check")

    run = PlannedRun(lambda s, r, later: Broken(s, threading.Event()) if later else HeldRunner(s, threading.Event()),
                     None, lambda r, runner, n: report(1, 3), (0, 2), report(0, 2), PlainEnergy(), np.zeros(1), 1.0,
                     background=False)  # fmt: skip
    run.runner.server_down = False  # type: ignore[attr-defined]
    with caplog.at_level(logging.ERROR, logger=_planned_run.__name__):
        run.request(remaining=10)
    assert "making plan 1,3 ready failed" in caplog.text and "a bug in the health check" in caplog.text
    assert run.split == (0, 2) and run.preparing is None  # the run goes on on the split the server serves
    run.close()


def test_a_runner_that_cannot_be_made_fails_the_request_that_would_switch_to_it() -> None:
    """The error of making the new runner (here a model ONNX Runtime cannot open) is the run's, raised in its thread,
    not lost in the preparation's; the run goes on with the split it had."""

    asked = threading.Event()

    def runner_for(split: tuple[int, int], r: Any, later: bool) -> HeldRunner:
        if later:
            assert asked.wait(GENEROUS_S)
            raise ModelError("ONNX Runtime cannot open the slice")
        return HeldRunner(split, threading.Event())

    run = PlannedRun(runner_for, None, lambda r, runner, n: report(1, 3), (0, 2), report(0, 2), PlainEnergy(),
                     np.zeros(1), 1.0)  # fmt: skip
    run.runner.server_down = False  # type: ignore[attr-defined]
    try:
        run.request(remaining=10)
        assert run.preparing is not None
        asked.set()
        run.preparing.ready.exception(GENEROUS_S)  # made, and failed
        with pytest.raises(ModelError, match="cannot open"):
            run.request(remaining=10)
        assert run.split == (0, 2) and run.preparing is None
    finally:
        run.close()


def test_connect_makes_the_slice_ready_in_the_calling_thread(chain: Any, tmp_path: Path) -> None:
    _, graph, slicer = chain
    with serving(tmp_path / "data") as (srv, _), Client(str(srv.address)) as client:
        runner = make_runner(slicer, graph, (0, 2), client, connect_later=True)
        try:
            assert runner.server_down and runner.connect() and not runner.server_down
            assert runner.made_ready == 1 and not runner.run(_x(graph)).fallback
            assert runner.connect()  # connected already: nothing to do
            assert runner.made_ready == 1
        finally:
            runner.close()


def test_a_switch_from_a_split_worse_than_local_runs_the_new_split_locally_until_its_slice_is_ready(
    chain: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a real runner and server: the re-plan predicts every block run here faster than split (0, 2) (an edge
    fast, a cloud slow), and chooses (1, 3). The run switches once the new runner is made, while its upload is held:
    its requests run locally, saying why, and are served by the server once the slice is ready."""
    _, graph, slicer = chain
    x = _x(graph)
    edge = tuple(Prediction(b.signature, 0.1, 1.0, "measured", "measured", "model") for b in graph.blocks)
    cloud = tuple(Prediction(b.signature, 10.0, 0.0, "measured", "measured", "") for b in graph.blocks)
    link = NetworkModel.affine(0.5, 1e6)
    planned = make_plan(graph, Costs(edge, cloud, 1.0, link, link, DEFAULT_POWER))
    old, new = (replace(planned, chosen=planned.table.plan(*split)) for split in ((0, 2), (1, 3)))
    new_middle = plan_slices(slicer, len(graph.blocks), 1, 3).middle
    release = threading.Event()
    with serving(tmp_path / "data") as (srv, _), Client(str(srv.address), ClientOptions(timeout_s=5.0)) as client:
        ensure = client.ensure_slice

        def held(data: bytes, *args: Any, **kw: Any) -> str:
            if data == new_middle:
                assert release.wait(GENEROUS_S)
            return ensure(data, *args, **kw)

        monkeypatch.setattr(client, "ensure_slice", held)
        config = RunnerConfig(timeout_s=5.0, retry_interval_s=0.05)

        def runner_for(split: tuple[int, int], r: Any, later: bool) -> Runner:
            return make_runner(slicer, graph, split, client, config=config, connect_later=later)

        monkeypatch.setattr(Runner, "replan_needed", property(lambda self: True))
        run = PlannedRun(runner_for, None, lambda r, runner, n: new, (0, 2), old, RunnerEnergy(), x, 0.05)
        try:
            deadline = time.monotonic() + GENEROUS_S
            while run.split == (0, 2) and time.monotonic() < deadline:  # switched once the runner is made
                assert not run.request(remaining=1000).fallback
            local = run.request(remaining=1000)
            assert run.split == (1, 3) and local.fallback and "made ready on the server" in local.error
            release.set()
            while (result := run.request(remaining=1000)).fallback and time.monotonic() < deadline:
                time.sleep(0.01)
            assert not result.fallback, result.error
        finally:
            release.set()
            run.close()
