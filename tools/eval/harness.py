"""Host side of a run: export the models, bring the testbed and the server up, run each phase as worker processes
inside the devices, and always tear everything down (also on failure or Ctrl-C).

Phases (raw outputs under `EvalConfig.work_dir`):

    groundtruth   every edge class in turn, then the server's row
    report        per edge class in turn: the p-sample reported to the server
    settle        wait for the server's cloud profiler to finish timing the reported slices
    netprofile    per edge class in turn: the network profile, against a server with nothing else to do
    execute       per edge class in turn (the server is shared, so one device offloads at a time)

A device whose execute worker fails, or a settle that gives up early, does not stop the run: the others' measurements
are kept, and `collect` returns what is missing (tools/eval/missing.py) for the caller to fail on.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tools import testbed
from tools.testbed import cgroups
from tools.testbed.config import TestbedConfig
from tools.testbed.lifecycle import selected_classes

from . import missing
from .config import REPO, SERVER_CLASS, EvalConfig

log = logging.getLogger(__name__)

TESTBED_PREFIX = "rre"  # its own testbed: one brought up by hand (prefix rr, docs/testbed.md) is left alone
CPU_SHARES = 8192  # the testbed's weight against other load on the host (see docs/testbed.md)


def export_models(cfg: EvalConfig) -> dict[str, str]:
    """Export (once; cached under .cache/eval/models) every model of the run; returns name -> path."""
    out = {}
    for name in cfg.models:
        path = cfg.model_path(name)
        if not path.exists():
            from rr_edge.export import export_model

            log.info("exporting %s at %d", name, cfg.input_size)
            export_model(name, path, input_size=cfg.input_size)
        out[name] = str(path)
    return out


def testbed_config(cfg: EvalConfig) -> TestbedConfig:
    return TestbedConfig(prefix=TESTBED_PREFIX, classes=cfg.classes, cpu_shares=CPU_SHARES)


def check_testbed_free(tcfg: TestbedConfig) -> None:
    """A testbed of this prefix that exists already belongs to another evaluation (or a crashed one): refuse it."""
    if Path(tcfg.state_file).exists():
        raise RuntimeError(
            f"a testbed with prefix {tcfg.prefix!r} is already up ({tcfg.state_file}): another evaluation is running, "
            f"or one crashed; if none is running, `python -m tools.testbed --prefix {tcfg.prefix} down` removes it"
        )


@contextmanager
def testbed_up(tcfg: TestbedConfig) -> Iterator[None]:
    """The testbed for the duration of the block; `down` runs whatever happens once this `up` has started, and only
    then: an existing testbed of the prefix is refused and left as it is."""
    check_testbed_free(tcfg)
    try:
        testbed.up(tcfg)
        yield
    finally:
        removed = testbed.down(tcfg)
        log.info("testbed down (%d objects removed)", len(removed))


def _tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


class Cluster:
    """The running testbed: starts the server and workers inside devices."""

    def __init__(self, cfg: EvalConfig, tcfg: TestbedConfig, work: Path) -> None:
        self.cfg, self.tcfg, self.work = cfg, tcfg, work
        self.server: subprocess.Popen[Any] | None = None
        self.server_addr = f"{tcfg.server_addr}:{cfg.port}"
        hier = cgroups.detect()
        self._free_procs = hier.root / "cgroup.procs"

    def start_server(self) -> None:
        data = self.work / "server-data"
        data.mkdir(parents=True, exist_ok=True)
        exe = str(Path(sys.executable).parent / "rr-server")
        argv = [
            exe,
            "--listen",
            f"0.0.0.0:{self.cfg.port}",
            "--data-dir",
            str(data),
            "--max-slice-mb",
            str(self.cfg.max_slice_mb),
            "--log-level",
            "WARNING",
        ]
        logf = open(self.work / "server.log", "ab")
        self.server = testbed.spawn(
            self.tcfg, SERVER_CLASS, argv, port=self.cfg.port, cwd=REPO, stdout=logf, stderr=subprocess.STDOUT
        )
        logf.close()

    def stop_server(self) -> None:
        if self.server is None:
            return
        self.server.terminate()
        try:
            self.server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.server.kill()
            self.server.wait()
        self.server = None

    def spawn_worker(self, device: str, command: str, spec: dict[str, Any]) -> tuple[subprocess.Popen[Any], Path]:
        stem = f"{command}-{device}"
        spec_path, out_path = self.work / f"{stem}.spec.json", self.work / f"{stem}.json"
        spec_path.write_text(json.dumps({"device": device, "server": self.server_addr, **spec}, indent=1))
        out_path.unlink(missing_ok=True)
        _, cg, _ = testbed.device_env(self.tcfg, device, self.cfg.port)
        tfd = os.open(cg / "cgroup.procs", os.O_WRONLY)
        ffd = os.open(self._free_procs, os.O_WRONLY)
        tasks = self._free_procs.with_name("tasks")  # cgroup v1 only (v2 moves threads only in threaded cgroups)
        kfd = os.open(tasks, os.O_WRONLY) if tasks.exists() else None
        fds = [fd for fd in (tfd, ffd, kfd) if fd is not None]
        argv = [
            sys.executable,
            "-m",
            "tools.eval.worker",
            command,
            "--spec",
            str(spec_path),
            "--out",
            str(out_path),
            "--throttle-fd",
            str(tfd),
            "--free-fd",
            str(ffd),
            *(["--keepalive-fd", str(kfd)] if kfd is not None else []),
        ]
        logf = open(self.work / f"{stem}.log", "wb")
        try:
            proc = testbed.spawn(
                self.tcfg,
                device,
                argv,
                port=self.cfg.port,
                cwd=REPO,
                stdout=logf,
                stderr=subprocess.STDOUT,
                pass_fds=fds,
            )
        finally:
            logf.close()
            for fd in fds:
                os.close(fd)
        return proc, out_path

    def run_workers(self, command: str, jobs: dict[str, dict[str, Any]], timeout_s: float = 3600) -> dict[str, Any]:
        """Run `command` on every device of `jobs` (device -> spec) concurrently; their outputs by device."""
        if self.server is not None and self.server.poll() is not None:
            raise RuntimeError(f"rr-server exited ({self.server.returncode}):\n{_tail(self.work / 'server.log')}")
        started = {dev: self.spawn_worker(dev, command, spec) for dev, spec in jobs.items()}
        deadline = time.monotonic() + timeout_s
        results, failed = {}, []
        for dev, (proc, out) in started.items():
            try:
                rc = proc.wait(timeout=max(deadline - time.monotonic(), 1))
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait()
            if rc != 0 or not out.exists():
                failed.append(f"{command} on {dev} failed (rc {rc}):\n{_tail(self.work / f'{command}-{dev}.log')}")
            else:
                results[dev] = json.loads(out.read_text())
        if failed:
            raise RuntimeError("\n".join(failed))
        return results


def check_free_disk(path: Path, need_gb: float) -> None:
    """Refuse to start a run that would fill the disk halfway through (the server's uploads then fail)."""
    free_gb = shutil.disk_usage(path).free / 1024**3
    if free_gb < need_gb:
        raise RuntimeError(
            f"the evaluation needs about {need_gb:.0f} GB free under {path} for the server's slices; "
            f"{free_gb:.1f} GB are free"
        )


def check_run(cfg: EvalConfig) -> None:
    """Refuse a run that cannot start (unknown class or model, not root, testbed busy) before the last run's outputs
    are deleted."""
    tcfg = testbed_config(cfg)
    selected_classes(tcfg)  # a TestbedError (a RuntimeError) names the unknown classes
    missing = [m for m in cfg.models if not cfg.model_path(m).exists()]
    if missing:
        from rr_edge.errors import ModelError
        from rr_edge.export import classification_models

        try:
            known = classification_models()
        except ModelError as exc:  # torch or torchvision missing: nothing can be exported
            raise RuntimeError(str(exc)) from None
        unknown = [m for m in missing if m not in known]
        if unknown:
            raise RuntimeError(f"unknown model(s) {', '.join(unknown)}: not in torchvision.models.list_models()")
    if os.geteuid() != 0:
        raise RuntimeError("the evaluation needs root (network namespaces, tc, cgroups)")
    check_testbed_free(tcfg)


def collect(cfg: EvalConfig) -> dict[str, Any]:
    """All four phases on a fresh testbed and server; raw JSON in cfg.work_dir. Returns what the run did not measure
    (`missing.of_run`; empty when nothing is missing)."""
    check_run(cfg)
    work = cfg.work_dir
    work.mkdir(parents=True, exist_ok=True)
    for old in work.glob("*.json"):
        old.unlink()
    data = work / "server-data"
    if data.exists():
        subprocess.run(["rm", "-rf", str(data)], check=True)
    (work / "config.json").write_text(json.dumps(cfg.to_json(), indent=1))  # what `analyze` must match
    (work / "host.json").write_text(json.dumps({"cpu_count": os.cpu_count()}))
    check_free_disk(work, cfg.min_free_disk_gb)
    t0 = time.perf_counter()
    models = export_models(cfg)
    times = {"export": time.perf_counter() - t0}
    tcfg = testbed_config(cfg)
    with testbed_up(tcfg):
        cluster = Cluster(cfg, tcfg, work)
        cluster.start_server()
        try:
            phase_times, gaps = _phases(cfg, cluster, models)
        finally:
            cluster.stop_server()
            subprocess.run(["rm", "-rf", str(data)], check=False)  # probe uploads: GBs of slices
    (work / "phases.json").write_text(json.dumps({**times, **phase_times}, indent=1))
    return gaps


def _phases(cfg: EvalConfig, cluster: Cluster, models: dict[str, str]) -> tuple[dict[str, float], dict[str, Any]]:
    """Run the phases; their durations (s), and what they did not measure. Why an execute worker failed is kept in
    failed.json: no other raw output holds it."""
    times: dict[str, float] = {}
    common = {"models": models, "seed": cfg.seed, "input_size": cfg.input_size}
    gt_spec = {**common, "timing": cfg.gt_timing.__dict__}

    t = time.perf_counter()
    gt: dict[str, Any] = {}
    for dev in (*cfg.classes, SERVER_CLASS):  # one at a time: in parallel, the host's load skews the quotas
        log.info("ground truth on %s", dev)
        gt.update(cluster.run_workers("groundtruth", {dev: gt_spec}))
    times["groundtruth"] = time.perf_counter() - t

    t = time.perf_counter()
    reported: set[str] = set()
    for dev in cfg.classes:
        log.info("report: %s", dev)
        rep = cluster.run_workers("report", {dev: {**common, "sample": cfg.sample, "groundtruth": gt[dev]}})[dev]
        for m in rep["models"].values():
            reported.update(m.get("uploaded", m["reported"]))
    times["report"] = time.perf_counter() - t

    t = time.perf_counter()
    log.info("waiting for the cloud profiler (%d signatures)", len(reported))
    settled = cluster.run_workers("settle", {cfg.classes[-1]: {**common, "signatures": sorted(reported)}})
    times["settle"] = time.perf_counter() - t
    short = missing.settle_shortfall(settled[cfg.classes[-1]], len(models))
    if short is not None:
        log.warning("settle: %s", short)

    t = time.perf_counter()
    net_spec = {"netprofile_max_mb": cfg.netprofile_max_mb, "upload_probe_max_mb": cfg.upload_probe_max_mb}
    for dev in cfg.classes:  # on a quiet server: after settle, one device at a time
        log.info("network profile: %s", dev)
        cluster.run_workers("netprofile", {dev: net_spec})
    times["netprofile"] = time.perf_counter() - t

    t = time.perf_counter()
    executed: dict[str, Any] = {}
    failed: dict[str, str] = {}
    for dev in cfg.classes:
        log.info("plans executed on %s", dev)
        try:
            executed.update(cluster.run_workers("execute", {dev: {**common, "timing": cfg.run_timing.__dict__}}))
        except RuntimeError as exc:  # keep the other devices' measurements; the report lists what is missing
            log.error("%s", exc)
            failed[dev] = f"{str(exc).splitlines()[0].rstrip(':')}; its log: execute-{dev}.log"
    times["execute"] = time.perf_counter() - t
    (cluster.work / "failed.json").write_text(json.dumps(failed, indent=1))
    gaps = missing.of_run(cfg.classes, len(models), settled[cfg.classes[-1]], executed, failed)
    return times, gaps
