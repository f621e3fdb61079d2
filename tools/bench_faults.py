"""Resilience of `rr-edge run` under faults on the emulated testbed: a cut link and a killed server, next to a run
without a fault.

    sudo PYTHONPATH=. .venv/bin/python tools/bench_faults.py --out docs/results/faults_bench.json   # ~3-4 min
    .venv/bin/python tools/bench_faults.py --markdown --from docs/results/faults_bench.json          # the docs' table

Brings up its own testbed (prefix `rrf`, emu-nx only; torn down at the end, also after an error), starts rr-server in
the server namespace, exports resnet18 (cached under .cache/models) and, inside emu-nx, profiles the link (`rr-edge
netprofile`) and the model (`rr-edge profile --energy model`). Each scenario is then one `rr-edge run resnet18
--repeat K --energy model --json --trace T` inside emu-nx; once `--at` requests are in its trace, the fault is
applied:

* `baseline`: none;
* `link-cut`, `link-cut-t2` and `link-cut-fixed`: the server's end of emu-nx's veth pair set down for `--cut-s`
  seconds, then up; with run's defaults, with `--timeout 2`, and with `--fixed-timeout` (every answer waited for
  the whole `--timeout`, 30 s: how runs waited before the answer deadline adapted);
* `server-kill`: rr-server SIGKILLed, started again `--kill-s` seconds later on the same port and data dir.

Per scenario: requests, wall seconds, the largest gap between two consecutive request completions and where it fell,
fallback requests, switches, how long after the fault ended the server served a request again, the largest
|output - whole model run locally|, and the run's exit status. The testbed is emulated (edge speed a CPU quota of one
host CPU, the link veth + tbf) and energy modelled (`--energy model`): the JSON says so, with the commit, the files
that differ from it, and the machine's CPUs and load (shared and noisy: compare scenarios of one run, not runs).

The fault is timed on this process's monotonic clock, the trace on the run's (the same system clock, counted from
the trace's opening): the trace's start is placed at min(read time - t_s) over its lines, which the 20 ms polling
bounds.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tools._models import cached_export  # noqa: E402
from tools._server import rr_server_command, wait_for_file  # noqa: E402
from tools.testbed import TestbedConfig, down, spawn, up  # noqa: E402

PREFIX = "rrf"
DEVICE = "emu-nx"
NODE = "nx"
PORT = 50081
SEED = 1234
POLL_S = 0.02  # how often the trace is read while a run goes
RUN_TIMEOUT_S = 420.0  # a run still going after this is killed (its scenario says so)
SETUP_TIMEOUT_S = 300.0
SCENARIOS = {  # name: (fault, extra `rr-edge run` arguments)
    "baseline": (None, []),
    "link-cut": ("link-cut", []),
    "link-cut-t2": ("link-cut", ["--timeout", "2"]),
    "link-cut-fixed": ("link-cut", ["--fixed-timeout"]),  # every answer waited for the whole --timeout (30 s)
    "server-kill": ("server-kill", []),
}
DEFAULTS = {"repeat": 600, "at": 200, "cut_s": 20.0, "kill_s": 10.0}
NOTE = (
    "emulated testbed (tools/testbed: edge speed a CPU quota of one host CPU, link veth + tbf), energy modelled "
    "(--energy model, not measured); the host was shared with other work and is noisy: compare scenarios of one run"
)


# --- processes in the testbed ---------------------------------------------------------------------------------------


def _env() -> dict[str, str]:
    return {"PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


@dataclass
class Server:
    """rr-server in the testbed's server namespace, on `port` with `data_dir`, which a restart keeps."""

    cfg: TestbedConfig
    port: int
    data_dir: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{self.cfg.server_addr}:{self.port}"

    def start(self) -> None:
        port_file = self.data_dir.parent / "rr-server.port"
        port_file.unlink(missing_ok=True)
        cmd = rr_server_command(self.data_dir, port_file, listen=self.address)
        with self.log.open("ab") as log:  # `ip netns exec` execs the command: the pid is rr-server's own
            self.proc = spawn(self.cfg, "server", cmd, port=self.port, stdout=log, stderr=subprocess.STDOUT,
                              cwd=REPO, env=_env())  # fmt: skip
        wait_for_file(port_file, self.proc, "rr-server")

    def kill(self) -> None:
        """SIGKILL: no drain, no goodbye to the streams open on it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


def rr_edge(cfg: TestbedConfig, port: int, args: list[str], out: Path, err: Path) -> subprocess.Popen[bytes]:
    """`rr-edge ARGS` inside emu-nx (its namespace and CPU quota), stdout and stderr to files."""
    with out.open("wb") as stdout, err.open("wb") as stderr:
        cmd = [sys.executable, "-m", "rr_edge.cli", *args]
        return spawn(cfg, DEVICE, cmd, port=port, stdout=stdout, stderr=stderr, cwd=REPO, env=_env())


def rr_edge_json(cfg: TestbedConfig, port: int, args: list[str], work: Path, name: str) -> dict[str, Any]:
    """What `rr-edge ARGS --json` prints inside emu-nx; RuntimeError (with its stderr) when it fails."""
    out, err = work / f"{name}.json", work / f"{name}.err"
    proc = rr_edge(cfg, port, [*args, "--json"], out, err)
    if proc.wait(SETUP_TIMEOUT_S) != 0:
        raise RuntimeError(f"rr-edge {args[0]} exited with {proc.returncode}:\n{err.read_text()[-3000:]}")
    result: dict[str, Any] = json.loads(out.read_text())
    return result


# --- faults ---------------------------------------------------------------------------------------------------------


class Fault(Protocol):
    def apply(self) -> None: ...
    def restore(self) -> None: ...


@dataclass
class LinkCut:
    """The server's end of the device's veth pair down: packets either way are dropped, no connection is reset."""

    cfg: TestbedConfig
    device: str

    def _set(self, state: str) -> None:
        short = self.device.removeprefix("emu-")
        link = ["ip", "-n", self.cfg.netns("server"), "link", "set", self.cfg.server_if(short), state]
        subprocess.run(link, check=True, timeout=30)

    def apply(self) -> None:
        self._set("down")

    def restore(self) -> None:
        self._set("up")


@dataclass
class ServerKill:
    server: Server

    def apply(self) -> None:
        self.server.kill()

    def restore(self) -> None:
        self.server.start()


# --- one scenario ---------------------------------------------------------------------------------------------------


@dataclass
class TraceReader:
    """The lines of a growing `--trace` file, each with when this process read it."""

    path: Path
    lines: list[dict[str, Any]] = field(default_factory=list)
    read_at: list[float] = field(default_factory=list)
    requests: int = 0
    _pos: int = 0

    def poll(self) -> int:
        """Read the complete lines written since the last poll; the number of request lines so far."""
        if self.path.exists():
            with self.path.open("rb") as f:
                f.seek(self._pos)
                data = f.read()
            complete = data[: data.rfind(b"\n") + 1]  # a line still being written is read next time
            self._pos += len(complete)
            now = time.monotonic()
            for raw in complete.splitlines():
                self.lines.append(json.loads(raw))
                self.read_at.append(now)
                self.requests += self.lines[-1]["event"] == "request"
        return self.requests

    def start(self) -> float | None:
        """The trace's t_s = 0 on this process's monotonic clock (at most POLL_S late, see the module's docstring)."""
        offsets = [at - line["t_s"] for at, line in zip(self.read_at, self.lines, strict=True)]
        return min(offsets) if offsets else None


@dataclass
class Timeline:
    """When a fault began and ended (its restoring began), on the trace's clock (None: it did not happen)."""

    on_s: float | None = None
    off_s: float | None = None
    restored_at_end: bool = False  # the run ended with the fault on: restored after it


def run_scenario(
    cfg: TestbedConfig, port: int, fault: Fault | None, run_args: list[str], at: int, hold_s: float, work: Path
) -> tuple[dict[str, Any], int | None, TraceReader, Timeline]:
    """One traced run inside emu-nx with `fault` applied once `at` requests are in, restored `hold_s` later (at the
    latest when the run ends). Its JSON summary ({} without one), exit status (None: killed at RUN_TIMEOUT_S), trace
    and the fault's timeline."""
    trace = TraceReader(work / "trace.jsonl")
    trace.path.unlink(missing_ok=True)
    out, err = work / "run.json", work / "run.err"
    proc = rr_edge(cfg, port, [*run_args, "--trace", str(trace.path)], out, err)
    on = off = None
    restored_at_end = timed_out = False
    deadline = time.monotonic() + RUN_TIMEOUT_S
    try:
        while proc.poll() is None and not (timed_out := time.monotonic() > deadline):
            served = trace.poll()
            if fault is not None and on is None and served >= at:
                on = time.monotonic()
                fault.apply()
            elif fault is not None and on is not None and off is None and time.monotonic() - on >= hold_s:
                off = time.monotonic()  # a restarted server's start-up counts as the fault's aftermath
                fault.restore()
            time.sleep(POLL_S)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if fault is not None and on is not None and off is None:
            off, restored_at_end = time.monotonic(), True
            fault.restore()
    trace.poll()
    rc = None if timed_out else proc.returncode
    summary = json.loads(out.read_text()) if rc == 0 else {}
    start = trace.start()
    timeline = Timeline(restored_at_end=restored_at_end)
    if start is not None:
        timeline.on_s = None if on is None else on - start
        timeline.off_s = None if off is None else off - start
    return summary, rc, trace, timeline


def _round(x: float | None, digits: int = 2) -> float | None:
    return None if x is None else round(x, digits)


def largest_gap(requests: list[dict[str, Any]], fault_on_s: float | None) -> dict[str, Any] | None:
    """The longest time between two consecutive request completions, and where it fell."""
    if len(requests) < 2:
        return None
    a, b = max(zip(requests, requests[1:], strict=False), key=lambda pair: pair[1]["t_s"] - pair[0]["t_s"])
    gap = b["t_s"] - a["t_s"]
    return {
        "s": round(gap, 3), "after_request": a["k"], "from_s": round(a["t_s"], 3),
        "after_fault_began_s": None if fault_on_s is None else round(a["t_s"] - fault_on_s, 3),
        "next": {k: b[k] for k in ("split", "fallback", "total_ms", "error")},
    }  # fmt: skip


def served_again_s(requests: list[dict[str, Any]], fault_off_s: float | None) -> float | None:
    """Seconds from the fault's end to the first request after it that the server served (an offloading split, no
    fallback); None without a fault, or when none was."""
    if fault_off_s is None:
        return None
    for line in requests:
        i, j = line["split"]
        if line["t_s"] >= fault_off_s and i < j and not line["fallback"]:
            return round(line["t_s"] - fault_off_s, 3)
    return None


def report(name: str, run_args: list[str], summary: dict[str, Any], rc: int | None, trace: TraceReader,
           timeline: Timeline) -> dict[str, Any]:  # fmt: skip
    requests = [line for line in trace.lines if line["event"] == "request"]
    switches = [line for line in trace.lines if line["event"] == "switch"]
    during = [r for r in requests if timeline.on_s is not None and timeline.on_s <= r["t_s"] < (timeline.off_s or 0)]
    return {
        "scenario": name,
        "run_args": run_args,  # besides --repeat K --energy model --json --log-level INFO --trace T
        "exit_code": rc,
        "requests": len(requests),
        "wall_s": _round(summary.get("wall_s")),
        "fault_began_s": _round(timeline.on_s, 3),
        "fault_ended_s": _round(timeline.off_s, 3),
        "fault_restored_at_end": timeline.restored_at_end,
        "requests_during_fault": len(during),
        "largest_gap": largest_gap(requests, timeline.on_s),
        "fallback_requests": sum(r["fallback"] for r in requests),
        "server_served_again_after_s": served_again_s(requests, timeline.off_s),
        "switches": [{k: s[k] for k in ("k", "from", "to")} | {"t_s": round(s["t_s"], 3)} for s in switches],
        "splits_used": summary.get("splits_used"),
        "fallback_reasons": summary.get("fallback_reasons"),
        "latency_ms_median": (summary.get("latency_ms") or {}).get("median"),
        "max_abs_diff_vs_local": summary.get("max_abs_diff_vs_local"),
        "energy_source": summary.get("energy_source"),
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }


# --- the whole bench ------------------------------------------------------------------------------------------------


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30)
    return done.stdout.strip() if done.returncode == 0 else ""


