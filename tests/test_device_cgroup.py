"""The node's cgroup CPU quota and memory limit, read on stand-in /proc and /sys trees (no root needed): those of the
process's own cgroup, as the testbed moves a device's processes into a quota cgroup below the mount root."""

from __future__ import annotations

from pathlib import Path

import pytest

from rr_edge import device
from rr_edge.device import UNLIMITED, cpu_quota, describe_device, memory_bytes, own_cgroups, setup_changes
from rr_edge.session import OrtSettings

GiB = 2**30


def _tree(root: Path, proc_cgroup: str, files: dict[str, str], mem_total_kib: int = 8 * 2**20) -> Path:
    """A stand-in root: /proc/self/cgroup, /proc/meminfo, and `files` below /sys/fs/cgroup."""
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/cgroup").write_text(proc_cgroup)
    (root / "proc/meminfo").write_text(f"MemTotal:       {mem_total_kib} kB\nMemFree:         1024 kB\n")
    fs = root / "sys/fs/cgroup"
    fs.mkdir(parents=True)
    for name, text in files.items():
        (fs / name).parent.mkdir(parents=True, exist_ok=True)
        (fs / name).write_text(text)
    return root


V1 = "9:memory:/testbed/emu-nano\n4:cpu,cpuacct:/testbed/emu-nano\n1:name=systemd:/\n0::/\n"
V1_ROOT = {
    "cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
    "cpu,cpuacct/cpu.cfs_period_us": "100000\n",
    "memory/memory.limit_in_bytes": "9223372036854771712\n",
}


def test_own_cgroups_reads_v1_and_v2_lines() -> None:
    assert own_cgroups(V1) == {"memory": "/testbed/emu-nano", "cpu": "/testbed/emu-nano",
                               "cpuacct": "/testbed/emu-nano", "name=systemd": "/", "": "/"}  # fmt: skip


def test_cgroup_v1_limits_are_the_processs_own_cgroups_not_the_mount_roots(tmp_path: Path) -> None:
    """Moved into a 50% quota cgroup, the node reported no quota: the files at the mount root were read."""
    root = _tree(tmp_path, V1, {
        **V1_ROOT,
        "cpu,cpuacct/testbed/emu-nano/cpu.cfs_quota_us": "50000\n",
        "cpu,cpuacct/testbed/emu-nano/cpu.cfs_period_us": "100000\n",
        "memory/testbed/emu-nano/memory.limit_in_bytes": f"{GiB}\n",
    })  # fmt: skip
    assert cpu_quota(root) == "50000/100000"
    assert memory_bytes(root) == GiB
    (root / "proc/self/cgroup").write_text(V1.replace("/testbed/emu-nano", "/"))  # at the root: no limits
    assert cpu_quota(root) == UNLIMITED and memory_bytes(root) == 8 * GiB


def test_cgroup_v2_takes_the_tightest_limit_of_the_own_cgroup_and_its_ancestors(tmp_path: Path) -> None:
    root = _tree(tmp_path, "0::/testbed/emu-nano\n", {
        "cgroup.controllers": "cpuset cpu io memory pids\n",
        "testbed/cpu.max": "20000 100000\n",  # the parent's quota applies to its children too
        "testbed/memory.max": "max\n",
        "testbed/emu-nano/cpu.max": "50000 100000\n",
        "testbed/emu-nano/memory.max": f"{2 * GiB}\n",
    })  # fmt: skip
    assert cpu_quota(root) == "20000/100000"
    assert memory_bytes(root) == 2 * GiB
    (root / "sys/fs/cgroup/testbed/cpu.max").write_text("max 100000\n")
    assert cpu_quota(root) == "50000/100000"


def test_a_container_whose_own_cgroup_is_the_mount_root_reads_the_root(tmp_path: Path) -> None:
    """Without a cgroup namespace /proc/self/cgroup names the host's path, which the container's mount lacks."""
    root = _tree(tmp_path, "0::/system.slice/docker-abc.scope\n", {
        "cgroup.controllers": "cpu memory\n", "cpu.max": "150000 100000\n", "memory.max": f"{GiB}\n",
    })  # fmt: skip
    assert cpu_quota(root) == "150000/100000" and memory_bytes(root) == GiB


def test_unlimited_and_unknown_quotas_differ(tmp_path: Path) -> None:
    unlimited = _tree(tmp_path / "a", "0::/\n", {"cgroup.controllers": "cpu\n", "x/cpu.max": "max 100000\n"})
    (unlimited / "proc/self/cgroup").write_text("0::/x\n")
    assert cpu_quota(unlimited) == UNLIMITED
    unknown = _tree(tmp_path / "b", "", {})  # no cgroup files at all (not Linux, or /sys masked)
    assert cpu_quota(unknown) == "" and memory_bytes(unknown) == 8 * GiB


def test_a_quota_set_since_an_unlimited_registration_is_a_change_of_setup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unlimited was recorded as no quota at all, which `setup_changes` skips as unknown: a node registered
    unthrottled and profiled again under a quota was not warned. Unlimited is recorded as such; unknown stays out."""
    root = _tree(tmp_path, V1, V1_ROOT)
    monkeypatch.setattr(device, "cpu_quota", lambda: cpu_quota(root))
    settings = OrtSettings(intra_op_threads=1)
    registered = describe_device(settings)
    assert registered.extra["cpu_quota"] == UNLIMITED
    quota_dir = root / "sys/fs/cgroup/cpu,cpuacct/testbed/emu-nano"
    quota_dir.mkdir(parents=True)
    (quota_dir / "cpu.cfs_quota_us").write_text("50000\n")
    (quota_dir / "cpu.cfs_period_us").write_text("100000\n")
    throttled = describe_device(settings)
    assert setup_changes(registered.to_json(), throttled) == {"cpu_quota": (UNLIMITED, "50000/100000")}
    assert setup_changes(throttled.to_json(), registered) == {"cpu_quota": ("50000/100000", UNLIMITED)}
    monkeypatch.setattr(device, "cpu_quota", lambda: "")  # unreadable here: not a change
    unknown = describe_device(settings)
    assert "cpu_quota" not in unknown.extra and setup_changes(throttled.to_json(), unknown) == {}
