"""Descriptor of this node's hardware and runtime, sent when it registers (`DeviceDescriptor` on the wire).

Read from the machine: CPU model (/proc/cpuinfo, or the device-tree model on ARM boards), the CPUs this process may
use (affinity, so a testbed cgroup shows), memory and CPU quota (the tightest limit of this process's own cgroup and
its ancestors, found through /proc/self/cgroup: the testbed moves a process into a quota cgroup below the mount
root), GPU name through NVML when present, ONNX Runtime version and the providers that really load, and the
thread/graph settings the node runs with. The testbed's emulated class comes from ``$RR_DEVICE_CLASS`` (empty on real
hardware).
"""

from __future__ import annotations

import logging
import math
import os
import platform
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import onnxruntime as ort

from rr_edge.cpus import usable_cpus
from rr_edge.errors import ServerError
from rr_edge.meters.nvml import nvml_gpu_name
from rr_edge.session import OrtSettings, usable_providers

if TYPE_CHECKING:
    from rr_edge.client import Client

log = logging.getLogger(__name__)

ENV_DEVICE_CLASS = "RR_DEVICE_CLASS"
ROOT = Path("/")  # where /proc and /sys are: a test points the cgroup readers at a tree of its own
CGROUP_FS = "sys/fs/cgroup"
UNLIMITED = "max"  # the cpu_quota of a cgroup without a quota (cgroup v2's word), told apart from "" (unknown)


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


def _read(path: str | Path) -> str:
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


def own_cgroups(text: str) -> dict[str, str]:
    """This process's cgroup path per controller, from /proc/self/cgroup: each controller of a v1 line
    (`4:cpu,cpuacct:/testbed/emu-nano`), and "" for the v2 line (`0::/testbed/emu-nano`)."""
    paths: dict[str, str] = {}
    for line in text.splitlines():
        _, _, rest = line.partition(":")
        controllers, sep, path = rest.partition(":")
        if sep:
            for controller in controllers.split(","):
                paths[controller] = path.strip()
    return paths


def cgroup_dirs(controller: str, root: Path = ROOT) -> Iterator[tuple[int, Path]]:
    """(cgroup version, directory) of this process's own cgroup for `controller` ("cpu", "memory"), then of each
    ancestor up to the mount root: a limit set on any of them applies. Where the own path is not below the mount (a
    container whose cgroup is mounted as the root), only the directories that exist: the mount root at least."""
    fs = root / CGROUP_FS
    paths = own_cgroups(_read(root / "proc/self/cgroup"))
    if (fs / "cgroup.controllers").is_file():  # the unified (v2) hierarchy is mounted there
        version, mounts, path = 2, [fs], paths.get("", "/")
    else:
        version, path = 1, paths.get(controller, "/")
        mounts = [fs / name for name in (controller, f"{controller},cpuacct", f"cpuacct,{controller}")]
    mount = next((m for m in mounts if m.is_dir()), None)
    if mount is None:
        return
    parts = [p for p in PurePosixPath(path).parts if p not in ("/", ".", "..")]
    for k in range(len(parts), -1, -1):
        d = mount.joinpath(*parts[:k])
        if d.is_dir():
            yield version, d


def memory_bytes(root: Path = ROOT) -> int:
    """The machine's memory, or the tightest cgroup memory limit of this process below it."""
    for line in _read(root / "proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            total = int(line.split()[1]) * 1024
            for version, d in cgroup_dirs("memory", root):
                limit = _read(d / ("memory.max" if version == 2 else "memory.limit_in_bytes")).strip()
                if limit.isdigit() and 0 < int(limit) < total:
                    total = int(limit)
            return total
    return 0


def cpu_quota(root: Path = ROOT) -> str:
    """This process's cgroup CPU quota as "quota/period", the tightest of its own cgroup's and its ancestors' (v2
    cpu.max, v1 cpu.cfs_quota_us and cpu.cfs_period_us); `UNLIMITED` when the files there set none, "" when there are
    no such files to read (unknown)."""
    found, tightest = False, (math.inf, UNLIMITED)
    for version, d in cgroup_dirs("cpu", root):
        if version == 2:
            quota, _, period = _read(d / "cpu.max").strip().partition(" ")
        else:
            quota, period = _read(d / "cpu.cfs_quota_us").strip(), _read(d / "cpu.cfs_period_us").strip()
        if not quota:
            continue
        found = True
        if quota.isdigit() and period.isdigit() and int(period) > 0 and int(quota) / int(period) < tightest[0]:
            tightest = (int(quota) / int(period), f"{quota}/{period}")  # v2 "max", v1 "-1": no quota there
    return tightest[1] if found else ""


def describe_device(settings: OrtSettings | None = None, *, energy_source: str = "") -> DeviceInfo:
    """This machine's descriptor with the given (or default) ONNX Runtime settings."""
    s = (settings or OrtSettings()).resolved()
    extra = {"platform": platform.platform(), "python": platform.python_version(), "ort_provider": s.provider}
    quota = cpu_quota()
    if quota:  # UNLIMITED too: a quota set later is a change of setup (`setup_changes`)
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
    {name: (registered, now)}; a setting either side lacks (an older client's descriptor, a CPU quota that cannot be
    read here) is not a change. An unlimited CPU quota is `UNLIMITED`, so a quota set since is one."""
    extra = registered.get("extra") or {}
    pairs = [(k, registered.get(k), getattr(now, k)) for k in TIMING_SETUP]
    pairs += [(k, extra.get(k), now.extra.get(k)) for k in TIMING_SETUP_EXTRA]
    return {k: (old, new) for k, old, new in pairs if old not in (None, "") and new not in (None, "") and old != new}


def with_timing_setup(now: DeviceInfo, registered: Mapping[str, Any]) -> DeviceInfo:
    """`now` with the timing setup of the node's registered descriptor, wherever that has one: what a registration
    that measures no blocks (netprofile) sends, so that the setup the node's blocks were measured with stays on
    record. netprofile re-registered with the default threads, and the next profile's warning about another setup
    was then missed, or given for the setup the blocks were measured with (review)."""
    extra = registered.get("extra") or {}
    kept = {k: registered[k] for k in TIMING_SETUP if registered.get(k) not in (None, "")}
    kept_extra = {k: extra[k] for k in TIMING_SETUP_EXTRA if extra.get(k) not in (None, "")}
    return replace(now, **kept, extra={**now.extra, **kept_extra})


def registered_device(client: Client, node_id: str) -> dict[str, Any] | None:
    """The node's registered descriptor (`NodeInfo.device`); None when the server does not know the node."""
    try:
        return client.get_node(node_id).device
    except ServerError as exc:
        if exc.code == "NOT_FOUND":
            return None
        raise
