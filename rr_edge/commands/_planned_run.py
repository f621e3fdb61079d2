"""The runner of `rr-edge run`, switched from split to split as plans change (one `Segment` of requests each).

After each request, `PlannedRun` asks whether another plan is due:

* no plan could be made (the server was down when `run` started): planning is tried again `retry_interval_s` after
  the last try, the wait doubling (up to `MAX_RETRY_S`) while the server stays away;
* the runner's network drifted (`Runner.replan_needed`): plan again with what it measured (`rr_edge.offload.replan`);
  a re-plan that keeps the split, or goes back to the split just left, doubles the requests until the next one may
  be made (up to `MAX_REPLAN_GAP`), one that changes it otherwise resets that gap to one: on a steady but noisy link
  (a CPU-throttled edge times its transfers unevenly) one request in three or four re-planned, 35 ms each, half
  again a 19 ms request's time; two splits that each made the other look better swapped every other request. A drift by
  `URGENT_DRIFT` or more (`Runner.drift_factor`: the link twice as slow, or twice as fast) is re-planned at once:
  noise that large is rare in a smoothed drift, and waiting out the gap cost 31 requests at 463 ms instead of 40 ms
  locally after a link went from 100 to 2 Mbit/s (review), up to 32 timeouts on a link slowed to just under them;
* a re-plan went local because the network had slowed down: a local split measures no network, so the first plan
  is tried again after the same doubling wait, and re-planned from there if the network is still slow; the wait
  starts again from `retry_interval_s` only after an offloading split served `STEADY_REQUESTS` requests in a row
  from the server with no drift pending (re-plans that keep the split had reset it: a link where offloading is
  slightly worse than local flipped split every 2 s for good; so had a drift whose re-plan the gap only put off);
* the plan was local from the start: after the same doubling wait, `probe(report, remaining)` measures the link and
  plans again with it (a link that got faster went unnoticed for the rest of the run).

A switch mid-run is prepared in a thread of its own (`Preparation`) while the runner it leaves serves the requests:
the new runner is made (its local sessions opened) with `connect_later` and its slice uploaded and opened on the
server (`Runner.connect`); the run switches after the first request that ends once that is done, and makes no other
plan meanwhile. Made in the requests' thread, a switch had held the run for as long as opening its sessions took
(0.5 s for vgg16), and its requests had then run locally until the slice was ready (made connecting in that thread,
no request was served for as long as the upload's deadline on a dead link). Two exceptions: where the new plan
predicts the split running worse than running every block here (a link that slowed down a lot), the run switches as
soon as the new runner is made, and runs locally until its slice is ready; and a split whose slice the server did
not take (out of reach or busy, `CONNECT_TRIES` times) is not switched to while the server serves the split running
(review: five requests in five ran locally after a busy server's pushback). When the server refuses that slice (too
large, or one it cannot open), the split is not run again in this run: the run takes the best other plan of the
refused plan's report (planned on the link as measured then; running locally is always one), with a warning, and any
later plan that chooses a refused split gives way to its best other plan the same way (each drift re-plan had chosen
the refused split again: a new runner every two requests, three in four requests run locally, review).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np

from rr_edge.errors import PredictionsPending, RoadRunnerError, ServerBusy, ServerError, ServerUnavailable
from rr_edge.offload import DEFAULT_OBJECTIVE, PlanReport
from rr_edge.planner import choose, evaluate_all
from rr_edge.runner import Runner, RunResult

log = logging.getLogger(__name__)

MAX_RETRY_S = 60.0  # the longest wait between two tries of a plan the server or the network refused
CONNECT_TRIES = 3  # tries at making a switch's slice ready while the server is out of reach or busy
STEADY_REQUESTS = 20  # an offloading split the server served this many requests in a row, no re-plan: wait reset
MAX_REPLAN_GAP = 32  # the most requests between two drift re-plans, after re-plans that kept the split
URGENT_DRIFT = 2.0  # a drift of this factor or more is re-planned without waiting out that gap
NO_SERVER = "no plan: the server could not be reached to plan"
PREPARING = "running locally while plan {},{} is made ready on the server"  # a late plan, being prepared


class Energy(Protocol):
    def run(self, runner: Runner, x: Mapping[str, np.ndarray], remaining: int) -> RunResult: ...
    def finish(self, runner: Runner, x: Mapping[str, np.ndarray]) -> None: ...


@dataclass
class Segment:
    """The requests of a run that one split served, with the plan it ran last (None: no plan could be made)."""

    split: tuple[int, int]
    report: PlanReport | None
    first: int  # index of its first request
    end: int = -1  # one past its last (set when the split changes or the run ends)
    no_plan: str = NO_SERVER  # without a report: why there is none


def offloads(report: PlanReport | None) -> bool:
    return report is not None and report.chosen.i < report.chosen.j


def without(report: PlanReport, refused: set[tuple[int, int]]) -> PlanReport:
    """`report` with its best plan (by its objective) among those whose split is not in `refused` chosen (running
    locally is never refused)."""
    slices = report.table.inputs.refused_slices | {(i + 1, j) for i, j in refused}  # a split's middle: i+1..j
    table = evaluate_all(replace(report.table.inputs, refused_slices=slices))
    chosen = choose(table, report.options.get("objective", DEFAULT_OBJECTIVE), report.options.get("slo_ms"))
    return replace(report, chosen=chosen)


def upload_prediction_ms(report: PlanReport | None) -> float:
    """The predicted time to make the chosen plan's middle slice ready (0 when cached or nothing is offloaded)."""
    if report is None:
        return 0.0
    return report.chosen.breakdown.get("weight_upload_ms", 0.0) * report.inputs.amortize_over


