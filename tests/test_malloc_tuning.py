"""rr_proto.allocator.tune_allocator: after it, big buffers are heap blocks reused across calls (not fresh mmaps),
in every thread; RR_MALLOC_TUNING=0 opts out; both entry points (rr-server, rr-edge) apply it at start."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
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


# Under the tuning, frees 300 MB of heap and reports the resident memory (MiB) before and after giving it back.
_RELEASE_PROBE = """
import json
from rr_proto import allocator

def rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024

allocator.tune_allocator()
buf = b"x" * (300 * 1024 * 1024)  # written: resident
del buf
kept = rss_mib()
released = allocator.release_free_memory()
print(json.dumps({"kept": kept, "after": rss_mib(), "released": released}))
"""


@glibc_only
def test_free_heap_memory_is_given_back_on_request() -> None:
    """The server's refits leave much memory free that the tuning keeps (about half its resident memory at 40,000
    blocks, found by a memory review); `release_free_memory` after each refit gives it back."""
    env = {"PYTHONPATH": str(REPO), "RR_MALLOC_TUNING": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", _RELEASE_PROBE], env=env, capture_output=True, text=True, check=True)
    probe = json.loads(done.stdout)
    assert probe["released"] is True
    assert probe["kept"] > 300 and probe["after"] < probe["kept"] - 250, probe


def test_the_predictor_gives_free_memory_back_after_each_refit(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from rr_server import predictor as predictor_module
    from rr_server.storage import Storage

    calls: list[str] = []
    monkeypatch.setattr(predictor_module, "release_free_memory", lambda: calls.append("released"))
    storage = Storage(tmp_path)
    p = predictor_module.Predictor(storage, debounce_s=0.01)
    monkeypatch.setattr(p, "refresh", lambda: calls.append("refit"))
    p.start()
    try:
        p.notify()
        deadline = time.monotonic() + 10
        while len(calls) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        p.close()
        storage.close()
    assert calls[:4] == ["refit", "released"] * 2  # the first fit, then the one a report asked for


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
