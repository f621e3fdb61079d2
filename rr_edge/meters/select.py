"""`--energy auto|nvml|rapl|jetson|model`: build the meter to use.

``auto`` tries the real meters and only falls back to the declared power model when none works:

1. ``jetson`` — the board input rail covers CPU and GPU together;
2. ``nvml`` first when the work runs on an NVIDIA GPU (`gpu_work=True`), since RAPL does not see the GPU;
3. ``rapl`` — CPU package (+ DRAM);
4. ``nvml`` — any NVIDIA GPU, when nothing better exists;
5. ``model`` — declared watts x time, an estimate (logged as such).

Naming a real meter explicitly fails with its reason instead of falling back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rr_edge.errors import MeterError
from rr_edge.meters.base import Meter
from rr_edge.meters.jetson import JetsonMeter
from rr_edge.meters.model import ModelMeter
from rr_edge.meters.nvml import NvmlMeter
from rr_edge.meters.rapl import DEFAULT_SYSFS_ROOT, RaplMeter

log = logging.getLogger(__name__)

CHOICES = ("auto", "nvml", "rapl", "jetson", "model")


@dataclass(frozen=True)
class MeterOptions:
    """Where meters look. `sysfs_root` is injectable so tests use fake trees."""

    sysfs_root: str | Path = DEFAULT_SYSFS_ROOT
    gpu_index: int = 0
    jetson_rails: tuple[str, ...] | None = None
    power_config: str | Path | None = None
    device_class: str | None = None
    skip: tuple[str, ...] = field(default_factory=tuple)  # meters auto must not try (tests)


def _builders(opts: MeterOptions) -> dict[str, Callable[[], Meter]]:
    return {
        "jetson": lambda: JetsonMeter(opts.sysfs_root, rails=opts.jetson_rails),
        "nvml": lambda: NvmlMeter(opts.gpu_index),
        "rapl": lambda: RaplMeter(opts.sysfs_root),
        "model": lambda: ModelMeter(config=opts.power_config, device_class=opts.device_class),
    }


def select_meter(kind: str = "auto", options: MeterOptions | None = None, *, gpu_work: bool = False) -> Meter:
    """The meter for `kind`; MeterError when an explicitly named meter does not work."""
    opts = options or MeterOptions()
    builders = _builders(opts)
    if kind != "auto":
        if kind not in builders:
            raise MeterError(f"unknown energy meter {kind!r} (choose from {', '.join(CHOICES)})")
        return builders[kind]()
    order = ["jetson", "nvml", "rapl"] if gpu_work else ["jetson", "rapl", "nvml"]
    reasons = []
    for name in order:
        if name in opts.skip:
            continue
        try:
            meter = builders[name]()
        except MeterError as exc:
            reasons.append(f"{name}: {exc}")
            log.debug("energy meter %s unavailable: %s", name, exc)
            continue
        log.info("energy meter: %s", meter.description)
        return meter
    meter = builders["model"]()
    log.warning("no energy meter works (%s); energy is MODELLED: %s", "; ".join(reasons), meter.description)
    return meter