class Preparation:
    """A switch being prepared, in a thread of its own unless not `background`: the runner of `split` made by `make`,
    then connected (`Runner.connect`; while the server is out of reach or busy, tried again after the runner's
    health-check wait, `CONNECT_TRIES` times in all, unless `stop` was called). `made` holds the runner once its
    local sessions are open, `ready` once the tries are over: its slice ready on the server, or not
    (`Runner.server_down`; `Runner.refused` when the server refused it). Both hold the error of a runner that could
    not be made; an error of `connect` is logged, and leaves the runner down."""

    def __init__(
        self, make: Callable[[], Runner], split: tuple[int, int], report: PlanReport, background: bool = True
    ) -> None:
        self.split, self.report = split, report
        self.made: Future[Runner] = Future()
        self.ready: Future[Runner] = Future()
        self._stop = threading.Event()
        if background:
            threading.Thread(target=self._prepare, args=(make,), name="rr-switch", daemon=True).start()
        else:
            self._prepare(make)

    def _prepare(self, make: Callable[[], Runner]) -> None:
        for future in (self.made, self.ready):
            future.set_running_or_notify_cancel()
        try:
            runner = make()
        except BaseException as exc:  # the run's error, raised where it collects the runner
            self.made.set_exception(exc)
            self.ready.set_exception(exc)
            return
        self.made.set_result(runner)
        try:
            tries = 1
            while not runner.connect() and runner.refused is None and tries < CONNECT_TRIES:
                if self._stop.wait(runner.next_check_s):
                    break
                tries += 1
        except Exception:  # a health check in the background had logged it and gone on: so does the run
            log.exception("making plan %d,%d ready failed", *self.split)
        self.ready.set_result(runner)

    def stop(self) -> None:
        """No more tries: the run ended, or took the runner as it is (its health check takes over)."""
        self._stop.set()

    def abandon(self) -> Runner | None:
        """The runner, closed without waiting for its upload (its sessions are waited for), or None when making it
        failed."""
        self.stop()
        if self.made.exception() is not None:  # waits for the sessions
            return None
        runner = self.made.result()
        runner.close(wait_s=0.0)
        return runner


