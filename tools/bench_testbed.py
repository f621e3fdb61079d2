"""Benchmark the emulated testbed: payload throughput over the shaped link, CPU-quota throttling jitter, cgroup moves.

    sudo PYTHONPATH=. python tools/bench_testbed.py [--quick] > docs/results/testbed_bench.json

Link: 64 MB over TCP (stdlib sockets) from an edge namespace to the server namespace, at each tbf rate; sender
outside any cgroup ("link") and inside the emu-agx cgroup ("as emu-agx"). CPU: a fixed pure-Python loop (about one
resnet18 inference long when unthrottled) timed repeatedly inside each class cgroup at several CFS periods, with a
seeded random idle gap before each run so that runs start at random phases of the period, as requests do. Ratios are
against the unthrottled loop measured in the same run. cgroup_move: moving this process into emu-agx's cgroup after
a 50 ms pause, without and with the evaluation's keepalive thread. Uses its own prefix (rrb); tears everything down
at the end.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.eval.throttle import CgroupSwitch, keep_moves_cheap  # noqa: E402
from tools.testbed import TestbedConfig, cgroups, device_env, down, load_classes, spawn, up  # noqa: E402

SEED = 1234
PREFIX = "rrb"

RECEIVER = """
import json, socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 0)); s.listen(1); print(s.getsockname()[1], flush=True)
c, _ = s.accept(); n = 0; b = c.recv(1 << 20); t0 = time.perf_counter()
while b:
    n += len(b); b = c.recv(1 << 20)
print(json.dumps({"bytes": n, "seconds": time.perf_counter() - t0}), flush=True)
"""

SENDER = """
import os, socket, sys
host, port = os.environ["RR_SERVER"].rsplit(":", 1)
buf = b"\\0" * (1 << 20)
with socket.create_connection((host, int(port)), timeout=30) as c:
    for _ in range(int(sys.argv[1])):
        c.sendall(buf)
"""

WORKER = """
import json, random, sys, time
iters, runs, seed, gap = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
rng = random.Random(seed)
def work(n):
    acc = 0
    for i in range(n):
        acc = (acc * 31 + i) & 0xFFFFFFFF
    return acc
