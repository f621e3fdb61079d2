"""`rr-edge run --trace FILE.jsonl` against a real `rr-server` subprocess: one JSON line per request as it is served
(what `tools/bench_faults.py` watches to inject a fault once N requests are in, and reads for the gaps between
them), and an unwritable path refused before any work."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest

from rr_edge.blocks import analyze
from rr_edge.cli import main
from rr_edge.commands.run import Trace
from rr_edge.runner import RunResult
from tests._server_process import REPO, ServerProcess
from tests.conftest import sigint_default_in_child
from tools.bench_runner import conv_chain

REQUEST_KEYS = {"event", "k", "t_s", "split", "fallback", "total_ms", "remote_ms", "error"}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path / "data")  # on a port of its choosing
    yield proc
    proc.stop()


@pytest.fixture
def chain_files(tmp_path: Path) -> tuple[Path, Path]:
    """A four-conv chain on disk and a request for it."""
    model = conv_chain(layers=4)
    path = tmp_path / "chain.onnx"
    onnx.save(model, path)
    x = tmp_path / "x.npy"
    np.save(x, np.random.default_rng(0).standard_normal(analyze(model).inputs[0].shape).astype(np.float32))
    return path, x


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("split", [(0, 2), (3, 3)], ids=["offloading", "local"])
def test_a_traced_run_writes_one_line_per_request(server, chain_files, tmp_path, capsys, split):
    path, x = chain_files
    trace = tmp_path / "new-dir" / "run.jsonl"  # its directory is made, as --output's is
    argv = ["run", str(path), "--server", server.address, "--node", "n", "--split", "{},{}".format(*split),
            "--input", str(x), "--repeat", "6", "--json", "--trace", str(trace)]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    lines = _lines(trace)
    assert all(set(line) == REQUEST_KEYS and line["event"] == "request" for line in lines)  # a forced split: no switch
    assert [line["k"] for line in lines] == list(range(6))
    times = [line["t_s"] for line in lines]
    assert times[0] >= 0 and times == sorted(times)
    assert all(line["split"] == list(split) for line in lines)
    # the trace says what the summary counts
    assert sum(line["fallback"] for line in lines) == summary["fallback_requests"]
    assert all(line["total_ms"] > 0 for line in lines)
    offloaded = split[0] < split[1]
    assert all((line["remote_ms"] > 0) == (offloaded and not line["fallback"]) for line in lines)
    assert all(line["error"] == "" for line in lines if not line["fallback"])


def test_an_unwritable_trace_path_is_refused_before_the_run(chain_files, tmp_path, capsys):
    path, x = chain_files
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    for bad, fragment in ((tmp_path, "is a directory"), (blocked / "t.jsonl", "not a writable directory")):
        argv = ["run", str(path), "--server", "127.0.0.1:1", "--node", "n", "--split", "3,3", "--input", str(x),
                "--trace", str(bad)]  # fmt: skip
        with pytest.raises(SystemExit) as exc:  # argparse's usage error: before the model is even read
            main(argv)
        err = capsys.readouterr().err
        assert exc.value.code == 2 and fragment in err.strip().splitlines()[-1] and "Traceback" not in err


def test_a_switch_line_names_both_splits_and_the_requests_before_it(tmp_path):
    """The line a switch writes (a forced split never switches; the fault bench's runs do)."""
    path = tmp_path / "t.jsonl"
    with Trace(path) as trace:
        trace.request(0, (-1, 10), RunResult({}, True, 12.5, error="UNAVAILABLE"), time.monotonic())
        trace.switch(1, (-1, 10), (12, 12))
    request, switch = _lines(path)
    assert request["fallback"] is True and request["error"] == "UNAVAILABLE" and request["split"] == [-1, 10]
    assert set(switch) == {"event", "t_s", "k", "from", "to"}
    assert (switch["event"], switch["k"], switch["from"], switch["to"]) == ("switch", 1, [-1, 10], [12, 12])
    assert switch["t_s"] >= 0


def _complete_lines(path: Path) -> list[dict]:
    """The lines written so far by a run still going (the last one may be half written)."""
    text = path.read_text() if path.exists() else ""
    return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]


