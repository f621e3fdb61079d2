"""Stops ONNX Runtime runs that outlive their time, lose their caller, or outlast the server.

Every run is watched (`RunWatchdog`, one thread for all): ONNX Runtime stops a run whose `RunOptions.terminate` is
set, and the watchdog sets it when the run outlives its time (its caller's deadline, at most `MAX_RUN_SECONDS`), when
its caller goes away (`RunCaller.end`: the client cancelled the call) or when the server stops (`terminate_all`).
A slice of a few hundred bytes can loop for ever (a Loop of 10^15 trips); unwatched, it would hold a worker thread and
a core until the process is killed, and keep the process from exiting.
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import onnxruntime as ort

from rr_server.errors import DeadlineExceeded, ServerError, start_thread

# The longest one ONNX Runtime run may take, whatever its caller's deadline: far more than a real slice needs (vgg16
# whole takes ~1 s on a slow CPU), far less than for ever.
MAX_RUN_SECONDS = 60.0


class Run:
    """One ONNX Runtime run: its RunOptions, when it is late, and why it was stopped (None: it was not)."""

    __slots__ = ("deadline", "late", "options", "stopped")

    def __init__(self, deadline: float, late: Callable[[], ServerError]) -> None:
        self.options = ort.RunOptions()
        self.options.log_severity_level = 4  # a stopped run is reported by its exception, not by ONNX Runtime's log
        self.deadline = deadline
        self.late = late
        self.stopped: ServerError | None = None

    def stop(self, why: ServerError) -> None:
        if self.stopped is None:
            self.stopped = why
            self.options.terminate = True


class RunCaller:
    """Whoever waits for runs (a gRPC call, the cloud profiler): its time left (`time_remaining`, seconds or None),
    and `end` when it goes away, which stops its runs in progress and refuses later ones. Thread-safe."""

    def __init__(self, time_remaining: Callable[[], float | None] = lambda: None) -> None:
        self.time_remaining = time_remaining
        self._lock = threading.Lock()
        self._runs: set[Run] = set()
        self._ended: ServerError | None = None

    def end(self, why: ServerError) -> None:
        with self._lock:
            if self._ended is None:
                self._ended = why
            runs = list(self._runs)
        for run in runs:
            run.stop(why)

    def _attach(self, run: Run) -> None:
        with self._lock:
            if self._ended is not None:
                raise type(self._ended)(str(self._ended))
            self._runs.add(run)

    def _detach(self, run: Run) -> None:
        with self._lock:
            self._runs.discard(run)


class RunWatchdog:
    """Stops the ONNX Runtime runs that outlive their time, and every run once `terminate_all` is called.

    One thread for all runs (started with the first), asleep until the earliest deadline: a run costs a RunOptions
    and a heap entry. Entries of finished runs stay until the thread wakes or they outnumber the runs in progress."""

    def __init__(self, max_seconds: float = MAX_RUN_SECONDS) -> None:
        self.max_seconds = max_seconds
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Run]] = []
        self._active: set[Run] = set()
        self._order = itertools.count()
        self._wake_at = math.inf  # when the thread wakes next (never later than the earliest deadline)
        self._closed: ServerError | None = None
        self._thread: threading.Thread | None = None

    @contextmanager
    def watch(self, what: str, caller: RunCaller | None = None, seconds: float | None = None) -> Iterator[Run]:
        """A run of `what` (its `options` go to ONNX Runtime), stopped past `seconds` (at most `max_seconds`), past the
        caller's deadline or when the caller ends. An exception of a stopped run becomes why it was stopped."""
        limit, reason = self.max_seconds, "the server's limit for one run"
        if seconds is not None and seconds < limit:
            limit, reason = seconds, "its time budget"
        remaining = caller.time_remaining() if caller is not None else None
        if remaining is not None and remaining < limit:
            limit, reason = remaining, "the call's deadline"
        if limit <= 0:
            raise DeadlineExceeded(f"{what}: {reason} passed before the run started")
        run = Run(
            time.monotonic() + limit, lambda: DeadlineExceeded(f"{what} was stopped after {limit:.3g} s: {reason}")
        )
        if caller is not None:
            caller._attach(run)
        try:
            with self._cond:
                if self._closed is not None:
                    raise type(self._closed)(str(self._closed))
                self._active.add(run)
                heapq.heappush(self._heap, (run.deadline, next(self._order), run))
                if self._thread is None:  # kept once started: one that failed to start had left runs unwatched
                    thread = threading.Thread(target=self._watch, name="rr-run-watchdog", daemon=True)
                    start_thread(thread, what)
                    self._thread = thread
                elif run.deadline < self._wake_at:
                    self._cond.notify()
            try:
                yield run
            except Exception:
                if run.stopped is not None:  # a copy: the one kept would hold this traceback, and its frames, alive
                    raise type(run.stopped)(str(run.stopped)) from None
                raise
        finally:
            if caller is not None:
                caller._detach(run)
            with self._cond:
                self._active.discard(run)
                if len(self._heap) > 2 * len(self._active) + 64:
                    self._heap = [entry for entry in self._heap if entry[2] in self._active]
                    heapq.heapify(self._heap)

    def terminate_all(self, why: ServerError) -> None:
        """Stop every run in progress and refuse new ones (the server is stopping)."""
        with self._cond:
            self._closed = why
            runs = list(self._active)
            self._cond.notify()  # the thread ends: every run is stopped and no new one comes
        for run in runs:
            run.stop(why)

    def _watch(self) -> None:
        with self._cond:
            while self._closed is None:
                now = time.monotonic()
                heap = self._heap
                while heap and (heap[0][0] <= now or heap[0][2] not in self._active):
                    _, _, run = heapq.heappop(heap)
                    if run in self._active:
                        run.stop(run.late())
                self._wake_at = heap[0][0] if heap else math.inf
                self._cond.wait(None if not heap else self._wake_at - now)