work(iters // 10)
out = []
for _ in range(runs):
    time.sleep(rng.uniform(0.0, gap))
    t, c = time.perf_counter(), time.process_time(); work(iters)
    out.append((time.perf_counter() - t, time.process_time() - c))
print(json.dumps(out))
"""


def _transfer(cfg: TestbedConfig, sender_in_cgroup: bool, mb: int) -> float:
    rx = spawn(cfg, "server", [sys.executable, "-c", RECEIVER, cfg.server_addr], stdout=subprocess.PIPE, text=True)
    try:
        assert rx.stdout is not None
        port = int(rx.stdout.readline())
        cmd = [sys.executable, "-c", SENDER, str(mb)]
        if sender_in_cgroup:
            spawn(cfg, "emu-agx", cmd, port=port).wait(timeout=120)
        else:
            env = {**os.environ, "RR_SERVER": f"{cfg.server_addr}:{port}"}
            subprocess.run(["ip", "netns", "exec", cfg.netns("emu-agx"), *cmd], env=env, check=True, timeout=120)
        res = json.loads(rx.stdout.readline())
    finally:
        rx.kill()
        rx.wait()
    assert res["bytes"] == mb << 20
    return res["bytes"] / res["seconds"] / 1e6


def bench_link(state_dir: str, rates: list[str], mb: int, repeats: int) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for rate in rates:
        cfg = TestbedConfig(prefix=PREFIX, state_dir=state_dir, rate=rate, classes=("emu-agx",))
        up(cfg)
        nominal = float(rate.removesuffix("mbit")) / 8 if rate.endswith("mbit") else None
        for in_cg in (False, True):
            speeds = [_transfer(cfg, in_cg, mb) for _ in range(repeats)]
            med = statistics.median(speeds)
            rows.append({
                "rate": rate, "sender": "as emu-agx" if in_cg else "link", "megabytes": mb,
                "payload_MB_s_median": round(med, 1),
                "payload_MiB_s_median": round(med * 1e6 / 2**20, 1), "payload_MB_s_all": [round(s, 1) for s in speeds],
                "payload_over_rate": round(med / nominal, 3) if nominal else None,
            })  # fmt: skip
    return rows


def _worker(iters: int, runs: int, gap_s: float) -> list[str]:
    return [sys.executable, "-c", WORKER, str(iters), str(runs), str(SEED), str(gap_s)]


def _calibrate(target_s: float) -> int:
    iters = 1_000_000
    for _ in range(3):  # converge: the first pass also warms caches and the CPU clock
        out = subprocess.run(_worker(iters, 5, 0.0), capture_output=True, text=True, check=True).stdout
        cpu = statistics.median(c for _, c in json.loads(out))
        iters = int(iters * target_s / cpu)
    return iters


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def _summary(pairs: list[list[float]]) -> dict[str, float]:
    wall = [w for w, _ in pairs]
    stretch = [w / c for w, c in pairs]
    return {"median_s": statistics.median(wall), "p90_s": _pct(wall, 0.9),
            "wall_over_cpu_median": statistics.median(stretch), "wall_over_cpu_p90": _pct(stretch, 0.9)}  # fmt: skip


def bench_cpu(
    state_dir: str, periods: list[int], runs: int, target_s: float, gap_s: float, shares: int | None
) -> dict[str, object]:
    """Per class and period: the loop inside the class cgroup, next to the same loop run just before it in the
    (unthrottled) server cgroup.

    Two views: wall time over the unthrottled wall time (what a profiler sees; includes the host's own noise) and
    wall time over the CPU time the loop consumed (the throttling alone; the kernel's quota should make it 1/quota).
    """
    iters = _calibrate(target_s)
    table = load_classes()
    edges = [n for n, c in table.items() if not c.is_server]
    rows = []
    for period in periods:
        cfg = TestbedConfig(prefix=PREFIX, state_dir=state_dir, period_us=period, classes=tuple(edges),
                            cpu_shares=shares)  # fmt: skip
        up(cfg)
        for name in edges:
            base_proc = spawn(cfg, "server", _worker(iters, runs, gap_s), stdout=subprocess.PIPE, text=True)
            base_out, _ = base_proc.communicate(timeout=900)
            proc = spawn(cfg, name, _worker(iters, runs, gap_s), stdout=subprocess.PIPE, text=True)
            out, _ = proc.communicate(timeout=900)
            base, thr = _summary(json.loads(base_out)), _summary(json.loads(out))
            quota = table[name].cpu_quota
            assert quota is not None
            rows.append({
                "class": name, "period_us": period, "quota": quota, "expected_ratio": round(1 / quota, 2),
                "unthrottled_median_s": round(base["median_s"], 4),
                "median_s": round(thr["median_s"], 4), "p90_s": round(thr["p90_s"], 4),
                "median_ratio": round(thr["median_s"] / base["median_s"], 2),
                "p90_ratio": round(thr["p90_s"] / base["median_s"], 2),
                "p90_over_median": round(thr["p90_s"] / thr["median_s"], 2),
                "wall_over_cpu_median": round(thr["wall_over_cpu_median"], 2),
                "wall_over_cpu_p90": round(thr["wall_over_cpu_p90"], 2),
                "unthrottled_wall_over_cpu_median": round(base["wall_over_cpu_median"], 2),
            })  # fmt: skip
    return {"loop_iterations": iters, "runs": runs, "idle_gap_s": [0.0, gap_s], "cpu_shares": shares, "rows": rows}


def bench_cgroup_move(state_dir: str, repeats: int, pause_s: float) -> dict[str, object]:
    """Time moving this process into emu-agx's cgroup after `pause_s` without a move, as a plan's tail does after
    waiting for the server, with and without the evaluation's keepalive thread (tools.eval.throttle)."""
    cfg = TestbedConfig(prefix=PREFIX, state_dir=state_dir, classes=("emu-agx",))
    up(cfg)
    _, cgroup, _ = device_env(cfg, "emu-agx")
    root = cgroups.detect().root
    fds = [os.open(path, os.O_WRONLY) for path in (cgroup / "cgroup.procs", root / "cgroup.procs", root / "tasks")]
    switch = CgroupSwitch(fds[0], fds[1])
    out: dict[str, object] = {"pause_s": pause_s, "repeats": repeats}
    try:
        for keepalive in (False, True):
            stop = threading.Event()
            mover = threading.Thread(target=keep_moves_cheap, args=(fds[2],), kwargs={"stop": stop})
            if keepalive:
                mover.start()
            ms = []
            for _ in range(repeats):
                time.sleep(pause_s)
                t0 = time.perf_counter()
                switch.throttle()
                ms.append((time.perf_counter() - t0) * 1e3)
                switch.free()
            stop.set()
            if keepalive:
                mover.join()
            key = "with_keepalive" if keepalive else "without_keepalive"
            out[key] = {"median_ms": round(statistics.median(ms), 3), "max_ms": round(max(ms), 3)}
    finally:
        switch.free()
        for fd in fds:
            os.close(fd)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repeats (smoke run)")
    ap.add_argument("--rates", default="640mbit,667mbit,700mbit")
    ap.add_argument("--periods", default="100000,20000,10000")
    ap.add_argument("--runs", type=int, default=20, help="timed loop runs per class and period")
    ap.add_argument("--target-ms", type=float, default=47.0, help="loop CPU time (resnet18, ORT 1 thread: 47 ms)")
    ap.add_argument("--cpu-shares", type=int, default=8192, help="testbed weight vs other host load (1024: equal)")
    ap.add_argument("--gap-ms", type=float, default=100.0, help="max random idle gap before each run")
    ap.add_argument("--parts", default="link,cpu,cgroup_move", help="which measurements (comma-separated)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if os.geteuid() != 0:
        print("error: needs root", file=sys.stderr)
        return 1
    runs = 5 if args.quick else args.runs
    parts = set(args.parts.split(","))
    unknown = parts - {"link", "cpu", "cgroup_move"}
    if unknown:
        ap.error(f"unknown part(s) {sorted(unknown)}; choose from link, cpu, cgroup_move")
    with tempfile.TemporaryDirectory() as state_dir:
        cfg = TestbedConfig(prefix=PREFIX, state_dir=state_dir)
        down(cfg)
        try:
            t0 = time.time()
            results: dict[str, object] = {}
            if "link" in parts:
                results["link"] = bench_link(state_dir, args.rates.split(","), 64, 1 if args.quick else 3)
            if "cpu" in parts:
                periods = [int(p) for p in args.periods.split(",")]
                results["cpu"] = bench_cpu(
                    state_dir, periods, runs, args.target_ms / 1000, args.gap_ms / 1000, args.cpu_shares
                )
            if "cgroup_move" in parts:
                results["cgroup_move"] = bench_cgroup_move(state_dir, runs, 0.05)
        finally:
            down(cfg)
    print(json.dumps({
        "bench": "testbed", "seed": SEED, "cpus": os.cpu_count(), "kernel": os.uname().release,
        "loadavg_after": os.getloadavg(), "seconds": round(time.time() - t0, 1), **results,
    }, indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
