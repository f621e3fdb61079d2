"""rr_proto.allocator.tune_allocator: after it, big buffers are heap blocks reused across calls (not fresh mmaps),
in every thread; RR_MALLOC_TUNING=0 opts out; both entry points (rr-server, rr-edge) apply it at start."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from rr_proto import allocator

REPO = Path(__file__).resolve().parents[1]
glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt tuning is glibc-only")

# Allocates and frees a 64 MB buffer on the main thread and on a second thread, reporting the bytes glibc holds in
# mmapped blocks (mallinfo2().hblkhd) while each buffer is alive.
_PROBE = """
import ctypes, json, sys, threading
from rr_proto import allocator

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
applied = allocator.tune_allocator()
mmapped = []

def big() -> None:
    for _ in range(2):
        buf = bytearray(64 * 1024 * 1024)
        mmapped.append(libc.mallinfo2().hblkhd)
        del buf

big()
thread = threading.Thread(target=big)
thread.start()
thread.join()
print(json.dumps({"applied": applied, "mmapped": mmapped}))
"""


def _probe(tuning: str) -> dict:
    env = {"PYTHONPATH": str(REPO), "RR_MALLOC_TUNING": tuning, "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


@glibc_only
def test_big_buffers_are_heap_blocks_after_tuning() -> None:
    tuned = _probe("1")
    assert tuned["applied"] is True
    assert max(tuned["mmapped"]) < 64 * 1024 * 1024, tuned  # neither thread's 64 MB buffer was mmapped


@glibc_only
def test_opt_out_leaves_glibc_defaults() -> None:
    untuned = _probe("0")
    assert untuned["applied"] is False
    assert min(untuned["mmapped"]) >= 64 * 1024 * 1024, untuned  # glibc's default: every 64 MB buffer is mmapped


def test_opt_out_values() -> None:
    for value in ("0", "off", "False", " no "):
        assert allocator.tune_allocator({"RR_MALLOC_TUNING": value}) is False


def test_rr_server_entry_point_tunes_first(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from rr_server import cli, server

    calls: list[bool] = []
    monkeypatch.setattr(cli, "tune_allocator", lambda: calls.append(True))
    monkeypatch.setattr(server, "Server", _failing_server)
    assert cli.main(["--data-dir", str(tmp_path), "--log-level", "ERROR"]) == 2
    assert calls == [True]


def test_rr_edge_entry_point_tunes_first(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from rr_edge import cli

    calls: list[bool] = []
    monkeypatch.setattr(allocator, "tune_allocator", lambda: calls.append(True))
    assert cli.main(["blocks", str(tmp_path / "missing.onnx")]) != 0
    assert calls == [True]


def _failing_server(config):
    raise OSError("test: no server")
