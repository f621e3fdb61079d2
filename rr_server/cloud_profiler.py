"""The server's own row of the matrices: it times uploaded block slices on its execution provider.

When an edge reports a layer profile that names the slice of that block (already uploaded), the signature is queued
here; a background worker times the slice (warm-up, then repeated runs) and stores the result as a measurement of the
cloud node with source `cloud-profiler`. A reported whole-model run that names the model's slice is timed the same
way and stored as the cloud node's run of that model (its whole-model latency; the edge calibrates the cloud's block
predictions with it). Each signature and each model is timed once per server data dir and execution provider, with
the slice storage recorded for it (its first report's, until the slice store loses it): a server started on another
provider than its row was timed on (its GPU no longer loads, say) forgets those timings and times the slices again.
The queue lives in memory, but the slices it comes from are stored with the report: at start, every stored slice the
cloud node has not timed yet is queued again, so a `kill -9` loses none. Timing keeps out of the way of the edges'
requests (`rr_server.activity`): the session's open and every run wait until no inference runs (at most the time
budget each), and a timed run that a request overlapped is not counted.

Each timing ends one of four ways:
* timed: stored;
* passing (a ServerError: memory short for a moment, the device, the slice evicted meanwhile, a run past the time
  budget that a request overlapped): tried again at the slice's next report, or the next start;
* refused (`Refused`: random inputs over `MAX_TIMING_INPUT_BYTES`, a run past the time budget, `max_seconds`, that no
  request overlapped; ONNX Runtime refusing the slice or the profiler's inputs; an unexpected error): the same bytes
  would fail the same way, so the slice is not timed again while the server runs (at most `MAX_REFUSED` remembered);
* the process died while the slice was opened or ran: after two such deaths it is never timed again
  (`rr_server.crash_journal`, in the data dir; the waits are not journaled, when the edges' requests run).
`close` stops the run in progress.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import statistics
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

import numpy as np

from rr_edge.profiles import LatencyStats
from rr_server.activity import InferenceActivity
from rr_server.crash_journal import CrashJournal
from rr_server.errors import DeadlineExceeded, InvalidArgument, ResourceExhausted, ServerError, Unavailable
from rr_server.records import SOURCE_CLOUD_PROFILER, Measurement, ModelRun
from rr_server.run_watchdog import RunCaller
from rr_server.sessions import Session, SessionPool, random_inputs
from rr_server.slices import SliceStore
from rr_server.storage import Storage

log = logging.getLogger(__name__)

DEFAULT_WARMUP = 3
DEFAULT_RUNS = 20
DEFAULT_MAX_SECONDS = 5.0
MAX_REFUSED = 1024  # refused slice ids remembered (as SessionPool remembers the slices ONNX Runtime refused)
BLOCK, MODEL = "block", "model"


class Refused(Exception):
    """Timing this slice failed for reasons of its own (its inputs' size, a run too slow with the server to itself):
    not tried again while the server runs."""


class CloudProfiler:
    """Background timing of block slices for the cloud node."""

    def __init__(
        self,
        node_id: str,
        storage: Storage,
        slices: SliceStore,
        sessions: SessionPool,
        on_measured: Callable[[], None],
        runs: int = DEFAULT_RUNS,
        warmup: int = DEFAULT_WARMUP,
        activity: InferenceActivity | None = None,
        max_seconds: float = DEFAULT_MAX_SECONDS,
        journal: CrashJournal | None = None,
    ) -> None:
        self.node_id = node_id
        self._storage = storage
        self._slices = slices
        self._sessions = sessions
        self._on_measured = on_measured
        self._runs = runs
        self._warmup = warmup
        self._activity = activity or InferenceActivity()
        self._max_seconds = max_seconds
        self._journal = journal  # the slice opened or running, so that one whose run ended the process is not rerun
        self._queue: queue.Queue[tuple[str, str, str] | None] = queue.Queue()
        self._pending: set[tuple[str, str]] = set()  # (BLOCK, signature) or (MODEL, model name)
        self._refused: OrderedDict[str, None] = OrderedDict()  # slice ids not timed again while the server runs
        self._caller = RunCaller()  # ended by close(): stops the timing run in progress
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._thread = threading.Thread(target=self._worker, name="rr-cloud-profiler", daemon=True)

    def start(self) -> None:
        """Forget the row's timings from another execution provider, queue the stored slices not timed (again) yet
        (a restart loses no job), then start the worker."""
        provider = self._sessions.providers[0]
        forgotten = self._storage.forget_other_providers(self.node_id, provider)
        if forgotten:
            log.warning("%d cloud timings were taken on another provider than %s: timed again", forgotten, provider)
            self._on_measured()
        for signature, slice_id in self._storage.unmeasured_slices(self.node_id).items():
            if self._slices.get(slice_id) is not None:
                self._enqueue(BLOCK, signature, slice_id, False)
        for model, slice_id in self._storage.untimed_models(self.node_id).items():
            if self._slices.get(slice_id) is not None:
                self._enqueue(MODEL, model, slice_id, False)
        self._thread.start()

    def close(self) -> None:
        self._closed.set()
        self._caller.end(Unavailable("the server is stopping"))
        self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def submit(self, signature: str, slice_id: str) -> bool:
        """Queue a block for timing unless the cloud node measured it already; returns whether it was queued."""
        done = bool(self._storage.measured_by_any([signature], self.node_id))  # indexed: not every signature read
        return self._enqueue(BLOCK, signature, slice_id, done)

    def submit_model(self, model: str, slice_id: str) -> bool:
        """Queue a whole model for timing unless the cloud node ran it already; returns whether it was queued."""
        return self._enqueue(MODEL, model, slice_id, self._storage.model_latency(self.node_id, model) is not None)

    def _enqueue(self, kind: str, key: str, slice_id: str, done: bool) -> bool:
        crashed = self._journal is not None and slice_id in self._journal.crashed
        with self._lock:
            if done or crashed or slice_id in self._refused or (kind, key) in self._pending:
                return False
            self._pending.add((kind, key))
        self._queue.put((kind, key, slice_id))
        return True

    def wait_idle(self, timeout: float = 30.0) -> bool:
        with self._idle:
            return self._idle.wait_for(lambda: not self._pending, timeout=timeout)

    def _worker(self) -> None:
        while True:
            item = self._queue.get()
            if item is None or self._closed.is_set():
                return
            kind, key, slice_id = item
            try:
                if kind == MODEL:
                    self._measure_model(key, slice_id)
                else:
                    self._measure(key, slice_id)
            except (Refused, InvalidArgument) as exc:  # the slice's own (InvalidArgument: ONNX Runtime refused it)
                self._refuse(slice_id)
                # str(exc), not exc: a log record kept (by a handler that stores them) would hold its frames alive
                log.warning("cloud profiling of %s %s refused while the server runs: %s", kind, key[:16], str(exc))
            except ServerError as exc:  # passing: tried again at its next report
                if self._closed.is_set():
                    return
                log.warning("cloud profiling of %s %s skipped for now: %s", kind, key[:16], str(exc))
            except Exception:  # noqa: BLE001 - a bad slice must not stop the worker, nor fail at every report
                self._refuse(slice_id)
                log.exception("cloud profiling of %s %s failed; refused while the server runs", kind, key[:16])
            finally:
                with self._idle:
                    self._pending.discard((kind, key))
                    self._idle.notify_all()

    def _refuse(self, slice_id: str) -> None:
        with self._lock:
            self._refused[slice_id] = None
            while len(self._refused) > MAX_REFUSED:
                self._refused.popitem(last=False)

    def _measure_model(self, model: str, slice_id: str) -> None:
        times, provider = self.time_slice(slice_id)
        run = ModelRun(self.node_id, model, float(statistics.median(times)), 0.0, measured_at=time.time())
        self._storage.add_reports([], {}, {}, [run])  # sum_of_blocks 0: no ratio, only the whole-model latency
        log.info("cloud node timed model %s whole: %.3f ms on %s", model, run.latency_ms, provider)

    def time_slice(self, slice_id: str) -> tuple[list[float], str]:
        """Per-run times (ms) of a slice on random inputs after warm-up, and the provider it ran on.

        The open and the runs keep out of the way of inference: each waits until no request is running (at most the
        time budget, then goes on), and a timed run counts only if no request started meanwhile (a run beside a
        request times the contention and slows the request). Past the time budget a busy server still gets its
        minimum of 3 runs, disturbed or not. Refused: the random inputs would take more than MAX_TIMING_INPUT_BYTES,
        or a run no request overlapped took longer than the budget (one a request overlapped: DeadlineExceeded)."""
        info = self._slices.require(slice_id)
        self._activity.wait_idle(self._max_seconds)
        with self._journaled(slice_id):
            session = self._sessions.borrow(slice_id, info.path)
        try:
            inputs = random_inputs(session)  # at most MAX_TIMING_INPUT_BYTES
        except ResourceExhausted as exc:
            raise Refused(str(exc)) from None
        times: list[float] = []
        mark: int | None = None  # the activity when the run in progress began (None: it began beside a request)
        try:
            for _ in range(self._warmup):
                mark = self._activity.wait_idle(self._max_seconds)
                self._run(session, inputs)
            deadline = time.perf_counter() + self._max_seconds
            while len(times) < self._runs and (len(times) < 3 or time.perf_counter() < deadline):
                mark = self._activity.wait_idle(deadline - time.perf_counter())
                ms = self._run(session, inputs)
                if self._activity.undisturbed_since(mark) or time.perf_counter() >= deadline:
                    times.append(ms)
        except DeadlineExceeded as exc:
            if self._activity.undisturbed_since(mark):  # no request overlapped it: the slice's own slowness
                raise Refused(str(exc)) from None
            raise  # a request overlapped it: passing
        return times, session.providers[0]

    def _run(self, session: Session, inputs: dict[str, np.ndarray]) -> float:
        """One run's time (ms); the slice is in the crash journal while it runs (the file's write is not timed)."""
        with self._journaled(session.slice_id):
            started = time.perf_counter()
            session.run(inputs, caller=self._caller, seconds=self._max_seconds)
            return 1e3 * (time.perf_counter() - started)

    def _journaled(self, slice_id: str) -> contextlib.AbstractContextManager[None]:
        return self._journal.running(slice_id) if self._journal else contextlib.nullcontext()

    def _measure(self, signature: str, slice_id: str) -> None:
        times, provider = self.time_slice(slice_id)
        stats = LatencyStats.of(times)  # as the edge summarises its timings
        m = Measurement(
            node_id=self.node_id,
            signature=signature,
            latency_ms=stats.median_ms,
            p10_ms=stats.p10_ms,
            p90_ms=stats.p90_ms,
            cv=stats.cv,
            samples=stats.samples,
            source=SOURCE_CLOUD_PROFILER,
            settings={"execution_provider": provider},
            measured_at=time.time(),
        )
        self._storage.add_reports([m], {}, {}, [])
        log.info("cloud node timed %s: %.3f ms on %s", signature[:16], m.latency_ms, provider)
        self._on_measured()
