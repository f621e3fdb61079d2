"""Benchmark: the edge's cost of switching split mid-run (docs/performance.md, "Switching split").

A run that re-plans to another split makes a runner for it (`rr_edge.offload.make_runner`, `connect_later`: its slice
goes to the server in the background) while the runner it leaves is still alive; no request is served meanwhile. Per
model, with one `Slicer` as a run has, `--repeat` times each:

* `to_split_s`: a runner of a split with a head and a tail (blocks up to a third of the way and past two thirds run
  here, the middle third on the server), made while the previous one of the same split is alive;
* `to_local_s`: the same for running every block here (after the network slowed down or went away);
* `stall_ms`: the longest another Python thread (ticking in a loop) waited for Python's lock while a `to_split`
  runner was made in a thread of its own: how long a switch freezes the rest of an application embedding the edge;
* `peak_rss_mb`: the process's peak resident memory at the end.

    python -m tools.bench_switch [--models vgg16,resnet152,resnet18] [--size 224] [--repeat 4] [--rounds 3]
        [--baseline DIR] [--untuned]

The allocator is tuned as `rr-edge`'s CLI does (`rr_proto.allocator.tune_allocator`); `--untuned` leaves glibc's
defaults, as a library user's process has them. Each round measures every model in a subprocess per tree; with
`--baseline DIR` (another checkout, e.g. `git worktree add DIR <commit>`, with `rr_proto/inference` and
`rr_proto/roadrunner` copied in) the baseline's code and this tree's run one after the other. Prints one JSON object:
per model and tree the medians over all rounds, and with a baseline the ratios (baseline / this).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MEASURES = ("to_split_s", "to_local_s", "stall_ms", "peak_rss_mb")


def _stall_ms(work: Callable[[], object]) -> float:
    """The longest gap between two ticks of this thread while `work` runs in another one (Python's lock held)."""
    done = threading.Event()
    thread = threading.Thread(target=lambda: (work(), done.set()))
    last, longest = time.perf_counter(), 0.0
    thread.start()
    while not done.is_set():
        now = time.perf_counter()
        longest, last = max(longest, now - last), now
    thread.join()
    return longest * 1e3


def measure(path: str, repeat: int, tuned: bool) -> dict[str, Any]:
    """One tree's timings of one model (this process imports whichever rr_edge is on its path)."""
    import resource

    from rr_edge.blocks import analyze
    from rr_edge.offload import make_runner
    from rr_edge.onnx_io import load_model
    from rr_edge.runner import Runner
    from rr_edge.session import OrtSettings
    from rr_edge.slicing import Slicer
    from rr_proto.allocator import tune_allocator

    if tuned:
        tune_allocator()
    model = load_model(path)
    graph = analyze(model, Path(path).stem)
    n = len(graph.blocks)
    slicer, settings = Slicer(model, graph), OrtSettings().resolved()
    offloaded = object()  # stands for the client: a runner made with `connect_later` asks nothing of it until a request

    def runner(split: tuple[int, int]) -> Runner:
        made = make_runner(slicer, graph, split, offloaded if split[0] < split[1] else None, settings=settings,
                           connect_later=True)  # fmt: skip
        made.close(wait_s=0.0)  # no request ever started its upload: closing stops nothing but the runner
        return made

    split, local = (n // 3, 2 * n // 3), (n - 1, n - 1)
    out: dict[str, Any] = {"blocks": n, "split": list(split), "to_split_s": [], "to_local_s": [], "stall_ms": []}
    for measure, to in (("to_split_s", split), ("to_local_s", local)):
        previous = runner(to)
        for _ in range(repeat):
            start = time.perf_counter()
            made = runner(to)  # while `previous` is alive, as in a switch
            out[measure].append(time.perf_counter() - start)
            previous = made
        del previous, made
    for _ in range(repeat):
        out["stall_ms"].append(_stall_ms(lambda: runner(split)))
    out["peak_rss_mb"] = [resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024]
    out["code"] = str(Path(sys.modules["rr_edge"].__file__ or "").parents[1])  # the tree measured
    return out


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(REPO))
    from tools._trees import add_tree_args, compare_models

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_tree_args(p, "vgg16,resnet152,resnet18", 4, "runners made per measure per round")
    p.add_argument("--untuned", action="store_true", help="glibc's allocator as it is (a library user's process)")
    args = p.parse_args(argv)

    report: dict[str, Any] = {"repeat": args.repeat, "rounds": args.rounds, "size": args.size,
                              "allocator": "glibc defaults" if args.untuned else "tuned (rr-edge CLI)",
                              "cpus": os.cpu_count(), "load_avg_1min": []}  # fmt: skip
    tuned = not args.untuned
    compare_models(args, "tools.bench_switch", lambda path: f"measure({str(path)!r}, {args.repeat}, {tuned})",
                   MEASURES, ("blocks", "split"), report)  # fmt: skip
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
