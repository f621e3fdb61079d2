"""The emulated testbed: up builds namespaces, shaped links and cgroups; exec lands in both; down leaves nothing.

Needs root and ``ip netns``; uses its own prefix (``rrt``) and state dir so a running testbed is not disturbed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import tools.testbed
from tools.testbed import TestbedConfig, _sh, cgroups, lifecycle, netns
from tools.testbed import __main__ as testbed_cli
from tools.testbed.classes import CLASSES_JSON, load_classes
from tools.testbed.config import DEFAULT_PERIOD_US

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "rrt"


def _skip_reason() -> str | None:
    """Why this machine cannot build a testbed at all. Only the machine: the testbed's own code (cgroups.detect, say)
    runs inside the tests, so that a regression in it fails them instead of skipping them."""
    if os.geteuid() != 0:
        return "testbed needs root (network namespaces, tc, cgroups)"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "ip/tc not installed (Debian package iproute2)"
    return None


needs_root = pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")


def cli(state_dir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "tools.testbed", "--prefix", PREFIX, "--state-dir", str(state_dir), *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def leftovers(cfg: TestbedConfig) -> list[str]:
    """Everything named after the prefix that still exists: namespaces, root-ns links, cgroup dirs, qdiscs."""
    found = [f"netns:{n}" for n in netns.list_netns(cfg.prefix)]
    links = json.loads(subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True).stdout)
    found += [f"link:{x['ifname']}" for x in links if x["ifname"].startswith(cfg.prefix)]
    qdiscs = json.loads(subprocess.run(["tc", "-j", "qdisc", "show"], capture_output=True, text=True).stdout or "[]")
    found += [f"qdisc:{q['dev']}" for q in qdiscs if str(q.get("dev", "")).startswith(cfg.prefix)]
    parent = cgroups.detect().root / cfg.cgroup_parent
    if parent.exists():
        found.append(f"cgroup:{parent}")
    return found


@pytest.fixture
def cfg(tmp_path: Path):
    cgroups.detect()  # the cgroup cpu controller the testbed uses: an error fails the test
    c = TestbedConfig(prefix=PREFIX, state_dir=str(tmp_path / "state"))
    yield c
    cli(tmp_path / "state", "down", check=False)  # never leave anything behind, whatever happened


RECEIVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 0)); s.listen(1); print(s.getsockname()[1], flush=True)
c, _ = s.accept(); n = 0
while (b := c.recv(1 << 16)):
    n += len(b)
print(n, flush=True)
"""

SENDER = """
import os, socket
host, port = os.environ["RR_SERVER"].rsplit(":", 1)
with socket.create_connection((host, int(port)), timeout=10) as c:
    c.sendall(b"x" * (4 << 20))
"""


