"""A split's local parts run one after the other, against the whole model, under three spin policies of ONNX Runtime.

    PYTHONPATH=. .venv/bin/python -m tools.bench_edge_chain [--models resnet18:2:8,mobilenet_v2:3:12] [--threads 2] \
        [--rounds 15] > docs/results/edge_chain_bench.json

The edge runs a split as three sessions (head, middle, tail: `rr_edge.runner`, also every request that finishes
locally after a fallback). Each model is cut at its split (`MODEL:I:J`: head blocks 0..I, middle I+1..J, tail the
rest) and timed on random input as the chain of three sessions and as one whole-model session, with `--threads`
intra-op threads each, under: `default` (ONNX Runtime's: pool threads keep spinning after a run), `edge` (the edge's
own `OrtSettings.session_options()`: they spin during a run and stop when it returns) and `no_spin`. Per round, for
each policy in turn: 2 untimed runs, then the median of 10 timed ones; the report gives each case's median over the
rounds, and the ratio of the chain to the whole model within a policy.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime as ort

from rr_edge.blocks import analyze
from rr_edge.session import OrtSettings
from rr_edge.slicing import Slicer
from tools._models import cached_export

POLICIES: dict[str, dict[str, str] | None] = {  # None: the edge's own session options
    "default": {},
    "edge": None,
    "no_spin": {"session.intra_op.allow_spinning": "0"},
}


def _session(model: bytes, threads: int, entries: dict[str, str] | None) -> ort.InferenceSession:
    settings = OrtSettings(provider="cpu", intra_op_threads=threads).resolved()
    options = settings.session_options()
    if entries is not None:  # the same settings without the edge's config entries, and with these
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        for key, value in entries.items():
            options.add_session_config_entry(key, value)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _median_ms(run: Callable[[], object], runs: int = 10) -> float:
    for _ in range(2):
        run()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        run()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def bench(name: str, i: int, j: int, threads: int, rounds: int) -> dict[str, object]:
    model = onnx.load(cached_export(name, 224))
    graph = analyze(model, name)
    slicer = Slicer(model, graph)
    n = len(graph.blocks)
    parts = [slicer.slice(a, b).SerializeToString() for a, b in ((0, i), (i + 1, j), (j + 1, n - 1))]
    whole = model.SerializeToString()
    feed = {graph.inputs[0].name: np.random.default_rng(0).standard_normal(graph.inputs[0].shape).astype(np.float32)}
    runs: dict[str, dict[str, Callable[[], object]]] = {}
    for policy, entries in POLICIES.items():
        chain = [_session(p, threads, entries) for p in parts]
        one = _session(whole, threads, entries)

        def run_chain(chain: list[ort.InferenceSession] = chain) -> None:
            env = dict(feed)
            for session in chain:
                outputs = session.run(None, {k.name: env[k.name] for k in session.get_inputs()})
                env.update(zip([o.name for o in session.get_outputs()], outputs, strict=True))

        def run_whole(one: ort.InferenceSession = one) -> None:
            one.run(None, feed)

        runs[policy] = {"chain": run_chain, "whole": run_whole}
    samples: dict[str, dict[str, list[float]]] = {p: {"chain": [], "whole": []} for p in POLICIES}
    for _ in range(rounds):
        for policy, cases in runs.items():
            for case, run in cases.items():
                samples[policy][case].append(_median_ms(run))
    out: dict[str, object] = {"model": name, "blocks": n, "split": [i, j], "threads": threads}
    for policy, timed in samples.items():
        chain_ms, whole_ms = statistics.median(timed["chain"]), statistics.median(timed["whole"])
        out[policy] = {"chain_ms": round(chain_ms, 2), "whole_ms": round(whole_ms, 2),
                       "chain_over_whole": round(chain_ms / whole_ms, 2)}  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet18:2:8,mobilenet_v2:3:12", help="MODEL:I:J, comma-separated")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    results = []
    for spec in args.models.split(","):
        name, i, j = spec.split(":")
        results.append(bench(name, int(i), int(j), args.threads, args.rounds))
    facts = {"cpus": os.cpu_count(), "loadavg": [round(x, 2) for x in os.getloadavg()], "ort": ort.__version__}
    print(json.dumps({"bench": "edge_chain", **facts, "rounds": args.rounds, "results": results}, indent=2))


if __name__ == "__main__":
    main()