def provenance() -> dict[str, Any]:
    """The code and the machine the numbers come from."""
    return {
        "commit": _git("rev-parse", "--short", "HEAD") or None,
        "modified_files": _git("diff", "--name-only", "HEAD").splitlines(),  # tracked files that differ from it
        "cpus": os.cpu_count(),
        "kernel": os.uname().release,
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
    }


def set_up(cfg: TestbedConfig, server: Server, model: Path, work: Path) -> dict[str, Any]:
    """Profile the link and the model from emu-nx, as a user would before a run."""
    common = ["--server", server.address, "--node", NODE]
    net = rr_edge_json(cfg, server.port, ["netprofile", *common, "--max-mb", "64"], work, "netprofile")
    prof = rr_edge_json(cfg, server.port, ["profile", str(model), *common, "--sample", "1", "--seed", "1",
                                           "--wait-cloud", "120", "--energy", "model"], work, "profile")  # fmt: skip
    return {
        "uplink_model": (net.get("uplink") or {}).get("chosen_model"),
        "whole_model_ms_on_device": ((prof.get("whole_model") or {}).get("latency_ms") or {}).get("median"),
    }


def bench(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    t0 = time.monotonic()
    facts = provenance()
    model = cached_export("resnet18", 224)
    x = work / "x.npy"
    np.save(x, np.random.default_rng(SEED).standard_normal((1, 3, 224, 224)).astype(np.float32))
    shutil.rmtree(work / "server-data", ignore_errors=True)
    with tempfile.TemporaryDirectory() as state_dir:
        cfg = TestbedConfig(prefix=args.prefix, state_dir=state_dir, classes=(DEVICE,))
        server = Server(cfg, args.port, work / "server-data", work / "rr-server.log")
        down(cfg)
        try:
            up(cfg)
            server.start()
            setup = set_up(cfg, server, model, work)
            faults: dict[str, Fault] = {"link-cut": LinkCut(cfg, DEVICE), "server-kill": ServerKill(server)}
            rows = []
            for name in args.scenarios:
                kind, extra = SCENARIOS[name]
                own = [*extra, *shlex.split(args.extra_run_args)]
                run_args = ["run", str(model), "--server", server.address, "--node", NODE, "--input", str(x),
                            "--repeat", str(args.repeat), "--energy", "model", "--json", "--log-level", "INFO",
                            *own]  # fmt: skip
                hold_s = args.kill_s if kind == "server-kill" else args.cut_s
                fault = None if kind is None else faults[kind]
                result = run_scenario(cfg, args.port, fault, run_args, args.at, hold_s, work / name)
                rows.append(report(name, own, *result))
                print(f"{name}: {rows[-1]['requests']} requests, exit {rows[-1]['exit_code']}", file=sys.stderr)
        finally:
            server.stop()
            down(cfg)
    return {
        "bench": "faults", "note": NOTE, "emulated_testbed": True, "energy_modelled": True, **facts,
        "settings": {"device": DEVICE, "model": "resnet18@224", "repeat": args.repeat, "at": args.at,
                     "cut_s": args.cut_s, "kill_s": args.kill_s, "extra_run_args": args.extra_run_args,
                     "prefix": args.prefix},
        "setup": setup, "scenarios": rows, "seconds": round(time.monotonic() - t0, 1),
    }  # fmt: skip


def _cell(x: Any, fmt: str = "{}") -> str:
    return "-" if x is None else fmt.format(x)


def markdown(result: dict[str, Any]) -> str:
    """The docs' table of one run (docs/testbed.md, "Faults: link cut and server kill")."""
    s = result["settings"]
    lines = [
        f"{s['model']} on {s['device']}, {s['repeat']} requests, fault at request {s['at']} (link cut {s['cut_s']:g} "
        f"s, server killed for {s['kill_s']:g} s); commit {result['commit']}, {result['cpus']} CPUs, load "
        f"{result['loadavg_before'][0]:.1f} before. {result['note']}.",
        "",
        "| scenario | run args | exit | requests | wall s | largest gap s (after request, s into the fault) "
        "| fallback requests | switches | server serves again s after the fault | max diff vs local |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in result["scenarios"]:
        gap = r["largest_gap"] or {}
        where = f" ({gap.get('after_request')}, {_cell(gap.get('after_fault_began_s'), '{:+.2f}')})" if gap else ""
        args = " ".join(r["run_args"]) or "(defaults)"
        lines.append(
            f"| {r['scenario']} | `{args}` | {_cell(r['exit_code'])} | {r['requests']} | {_cell(r['wall_s'], '{:.1f}')}"
            f" | {_cell(gap.get('s'), '{:.2f}')}{where} | {r['fallback_requests']} | {len(r['switches'])}"
            f" | {_cell(r['server_served_again_after_s'], '{:.2f}')} | {_cell(r['max_abs_diff_vs_local'], '{:.2g}')} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma list (default %(default)s)")
    ap.add_argument("--repeat", type=int, help="requests per run (default 600; --quick 200)")
    ap.add_argument("--at", type=int, help="the fault begins once this many requests are in (default 200; --quick 60)")
    ap.add_argument("--cut-s", type=float, help="how long the link stays cut (default 20; --quick 8)")
    ap.add_argument("--kill-s", type=float, help="how long the server stays dead (default 10; --quick 4)")
    ap.add_argument("--quick", action="store_true", help="a smoke run: the smaller defaults above")
    ap.add_argument("--prefix", default=PREFIX, help="the testbed's prefix (default %(default)s)")
    ap.add_argument("--port", type=int, default=PORT, help="rr-server's port (default %(default)s)")
    ap.add_argument("--extra-run-args", default="", help="more `rr-edge run` arguments for every scenario")
    ap.add_argument("--work", type=Path, default=REPO / ".cache" / "bench_faults", help="logs, traces, data dir")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    ap.add_argument("--markdown", action="store_true", help="print the docs' markdown table instead of the JSON")
    ap.add_argument("--from", dest="source", type=Path, help="no run: read a saved JSON (with --markdown)")
    args = ap.parse_args(argv)
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    if unknown := [s for s in args.scenarios if s not in SCENARIOS]:
        ap.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    defaults = {"repeat": 200, "at": 60, "cut_s": 8.0, "kill_s": 4.0} if args.quick else DEFAULTS
    for name, value in defaults.items():  # a value given on the command line wins, with --quick too
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.at >= args.repeat:
        ap.error(f"--at {args.at} must be below --repeat {args.repeat}: the fault would never begin")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.source is not None:
        result = json.loads(args.source.read_text())
    elif os.geteuid() != 0:
        print("error: needs root (network namespaces and cgroups)", file=sys.stderr)
        return 1
    else:
        for name in args.scenarios:
            (args.work / name).mkdir(parents=True, exist_ok=True)
        result = bench(args, args.work)
        if args.out is not None:
            args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result) if args.markdown else json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