def test_a_plan_made_once_the_server_answers_writes_a_switch_line(chain_files, tmp_path):
    """`rr-edge run` started while its server is down runs every request locally, with no plan; once the server
    answers, the plan made then is run from the next request on, and the trace says so in a `switch` line."""
    path, x = chain_files
    n = len(analyze(onnx.load(path)).blocks)
    data = tmp_path / "data"
    first = ServerProcess(data)
    try:
        profile = ["profile", str(path), "--server", first.address, "--node", "n", "--sample", "1", "--rounds", "1",
                   "--min-runs", "2", "--min-time", "0"]  # fmt: skip
        assert main(profile) == 0
        assert main(["netprofile", "--server", first.address, "--node", "n", "--max-mb", "1", "--upload-max-mb", "0",
                     "--repeats", "1"]) == 0  # fmt: skip
    finally:
        first.stop()
    trace = tmp_path / "run.jsonl"
    argv = [sys.executable, "-m", "rr_edge.cli", "run", str(path), "--server", first.address, "--node", "n",
            "--input", str(x), "--repeat", "10000000", "--retry-interval", "0.1", "--trace", str(trace)]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(REPO))
    log = tmp_path / "run.log"
    with log.open("wb") as err:
        run = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err)
    second = None
    try:
        _wait_for(lambda: _complete_lines(trace), run, log)  # running, locally
        second = ServerProcess(data, "--listen", first.address)  # the same server back, on the same address
        _wait_for(lambda: any(line["event"] == "switch" for line in _complete_lines(trace)), run, log)
    finally:
        run.kill()
        run.wait(10)
        if second is not None:
            second.stop()
    lines = _complete_lines(trace)
    at = next(k for k, line in enumerate(lines) if line["event"] == "switch")
    switch, before = lines[at], lines[:at]
    assert switch["from"] == [n - 1, n - 1] and switch["k"] == len(before) >= 1
    assert all(line["split"] == [n - 1, n - 1] and line["fallback"] for line in before)
    # until the server answered, then while the plan it made was prepared (its slice made ready on the server)
    reasons = [line["error"] for line in before]
    preparing = "running locally while plan {},{} is made ready on the server".format(*switch["to"])
    planless = [k for k, why in enumerate(reasons) if why.startswith("no plan: the server could not be reached")]
    assert planless and planless == list(range(len(planless)))
    assert all(why == preparing for why in reasons[len(planless) :])
    after = [line for line in lines[at + 1 :] if line["event"] == "request"][:1]  # the next request, if written
    assert all(line["k"] == switch["k"] and line["split"] == switch["to"] for line in after)


def _wait_for(condition, run: subprocess.Popen, log: Path, timeout_s: float = 90.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert run.poll() is None, log.read_text()
        assert time.monotonic() < deadline, f"timed out:\n{log.read_text()[-3000:]}"
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("json_out", "signum"),
    [(True, signal.SIGINT), (False, signal.SIGINT), (True, signal.SIGTERM), (False, signal.SIGTERM)],
    ids=["json", "table", "sigterm-json", "sigterm-table"],
)
def test_ctrl_c_ends_a_run_with_the_summary_of_the_requests_served(chain_files, tmp_path, json_out, signum):
    """Ctrl-C in `rr-edge run --repeat` of thousands ended it with exit 130 and nothing on stdout (walkthrough): now
    the request in flight finishes, and the run reports the requests served until then, still exiting 130. SIGTERM
    (`timeout`, systemd) did the same, exit 143 (walkthrough): it now ends a run as Ctrl-C does. Having reported,
    the program dies by the signal (a shell says 130 / 143): an exit status 143 was a failure to systemd (review)."""
    path, x = chain_files
    trace = tmp_path / "run.jsonl"
    argv = [sys.executable, "-m", "rr_edge.cli", "run", str(path), "--server", "127.0.0.1:1", "--node", "n",
            "--split", "3,3", "--input", str(x), "--repeat", "10000000", "--trace", str(trace),
            *(["--json"] if json_out else [])]  # fmt: skip
    log = tmp_path / "run.log"
    with log.open("wb") as err:
        run = subprocess.Popen(argv, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.PIPE,
                               stderr=err, preexec_fn=sigint_default_in_child)  # fmt: skip
    try:
        _wait_for(lambda: len(_complete_lines(trace)) >= 3, run, log)
        run.send_signal(signum)
        out, _ = run.communicate(timeout=60)
    finally:
        run.kill()
    served = len(_complete_lines(trace))
    name = signal.Signals(signum).name
    assert run.returncode == -signum, log.read_text()  # reported, then died by it: a shell says 128 + signum
    said = "interrupted" if signum == signal.SIGINT else "terminated"
    assert f"{said}: stopping after the request in flight" in log.read_text()
    if json_out:
        summary = json.loads(out)
        assert summary["interrupted"] == {"requests_asked": 10000000, "signal": name}
        assert summary["requests"] == served >= 3
    else:
        by = "" if signum == signal.SIGINT else " by SIGTERM"
        assert f"interrupted{by}: {served} of 10000000 requests served" in out.decode()
