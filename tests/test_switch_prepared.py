"""A switch of split mid-run is prepared in a thread of its own while the runner it leaves serves: made in the
requests' thread, it held the run for as long as opening the new runner's sessions took, and the new split's requests
then ran locally until its slice was uploaded and opened on the server."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rr_edge.client import Client, ClientOptions
from rr_edge.commands._planned_run import PlannedRun
from rr_edge.errors import ModelError
from rr_edge.offload import make_runner, plan_slices
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
    """A runner whose slice is made ready once `connected` is set."""

    made_ready = 0

    def __init__(self, split: tuple[int, int], connected: threading.Event) -> None:
        self.split, self.connected, self.refused = split, connected, None
        self.replan_needed, self.upload_ms, self.closed = True, 0.0, False

    def mark_planned(self) -> None:
        pass

    def connect(self) -> bool:
        return self.connected.wait(GENEROUS_S)

    def close(self, wait_s: float | None = None) -> None:
        self.closed = True
        self.upload_ms = 7.0  # what it took so far


class PlainEnergy:
    def run(self, runner: Any, x: Any, remaining: int) -> RunResult:
        return RunResult({}, False, 1.0)

    def finish(self, runner: Any, x: Any) -> None:
        pass


def test_a_run_that_ends_while_a_switch_is_prepared_closes_its_runner_without_waiting_for_the_upload() -> None:
    connected = threading.Event()
    made: list[HeldRunner] = []

    def runner_for(split: tuple[int, int], r: Any, later: bool) -> HeldRunner:
        made.append(HeldRunner(split, connected if later else threading.Event()))
        return made[-1]

    run = PlannedRun(runner_for, None, lambda r, runner, n: report(1, 3), (0, 2), report(0, 2), PlainEnergy(),
                     np.zeros(1), 1.0)  # fmt: skip
    try:
        run.request(remaining=10)
        assert run.preparing is not None and run.preparing.made.result(GENEROUS_S) is made[1]
        run.close()  # returns: the upload is left to end on its own
        assert made[0].closed and made[1].closed and run.preparing is None
        assert run.upload_ms == 14.0  # both runners' uploads counted
        assert [s.split for s in run.segments] == [(0, 2)]
    finally:
        connected.set()


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
