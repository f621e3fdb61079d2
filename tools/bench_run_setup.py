"""Benchmark: the edge's set-up and re-planning paths of `rr-edge run` (docs/performance.md, "Run set-up").

Against an in-process rr-server on loopback, per model, with a fresh `Slicer` per set-up as a new run has:

* `setup_s`: `plan_with_server_cache` (an edge slow and a cloud fast: the plan offloads nearly everything; the
  server's default limits, under which vgg16's blocks are sized, `with_slice_overhead`) and `make_runner` for its
  chosen split, as `rr-edge run` sets up; the server holds the slice (a repeated run), so this is cutting,
  serializing and hashing the slices, the server's status queries and opening the local sessions;
* `replan_ms`: one drift re-plan (`make_plan` on the same predictions, a third of them measured, with another link);
* `switch_back_s`: `make_runner` for a split the run ran before, after a runner of another split (a re-plan flipping
  between two splits, or the first plan tried again after the network recovered).

    python -m tools.bench_run_setup [--models vgg16,resnet152] [--size 224] [--repeat 5] [--rounds 3]
        [--baseline DIR]

Each round measures every model in a subprocess of its own. With `--baseline DIR` (another checkout, e.g. `git
worktree add DIR <commit>`), each round runs the baseline's code and this tree's, one after the other, and the JSON
holds both trees' medians and their ratios (baseline / this): the machine's load hits both alike. Prints one JSON
object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MEASURES = ("setup_s", "replan_ms", "switch_back_s")


def measure(path: str, repeat: int) -> dict[str, Any]:
    """One tree's timings of one model (this process imports whichever rr_edge is on its path)."""
    import numpy as np

    from rr_edge.blocks import analyze
    from rr_edge.client import Client, Prediction
    from rr_edge.meters.model import DEFAULT_POWER
    from rr_edge.netmodel import NetworkModel
    from rr_edge.offload import Costs, make_plan, make_runner, message_limit, plan_with_server_cache, with_link
    from rr_edge.onnx_io import load_model
    from rr_edge.runner import RunnerConfig
    from rr_edge.session import OrtSettings
    from rr_edge.slicing import Slicer
    from rr_proto.allocator import tune_allocator
    from rr_server import Server, ServerConfig

    tune_allocator()  # as rr-edge's CLI does
    model = load_model(path)
    graph = analyze(model, Path(path).stem)
    n = len(graph.blocks)
    edge = tuple(Prediction(b.signature, 50.0, 50.0, "measured", "measured", "model") for b in graph.blocks)
    cloud = tuple(Prediction(b.signature, 1.0, 0.0, "measured", "measured", "") for b in graph.blocks)
    link = NetworkModel.affine(0.5, 1e6)
    settings, config = OrtSettings(), RunnerConfig()
    out: dict[str, Any] = {measure: [] for measure in MEASURES}
    with tempfile.TemporaryDirectory() as tmp, Server(ServerConfig(data_dir=Path(tmp), listen="127.0.0.1:0")) as srv:
        assert srv.address is not None
        with Client(srv.address) as client:
            info = client.server_info()  # its limits, as `gather_costs` takes them (vgg16's slices are sized)
            limits = {"max_slice_bytes": info.max_slice_bytes, "max_message_bytes": message_limit(client, info)}
            costs = Costs(edge, cloud, 1.0, link, link, DEFAULT_POWER, **limits)

            def set_up(slicer: Slicer) -> Any:
                report = plan_with_server_cache(client, model, graph, costs, slicer, amortize_over=100)
                split = (report.chosen.i, report.chosen.j)
                return report, make_runner(
                    slicer, graph, split, client, config=config, settings=settings, report=report
                )

            report, runner = set_up(Slicer(model, graph))  # uploads the slice: the runs below find it held
            split = (report.chosen.i, report.chosen.j)
            out["split"], out["middle_mb"] = list(split), len(runner.slices.middle or b"") / 1e6
            runner.close()
            for _ in range(repeat):
                start = time.perf_counter()
                _, runner = set_up(Slicer(model, graph))
                out["setup_s"].append(time.perf_counter() - start)
                runner.close()

            rng = np.random.default_rng(0)
            kind = ["measured" if k % 3 == 0 else "predicted" for k in range(n)]
            r_edge = tuple(
                Prediction(b.signature, float(rng.uniform(1, 20)), 5.0, kind[k], kind[k], "model")
                for k, b in enumerate(graph.blocks)
            )
            r_cloud = tuple(
                Prediction(b.signature, float(rng.uniform(0.1, 2)), 0.0, kind[k], kind[k], "")
                for k, b in enumerate(graph.blocks)
            )
            r_costs = Costs(
                r_edge, r_cloud, 1.0, NetworkModel.affine(1.0, 1e4), NetworkModel.affine(1.0, 1e4), DEFAULT_POWER
            )
            make_plan(graph, r_costs)  # the run's first plan
            for k in range(repeat):
                up = NetworkModel.affine(1.0 + 0.1 * (k + 1), 1e4 / (1 + 0.1 * (k + 1)))
                start = time.perf_counter()
                make_plan(graph, with_link(r_costs, up, up))
                out["replan_ms"].append((time.perf_counter() - start) * 1e3)

            slicer = Slicer(model, graph)
            other = (split[0] + 1, split[1]) if split[0] + 1 < split[1] else (split[0], split[1] - 1)
            out["other_split"] = list(other)
            runner = make_runner(slicer, graph, split, client, config=config, settings=settings)
            for _ in range(repeat):
                switched = make_runner(slicer, graph, other, client, config=config, settings=settings)
                runner.close()
                start = time.perf_counter()
                runner = make_runner(slicer, graph, split, client, config=config, settings=settings)
                out["switch_back_s"].append(time.perf_counter() - start)
                switched.close()
            runner.close()
    out["blocks"] = n
    out["code"] = str(Path(sys.modules["rr_edge"].__file__ or "").parents[1])  # the tree measured
    return out


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(REPO))
    from tools._trees import add_tree_args, compare_models

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_tree_args(p, "vgg16,resnet152", 5, "timings of each measure per round")
    args = p.parse_args(argv)

    report: dict[str, Any] = {
        "repeat": args.repeat,
        "rounds": args.rounds,
        "size": args.size,
        "cpus": os.cpu_count(),
        "load_avg_1min": [],
    }
    keys = ("blocks", "split", "other_split", "middle_mb")
    compare_models(args, "tools.bench_run_setup", lambda path: f"measure({str(path)!r}, {args.repeat})", MEASURES,
                   keys, report)  # fmt: skip
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
