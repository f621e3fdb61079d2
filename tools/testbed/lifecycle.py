"""Bring the testbed up, tear it down, describe it, and run commands inside a device.

``up`` is idempotent and repairs a half-built testbed; ``down`` removes everything that follows the naming
conventions of the configured prefix, whether or not ``up`` finished or the state file exists.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import cgroups, netns, state
from ._sh import TestbedError, require_tools
from .classes import SERVER_CLASS, DeviceClass, load_classes
from .config import DEFAULT_PREFIX, DEFAULT_SERVER_PORT, DEFAULT_STATE_DIR, TestbedConfig

log = logging.getLogger(__name__)


def _require_root() -> None:
    if os.geteuid() != 0:
        raise TestbedError("the testbed needs root (network namespaces, tc, cgroups)")


def selected_classes(cfg: TestbedConfig) -> dict[str, DeviceClass]:
    table = load_classes()
    names = cfg.classes or tuple(table)
    unknown = [n for n in names if n not in table]
    if unknown:
        raise TestbedError(f"unknown device class(es) {', '.join(unknown)}; known: {', '.join(table)}")
    chosen = {n: table[n] for n in names}
    chosen.setdefault(SERVER_CLASS, table[SERVER_CLASS])
    return chosen


def _edge_position(name: str) -> int:
    edges = [n for n, c in load_classes().items() if not c.is_server]
    return edges.index(name)


def _down_command(cfg: TestbedConfig) -> str:
    options = "" if cfg.prefix == DEFAULT_PREFIX else f" --prefix {cfg.prefix}"
    options += "" if cfg.state_dir == DEFAULT_STATE_DIR else f" --state-dir {cfg.state_dir}"
    return f"python -m tools.testbed{options} down"


def up(cfg: TestbedConfig) -> dict[str, Any]:
    """Create namespaces, shaped veth pairs and cgroups for the selected classes; return the state written.

    A failure (a bad rate, say) on a prefix that was not up before removes what this call made; on one that was, the
    error says how to remove what is left. Anything else that stops it (Ctrl-C, a bug) on a fresh prefix removes what
    it made too, and goes on as it was.
    """
    _require_root()
    require_tools()
    hier = cgroups.detect()
    classes = selected_classes(cfg)
    for cls in classes.values():  # a quota under the kernel's minimum: refused before anything exists
        cgroups.quota_us(cls.cpu_quota, cfg.period_us)
    fresh = state.load(cfg.state_file) is None
    try:
        return _build(cfg, hier, classes)
    except TestbedError as exc:
        if fresh:
            down(cfg)
            raise TestbedError(f"{exc} (nothing was left behind)") from None
        raise TestbedError(f"{exc}; the testbed is incomplete: `up` again, or `{_down_command(cfg)}`") from None
    except BaseException:
        if fresh:
            down(cfg)
        raise


def _build(cfg: TestbedConfig, hier: cgroups.Hierarchy, classes: dict[str, DeviceClass]) -> dict[str, Any]:
    server_ns = cfg.netns(SERVER_CLASS)
    data: dict[str, Any] = {
        "status": "incomplete",
        "started": time.time(),
        "prefix": cfg.prefix,
        "subnet": cfg.subnet,
        "rate": cfg.rate,
        "burst": cfg.burst,
        "latency": cfg.latency,
        "period_us": cfg.period_us,
        "cpu_shares": cfg.cpu_shares,
        "cgroup_version": hier.version,
        "cgroup_parent": str(hier.root / cfg.cgroup_parent),
        "server_addr": cfg.server_addr,
        "devices": {},
    }
    state.save(cfg.state_file, data)  # first, so a crash below still leaves a record

    netns.ensure_netns(server_ns)
    cgroups.set_weight(hier, cfg.cgroup_parent, cfg.cpu_shares)
    for name, cls in classes.items():
        cg = cgroups.ensure(hier, cfg.cgroup_parent, name, cls.cpu_quota, cfg.period_us)
        dev: dict[str, Any] = {
            "netns": cfg.netns(name),
            "cgroup": str(cg),
            "cpu_quota": cls.cpu_quota,
            "threads": cls.thread_count(),
        }
        if cls.is_server:
            dev["addr"] = cfg.server_addr
        else:
            edge_ns = cfg.netns(name)
            addr = cfg.edge_addr(_edge_position(name))
            server_if = cfg.server_if(cls.short)
            netns.ensure_netns(edge_ns)
            netns.ensure_pair(
                server_ns=server_ns,
                server_if=server_if,
                edge_ns=edge_ns,
                edge_if_root=cfg.edge_if_root(cls.short),
                edge_if=cfg.edge_if,
                server_addr=cfg.server_addr,
                edge_addr=addr,
            )
            for ns, dev_name in ((server_ns, server_if), (edge_ns, cfg.edge_if)):
                netns.shape(ns, dev_name, rate=cfg.rate, burst=cfg.burst, latency=cfg.latency)
            dev.update(addr=addr, server_if=server_if, edge_if=cfg.edge_if)
        data["devices"][name] = dev
        state.save(cfg.state_file, data)
    data["status"] = "up"
    state.save(cfg.state_file, data)
    log.info("testbed %s up: %d device classes at %s", cfg.prefix, len(classes), cfg.rate)
    return data


def down(cfg: TestbedConfig) -> list[str]:
    """Remove every namespace, veth (and so qdisc) and cgroup of ``cfg.prefix``; return what was removed."""
    _require_root()
    require_tools()
    removed = netns.delete_all(cfg.prefix)
    try:
        hier: cgroups.Hierarchy | None = cgroups.detect()
    except TestbedError:
        hier = None
    if hier is not None:
        removed += cgroups.remove_parent(hier, cfg.cgroup_parent)
    if state.remove(cfg.state_file):
        removed.append(f"state:{cfg.state_file}")
    return removed


def status(cfg: TestbedConfig) -> dict[str, Any]:
    """What exists now (live, from ip/tc/cgroupfs) next to what the state file recorded."""
    live: dict[str, Any] = {"netns": {}, "cgroups": {}}
    for ns in netns.list_netns(cfg.prefix):
        live["netns"][ns] = netns.describe(ns)
    try:
        hier = cgroups.detect()
        for path in cgroups.list_classes(hier, cfg.cgroup_parent):
            live["cgroups"][path.name] = {
                "path": str(path),
                **cgroups.read_limits(hier, path),
                "procs": len(cgroups.procs(path)),
            }
    except TestbedError as exc:
        live["cgroups_error"] = str(exc)
    return {"state_file": cfg.state_file, "state": state.load(cfg.state_file), "live": live}


def device_env(cfg: TestbedConfig, device: str, port: int = DEFAULT_SERVER_PORT) -> tuple[str, Path, dict[str, str]]:
    """Namespace, cgroup path and environment for running a command as ``device``."""
    data = state.load(cfg.state_file)
    if data is None or data.get("status") != "up":
        raise TestbedError(f"testbed {cfg.prefix!r} is not up (no complete state in {cfg.state_file}); run `up`")
    try:
        dev = data["devices"][device]
    except KeyError:
        raise TestbedError(f"device {device!r} is not in the testbed; up: {', '.join(data['devices'])}") from None
    threads = str(dev["threads"])
    env = dict(os.environ)
    env.update(
        RR_TESTBED="emulated",
        RR_DEVICE_CLASS=device,
        RR_THREADS=threads,
        OMP_NUM_THREADS=threads,
        OPENBLAS_NUM_THREADS=threads,
        MKL_NUM_THREADS=threads,
        RR_SERVER=f"{data['server_addr']}:{port}",
        RR_SERVER_HOST=data["server_addr"],
        RR_DEVICE_ADDR=dev["addr"],
        RR_NETNS=dev["netns"],
        RR_CGROUP=dev["cgroup"],
    )
    return dev["netns"], Path(dev["cgroup"]), env


def spawn(
    cfg: TestbedConfig, device: str, cmd: Sequence[str], *, port: int = DEFAULT_SERVER_PORT, **popen_kw: Any
) -> subprocess.Popen[Any]:
    """Start ``cmd`` inside ``device``'s namespace and cgroup (the child joins the cgroup before exec)."""
    ns, cg, env = device_env(cfg, device, port)
    env.update(popen_kw.pop("env", None) or {})
    procs_file = str(cg / "cgroup.procs")

    def _join() -> None:  # runs in the child between fork and exec
        with open(procs_file, "w") as f:
            f.write(str(os.getpid()))

    return subprocess.Popen(["ip", "netns", "exec", ns, *cmd], env=env, preexec_fn=_join, **popen_kw)


def exec_replace(cfg: TestbedConfig, device: str, cmd: Sequence[str], *, port: int = DEFAULT_SERVER_PORT) -> None:
    """Become ``cmd`` inside ``device``: join the cgroup, then exec through ``ip netns exec`` (never returns)."""
    ns, cg, env = device_env(cfg, device, port)
    cgroups.join(cg)
    os.execvpe("ip", ["ip", "netns", "exec", ns, *cmd], env)