@needs_root
def test_up_exec_transfer_down(cfg: TestbedConfig) -> None:
    state_dir = Path(cfg.state_dir)
    data = json.loads(cli(state_dir, "up").stdout)
    again = json.loads(cli(state_dir, "up").stdout)  # idempotent
    assert data["devices"] == again["devices"]

    classes = load_classes()
    edges = [n for n, c in classes.items() if not c.is_server]
    assert {"emu-nano", "emu-tx1", "emu-nx", "emu-agx", "server"} <= set(data["devices"])

    st = json.loads(cli(state_dir, "status").stdout)
    live = st["live"]
    assert set(live["netns"]) == {cfg.netns(n) for n in classes}
    server_tbf = {q["dev"] for q in live["netns"][cfg.netns("server")]["tbf"]}
    assert server_tbf == {cfg.server_if(classes[n].short) for n in edges}
    for name in edges:
        tbf = live["netns"][cfg.netns(name)]["tbf"]
        assert [(q["dev"], q["rate_bytes_per_s"]) for q in tbf] == [(cfg.edge_if, 640_000_000 // 8)]
        cg = live["cgroups"][name]
        assert cg["period_us"] == cfg.period_us
        quota = classes[name].cpu_quota
        assert quota is not None and cg["quota_us"] == round(quota * cfg.period_us)
    assert live["cgroups"]["server"]["quota_us"] is None

    # exec: the process runs in the device's cgroup and namespace, with the documented environment
    out = cli(state_dir, "exec", "emu-nano", "--", sys.executable, "-c",
              "import json,os,socket; print(json.dumps({'cg': open('/proc/self/cgroup').read(),"
              " 'env': {k: v for k, v in os.environ.items() if k.startswith(('RR_', 'OMP_'))},"
              " 'ns': os.readlink('/proc/self/ns/net')}))").stdout  # fmt: skip
    seen = json.loads(out)
    assert f"/{cfg.cgroup_parent}/emu-nano" in seen["cg"]
    assert seen["ns"] != os.readlink("/proc/self/ns/net")
    assert seen["env"]["RR_DEVICE_CLASS"] == "emu-nano"
    assert seen["env"]["RR_THREADS"] == seen["env"]["OMP_NUM_THREADS"] == str(classes["emu-nano"].threads)
    assert seen["env"]["RR_SERVER"] == f"{cfg.server_addr}:50051"

    # TCP over the shaped link: edge namespace -> server namespace
    rx = subprocess.Popen(["ip", "netns", "exec", cfg.netns("server"), sys.executable, "-c", RECEIVER,
                           cfg.server_addr], stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert rx.stdout is not None
        port = rx.stdout.readline().strip()
        cli(state_dir, "exec", "emu-agx", "--port", port, "--", sys.executable, "-c", SENDER)
        assert int(rx.stdout.readline()) == 4 << 20
    finally:
        rx.kill()
        rx.wait()

    # down while a process still lives inside a namespace: it is stopped and nothing remains
    lingering = subprocess.Popen(["ip", "netns", "exec", cfg.netns("emu-nx"), "sleep", "60"])
    removed = json.loads(cli(state_dir, "down").stdout)["removed"]
    assert lingering.wait(timeout=10) != 0
    assert f"netns:{cfg.netns('server')}" in removed
    assert leftovers(cfg) == []
    assert not Path(cfg.state_file).exists()
    assert json.loads(cli(state_dir, "down").stdout)["removed"] == []  # down twice is fine


@needs_root
def test_down_after_crash_half_way(cfg: TestbedConfig) -> None:
    """A crash mid-`up` (namespace made, veth pair never moved, cgroup made, no state file) is still cleaned up."""
    state_dir = Path(cfg.state_dir)
    netns.ensure_netns(cfg.netns("server"))
    netns.ensure_netns(cfg.netns("emu-nano"))
    subprocess.run(["ip", "link", "add", cfg.server_if("nano"), "type", "veth", "peer", "name",
                    cfg.edge_if_root("nano")], check=True)  # fmt: skip
    subprocess.run(["tc", "qdisc", "add", "dev", cfg.server_if("nano"), "root", "tbf", "rate", "640mbit",
                    "burst", "256kb", "latency", "50ms"], check=True)  # fmt: skip
    cgroups.ensure(cgroups.detect(), cfg.cgroup_parent, "emu-nano", 0.1, cfg.period_us)
    assert not Path(cfg.state_file).exists()
    assert len(leftovers(cfg)) >= 5

    # `up` repairs the half-built testbed ...
    cli(state_dir, "up", "--classes", "emu-nano")
    st = json.loads(cli(state_dir, "status").stdout)["live"]
    assert set(st["netns"]) == {cfg.netns("server"), cfg.netns("emu-nano")}
    assert [q["dev"] for q in st["netns"][cfg.netns("emu-nano")]["tbf"]] == [cfg.edge_if]

    # ... and a fresh crash residue next to it is removed by `down` all the same
    subprocess.run(["ip", "link", "add", cfg.server_if("tx1"), "type", "veth", "peer", "name",
                    cfg.edge_if_root("tx1")], check=True)  # fmt: skip
    Path(cfg.state_file).unlink()
    cli(state_dir, "down")
    assert leftovers(cfg) == []


@needs_root
def test_unknown_device_is_a_clear_error(cfg: TestbedConfig) -> None:
    state_dir = Path(cfg.state_dir)
    proc = cli(state_dir, "exec", "emu-nano", "--", "true", check=False)
    assert proc.returncode == 1 and "not up" in proc.stderr
    cli(state_dir, "up", "--classes", "emu-agx")
    proc = cli(state_dir, "exec", "emu-nano", "--", "true", check=False)
    assert proc.returncode == 1 and "emu-nano" in proc.stderr
    proc = cli(state_dir, "up", "--classes", "emu-bogus", check=False)
    assert proc.returncode == 1 and "unknown device class" in proc.stderr


@needs_root
def test_a_bad_option_leaves_nothing_behind(cfg: TestbedConfig) -> None:
    state_dir = Path(cfg.state_dir)
    for args, error in (
        (("--cpu-shares", "0"), "cpu_shares must be at least 2"),
        (("--period-us", "1000"), "kernel minimum"),
        (("--rate", "fast"), "nothing was left behind"),
    ):
        proc = cli(state_dir, "up", "--classes", "emu-nano", *args, check=False)
        assert proc.returncode == 1 and error in proc.stderr
        assert leftovers(cfg) == [] and not Path(cfg.state_file).exists()
    # a testbed that was up stays: a quota under the minimum is refused before anything changes, so it stays usable,
    # and a failure half-way says how to remove what is left
    cli(state_dir, "up", "--classes", "emu-nano")
    assert cli(state_dir, "up", "--classes", "emu-nano", "--period-us", "1000", check=False).returncode == 1
    cli(state_dir, "exec", "emu-nano", "--", "true")
    proc = cli(state_dir, "up", "--classes", "emu-nano", "--rate", "fast", check=False)
    assert (
        proc.returncode == 1
        and f"python -m tools.testbed --prefix {PREFIX} --state-dir {state_dir} down" in proc.stderr
    )
    assert cfg.netns("emu-nano") in json.loads(cli(state_dir, "status").stdout)["live"]["netns"]


def test_cpu_shares_below_the_kernel_minimum_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        TestbedConfig(cpu_shares=1)
    assert TestbedConfig(cpu_shares=2).cpu_shares == 2


def test_class_table_is_complete_and_ordered() -> None:
    """Quotas follow the CPU scores, fit the kernel minimum at the default period, every class declares power."""
    raw = json.loads(CLASSES_JSON.read_text())
    classes = load_classes()
    assert [c["name"] for c in raw["classes"]] == list(classes)
    edges = [c for c in classes.values() if not c.is_server]
    assert [c.name for c in edges] == ["emu-nano", "emu-tx1", "emu-nx", "emu-agx"]
    assert classes["server"].cpu_quota is None
    nano_quota, nano_score = edges[0].cpu_quota, edges[0].cpu_score
    assert nano_quota is not None and nano_score is not None
    for c in edges:
        assert c.cpu_quota is not None and c.cpu_score is not None
        assert (cgroups.quota_us(c.cpu_quota, DEFAULT_PERIOD_US) or 0) >= cgroups.MIN_QUOTA_US
        assert c.cpu_quota / nano_quota == pytest.approx(c.cpu_score / nano_score, rel=0.02)
    for c in classes.values():
        p = c.power
        assert p.source == "modelled" and p.active_w > p.idle_w > 0 and p.net_tx_w > 0 and p.net_rx_w > 0
    assert len({c.short for c in classes.values()}) == len(classes)


def test_cgroup_v2_files(tmp_path: Path) -> None:
    """cgroup v2 (cpu.max, subtree_control) on a stand-in directory tree: no root needed."""
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (tmp_path / "cgroup.subtree_control").write_text("")
    (tmp_path / "roadrunner").mkdir()
    (tmp_path / "roadrunner" / "cgroup.subtree_control").write_text("")
    h = cgroups.detect(tmp_path)
    assert h.version == 2
    path = cgroups.ensure(h, "roadrunner", "emu-nx", 0.235, 10_000)
    assert (path / "cpu.max").read_text() == "2350 10000"
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+cpu"
    assert cgroups.read_limits(h, path) == {"quota_us": 2350, "period_us": 10_000}
    cgroups.set_weight(h, "roadrunner", 8192)
    assert (tmp_path / "roadrunner" / "cpu.weight").read_text() == "800"
    server = cgroups.ensure(h, "roadrunner", "server", None, 10_000)
    assert cgroups.read_limits(h, server) == {"quota_us": None, "period_us": 10_000}
    with pytest.raises(tools.testbed.TestbedError, match="kernel minimum"):
        cgroups.quota_us(0.05, 10_000)


def test_a_cgroup_that_cannot_be_made_is_a_testbed_error(tmp_path: Path) -> None:
    absent = cgroups.Hierarchy(2, tmp_path / "no-cgroupfs")  # mkdir fails (FileNotFoundError), even for root
    with pytest.raises(tools.testbed.TestbedError, match="cannot create cgroup .*no-cgroupfs/roadrunner"):
        cgroups.ensure(absent, "roadrunner", "emu-nx", 0.235, 10_000)
    with pytest.raises(tools.testbed.TestbedError, match="cannot create cgroup"):
        cgroups.set_weight(absent, "roadrunner", 8192)


def test_a_hung_command_is_a_testbed_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def hang(argv: list[str], **kw: object) -> None:
        raise subprocess.TimeoutExpired(argv, kw["timeout"])  # type: ignore[arg-type]

    monkeypatch.setattr(_sh.subprocess, "run", hang)
    with pytest.raises(tools.testbed.TestbedError, match=r"`tc qdisc show` did not finish in 30 s"):
        _sh.run("tc", "qdisc", "show")


@pytest.fixture
def rootless(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[TestbedConfig, list[str], list[str]]:
    """`up` without root: namespaces and `down` only recorded, cgroups under a cgroupfs that is not there."""
    made: list[str] = []
    downs: list[str] = []
    monkeypatch.setattr(lifecycle, "_require_root", lambda: None)
    monkeypatch.setattr(lifecycle, "require_tools", lambda: None)
    monkeypatch.setattr(cgroups, "detect", lambda: cgroups.Hierarchy(2, tmp_path / "no-cgroupfs"))
    monkeypatch.setattr(netns, "ensure_netns", made.append)
    monkeypatch.setattr(lifecycle, "down", lambda cfg: downs.append(cfg.prefix) or [])
    return TestbedConfig(prefix="rrz", state_dir=str(tmp_path / "state"), classes=("emu-nano",)), made, downs


def _stop_at_the_first_link(monkeypatch: pytest.MonkeyPatch, made: list[str], failure: BaseException) -> None:
    """The cgroups made (recorded), then `failure` where the first veth pair would be made."""

    def stop(*args: object, **kw: object) -> None:
        raise failure

    monkeypatch.setattr(cgroups, "set_weight", lambda *args: None)
    monkeypatch.setattr(cgroups, "ensure", lambda h, parent, cls, *args: made.append(cls) or h.root / parent / cls)
    monkeypatch.setattr(netns, "ensure_pair", stop)


@pytest.mark.parametrize("failure", [KeyboardInterrupt(), MemoryError(), OSError(5, "EIO")])
def test_up_cleans_a_fresh_prefix_whatever_stops_it(rootless, monkeypatch, failure) -> None:
    """Ctrl-C (or anything else) half-way through `up` on a fresh prefix leaves nothing, and goes on as it was."""
    cfg, made, downs = rootless
    _stop_at_the_first_link(monkeypatch, made, failure)
    with pytest.raises(type(failure)):
        lifecycle.up(cfg)
    assert made == [cfg.netns("server"), "emu-nano", cfg.netns("emu-nano")] and downs == ["rrz"]


def test_up_on_a_testbed_that_was_up_leaves_it_to_the_user(rootless, monkeypatch) -> None:
    cfg, made, downs = rootless
    tools.testbed.state.save(cfg.state_file, {"status": "up"})
    _stop_at_the_first_link(monkeypatch, made, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        lifecycle.up(cfg)
    assert downs == []


def test_up_reports_a_cgroup_it_cannot_make_and_leaves_nothing(rootless) -> None:
    cfg, _, downs = rootless
    with pytest.raises(tools.testbed.TestbedError, match=r"cannot create cgroup .* \(nothing was left behind\)"):
        lifecycle.up(cfg)
    assert downs == ["rrz"]


def test_cli_reports_an_os_error_in_one_line(monkeypatch, tmp_path, capsys) -> None:
    def up(cfg: TestbedConfig) -> None:
        raise PermissionError(13, "Permission denied", str(tmp_path / "state"))

    monkeypatch.setattr(lifecycle, "up", up)
    assert testbed_cli.main(["--state-dir", str(tmp_path / "state"), "up"]) == 1
    assert capsys.readouterr().err.startswith("error: [Errno 13] Permission denied")


def test_public_surface() -> None:
    assert sorted(tools.testbed.__all__) == sorted(n for n in tools.testbed.__all__ if hasattr(tools.testbed, n))
