"""Server subprocesses for the benchmarks: start one, wait for the address it writes to a file, stop it.

`rr_server(data_dir)` is `rr-server` on a free loopback port; `serving(cmd, port_file)` is any command that writes
its address (or port) to `port_file` once it listens, as `rr-server --port-file` does (write, then rename);
`emulated_link(prefix, rate, device)` brings up an emulated link (tools.testbed, root) for the length of a run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from tools._models import REPO

START_TIMEOUT_S = 60.0


def wait_for_file(path: Path, proc: subprocess.Popen, what: str, timeout_s: float = START_TIMEOUT_S) -> str:
    """The stripped text of `path` once a started `proc` has written it; RuntimeError if `proc` dies or times out."""
    deadline = time.monotonic() + timeout_s
    while not path.exists() or not path.read_text().strip():
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} before it listened")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not listen within {timeout_s:.0f} s")
        time.sleep(0.05)
    return path.read_text().strip()


def rr_server_command(
    data_dir: Path, port_file: Path, listen: str = "127.0.0.1:0", providers: str = "cpu"
) -> list[str]:
    """`python -m rr_server.cli` on `listen` with a data dir, quiet logs and ONNX Runtime's `providers`."""
    return [sys.executable, "-m", "rr_server.cli", "--listen", listen, "--data-dir", str(data_dir),
            "--port-file", str(port_file), "--log-level", "WARNING", "--providers", providers]  # fmt: skip


@contextmanager
def serving(cmd: Sequence[str], port_file: Path, what: str) -> Iterator[str]:
    """Run `cmd` (from the repository, which it can import); yield what it wrote to `port_file`; then stop it with
    SIGTERM, as an operator stops rr-server."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(list(cmd), env=env, cwd=REPO)
    try:
        yield wait_for_file(port_file, proc, what)
    finally:
        proc.terminate()
        proc.wait(30)


@contextmanager
def emulated_link(prefix: str, rate: str, device: str) -> Iterator[list[str]]:
    """tools.testbed up under its own `prefix`, one edge class `device` behind veth + tbf at `rate`; yields the
    testbed's command (``[python, -m, tools.testbed, --prefix, prefix]``, to which ``exec DEVICE -- CMD`` runs CMD
    there); brought down after, also on an error."""
    command = [sys.executable, "-m", "tools.testbed", "--prefix", prefix]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    up = [*command, "up", "--rate", rate, "--classes", device]
    subprocess.run(up, check=True, env=env, cwd=REPO, stdout=subprocess.DEVNULL)
    try:
        yield command
    finally:
        subprocess.run([*command, "down"], env=env, cwd=REPO, stdout=subprocess.DEVNULL)


@contextmanager
def rr_server(data_dir: Path, providers: str = "cpu") -> Iterator[str]:
    """`rr-server` on a free loopback port, storing under `data_dir / "d"`; yields its address."""
    port_file = data_dir / "rr-server.port"
    cmd = rr_server_command(data_dir / "d", port_file, providers=providers)
    with serving(cmd, port_file, "rr-server") as address:
        yield address
