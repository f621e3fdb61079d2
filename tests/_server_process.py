"""Start `rr-server` as a real subprocess (python -m rr_server.cli) on a free port, for end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class ServerProcess:
    def __init__(self, data_dir: Path, *extra: str) -> None:
        self.data_dir = data_dir
        self.port_file = data_dir.parent / f"{data_dir.name}.port"
        self.port_file.unlink(missing_ok=True)
        self.log_path = data_dir.parent / f"{data_dir.name}.log"
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rr_server.cli",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                str(data_dir),
                "--port-file",
                str(self.port_file),
                *extra,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )
        deadline = time.monotonic() + 60
        while not self.port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"rr-server did not start:\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.05)
        self.address = self.port_file.read_text().strip()

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._log.close()

    def terminate(self, timeout: float = 30) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._log.close()
        return code

    @contextlib.contextmanager
    def hung(self, wait_s: float = 30.0) -> Iterator[None]:
        """The server stops answering (SIGSTOP) for the block: connections stay open and nothing answers, as on a
        link that drops every packet. Entered once every thread of the process is stopped (the signal lands a little
        later)."""
        os.kill(self.proc.pid, signal.SIGSTOP)
        deadline = time.monotonic() + wait_s
        while not _stopped(self.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        try:
            yield
        finally:
            os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if not self._log.closed:
            self._log.close()

    def log(self) -> str:
        return self.log_path.read_text()


def _stopped(pid: int) -> bool:
    """Every thread of the process is stopped."""
    states = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that just ended
            states.append("T (stopped)" in (task / "status").read_text())
    return all(states)
