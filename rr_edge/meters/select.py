"""`--energy auto|nvml|rapl|jetson|model`: build the meter to use.

``auto`` tries the real meters that see the device doing the work, and falls back to the declared power model
(logged as an estimate) when none works:

* ``jetson`` first: the board input rail covers CPU and GPU together;
* then, for work on an NVIDIA GPU (`gpu_work=True`), ``nvml``: GPU board energy (RAPL does not see the GPU);
* or, for work on the CPU, ``rapl``: CPU package (+ DRAM) (NVML does not see the CPU).

A meter of the other device is not used: an idle GPU's 30 W read as the cost of CPU work, or a CPU package missing a
GPU's work, are measurements of the wrong thing. Naming a real meter explicitly uses it, or fails with its reason.
NVML meters the GPU ONNX Runtime runs on: device 0 of the process, which is the first GPU of
``$CUDA_VISIBLE_DEVICES`` when that names one by number (`MeterOptions.gpu_index` sets another).
"""

from __future__ import annotations

import logging
import os
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
    gpu_index: int | None = None  # NVML's index of the GPU (None: `default_gpu_index`)
    jetson_rails: tuple[str, ...] | None = None
    power_config: str | Path | None = None
    device_class: str | None = None
    skip: tuple[str, ...] = field(default_factory=tuple)  # meters auto must not try (tests)


def _builders(opts: MeterOptions) -> dict[str, Callable[[], Meter]]:
    return {
        "jetson": lambda: JetsonMeter(opts.sysfs_root, rails=opts.jetson_rails),
        "nvml": lambda: NvmlMeter(default_gpu_index() if opts.gpu_index is None else opts.gpu_index),
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
    order = ["jetson", "nvml"] if gpu_work else ["jetson", "rapl"]
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
    # one short line on every command (it had been 400 characters, the reasons inline: a new user's walkthrough)
    log.info("no energy meter works here: %s", "; ".join(reasons))
    log.warning("energy is MODELLED: %s (why no meter works: logged at INFO, --log-level INFO)", meter.description)
    return meter


def default_gpu_index() -> int:
    """NVML's index of the process's CUDA device 0: NVML numbers all GPUs and ignores $CUDA_VISIBLE_DEVICES, which
    ONNX Runtime follows (with CUDA_VISIBLE_DEVICES=1 the meter read GPU 0 while the work ran on GPU 1). NVML numbers
    GPUs in PCI bus order, CUDA fastest first unless CUDA_DEVICE_ORDER=PCI_BUS_ID: alike on a machine of one kind."""
    first = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    if first.isdigit():
        return int(first)
    if first:
        log.warning("CUDA_VISIBLE_DEVICES=%s does not name a GPU by number: NVML meters GPU 0", first)
    return 0
