"""CPU side of the testbed: one cgroup per device class under a common parent, with a CFS quota.

cgroup v2 (unified, ``cpu.max``) is used where ``/sys/fs/cgroup`` is a v2 mount offering the cpu controller;
otherwise cgroup v1 (``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` under the ``cpu`` hierarchy).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ._sh import TestbedError

log = logging.getLogger(__name__)

CGROUP_FS = Path(os.environ.get("RR_CGROUP_FS", "/sys/fs/cgroup"))
MIN_QUOTA_US = 1000  # kernel minimum for a CFS quota


@dataclass(frozen=True)
class Hierarchy:
    version: int
    root: Path  # the directory our parent cgroup is created in


def detect(fs: Path = CGROUP_FS) -> Hierarchy:
    controllers = fs / "cgroup.controllers"
    if controllers.exists() and "cpu" in controllers.read_text().split():
        return Hierarchy(2, fs)
    for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        root = fs / name
        if (root / "cpu.cfs_quota_us").exists():
            return Hierarchy(1, root)
    raise TestbedError(f"no cgroup cpu controller found under {fs} (neither v2 cpu.max nor v1 cpu)")


def class_path(h: Hierarchy, parent: str, cls: str) -> Path:
    return h.root / parent / cls


def _mkdir(path: Path) -> None:
    try:
        path.mkdir(exist_ok=True)
    except OSError as exc:
        raise TestbedError(f"cannot create cgroup {path}: {exc}") from None


def _write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError as exc:
        raise TestbedError(f"cannot write {value!r} to {path}: {exc}") from None


def quota_us(fraction: float | None, period_us: int) -> int | None:
    if fraction is None:
        return None
    q = round(fraction * period_us)
    if q < MIN_QUOTA_US:
        raise TestbedError(
            f"quota {fraction:.3f} x period {period_us} us = {q} us is below the kernel minimum of "
            f"{MIN_QUOTA_US} us; use a longer period"
        )
    return q


def ensure(h: Hierarchy, parent: str, cls: str, fraction: float | None, period_us: int) -> Path:
    """Create (or update) the class cgroup and set its quota; idempotent."""
    parent_dir = h.root / parent
    _mkdir(parent_dir)
    path = parent_dir / cls
    _mkdir(path)
    q = quota_us(fraction, period_us)
    if h.version == 2:
        for d in (h.root, parent_dir):
            ctl = d / "cgroup.subtree_control"
            if "cpu" not in ctl.read_text().split():
                _write(ctl, "+cpu")
        _write(path / "cpu.max", f"{'max' if q is None else q} {period_us}")
    else:
        _write(path / "cpu.cfs_quota_us", "-1")
        _write(path / "cpu.cfs_period_us", str(period_us))
        _write(path / "cpu.cfs_quota_us", "-1" if q is None else str(q))
    return path


def set_weight(h: Hierarchy, parent: str, shares: int | None) -> None:
    """Give the whole testbed a CPU weight against the rest of the host (v1 ``cpu.shares``; v2 ``cpu.weight``).

    ``shares`` uses v1 units (default 1024); None leaves the kernel default. Edges stay capped by their quota.
    """
    parent_dir = h.root / parent
    _mkdir(parent_dir)
    value = 1024 if shares is None else shares
    if h.version == 2:
        ctl = h.root / "cgroup.subtree_control"
        if "cpu" not in ctl.read_text().split():
            _write(ctl, "+cpu")
        _write(parent_dir / "cpu.weight", str(max(1, min(10_000, round(value * 100 / 1024)))))
    else:
        _write(parent_dir / "cpu.shares", str(value))


def read_limits(h: Hierarchy, path: Path) -> dict[str, int | None]:
    if h.version == 2:
        quota, period = (path / "cpu.max").read_text().split()
        return {"quota_us": None if quota == "max" else int(quota), "period_us": int(period)}
    quota_v = int((path / "cpu.cfs_quota_us").read_text())
    return {"quota_us": None if quota_v < 0 else quota_v, "period_us": int((path / "cpu.cfs_period_us").read_text())}


def procs(path: Path) -> list[int]:
    try:
        return [int(p) for p in (path / "cgroup.procs").read_text().split()]
    except FileNotFoundError:
        return []


def join(path: Path, pid: int = 0) -> None:
    """Move process ``pid`` (0: the caller) into the cgroup at ``path``."""
    _write(path / "cgroup.procs", str(pid or os.getpid()))


def list_classes(h: Hierarchy, parent: str) -> list[Path]:
    d = h.root / parent
    return sorted(p for p in d.iterdir() if p.is_dir()) if d.is_dir() else []


def remove_parent(h: Hierarchy, parent: str) -> list[str]:
    """Remove ``parent`` and every class cgroup below it; processes left inside move to the root cgroup."""
    removed: list[str] = []
    parent_dir = h.root / parent
    if not parent_dir.is_dir():
        return removed
    for path in list_classes(h, parent):
        for pid in procs(path):
            try:
                join(h.root, pid)
            except TestbedError:
                pass  # exited meanwhile
        try:
            path.rmdir()
        except OSError as exc:
            raise TestbedError(f"cannot remove cgroup {path}: {exc}") from None
        removed.append(f"cgroup:{path}")
    parent_dir.rmdir()
    removed.append(f"cgroup:{parent_dir}")
    return removed
