"""The cloud profiler's timing of a slice on a quiet server and beside an edge's requests, with and without its gate.

    PYTHONPATH=. .venv/bin/python -m tools.bench_cloud_profiler [--model resnet18] [--blocks A:B] [--rounds 5] \
        > docs/results/cloud_profiler_bench.json

An in-process rr-server holds one slice (default: the middle third of resnet18's atomic blocks, as
`tools/bench_server.py`). A client process sends ModelInfer requests for it, each followed by a pause as long as
the request took: an edge keeping the server about half busy. Each round, the server's cloud profiler times the
slice as it times a reported block (3 warm-ups, then up to 20 runs within its 5 s budget) three ways:

* `quiet`: the client paused;
* `gated`: beside the client, waiting for the gaps between requests (`rr_server.activity`, as shipped);
* `ungated`: beside the client, timing regardless (the profiler before the gate); `gated` and `ungated` alternate
  in order from round to round.

Reported: the median over the rounds of each profile's median run (ms), over `quiet`; the runs kept; and the
client's median request latency while each profile ran, over the client's latency alone (1 s per round, client
running, no profile). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import grpc

from rr_proto import framing
from rr_proto.transport import grpc_options
from rr_server import Server, ServerConfig
from rr_server.activity import InferenceActivity
from rr_server.cloud_profiler import CloudProfiler
from tools.bench_server import _INFER, MAX_MESSAGE, example_input, make_slice, upload


def _edge(address: str, request: bytes, go: mp.Event, stop: mp.Event, out: mp.Queue) -> None:
    """While `go` is set: request, pause as long, repeat; until `stop`. Puts (time.time() at the end of each request,
    its seconds)."""
    channel = grpc.insecure_channel(address, options=grpc_options(MAX_MESSAGE))
    call = channel.unary_unary(_INFER)
    call(request, timeout=60)
    out.put(None)  # connected and warm
    samples = []
    while not stop.is_set():
        if not go.wait(0.05):
            continue
        t0 = time.perf_counter()
        call(request, timeout=60)
        elapsed = time.perf_counter() - t0
        samples.append((time.time(), elapsed))
        time.sleep(elapsed)
    out.put(samples)
    channel.close()


def run(model: str, blocks: str | None, rounds: int) -> dict[str, object]:
    data = make_slice(model, blocks)
    name, x = example_input(data)
    config = ServerConfig(data_dir=Path(tempfile.mkdtemp()), listen="127.0.0.1:0", cloud_profiling=False)
    with Server(config) as server:
        slice_id = upload(server.address, data)
        request = framing.serialize_infer_request(slice_id, {name: x})
        args = (config.cloud_node_id, server.storage, server.slices, server.sessions, lambda: None)
        profilers = {
            "gated": CloudProfiler(*args, activity=server.repository.activity),
            "ungated": CloudProfiler(*args, activity=InferenceActivity()),  # never sees a request
        }
        ctx = mp.get_context("spawn")
        out: mp.Queue = ctx.Queue()
        go, stop = ctx.Event(), ctx.Event()
        edge = ctx.Process(target=_edge, args=(server.address, request, go, stop, out))
        edge.start()
        out.get(timeout=120)
        profilers["gated"].time_slice(slice_id)  # session open and warm
        medians: dict[str, list[float]] = {"quiet": [], "gated": [], "ungated": []}
        kept: dict[str, list[int]] = {k: [] for k in medians}
        windows: dict[str, list[tuple[float, float]]] = {"alone": [], "gated": [], "ungated": []}
        for k in range(rounds):  # quiet, the client alone, then both profiles beside it (order alternating)
            go.clear()
            time.sleep(0.2)
            times, _ = profilers["gated"].time_slice(slice_id)
            medians["quiet"].append(statistics.median(times))
            kept["quiet"].append(len(times))
            go.set()
            t0 = time.time()
            time.sleep(1.0)
            windows["alone"].append((t0, time.time()))
            for key in ("gated", "ungated") if k % 2 == 0 else ("ungated", "gated"):
                t0 = time.time()
                times, _ = profilers[key].time_slice(slice_id)  # exactly what the worker runs for a reported block
                windows[key].append((t0, time.time()))
                medians[key].append(statistics.median(times))
                kept[key].append(len(times))
        stop.set()
        samples = out.get(timeout=120)
        edge.join(30)
    shutil.rmtree(config.data_dir, ignore_errors=True)

    def client_ms(spans: list[tuple[float, float]]) -> float:
        return 1e3 * statistics.median(s for end, s in samples if any(a <= end <= b for a, b in spans))

    quiet, alone = statistics.median(medians["quiet"]), client_ms(windows["alone"])
    summary: dict[str, object] = {"client_request_ms_alone": round(alone, 3)}
    for key, values in medians.items():
        median = statistics.median(values)
        summary[key] = {
            "profile_median_ms": round(median, 3),
            "over_quiet": round(median / quiet, 3),
            "runs_kept_median": statistics.median(kept[key]),
        }
        if key != "quiet":
            during = client_ms(windows[key])
            summary[key] |= {
                "client_request_ms_during": round(during, 3),
                "client_over_alone": round(during / alone, 3),
            }
    return {"model": model, "blocks": blocks, "rounds": rounds, **summary}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--blocks", help="A:B, the slice's block range (default: the middle third)")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    print(json.dumps(run(args.model, args.blocks, args.rounds), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
