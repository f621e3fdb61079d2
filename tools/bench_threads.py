"""ONNX Runtime's pinned pool threads against the same thread count given explicitly (`rr_edge.cpus`).

    PYTHONPATH=. .venv/bin/python -m tools.bench_threads [--model resnet18] [--rounds 15] \
        > docs/results/ort_threads_bench.json

Two kinds of session on rr-server's options (`rr_server.sessions.session_options`), one whole model on random input:
`pinned` leaves the intra-op thread count to ONNX Runtime (0), which pins pool thread k to core k; `explicit` asks for
the same count, which pins nothing (what the node and the server do now). Per round and kind, in alternation:
* `caller_on_cpu<N>`: the calling thread held on CPU N (the place a busy server's scheduler may put it);
* `caller_free`: the calling thread left to the scheduler;
* `two_callers`: two sessions of the kind run at once from two threads (a server serving two edges) until one has
  done `--runs` runs: the faster and the slower thread's median, and the runs per second of the two together.
Each latency is the median of `--runs` runs after one warm-up; the JSON reports each cell's median over the rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time

import numpy as np
import onnxruntime as ort

from rr_edge.cpus import physical_cores, usable_cpus
from rr_edge.session import random_feeds
from rr_server.sessions import session_options
from tools._models import cached_export
from tools._timing import median_ms

KINDS = ("pinned", "explicit")


def _options(kind: str) -> ort.SessionOptions:
    options = session_options()
    if kind == "pinned":
        options.intra_op_num_threads = 0  # ONNX Runtime's own choice: it pins its pool threads
    return options


def _median_ms(session: ort.InferenceSession, feeds: dict[str, np.ndarray], runs: int, cpu: int | None = None) -> float:
    allowed = os.sched_getaffinity(0)
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})  # this thread only (Linux: 0 is the calling thread)
    try:
        session.run(None, feeds)
        return median_ms(lambda: session.run(None, feeds), runs)
    finally:
        os.sched_setaffinity(0, allowed)


def _two_callers(
    sessions: list[ort.InferenceSession], feeds: dict[str, np.ndarray], runs: int
) -> tuple[float, list[float]]:
    """Both sessions run at once, from a common start until the first has done `runs` runs: (runs per second of the
    two together, each thread's median ms, faster first)."""
    times: list[list[float]] = [[] for _ in sessions]
    ready = threading.Barrier(len(sessions) + 1, timeout=60)  # a warm-up that fails breaks it, not hangs
    stop = threading.Event()

    def call(k: int) -> None:
        sessions[k].run(None, feeds)
        ready.wait()
        while not stop.is_set():
            start = time.perf_counter()
            sessions[k].run(None, feeds)
            times[k].append((time.perf_counter() - start) * 1e3)
            if len(times[k]) >= runs:
                stop.set()

    threads = [threading.Thread(target=call, args=(k,)) for k in range(len(sessions))]
    for t in threads:
        t.start()
    ready.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    # a thread the scheduler never let run before the other finished has no runs: nan, not a crash
    return sum(map(len, times)) / elapsed, sorted(statistics.median(t) if t else float("nan") for t in times)


def bench(model: str, rounds: int, runs: int) -> dict:
    path = str(cached_export(model, 224))
    cpus = sorted(usable_cpus())
    sessions = {
        kind: [ort.InferenceSession(path, _options(kind), providers=["CPUExecutionProvider"]) for _ in range(2)]
        for kind in KINDS
    }
    feeds = random_feeds(sessions["explicit"][0])
    cells: dict[str, dict[str, list[float]]] = {kind: {} for kind in KINDS}
    for _ in range(rounds):
        for kind in KINDS:
            first = sessions[kind][0]
            row = {f"caller_on_cpu{cpu}": _median_ms(first, feeds, runs, cpu) for cpu in cpus}
            row["caller_free"] = _median_ms(first, feeds, runs)
            per_second, (faster, slower) = _two_callers(sessions[kind], feeds, runs)
            row |= {"two_callers_faster": faster, "two_callers_slower": slower, "two_callers_runs_per_s": per_second}
            for name, value in row.items():
                cells[kind].setdefault(name, []).append(value)
    return {
        "model": model,
        "rounds": rounds,
        "runs": runs,
        "ort": ort.__version__,
        "cpus": len(cpus),
        "physical_cores": physical_cores(),
        "python": platform.python_version(),
        "median_over_rounds": {
            k: {name: round(statistics.median(v), 3) for name, v in row.items()} for k, row in cells.items()
        },
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet18")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--runs", type=int, default=8)
    args = p.parse_args(argv)
    json.dump(bench(args.model, args.rounds, args.runs), sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
