"""Network side of the testbed: one namespace per device class, a shaped veth pair from each edge to the server.

Topology (point-to-point, no bridge): every edge namespace ``<prefix>-<class>`` holds ``<prefix>0`` with its own
address and the server address as its /32 peer; the server namespace ``<prefix>-server`` holds one ``<prefix>s-<short>``
per edge, each carrying the server address with that edge as peer. So every edge reaches the server at the same
address (RR_SERVER). Both ends of every pair get a ``tc tbf`` root qdisc: shaping applies in each direction.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time

from ._sh import TestbedError, run

log = logging.getLogger(__name__)


def list_netns(prefix: str) -> list[str]:
    out = run("ip", "netns", "list").stdout
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    return sorted(n for n in names if n.startswith(f"{prefix}-"))


def _links(netns: str | None) -> list[str]:
    argv = ["ip", "-j", "link", "show"] if netns is None else ["ip", "-n", netns, "-j", "link", "show"]
    proc = run(*argv, check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        return []
    return [item["ifname"] for item in json.loads(proc.stdout)]


def ensure_netns(name: str) -> None:
    if name not in run("ip", "netns", "list").stdout.split():
        run("ip", "netns", "add", name)
    run("ip", "-n", name, "link", "set", "lo", "up")


def ensure_pair(
    *,
    server_ns: str,
    server_if: str,
    edge_ns: str,
    edge_if_root: str,
    edge_if: str,
    server_addr: str,
    edge_addr: str,
) -> None:
    """Create (or repair) the veth pair between ``edge_ns`` and ``server_ns`` and address both ends."""
    complete = server_if in _links(server_ns) and edge_if in _links(edge_ns)
    if not complete:
        # Remove any half-built leftovers wherever a crash left them, then build from scratch.
        for ns, name in ((None, server_if), (None, edge_if_root), (server_ns, server_if), (edge_ns, edge_if)):
            if name in _links(ns):
                run(*(["ip"] + (["-n", ns] if ns else []) + ["link", "del", name]), check=False)
        run("ip", "link", "add", server_if, "type", "veth", "peer", "name", edge_if_root)
        run("ip", "link", "set", server_if, "netns", server_ns)
        run("ip", "link", "set", edge_if_root, "netns", edge_ns)
        run("ip", "-n", edge_ns, "link", "set", edge_if_root, "name", edge_if)
    run("ip", "-n", server_ns, "addr", "replace", f"{server_addr}/32", "peer", f"{edge_addr}/32", "dev", server_if)
    run("ip", "-n", edge_ns, "addr", "replace", f"{edge_addr}/32", "peer", f"{server_addr}/32", "dev", edge_if)
    run("ip", "-n", server_ns, "link", "set", server_if, "up")
    run("ip", "-n", edge_ns, "link", "set", edge_if, "up")


def shape(netns: str, dev: str, *, rate: str, burst: str, latency: str) -> None:
    """Put (or replace) a tbf root qdisc on ``dev``: idempotent."""
    run("tc", "-n", netns, "qdisc", "replace", "dev", dev, "root", "tbf",
        "rate", rate, "burst", burst, "latency", latency)  # fmt: skip


def netns_pids(name: str) -> list[int]:
    proc = run("ip", "netns", "pids", name, check=False)
    return [int(p) for p in proc.stdout.split() if p.isdigit()]


def _stop(pids: list[int], grace_s: float = 2.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = []
        for pid in pids:
            try:
                os.kill(pid, sig)
                alive.append(pid)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while alive and time.monotonic() < deadline:
            alive = [p for p in alive if os.path.exists(f"/proc/{p}")]
            time.sleep(0.05)
        pids = alive
        if not pids:
            return


def delete_all(prefix: str) -> list[str]:
    """Remove every namespace and veth following the naming convention for ``prefix``; return what was removed.

    Processes still running inside a namespace are stopped first (SIGTERM, then SIGKILL), otherwise the namespace
    and the veth ends inside it would outlive ``ip netns delete``.
    """
    removed: list[str] = []
    for ns in list_netns(prefix):
        _stop(netns_pids(ns))
        for name in _links(ns):
            if name.startswith(prefix):
                run("ip", "-n", ns, "link", "del", name, check=False)
        run("ip", "netns", "delete", ns, check=False)
        removed.append(f"netns:{ns}")
    for name in _links(None):
        base = name.split("@")[0]
        if base.startswith((f"{prefix}s-", f"{prefix}e-")):
            run("ip", "link", "del", base, check=False)
            removed.append(f"link:{base}")
    return removed


def describe(netns: str) -> dict[str, object]:
    """Addresses and qdiscs of one namespace, as ip/tc report them."""
    addrs = run("ip", "-n", netns, "-j", "addr", "show", check=False).stdout
    qdiscs = run("tc", "-n", netns, "-j", "qdisc", "show", check=False).stdout
    links = []
    for item in json.loads(addrs or "[]"):
        links.append({
            "ifname": item.get("ifname"),
            "state": item.get("operstate"),
            "addrs": [f"{a.get('local')}" + (f" peer {a['address']}" if "address" in a else "")
                      for a in item.get("addr_info", [])],
        })  # fmt: skip
    tbf = [
        {"dev": q.get("dev"), "kind": q.get("kind"), "rate_bytes_per_s": (q.get("options") or {}).get("rate")}
        for q in json.loads(qdiscs or "[]")
        if q.get("kind") == "tbf"
    ]
    return {"links": links, "tbf": tbf}


__all__ = ["TestbedError", "delete_all", "describe", "ensure_netns", "ensure_pair", "list_netns", "netns_pids", "shape"]
