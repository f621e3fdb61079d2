"""Benchmark: the server predictor's resident memory against the number of distinct block signatures, with the free
heap given back after each refit (what rr-server does) and kept (what it did before).

    PYTHONPATH=. .venv/bin/python -m tools.bench_server_memory [--signatures 10000,40000] [--nodes 5] [--refits 3]
                                                               [--op-types 12]

Per count: one SQLite store with that many signatures (blocks of 1 to 8 ops of `--op-types` kinds), each measured
(latency and energy) by a random 30% of the edge nodes (at least one). Then, per way and in a fresh process each,
with the allocator tuned as `rr-server` tunes it: the predictor's first fit and `--refits` more (each a full refit),
reading the resident memory (VmRSS) after the imports and after every refit, and the peak (VmHWM). Prints one JSON
object: per count and way, the resident MiB after the imports, after each fit and at the peak, and the KB per
signature between the imports and the last fit.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
from pathlib import Path

from rr_server.predictor import OP_VOCABULARY
from rr_server.records import Features, Measurement
from rr_server.storage import Storage

DENSITY = 0.3
WAYS = ("released", "kept")

_PROBE = """
import json, sys
from pathlib import Path
from rr_proto.allocator import release_free_memory, tune_allocator

def rss_mib(key="VmRSS"):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024

tune_allocator()
from rr_server.predictor import Predictor
from rr_server.storage import Storage
folder, way, refits = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
base = rss_mib()
predictor = Predictor(Storage(folder))
after = []
for _ in range(1 + refits):
    predictor.refresh()
    if way == "released":
        release_free_memory()
    after.append(rss_mib())
print(json.dumps({"imports_mib": base, "refits_mib": after, "peak_mib": rss_mib("VmHWM")}))
"""


def fill(folder: Path, signatures: int, nodes: int, op_types: int, seed: int = 0) -> None:
    """A store of `signatures` blocks, each measured by a random DENSITY of `nodes` edge nodes (at least one)."""
    rng = random.Random(seed)
    storage = Storage(folder)
    names = [f"edge-{k:02d}" for k in range(nodes)]
    for name in names:
        storage.upsert_node(name, "edge", {})
    speed = [rng.uniform(0.5, 3.0) for _ in names]
    batch = 2000
    for lo in range(0, signatures, batch):
        features: dict[str, Features] = {}
        reports: dict[str, list[Measurement]] = {name: [] for name in names}
        for _ in range(lo, min(signatures, lo + batch)):
            signature = f"{rng.getrandbits(64):016x}"
            flops = rng.randint(10**5, 10**10)
            ops = tuple(rng.choice(OP_VOCABULARY[:op_types]) for _ in range(rng.randint(1, 8)))
            features[signature] = Features(ops, flops, rng.randint(0, 10**7), rng.randint(10**3, 10**7), 10**4)
            who = [n for n in range(nodes) if rng.random() < DENSITY] or [rng.randrange(nodes)]
            for n in who:
                ms = speed[n] * (flops / 1e8) ** 0.8 * rng.uniform(0.9, 1.1) + 0.01
                reports[names[n]].append(Measurement(names[n], signature, ms, energy_mj=3 * ms, energy_source="rapl"))
        for n, name in enumerate(names):  # the blocks' features ride with the first report
            storage.add_reports(reports[name], features if n == 0 else {}, {}, [])
    storage.close()


def measure(folder: Path, way: str, refits: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, str(folder), way, str(refits)], env=env, capture_output=True, text=True
    )
    if done.returncode:
        raise RuntimeError(f"probe failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--signatures", default="10000,40000", help="comma-separated counts")
    p.add_argument("--nodes", type=int, default=5)
    p.add_argument("--refits", type=int, default=3)
    p.add_argument("--op-types", type=int, default=12, help="kinds of op the blocks are made of (a real model: 10-20)")
    args = p.parse_args(argv)
    counts = [int(c) for c in args.signatures.split(",")]
    results = {}
    for count in counts:
        with tempfile.TemporaryDirectory(prefix="rr-mem-") as tmp:
            fill(Path(tmp), count, args.nodes, args.op_types)
            per_way = {}
            for way in WAYS:
                probe = measure(Path(tmp), way, args.refits)
                last = probe["refits_mib"][-1]
                per_way[way] = {
                    "imports_mib": round(probe["imports_mib"], 1),
                    "after_refits_mib": [round(x, 1) for x in probe["refits_mib"]],
                    "peak_mib": round(probe["peak_mib"], 1),
                    "kb_per_signature": round(1024 * (last - probe["imports_mib"]) / count, 2),
                }
            results[str(count)] = per_way
    print(
        json.dumps(
            {
                "host": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.libc_ver()[0]}",
                "nodes": args.nodes,
                "density": DENSITY,
                "refits": args.refits,
                "op_types": args.op_types,
                "signatures": results,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
