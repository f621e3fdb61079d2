"""The one interface every energy meter implements.

A meter measures the energy the device spends over a window of wall-clock time::

    with meter.measure() as reading:      # or: token = meter.start(); ...; reading = meter.stop(token)
        run_the_work()
    reading.energy_mJ, reading.elapsed_s, reading.source

`source` is one of `SOURCES`; `measured` is False only for the declared power model, whose figures are estimates
and must never be presented as measurements. `min_window_s` is the shortest window the meter resolves well (NVML's
counter updates every ~20-100 ms, for instance): callers repeat short work until a window is at least that long and
divide. `activity` tells a modelled meter which power figure applies ("compute", "tx", "rx", "idle"); real meters
ignore it. Long work that must outlive a meter failing part-way (a profile, a run of requests) opens its windows with
`start_unless_failed` / `stop_unless_failed` instead.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

from rr_edge.errors import MeterError

SOURCES = ("nvml", "rapl", "jetson", "model")
ACTIVITIES = ("compute", "tx", "rx", "idle")

log = logging.getLogger(__name__)


@dataclass
class EnergyReading:
    """Energy over one window. `energy_mJ` is None until the window is closed."""

    source: str
    measured: bool
    energy_mJ: float | None = None
    elapsed_s: float = 0.0

    @property
    def power_W(self) -> float | None:
        if self.energy_mJ is None or self.elapsed_s <= 0:
            return None
        return self.energy_mJ / 1000.0 / self.elapsed_s


class Meter(ABC):
    """Energy meter: `start(activity) -> token`, `stop(token) -> EnergyReading`, or the `measure` context."""

    source: ClassVar[str]
    measured: ClassVar[bool] = True
    min_window_s: float = 0.0
    failure: MeterError | None = None  # what ended its readings: see `stop_unless_failed`

    def __init__(self) -> None:
        self.clock = time.perf_counter

    @property
    def description(self) -> str:
        """One line naming what is measured (device, rails, domains)."""
        return self.source

    @abstractmethod
    def _begin(self, activity: str) -> Any: ...

    @abstractmethod
    def _end(self, state: Any, elapsed_s: float) -> float:
        """Energy (mJ) spent since `_begin` returned `state`."""

    def start(self, activity: str = "compute") -> tuple[Any, float]:
        if activity not in ACTIVITIES:
            raise ValueError(f"unknown activity {activity!r} (expected one of {', '.join(ACTIVITIES)})")
        state = self._begin(activity)
        return state, self.clock()

    def elapsed_s(self, token: tuple[Any, float]) -> float:
        """Seconds since `start` returned `token`."""
        return self.clock() - token[1]

    def stop(self, token: tuple[Any, float]) -> EnergyReading:
        state, t0 = token
        elapsed = self.clock() - t0
        energy = self._end(state, elapsed)
        return EnergyReading(self.source, self.measured, float(energy), float(elapsed))

    @contextmanager
    def measure(self, activity: str = "compute") -> Iterator[EnergyReading]:
        """Context yielding a reading that is filled in when the block exits (also on error)."""
        reading = EnergyReading(self.source, self.measured)
        token = self.start(activity)
        try:
            yield reading
        finally:
            done = self.stop(token)
            reading.energy_mJ, reading.elapsed_s = done.energy_mJ, done.elapsed_s

    def start_unless_failed(self, activity: str = "compute") -> tuple[Any, float] | None:
        """`start`, or None (no window) once the meter has failed: see `stop_unless_failed`."""
        if self.failure is None:
            try:
                return self.start(activity)
            except MeterError as exc:
                self._failed(exc)
        return None

    def stop_unless_failed(self, token: tuple[Any, float] | None) -> EnergyReading | None:
        """`stop` for work that must outlive the meter: a MeterError (a Jetson rail that stops answering, a RAPL file
        gone) is logged once and kept in `failure`; this window and every later one read None (energy unavailable)
        and the work goes on, keeping what it measured besides energy. A rail lost mid-run lost every finished
        request of `rr-edge run`, and the latencies of a profile (review)."""
        if token is None:
            return None
        try:
            return self.stop(token)
        except MeterError as exc:
            self._failed(exc)
            return None

    def _failed(self, exc: MeterError) -> None:
        self.failure = exc
        log.warning(
            "the %s energy meter failed: %s; the rest is not metered (its energy is unavailable)", self.source, exc
        )

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op for most meters
        """Release handles (NVML, sampler threads). Idempotent."""

    def __enter__(self) -> Meter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def fill_window(meter: Meter, token: Any, run_once: Callable[[], object], at_least: int = 0) -> int:
    """Call `run_once` (at least `at_least` times) until the window `token` opened on `meter` lasts its
    `min_window_s`: one short run is below what the meter resolves. Returns how many runs it made."""
    runs = 0
    while runs < at_least or meter.elapsed_s(token) < meter.min_window_s:
        run_once()
        runs += 1
    return runs
