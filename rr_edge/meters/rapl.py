"""Intel/AMD RAPL energy counters from the powercap sysfs (``/sys/class/powercap/intel-rapl:*``).

Which domains are summed: every top-level ``package-N`` zone (core, uncore and graphics are sub-zones *inside* the
package, so adding them would count twice) plus each package's ``dram`` sub-zone, which is *not* part of the package
figure. Without package zones, the ``psys`` (platform) zone is used alone. Counters are ``energy_uj`` and wrap at
``max_energy_range_uj``; a window sees at most one wrap per zone, which holds for windows shorter than
max_energy_range / power (hours on a desktop, minutes at worst on large servers).

Since Linux 5.10 ``energy_uj`` is readable only by root (PLATYPUS, CVE-2020-8694); that case is reported with the fix.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rr_edge.errors import MeterError
from rr_edge.meters.base import Meter

log = logging.getLogger(__name__)

DEFAULT_SYSFS_ROOT = "/sys"
DEFAULT_MIN_WINDOW_S = 0.05  # counters update about every millisecond


def read_sysfs(path: Path) -> str:
    """Text of a sysfs attribute, with MeterErrors that say what to do."""
    try:
        return path.read_text().strip()
    except PermissionError:
        raise MeterError(
            f"permission denied reading {path}: energy counters are root-only since Linux 5.10; run as root or "
            f"grant read access (sudo chmod a+r {path})"
        ) from None
    except FileNotFoundError:
        raise MeterError(f"{path} does not exist") from None
    except OSError as exc:
        raise MeterError(f"cannot read {path}: {exc.strerror or exc}") from None


def read_int(path: Path) -> int:
    text = read_sysfs(path)
    try:
        return int(text)
    except ValueError:
        raise MeterError(f"{path}: expected an integer, read {text[:40]!r}") from None


@dataclass(frozen=True)
class RaplZone:
    path: Path
    name: str
    max_range_uj: int

    def read_uj(self) -> int:
        return read_int(self.path / "energy_uj")


def counter_delta(before: int, after: int, max_range: int) -> int:
    """Counter increase from `before` to `after`, allowing one wrap-around at `max_range`."""
    if after >= before:
        return after - before
    return after + max_range - before


def discover_zones(root: str | Path = DEFAULT_SYSFS_ROOT) -> list[RaplZone]:
    """Zones to sum (see the module docstring); MeterError when there is no RAPL under `root`."""
    base = Path(root) / "class" / "powercap"
    if not base.is_dir():
        raise MeterError(f"no RAPL: {base} is absent (not an Intel/AMD CPU, no powercap driver, or a VM)")
    top = sorted(p for p in base.glob("intel-rapl:*") if p.name.count(":") == 1)
    if not top:
        raise MeterError(f"no RAPL zones under {base}")

    def zone(p: Path) -> RaplZone:
        return RaplZone(p, read_sysfs(p / "name"), read_int(p / "max_energy_range_uj"))

    packages = [zone(p) for p in top if read_sysfs(p / "name").startswith("package")]
    if packages:
        zones = list(packages)
        for pkg in packages:
            for sub in sorted(pkg.path.glob(f"{pkg.path.name}:*")):
                if read_sysfs(sub / "name") == "dram":
                    zones.append(zone(sub))
        return zones
    psys = [zone(p) for p in top if read_sysfs(p / "name") == "psys"]
    if psys:
        return psys
    raise MeterError(f"no package or psys RAPL zone under {base}")


class RaplMeter(Meter):
    """CPU package (+ DRAM) energy from RAPL counters."""

    source = "rapl"

    def __init__(self, root: str | Path = DEFAULT_SYSFS_ROOT, *, min_window_s: float = DEFAULT_MIN_WINDOW_S) -> None:
        super().__init__()
        self.zones = discover_zones(root)
        self.min_window_s = min_window_s
        self.read()  # fail now (permissions) rather than in the middle of a measurement

    @property
    def description(self) -> str:
        return "rapl: " + " + ".join(f"{z.name} ({z.path.name})" for z in self.zones)

    def read(self) -> list[int]:
        return [z.read_uj() for z in self.zones]

    def _begin(self, activity: str) -> Any:
        return self.read()

    def _end(self, state: Any, elapsed_s: float) -> float:
        after = self.read()
        total_uj = sum(counter_delta(b, a, z.max_range_uj) for z, b, a in zip(self.zones, state, after, strict=True))
        return total_uj / 1000.0
