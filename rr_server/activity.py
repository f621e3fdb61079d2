"""Inference in progress on this server, so that background work can keep out of its way.

The cloud profiler times slices on the same CPUs (or GPU) that serve the edges' requests. A timing taken while a
request runs measures the contention, not the slice, and slows the request down. `ModelRepository.infer` brackets
every run with `running()`; the profiler waits for `wait_idle()` before it opens a slice and before each run, keeps
a timed run only if `undisturbed_since()` its mark, i.e. no request started meanwhile, and blames a run past its time
budget on the slice only then.

    activity = InferenceActivity()
    with activity.running():           # a request's ONNX Runtime run
        ...
    mark = activity.wait_idle(1.0)     # None: still busy after 1 s
    time_one_run()
    clean = activity.undisturbed_since(mark)
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class InferenceActivity:
    """Counts the inference runs in progress and those ever started (thread-safe)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._running = 0
        self._started = 0

    @contextmanager
    def running(self) -> Iterator[None]:
        with self._cond:
            self._running += 1
            self._started += 1
        try:
            yield
        finally:
            with self._cond:
                self._running -= 1
                if not self._running:
                    self._cond.notify_all()

    def wait_idle(self, timeout: float) -> int | None:
        """Wait up to `timeout` s until no run is in progress; a mark for `undisturbed_since`, or None if still busy."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._running == 0, timeout=max(timeout, 0.0)):
                return None
            return self._started

    def undisturbed_since(self, mark: int | None) -> bool:
        """Whether no run has started since `wait_idle` returned `mark` (so none ran at all in between)."""
        with self._cond:
            return mark is not None and self._started == mark
