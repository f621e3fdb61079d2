"""Benchmark: a small read (GetNode's) while the predictor's refit reads every measurement, the way rr-server's
storage reads now (read-only connections of their own; the refit reads plain tuples, `latest_values`) against the way
it read before (the writer's one connection, under its lock; the refit built full records, `latest_measurements`).

    PYTHONPATH=. .venv/bin/python -m tools.bench_storage [--measurements 200000] [--queries 200] [--rounds 3]

One database of `--measurements` rows (20 nodes); per round and per way, in alternation: a thread does the refit's
read in a loop while the main thread times `get_node` `--queries` times, 5 ms apart. Prints one JSON object: per way
the median, 90th percentile and maximum of the small read (ms, over all rounds) and the median time of one refit
read.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import statistics
import tempfile
import threading
import time
from pathlib import Path

from rr_server.records import Measurement
from rr_server.storage import Storage

NODES = 20


class SharedConnectionStorage(Storage):
    """The storage as it read before: every read on the writer's connection, under its lock."""

    def _read(self, sql: str, args: tuple = (), plain: bool = False) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()


WAYS = {  # storage, and the refit's read
    "own_read_connections": (Storage, Storage.latest_values),
    "shared_connection_before": (SharedConnectionStorage, Storage.latest_measurements),
}


def fill(data_dir: Path, measurements: int) -> None:
    storage = Storage(data_dir)
    for n in range(NODES):
        storage.upsert_node(f"n{n}", "edge", {})
    rows = [
        Measurement(node_id=f"n{k % NODES}", signature=f"sig{k // NODES}", latency_ms=1.0 + k % 7)
        for k in range(measurements)
    ]
    storage.add_reports(rows, {}, {}, [])
    storage.close()


def one_round(storage: Storage, refit_read, queries: int) -> tuple[list[float], list[float]]:
    """(small read ms per query, refit read ms per loop) with the refit's read running throughout."""
    stop = threading.Event()
    refits: list[float] = []

    def refit_reads() -> None:
        while not stop.is_set():
            start = time.perf_counter()
            refit_read(storage)
            refits.append(1e3 * (time.perf_counter() - start))

    thread = threading.Thread(target=refit_reads)
    thread.start()
    small: list[float] = []
    try:
        for _ in range(queries):
            start = time.perf_counter()
            storage.get_node("n3")
            small.append(1e3 * (time.perf_counter() - start))
            time.sleep(0.005)
    finally:
        stop.set()
        thread.join()
    return small, refits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--measurements", type=int, default=200_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fill(Path(tmp), args.measurements)
        samples: dict[str, tuple[list[float], list[float]]] = {way: ([], []) for way in WAYS}
        for _ in range(args.rounds):
            for way, (cls, refit_read) in WAYS.items():
                storage = cls(Path(tmp))
                small, refits = one_round(storage, refit_read, args.queries)
                storage.close()
                samples[way][0].extend(small)
                samples[way][1].extend(refits)
    result = {
        "measurements": args.measurements,
        "queries": args.queries,
        "rounds": args.rounds,
        "host": {"python": platform.python_version(), "cpus": len(os.sched_getaffinity(0))},
    }
    for way, (small, refits) in samples.items():
        small.sort()
        result[way] = {
            "get_node_median_ms": round(statistics.median(small), 3),
            "get_node_p90_ms": round(small[int(0.9 * len(small))], 3),
            "get_node_max_ms": round(small[-1], 1),
            "refit_read_median_ms": round(statistics.median(refits), 1),
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
