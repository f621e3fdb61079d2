"""Benchmark: a run's requests around a switch of split (docs/performance.md, "Switching split mid-run").

Against rr-server on loopback (a subprocess on CPU 1; the edge on CPU 0, one ONNX Runtime thread), per model,
`--repeat` runs of `--requests` requests each through `PlannedRun` (the runner of `rr-edge run`, no meter): the run
starts on split A (blocks up to a third of the way run
here, up to two thirds on the server; its slice already on the server, as after the run's set-up), switches to split
B (the server runs from a sixth to five sixths of the way) after a third of the requests, as a drift re-plan that
chose B does (`PlannedRun._take`), and back to A after two thirds (once B runs): B's slice is uploaded, A's is held.
Per run:

* `wall_s`: the run's requests, end to end, switches included;
* `longest_gap_ms`: the longest time from the end of one request to the end of the next (a request plus whatever
  the run did after the request before it: a switch);
* `local_requests`: requests that ran locally (a new split's, while its slice was made ready on the server);
* `upload_ms`: the run's time making the slices ready (`PlannedRun.upload_ms`);
* `gaps_ms` (not a measure: raw, per run): each request's time from the end of the one before;
* `switches`: how often the run switched (2 unless a switch was still being prepared when the run ended).

`--edge-slower K` makes the edge K times slower than the server (each local ONNX Runtime run is followed by a sleep
of K - 1 times its duration, `Runner`'s `around_local`), as an edge device beside a cloud server is (1: the edge as
fast as the server, where a request run locally costs no more than one offloaded). The sleep is idle time in which
the edge's other work, a switch being prepared, goes on at full speed; on a device that slow it would not.

    python -m tools.bench_switch_run [--models resnet18,vgg16] [--size 224] [--requests 30] [--edge-slower 4]
        [--repeat 2] [--rounds 3] [--baseline DIR]

Each round measures every model in a subprocess per tree (`tools._trees`); with `--baseline DIR` (another
checkout, e.g. `git worktree add DIR <commit>`, with `rr_proto/inference` and `rr_proto/roadrunner` copied in) the
baseline's code and this tree's run one after the other. Prints one JSON object: per model and tree the medians
over all runs, and with a baseline the ratios (baseline / this).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MEASURES = ("wall_s", "longest_gap_ms", "local_requests", "upload_ms", "switches")


class _Plain:
    """No meter: each request is the runner's own run."""

    def run(self, runner: Any, x: Any, remaining: int) -> Any:
        return runner.run(x)

    def finish(self, runner: Any, x: Any) -> None:
        pass


@contextlib.contextmanager
def _slower(factor: float) -> Iterator[None]:
    """The block, then a sleep of `factor - 1` times its duration."""
    start = time.perf_counter()
    yield
    time.sleep((factor - 1) * (time.perf_counter() - start))


def measure(path: str, requests: int, repeat: int, edge_slower: float) -> dict[str, Any]:
    """One tree's runs of one model (this process imports whichever rr_edge is on its path)."""
    import numpy as np

    from rr_edge.blocks import analyze
    from rr_edge.client import Client, Prediction
    from rr_edge.commands._planned_run import PlannedRun
    from rr_edge.meters.model import DEFAULT_POWER
    from rr_edge.netmodel import NetworkModel
    from rr_edge.offload import Costs, make_plan, make_runner
    from rr_edge.onnx_io import load_model
    from rr_edge.runner import RunnerConfig
    from rr_edge.session import OrtSettings
    from rr_edge.slicing import Slicer
    from rr_proto.allocator import tune_allocator
    from tools._server import rr_server_command, serving

    tune_allocator()  # as rr-edge's CLI does
    os.sched_setaffinity(0, {0})  # the edge's CPU; the server's is the other
    model = load_model(path)
    graph = analyze(model, Path(path).stem)
    n = len(graph.blocks)
    a, b = (n // 3, 2 * n // 3), (n // 6, 5 * n // 6)
    if not (b[0] < a[0] < a[1] < b[1]):
        raise ValueError(f"{n} blocks: too few for two offloading splits")
    edge = tuple(Prediction(s.signature, 50.0, 50.0, "measured", "measured", "model") for s in graph.blocks)
    cloud = tuple(Prediction(s.signature, 1.0, 0.0, "measured", "measured", "") for s in graph.blocks)
    link = NetworkModel.affine(0.5, 1e6)
    planned = make_plan(graph, Costs(edge, cloud, 1.0, link, link, DEFAULT_POWER))
    reports = {split: replace(planned, chosen=planned.table.plan(*split)) for split in (a, b)}
    x = {graph.inputs[0].name: np.random.default_rng(0).standard_normal(graph.inputs[0].shape).astype(np.float32)}
    settings, config = OrtSettings(intra_op_threads=1), RunnerConfig()
    out: dict[str, Any] = {"blocks": n, "split_a": list(a), "split_b": list(b), "gaps_ms": []}
    out |= {m: [] for m in MEASURES}
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as tmp:
            port_file = Path(tmp) / "port"
            server = ["taskset", "-c", "1", *rr_server_command(Path(tmp) / "data", port_file)]
            with serving(server, port_file, "rr-server") as address, Client(address) as client:
                slicer = Slicer(model, graph)

                def runner_for(split: tuple[int, int], report: Any, later: bool, slicer: Slicer = slicer) -> Any:
                    return make_runner(slicer, graph, split, client, config=config, settings=settings,
                                       report=report, connect_later=later,
                                       around_local=lambda: _slower(edge_slower))  # fmt: skip

                make_runner(slicer, graph, a, client, config=config, settings=settings).close()  # A's slice held
                run = PlannedRun(runner_for, None, lambda r, runner, remaining: r, a, reports[a], _Plain(), x, 1.0)
                ends, local, back = [time.perf_counter()], 0, False
                try:
                    for k in range(requests):
                        result = run.request(remaining=requests - 1 - k)
                        ends.append(time.perf_counter())
                        local += result.fallback
                        if k + 1 == requests // 3:
                            run._take(reports[b])  # as a drift re-plan that chose B
                        elif k + 1 >= 2 * requests // 3 and not back and run.split == b:
                            run._take(reports[a])
                            back = True
                finally:
                    run.close()
            out["wall_s"].append(ends[-1] - ends[0])
            gaps = np.diff(ends) * 1e3
            out["longest_gap_ms"].append(float(max(gaps)))
            out["gaps_ms"].append([round(float(g), 1) for g in gaps])
            out["local_requests"].append(local)
            out["upload_ms"].append(run.upload_ms)
            out["switches"].append(len(run.segments) - 1)
    out["code"] = str(Path(sys.modules["rr_edge"].__file__ or "").parents[1])  # the tree measured
    return out


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(REPO))
    from tools._trees import add_tree_args, compare_models

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_tree_args(p, "resnet18,vgg16", 2, "runs per round")
    p.add_argument("--requests", type=int, default=30, help="requests per run")
    p.add_argument("--edge-slower", type=float, default=4.0, help="how many times slower the edge is than the server")
    args = p.parse_args(argv)

    report: dict[str, Any] = {"requests": args.requests, "edge_slower": args.edge_slower, "repeat": args.repeat,
                              "rounds": args.rounds, "size": args.size, "cpus": os.cpu_count(),
                              "load_avg_1min": []}  # fmt: skip
    call = lambda path: f"measure({str(path)!r}, {args.requests}, {args.repeat}, {args.edge_slower})"  # noqa: E731
    compare_models(args, "tools.bench_switch_run", call, MEASURES, ("blocks", "split_a", "split_b"), report)
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
