"""Descriptor of this node's hardware and runtime, sent when it registers (`DeviceDescriptor` on the wire).

Read from the machine: CPU model (/proc/cpuinfo, or the device-tree model on ARM boards), the CPUs this process may
use (affinity, so a testbed cgroup shows), memory, GPU name through NVML when present, ONNX Runtime version and the
providers that really load, and the thread/graph settings the node runs with. The testbed's emulated class comes
from ``$RR_DEVICE_CLASS`` (empty on real hardware).
"""

from __future__ import annotations

import logging
import os
import platform
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnxruntime as ort

from rr_edge.cpus import usable_cpus
from rr_edge.meters.nvml import nvml_gpu_name
from rr_edge.session import OrtSettings, usable_providers

log = logging.getLogger(__name__)

ENV_DEVICE_CLASS = "RR_DEVICE_CLASS"


@dataclass(frozen=True)
class DeviceInfo:
    """What a node is. `extra` holds free-form facts (platform, cgroup CPU quota, energy meter...)."""

    cpu_model: str
    cpu_cores: int
    memory_bytes: int
    gpu_name: str
    ort_version: str
    ort_providers: tuple[str, ...]
    intra_op_threads: int
    inter_op_threads: int
    graph_optimization: str
    device_class: str = ""
    hostname: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def _read(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def cpu_model() -> str:
    for line in _read("/proc/cpuinfo").splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Hardware", "Model") and value.strip():
            return value.strip()
    board = _read("/proc/device-tree/model").strip("\x00\n ")
    return board or platform.processor() or platform.machine()


def cpu_cores() -> int:
    return len(usable_cpus())


def memory_bytes() -> int:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            total = int(line.split()[1]) * 1024
            limit = (
                _read("/sys/fs/cgroup/memory.max").strip()
                or _read("/sys/fs/cgroup/memory/memory.limit_in_bytes").strip()
            )
            if limit.isdigit() and 0 < int(limit) < total:
                return int(limit)
            return total
    return 0


def cpu_quota() -> str:
    """The cgroup CPU quota as "quota/period" (v2 cpu.max or v1 cfs files); "" when unlimited or unknown."""
    v2 = _read("/sys/fs/cgroup/cpu.max").split()
    if len(v2) == 2 and v2[0] != "max":
        return f"{v2[0]}/{v2[1]}"
    quota = _read("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").strip()
    period = _read("/sys/fs/cgroup/cpu/cpu.cfs_period_us").strip()
    if quota and quota != "-1" and period:
        return f"{quota}/{period}"
    return ""


def describe_device(settings: OrtSettings | None = None, *, energy_source: str = "") -> DeviceInfo:
    """This machine's descriptor with the given (or default) ONNX Runtime settings."""
    s = (settings or OrtSettings()).resolved()
    extra = {"platform": platform.platform(), "python": platform.python_version(), "ort_provider": s.provider}
    quota = cpu_quota()
    if quota:
        extra["cpu_quota"] = quota
    if energy_source:
        extra["energy_source"] = energy_source
    return DeviceInfo(
        cpu_model=cpu_model(),
        cpu_cores=cpu_cores(),
        memory_bytes=memory_bytes(),
        gpu_name=nvml_gpu_name() or "",
        ort_version=ort.__version__,
        ort_providers=usable_providers(),
        intra_op_threads=s.intra_op_threads,
        inter_op_threads=s.inter_op_threads,
        graph_optimization=s.graph_optimization,
        device_class=os.environ.get(ENV_DEVICE_CLASS, ""),
        hostname=socket.gethostname(),
        extra=extra,
    )


# What a node's measured latencies depend on besides its blocks: a change of any of them makes earlier measurements
# of the node a different machine's (intra-op threads alone change a block's latency by up to the core count).
TIMING_SETUP = ("cpu_model", "ort_version", "intra_op_threads", "inter_op_threads", "graph_optimization")
TIMING_SETUP_EXTRA = ("ort_provider", "cpu_quota")


def setup_changes(registered: Mapping[str, Any], now: DeviceInfo) -> dict[str, tuple[object, object]]:
    """The timing setup that differs between a node's registered descriptor (`NodeInfo.device`) and `now`, as
    {name: (registered, now)}; a setting the registered descriptor lacks (an older client's) is not a change."""
    extra = registered.get("extra") or {}
    pairs = [(k, registered.get(k), getattr(now, k)) for k in TIMING_SETUP]
    pairs += [(k, extra.get(k), now.extra.get(k)) for k in TIMING_SETUP_EXTRA]
    return {k: (old, new) for k, old, new in pairs if old not in (None, "") and old != new}
