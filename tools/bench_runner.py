"""Runner overhead per offloaded inference, beyond compute and transfer (issue 5 target: < 1 ms).

A three-conv chain is split edge -> server -> edge against an in-process rr-server on loopback. In one run, and
interleaved, the same request is timed (a) through `Runner.run` and (b) by hand: head session, one `Client.infer`
call, tail session. The difference of the medians is what the runner adds (feeding by name, fallback bookkeeping,
network tracking). Both paths use unary ModelInfer; the streamed path is reported beside it.

    python -m tools.bench_runner [--requests 300]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from rr_edge.blocks import analyze
from rr_edge.client import Client
from rr_edge.offload import make_runner, plan_slices
from rr_edge.runner import RunnerConfig
from rr_edge.session import OrtSettings
from rr_edge.slicing import Slicer
from rr_server import Server, ServerConfig


def conv_chain(layers: int = 3, channels: int = 8, size: int = 16) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for k in range(layers):
        w = numpy_helper.from_array(rng.standard_normal((channels, channels, 3, 3)).astype(np.float32), f"w{k}")
        inits.append(w)
        nodes += [
            helper.make_node("Conv", [prev, f"w{k}"], [f"c{k}"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", [f"c{k}"], [f"y{k}"]),
        ]
        prev = f"y{k}"
    shape = [1, channels, size, size]
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT, shape)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def bench(requests: int) -> dict[str, float]:
    model = conv_chain()
    graph = analyze(model, "chain")
    slicer = Slicer(model, graph)
    x = np.random.default_rng(1).standard_normal(graph.inputs[0].shape).astype(np.float32)
    settings = OrtSettings(intra_op_threads=1)
    slices = plan_slices(slicer, len(graph.blocks), 0, 1)
    assert slices.head and slices.middle and slices.tail
    head, tail = settings.create_session(slices.head), settings.create_session(slices.tail)
    with tempfile.TemporaryDirectory() as tmp, Server(ServerConfig(data_dir=Path(tmp), listen="127.0.0.1:0")) as server:
        assert server.address is not None
        with Client(server.address) as client:
            slice_id = client.ensure_slice(slices.middle)
            unary = make_runner(slicer, graph, (0, 1), client, config=RunnerConfig(stream=False), settings=settings)
            streamed = make_runner(slicer, graph, (0, 1), client, config=RunnerConfig(stream=True), settings=settings)

            def by_hand() -> None:
                h = dict(zip([o.name for o in head.get_outputs()], head.run(None, {"x": x}), strict=True))
                m = client.infer(slice_id, h, timeout_s=30)
                tail.run(None, m)

            times: dict[str, list[float]] = {"by_hand": [], "runner": [], "runner_stream": []}
            runs = {"by_hand": by_hand, "runner": lambda: unary.run(x), "runner_stream": lambda: streamed.run(x)}
            for _ in range(20):  # warm-up
                for run in runs.values():
                    run()
            for _ in range(requests):
                for name, run in runs.items():
                    start = time.perf_counter()
                    run()
                    times[name].append((time.perf_counter() - start) * 1e3)
            streamed.close()
    med = {name: float(np.median(t)) for name, t in times.items()}
    return {
        "requests": requests,
        "by_hand_ms": med["by_hand"],
        "runner_ms": med["runner"],
        "runner_stream_ms": med["runner_stream"],
        "runner_overhead_ms": med["runner"] - med["by_hand"],
        "stream_vs_unary_ms": med["runner_stream"] - med["runner"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=300)
    args = p.parse_args(argv)
    json.dump(bench(args.requests), sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