class PlannedRun:
    """`make_runner(split, report, connect_later)` makes a runner (`connect_later` for a switch mid-run: see `Runner`);
    `plan(remaining)` makes a plan for the remaining requests (None:
    the split is forced, no plan is ever made); `replan(report, runner, remaining)` plans again with the runner's
    network for the remaining requests; `probe(report, remaining)`, when given, plans again with the link measured
    now (for a run whose plan is local). `background`: prepare a switch in a thread of its own (`Preparation`); False
    prepares it in the requests' thread, the switch then taking effect after the request that led to it."""

    def __init__(
        self,
        make_runner: Callable[[tuple[int, int], PlanReport | None, bool], Runner],
        plan: Callable[[int], PlanReport] | None,
        replan: Callable[[PlanReport, Runner, int], PlanReport],
        split: tuple[int, int],
        report: PlanReport | None,
        energy: Energy,
        x: Mapping[str, np.ndarray],
        retry_interval_s: float,
        probe: Callable[[PlanReport, int], PlanReport] | None = None,
        background: bool = True,
    ) -> None:
        self._make_runner, self._plan, self._replan, self._probe = make_runner, plan, replan, probe
        self._background = background
        self.preparing: Preparation | None = None  # the switch being prepared, while `runner` serves
        self._local_meanwhile = False  # the switch being prepared runs as soon as made (`_local_beats_this`)
        self._energy, self._x = energy, x
        self.runner = make_runner(split, report, False)
        self.split, self.report, self.first_report = split, report, report
        self.segments = [Segment(split, report, 0)]
        self.done = 0
        self.served_at = 0.0  # time.monotonic() when the last request was served (before any re-plan it led to)
        self.replans = 0
        self.upload_ms = 0.0  # making middle slices ready (upload, open), once per runner, not in any request
        self.made_ready = 0  # how often that succeeded (`Runner.made_ready`)
        self.predicted_upload_ms = upload_prediction_ms(report)
        self._ready = {split}  # splits whose middle slice was made ready once (their upload is predicted once)
        self._retry_s = self._first_retry_s = retry_interval_s
        self._next_try = time.monotonic() + retry_interval_s
        self._replan_gap, self._quiet_until = 1, 0  # requests between drift re-plans, and the first one allowed
        self._steady = 0  # requests in a row the server served for an offloading split, with no drift pending
        self._left: tuple[int, int] | None = None  # the split before the last switch
        self._refused: set[tuple[int, int]] = set()  # splits whose middle slice the server refused: not run again

    def request(self, remaining: int) -> RunResult:
        """Serve one request; `remaining`: how many are to come after it."""
        result = self._energy.run(self.runner, self._x, remaining)
        self.served_at = time.monotonic()
        self.done += 1
        # served, and on the link planned for: a drift whose re-plan the gap between re-plans puts off is no steady
        # link (counted, a split drifting on every request reset the wait once that gap reached 32, review)
        steady = offloads(self.report) and not result.fallback and not self.runner.replan_needed
        self._steady = self._steady + 1 if steady else 0
        if self._steady >= STEADY_REQUESTS:
            self._retry_s = self._first_retry_s  # the network serves: a later slowdown waits from the start again
        if not remaining:
            return result
        if self.preparing is not None:  # no other plan until the switch is made
            self._switch_when_ready()
        elif result.fallback and self.runner.refused is not None and self.split not in self._refused:
            self._give_way(self.split, self.report, self.runner.refused)
        elif (report := self._next_plan(remaining, result)) is not None:
            self._take(report)
        return result

    def close(self) -> None:
        """Close the runner, and one still being prepared for a switch (its sessions waited for, not its upload)."""
        try:
            self._energy.finish(self.runner, self._x)
        finally:  # a window's top-up run that failed must not leave the runner's stream open
            self.runner.close()
            self.segments[-1].end = self.done
            self._count(self.runner)
            preparing, self.preparing = self.preparing, None
            if preparing is not None and (runner := preparing.abandon()) is not None:
                log.info("the run ended before plan %d,%d was ready", *preparing.split)
                self._count(runner)

    def _count(self, runner: Runner) -> None:
        """Add what `runner` spent making its slice ready to the run's."""
        self.upload_ms += runner.upload_ms
        self.made_ready += runner.made_ready

    def _next_plan(self, remaining: int, result: RunResult) -> PlanReport | None:
        if self.report is None:
            return self._late_plan(remaining) if self._plan is not None and self._due() else None
        if self.runner.replan_needed and (self.done >= self._quiet_until or self._urgent(result)):
            self.replans += 1
            self._steady = 0
            self._energy.finish(self.runner, self._x)  # planning is not the requests' energy (review: +3-12% each)
            report = self._replan(self.report, self.runner, remaining)
            report = self._allowed(report)  # a refused split chosen again: its best other plan
            split = self._split_of(report)
            # kept, or back to the split just left: the gap doubles (two offloading splits whose transfers a shaped
            # link times unevenly swapped about once a second, a third of a testbed run spent switching, review)
            kept = split in (self.split, self._left)
            self._replan_gap = min(2 * self._replan_gap, MAX_REPLAN_GAP) if kept else 1
            self._quiet_until = self.done + self._replan_gap
            return report
        if not offloads(self.report) and offloads(self.first_report) and self._due():
            log.info("trying plan %d,%d again: the network may have recovered", *self._split_of(self.first_report))
            return self.first_report
        if self._probe is not None and not offloads(self.report) and self._due():
            return self._probed_plan(remaining)
        return None

    def _urgent(self, result: RunResult) -> bool:
        """Whether the drift is too large to wait out the gap between re-plans (only a request that timed the
        network, `remote_ms`, can have moved it)."""
        return result.remote_ms > 0 and self.runner.drift_factor >= URGENT_DRIFT

    def _probed_plan(self, remaining: int) -> PlanReport | None:
        assert self._probe is not None and self.report is not None
        self._energy.finish(self.runner, self._x)  # the probe's transfers are not the requests' energy
        try:
            report = self._probe(self.report, remaining)
        except (ServerUnavailable, ServerBusy, ServerError):  # asked again after the wait
            return None
        if offloads(report):
            log.info("the link measured faster: running plan %d,%d", *self._split_of(report))
            self.first_report = report
        return report

    def _late_plan(self, remaining: int) -> PlanReport | None:
        assert self._plan is not None
        self._energy.finish(self.runner, self._x)  # planning asks the server: not the requests' energy
        try:
            report = self._plan(remaining)
        except (ServerUnavailable, ServerBusy, PredictionsPending):  # may pass: asked again after the wait
            return None
        except RoadRunnerError as exc:  # the server answers but cannot plan this node: no use asking again
            log.warning("the server is back but cannot plan: %s; every request runs here", exc)
            self._plan = None
            self.segments[-1].end = self.done  # the requests from here on ran locally for this reason, not that one
            why = f"no plan: the server cannot plan: {exc}"
            self.segments.append(Segment(self.split, None, self.done, no_plan=why))
            return None
        log.info("the server answered: running plan %d,%d", *self._split_of(report))
        self.first_report = report
        return report

    def _due(self) -> bool:
        """Whether the wait since the last try is over; if so, the next wait is twice as long."""
        now = time.monotonic()
        if now < self._next_try:
            return False
        self._next_try = now + self._retry_s
        self._retry_s = min(2 * self._retry_s, MAX_RETRY_S)
        return True

    def _allowed(self, report: PlanReport) -> PlanReport:
        """`report`, or where the server refused its chosen split's slice in this run, its best other plan
        (`without`)."""
        if self._split_of(report) not in self._refused:
            return report
        other = without(report, self._refused)
        log.info("plan %d,%d's slice was refused; its best other plan is %d,%d", *self._split_of(report),
                 *self._split_of(other))  # fmt: skip
        return other

    def _take(self, report: PlanReport) -> None:
        report = self._allowed(report)
        split = self._split_of(report)
        if split == self.split and self.report is not None:
            self.report = self.segments[-1].report = report
            self.runner.mark_planned()  # drift counts from here
            return
        self._switch(split, report)

    def _switch(self, split: tuple[int, int], report: PlanReport) -> None:
        """Prepare `split`'s runner (`Preparation`; the Slicer is the preparation's alone meanwhile: no plan is made
        while a switch is prepared) while this one serves; run it once ready."""
        assert self.preparing is None, "a switch is prepared already"
        make = functools.partial(self._make_runner, split, report, True)  # connected by the preparation
        self._local_meanwhile = self._local_beats_this(report)
        self.preparing = Preparation(make, split, report, self._background)
        self._switch_when_ready()

    def _local_beats_this(self, report: PlanReport) -> bool:
        """Whether `report` predicts running every block here better than the offloading split running now (by its
        objective's measure: energy for "energy", latency for the others): a link that slowed down a lot."""
        if not offloads(self.report) or self.runner.server_down:
            return False
        measure = "energy_mJ" if report.options.get("objective") == "energy" else "latency_ms"
        here = report.table.plan(report.blocks - 1, report.blocks - 1)
        return bool(getattr(here, measure) < getattr(report.table.plan(*self.split), measure))

    def _switch_when_ready(self) -> None:
        """Run the prepared split from the next request on once its slice is ready on the server. A split whose slice
        the server refused gives way to its report's best other plan; one the server did not take (out of reach,
        busy) is not switched to while the split running is served by the server (the next re-plan may choose it
        again, after the gap between re-plans doubled). Where the plan predicts this split worse than running
        every block here, the new split runs as soon as its runner is made: locally until its slice is ready."""
        preparing = self.preparing
        assert preparing is not None
        made = preparing.made.done() and preparing.made.exception() is None
        if not (preparing.ready.done() or (self._local_meanwhile and made)):
            return
        self.preparing = None
        runner = preparing.made.result()  # a runner that could not be made: the run's error
        split, report = preparing.split, preparing.report
        if runner.refused is not None:  # before any request ran on it
            self._drop(runner)
            self._give_way(split, report, runner.refused)
            return
        if not preparing.ready.done():
            preparing.stop()  # its health check takes over
            log.info("switching to plan %d,%d before its slice is ready: plan %d,%d is predicted slower than local",
                     *split, *self.split)  # fmt: skip
        elif runner.server_down and offloads(self.report) and not self.runner.server_down:
            self._drop(runner)
            self._replan_gap = min(2 * self._replan_gap, MAX_REPLAN_GAP)
            self._quiet_until = self.done + self._replan_gap
            log.warning("staying on plan %d,%d: plan %d,%d's slice could not be made ready on the server",
                        *self.split, *split)  # fmt: skip
            return
        elif runner.server_down:  # as is the split running, or it runs locally
            log.warning("switching to plan %d,%d, its slice not ready on the server: running locally until it is",
                        *split)  # fmt: skip
        self._run(runner, split, report)

    def _drop(self, runner: Runner) -> None:
        """Close a prepared runner no request ran on, counting its upload."""
        runner.close(wait_s=0.0)
        self._count(runner)

    def _run(self, runner: Runner, split: tuple[int, int], report: PlanReport) -> None:
        """Serve the next requests with `runner`, of `split`, closing the one that served until now."""
        self._energy.finish(self.runner, self._x)  # an energy window covers one split
        self._left = self.split
        self.runner.close(wait_s=0.0)  # its upload still going (a split left early) is no request's to wait for
        self._count(self.runner)
        self.runner, self.split, self.report = runner, split, report
        self.segments[-1].end = self.done
        self.segments.append(Segment(split, report, self.done))  # also when a late plan keeps the split
        if split not in self._ready:  # its upload predicted once, for a split that ran
            self._ready.add(split)
            self.predicted_upload_ms += upload_prediction_ms(report)
        self._next_try = time.monotonic() + self._retry_s

    def _give_way(self, refused: tuple[int, int], report: PlanReport | None, exc: ServerError) -> None:
        """The server refused the slice of split `refused` (`Runner.refused`), the one running or the one prepared:
        that split is not run again. The run takes the best other plan of its `report`, planned on the link as
        measured then (going back to a new runner of the split before, from that split's older report, forgot the
        drift it had measured: it re-planned at once). A split forced without a plan has nothing else to run: its
        requests run locally."""
        self._refused.add(refused)
        if report is None:
            log.warning("the server refused plan %d,%d: every request runs here: %s", *refused, exc)
            return
        other = without(report, self._refused)
        log.warning("taking plan %d,%d: the server refused plan %d,%d: %s", *self._split_of(other), *refused, exc)
        self._take(other)

    @staticmethod
    def _split_of(report: Any) -> tuple[int, int]:
        return report.chosen.i, report.chosen.j
