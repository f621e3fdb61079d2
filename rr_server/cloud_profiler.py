"""The server's own row of the matrices: it times uploaded block slices on its execution provider.

When an edge reports a layer profile that names the slice of that block (already uploaded), the signature is queued
here; a background worker times the slice (warm-up, then repeated runs) and stores the result as a measurement of the
cloud node with source `cloud-profiler`. Each signature is timed once per server data dir.
"""

from __future__ import annotations

import logging
import queue
import statistics
import threading
import time
from collections.abc import Callable

import numpy as np

from rr_server.errors import ServerError
from rr_server.records import SOURCE_CLOUD_PROFILER, Measurement
from rr_server.sessions import SessionPool, random_inputs
from rr_server.slices import SliceStore
from rr_server.storage import Storage

log = logging.getLogger(__name__)

DEFAULT_WARMUP = 3
DEFAULT_RUNS = 20
DEFAULT_MAX_SECONDS = 5.0


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
    ) -> None:
        self.node_id = node_id
        self._storage = storage
        self._slices = slices
        self._sessions = sessions
        self._on_measured = on_measured
        self._runs = runs
        self._warmup = warmup
        self._queue: queue.Queue[tuple[str, str] | None] = queue.Queue()
        self._pending: set[str] = set()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._thread = threading.Thread(target=self._worker, name="rr-cloud-profiler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def submit(self, signature: str, slice_id: str) -> bool:
        """Queue a block for timing unless the cloud node measured it already; returns whether it was queued."""
        with self._lock:
            if signature in self._pending:
                return False
            if signature in set(self._storage.measured_signatures(self.node_id)):
                return False
            self._pending.add(signature)
        self._queue.put((signature, slice_id))
        return True

    def wait_idle(self, timeout: float = 30.0) -> bool:
        with self._idle:
            return self._idle.wait_for(lambda: not self._pending, timeout=timeout)

    def _worker(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            signature, slice_id = item
            try:
                self._measure(signature, slice_id)
            except ServerError as exc:
                log.warning("cloud profiling of %s skipped: %s", signature[:16], exc)
            except Exception:  # noqa: BLE001 - a bad slice must not stop the worker
                log.exception("cloud profiling of %s failed", signature[:16])
            finally:
                with self._idle:
                    self._pending.discard(signature)
                    self._idle.notify_all()

    def _measure(self, signature: str, slice_id: str) -> None:
        info = self._slices.require(slice_id)
        session = self._sessions.get(slice_id, info.path)
        inputs = random_inputs(session)
        for _ in range(self._warmup):
            session.run(inputs)
        times: list[float] = []
        deadline = time.perf_counter() + DEFAULT_MAX_SECONDS
        while len(times) < self._runs and (len(times) < 3 or time.perf_counter() < deadline):
            t0 = time.perf_counter()
            session.run(inputs)
            times.append(1e3 * (time.perf_counter() - t0))
        arr = np.asarray(times)
        mean = float(arr.mean())
        m = Measurement(
            node_id=self.node_id,
            signature=signature,
            latency_ms=float(statistics.median(times)),
            p10_ms=float(np.percentile(arr, 10)),
            p90_ms=float(np.percentile(arr, 90)),
            cv=float(arr.std() / mean) if mean > 0 else 0.0,
            samples=len(times),
            source=SOURCE_CLOUD_PROFILER,
            settings={"execution_provider": session.providers[0]},
            measured_at=time.time(),
        )
        self._storage.add_reports([m], {}, {}, [])
        log.info("cloud node timed %s: %.3f ms on %s", signature[:16], m.latency_ms, session.providers[0])
        self._on_measured()
