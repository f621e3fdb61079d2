"""NVIDIA Jetson board power from the INA3221 monitors, integrated over time.

Two sysfs layouts are read (``root`` defaults to ``/sys``):

* L4T 32 (Nano, TX1/TX2, Xavier on JetPack 4): IIO, ``bus/i2c/drivers/ina3221x/*/iio:device*`` with
  ``rail_name_N`` and ``in_power{N}_input`` (mW; else ``in_voltage{N}_input`` mV x ``in_current{N}_input`` mA);
* L4T 35+ (Orin, Xavier on JetPack 5): hwmon, ``bus/i2c/drivers/ina3221/*/hwmon/hwmon*`` or any
  ``class/hwmon/hwmon*`` whose ``name`` is ``ina3221``, with ``in{N}_label``, ``in{N}_input`` (mV) and
  ``curr{N}_input`` (mA).

Total vs. sum: when a board input rail is present (``VDD_IN`` on TX1/TX2, Xavier NX, Orin NX/Nano; ``POM_5V_IN`` on
Nano) it already contains every other rail, so it is used **alone**; the sub-rails (CPU, GPU, SOC, CV, ...) are nested
inside it and adding them would count twice. Boards without an input rail (AGX Xavier: GPU, CPU, SOC, CV, VDDRQ, SYS5V
on two monitors; AGX Orin: VDD_GPU_SOC, VDD_CPU_CV, VIN_SYS_5V0, VDDQ_VDD2_1V8AO) are measured as the sum of all their
rails: their 5 V system rail (``VIN_SYS_5V0``, ``SYS5V``) is a supply beside the others, not the board input.
`rails=` overrides the choice. "Sum of shunt voltages" channels are never used.

The rails give instantaneous power, so a sampler thread reads them every `interval_s` while a window is open and the
energy is the trapezoidal integral of the samples (including one at each end of the window).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rr_edge.errors import MeterError
from rr_edge.meters.base import EnergyReading, Meter
from rr_edge.meters.rapl import DEFAULT_SYSFS_ROOT, read_int, read_sysfs

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 0.01
DEFAULT_MIN_WINDOW_S = 0.2
TOTAL_RAILS = ("VDD_IN", "POM_5V_IN")  # board input rails (every other rail is nested in them)


@dataclass(frozen=True)
class Rail:
    """One INA3221 channel. `read_mw` reads its present power."""

    name: str
    directory: Path
    channel: int
    layout: str  # "iio" or "hwmon"

    def read_mw(self) -> float:
        d, n = self.directory, self.channel
        if self.layout == "iio":
            power = d / f"in_power{n}_input"
            if power.exists():
                return float(read_int(power))
            return read_int(d / f"in_voltage{n}_input") * read_int(d / f"in_current{n}_input") / 1000.0
        return read_int(d / f"in{n}_input") * read_int(d / f"curr{n}_input") / 1000.0


def _iio_rails(root: Path) -> list[Rail]:
    rails = []
    for dev in sorted(root.glob("bus/i2c/drivers/ina3221x/*/iio:device*")):
        for label in sorted(dev.glob("rail_name_*")):
            n = int(label.name.rsplit("_", 1)[1])
            rails.append(Rail(read_sysfs(label), dev, n, "iio"))
    return rails


def _hwmon_dirs(root: Path) -> list[Path]:
    found = {p.resolve(): p for p in root.glob("bus/i2c/drivers/ina3221/*/hwmon/hwmon*")}
    for p in root.glob("class/hwmon/hwmon*"):
        name = p / "name"
        if name.exists() and read_sysfs(name) == "ina3221":
            found.setdefault(p.resolve(), p)
    return [found[k] for k in sorted(found)]


def _hwmon_rails(root: Path) -> list[Rail]:
    rails = []
    for dev in _hwmon_dirs(root):
        for label in sorted(dev.glob("in*_label")):
            n = int(label.name[2:].split("_", 1)[0])
            name = read_sysfs(label)
            if "sum" in name.lower() or not (dev / f"curr{n}_input").exists():
                continue
            rails.append(Rail(name, dev, n, "hwmon"))
    return rails


def discover_rails(root: str | Path = DEFAULT_SYSFS_ROOT) -> list[Rail]:
    """Every INA3221 rail under `root`, hwmon layout first; MeterError when there is none."""
    r = Path(root)
    rails = _hwmon_rails(r) or _iio_rails(r)
    if not rails:
        raise MeterError(f"no Jetson INA3221 power rails under {r} (hwmon 'ina3221' or iio 'ina3221x')")
    return rails


def choose_rails(rails: Sequence[Rail], names: Sequence[str] | None = None) -> list[Rail]:
    """The board input rail alone when present, else all rails; or exactly `names`."""
    if names:
        by_name = {r.name: r for r in rails}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise MeterError(f"unknown Jetson rail(s) {', '.join(missing)}; present: {', '.join(by_name)}")
        return [by_name[n] for n in names]
    totals = [r for r in rails if r.name.upper() in TOTAL_RAILS]
    return totals[:1] if totals else list(rails)


def trapezoid_mj(samples: Sequence[tuple[float, float]]) -> float:
    """Integral of (time s, power mW) samples in mJ (trapezoidal rule)."""
    total = 0.0
    for (t0, p0), (t1, p1) in zip(samples, samples[1:], strict=False):
        total += (t1 - t0) * (p0 + p1) / 2.0
    return total


class _Window:
    """Samples of one open measurement window, optionally filled by a sampler thread. A read that fails is skipped
    (an INA3221 attribute read empty for 30 ms once, and that ended the profile): the window fails only when most
    of its reads did, or fewer than two succeeded."""

    def __init__(self, read: Callable[[], float], clock: Callable[[], float], interval_s: float) -> None:
        self.samples: list[tuple[float, float]] = []
        self._read, self._clock = read, clock
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._failed: list[MeterError] = []
        self.try_sample()  # a first read that fails is skipped too
        self._thread: threading.Thread | None = None
        if interval_s > 0:
            self._thread = threading.Thread(target=self._run, args=(interval_s,), name="jetson-meter", daemon=True)
            self._thread.start()

    def sample(self) -> None:
        p = self._read()
        with self._lock:
            self.samples.append((self._clock(), p))

    def try_sample(self) -> None:
        try:
            self.sample()
        except MeterError as exc:
            with self._lock:
                self._failed.append(exc)

    def _run(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            self.try_sample()

    def close(self) -> list[tuple[float, float]]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.try_sample()
        if self._failed and (len(self.samples) < 2 or len(self._failed) > len(self.samples)):
            raise self._failed[-1]
        if self._failed:
            log.warning("jetson meter: %d of %d reads failed and were skipped (%s)", len(self._failed),
                        len(self._failed) + len(self.samples), self._failed[-1])  # fmt: skip
        return sorted(self.samples)


class JetsonMeter(Meter):
    """Board (or chosen rails') energy of an NVIDIA Jetson from its INA3221 monitors."""

    source = "jetson"

    def __init__(
        self,
        root: str | Path = DEFAULT_SYSFS_ROOT,
        *,
        rails: Sequence[str] | None = None,
        interval_s: float = DEFAULT_INTERVAL_S,
        min_window_s: float = DEFAULT_MIN_WINDOW_S,
        clock: Callable[[], float] | None = None,
    ) -> None:
        super().__init__()
        if clock is not None:
            self.clock = clock
        self.rails = choose_rails(discover_rails(root), rails)
        self.interval_s = interval_s
        self.min_window_s = min_window_s
        self._open: list[_Window] = []
        self.read_mw()

    @property
    def description(self) -> str:
        names = [r.name for r in self.rails]
        kind = "input rail" if len(names) == 1 and names[0].upper() in TOTAL_RAILS else "sum of rails"
        return f"jetson ({self.rails[0].layout}): {kind} {' + '.join(names)}"

    def read_mw(self) -> float:
        """Present power (mW) of the chosen rails."""
        return sum(r.read_mw() for r in self.rails)

    def sample(self) -> None:
        """Take one sample now in every open window (the sampler thread does this every `interval_s`)."""
        for w in list(self._open):
            w.try_sample()

    def _begin(self, activity: str) -> Any:
        w = _Window(self.read_mw, self.clock, self.interval_s)
        self._open.append(w)
        return w

    def _end(self, state: Any, elapsed_s: float) -> float:
        self._open.remove(state)
        return trapezoid_mj(state.close())

    def stop(self, token: tuple[Any, float]) -> EnergyReading:
        """The window is the span of its samples (first at start, last at stop), so energy and time match."""
        window = token[0]
        self._open.remove(window)
        samples = window.close()
        return EnergyReading(self.source, self.measured, trapezoid_mj(samples), samples[-1][0] - samples[0][0])

    def close(self) -> None:
        for w in list(self._open):
            w.close()
        self._open.clear()
