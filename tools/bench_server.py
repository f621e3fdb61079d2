"""Benchmark: rr-server inference throughput with 8 concurrent clients vs ONNX Runtime in-process (issue 8).

    python tools/bench_server.py [--model resnet18] [--clients 8] [--seconds 8] [--rounds 3] [--blocks A:B]

Same slice (default: the middle third of resnet18's atomic blocks), same ONNX Runtime session options, one run:
* `in_process`: N threads calling one InferenceSession.run in a loop (no transport at all): the baseline.
* `server_sync`: rr-server as started by `rr-server` (grpcio thread-pool server) in a subprocess; N client processes,
  each with its own channel, calling ModelInfer in a loop (zero-copy framing of rr_server.wire).
* `server_asyncio`: the same slice behind a grpc.aio server (ModelInfer only, ONNX Runtime run in a thread pool via
  run_in_executor, same wire framing) in a subprocess, same clients: the alternative design, measured here.
The three are measured round robin (`--rounds`, servers kept running) because this machine is shared and its load
swings; `ratio_vs_in_process` = total server inferences / total in-process inferences over all rounds. Also the
single-client median latency of each. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from concurrent import futures
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

from rr_proto.roadrunner.v1 import roadrunner_pb2 as rr  # noqa: E402
from rr_proto.roadrunner.v1 import roadrunner_pb2_grpc as rr_grpc  # noqa: E402
from rr_proto.transport import grpc_options  # noqa: E402
from rr_server import wire  # noqa: E402
from tools._models import cached_export  # noqa: E402
from tools._server import rr_server_command, serving  # noqa: E402

MAX_MESSAGE = 256 * 1024 * 1024
_INFER = "/inference.GRPCInferenceService/ModelInfer"


def make_slice(model_name: str, blocks: str | None) -> bytes:
    from rr_edge.blocks import analyze
    from rr_edge.onnx_io import load_model
    from rr_edge.slicing import slice_model

    model = load_model(cached_export(model_name, 224))
    graph = analyze(model, model_name)
    n = len(graph.blocks)
    a, b = (int(v) for v in blocks.split(":")) if blocks else (n // 3, 2 * n // 3)
    return slice_model(model, graph, a, b).SerializeToString()


def example_input(data: bytes) -> tuple[str, np.ndarray]:
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    return inp.name, np.random.default_rng(0).standard_normal(inp.shape).astype(np.float32)


def in_process(data: bytes, clients: int, seconds: float, tmp: Path) -> tuple[float, float]:
    """(throughput, single-thread median latency s) of one shared session opened exactly as the server opens it."""
    from rr_server.sessions import SessionPool

    path = tmp / "baseline.onnx"
    path.write_bytes(data)
    session = SessionPool(["CPUExecutionProvider"], 1).get("baseline", path)
    name, x = example_input(data)
    single = []
    for _ in range(20):
        t0 = time.perf_counter()
        session.run({name: x})
        single.append(time.perf_counter() - t0)
    counts = [0] * clients
    stop = time.perf_counter() + seconds

    def loop(k: int) -> None:
        while time.perf_counter() < stop:
            session.run({name: x})
            counts[k] += 1

    threads = [threading.Thread(target=loop, args=(k,)) for k in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - t0), statistics.median(single[2:])


def _client(address: str, request: bytes, start_at: float, seconds: float, out: mp.Queue) -> None:
    channel = grpc.insecure_channel(address, options=grpc_options(MAX_MESSAGE))
    call = channel.unary_unary(_INFER, response_deserializer=wire.parse_infer_response)
    call(request, timeout=60)  # connect and warm up before the clock starts
    while time.time() < start_at:
        time.sleep(0.001)
    n = errors = 0
    stop = start_at + seconds
    while time.time() < stop:
        try:
            call(request, timeout=60)
            n += 1
        except grpc.RpcError:
            errors += 1
    out.put((n, errors))
    channel.close()


def drive(address: str, request: bytes, clients: int, seconds: float) -> dict:
    ctx = mp.get_context("spawn")
    out: mp.Queue = ctx.Queue()
    start_at = time.time() + 3.0  # spawned clients import grpc and connect first
    procs = [ctx.Process(target=_client, args=(address, request, start_at, seconds, out)) for _ in range(clients)]
    for p in procs:
        p.start()
    results = [out.get(timeout=seconds + 120) for _ in procs]
    for p in procs:
        p.join(30)
    channel = grpc.insecure_channel(address, options=grpc_options(MAX_MESSAGE))
    call = channel.unary_unary(_INFER, response_deserializer=wire.parse_infer_response)
    single = []
    for _ in range(20):
        t0 = time.perf_counter()
        call(request, timeout=60)
        single.append(time.perf_counter() - t0)
    channel.close()
    return {
        "throughput": sum(n for n, _ in results) / seconds,
        "errors": sum(e for _, e in results),
        "single_client_ms": 1e3 * statistics.median(single[2:]),
    }


def upload(address: str, data: bytes) -> str:
    slice_id = hashlib.sha256(data).hexdigest()
    channel = grpc.insecure_channel(address, options=grpc_options(MAX_MESSAGE))
    chunks = [data[k : k + (1 << 20)] for k in range(0, len(data), 1 << 20)]
    requests = [rr.UploadSliceRequest(header=rr.SliceHeader(slice_id=slice_id, size_bytes=len(data)))]
    requests += [rr.UploadSliceRequest(chunk=c) for c in chunks]
    rr_grpc.SliceServiceStub(channel).UploadSlice(iter(requests), timeout=60)
    channel.close()
    return slice_id


def serve_asyncio(data_dir: Path, port_file: Path, workers: int) -> None:
    """ModelInfer on grpc.aio; ONNX Runtime runs in a thread pool (never on the event loop)."""
    from rr_server.metrics import Metrics
    from rr_server.repository import ModelRepository
    from rr_server.sessions import SessionPool
    from rr_server.slices import SliceStore

    slices = SliceStore(data_dir / "slices", 1 << 30)
    repo = ModelRepository(slices, SessionPool(["CPUExecutionProvider"], 4), Metrics())
    pool = futures.ThreadPoolExecutor(workers)

    def infer(request: wire.InferRequest) -> wire.InferResponse:
        header = request.header
        outputs = repo.infer(header.model_name, wire.decode_inputs(request), [o.name for o in header.outputs])
        return wire.encode_outputs(header.model_name, "1", header.id, outputs)

    async def model_infer(request, context):
        return await asyncio.get_running_loop().run_in_executor(pool, infer, request)

    async def upload_slice(request_iterator, context):
        parts = [r async for r in request_iterator]
        slices.put_bytes(b"".join(p.chunk for p in parts[1:]))
        return rr.UploadSliceResponse(slice_id=parts[0].header.slice_id)

    async def main() -> None:
        server = grpc.aio.server(options=grpc_options(MAX_MESSAGE))
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "inference.GRPCInferenceService",
                    {"ModelInfer": grpc.unary_unary_rpc_method_handler(
                        model_infer, wire.parse_infer_request, wire.serialize_infer_response)},
                ),
                grpc.method_handlers_generic_handler(
                    "roadrunner.v1.SliceService",
                    {"UploadSlice": grpc.stream_unary_rpc_method_handler(
                        upload_slice, rr.UploadSliceRequest.FromString, rr.UploadSliceResponse.SerializeToString)},
                ),
            )
        )  # fmt: skip
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        port_file.write_text(f"127.0.0.1:{port}")
        await server.wait_for_termination()

    asyncio.run(main())


def server_command(kind: str, tmp: Path) -> tuple[list[str], Path]:
    """The command line of the `sync` (rr-server itself) or `asyncio` server, and the file it writes its address to."""
    port_file = tmp / f"{kind}.port"
    if kind == "sync":
        return rr_server_command(tmp / kind, port_file), port_file
    return [sys.executable, __file__, "--serve-asyncio", str(tmp / kind), str(port_file)], port_file


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--blocks", help="A:B block range of the slice (default: the middle third)")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--serve-asyncio", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve_asyncio:
        data_dir, port_file = args.serve_asyncio
        serve_asyncio(data_dir, port_file, workers=32)
        return 0
    data = make_slice(args.model, args.blocks)
    name, x = example_input(data)

    request = wire.serialize_infer_request(hashlib.sha256(data).hexdigest(), {name: x})
    rounds: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="rr-bench-server-") as tmp_dir, contextlib.ExitStack() as servers:
        tmp = Path(tmp_dir)
        addresses = {}
        for kind in ("sync", "asyncio"):
            addresses[kind] = servers.enter_context(serving(*server_command(kind, tmp), f"{kind} server"))
            upload(addresses[kind], data)
        for _ in range(args.rounds):  # interleaved, so load changes on this shared machine hit every variant
            baseline, single = in_process(data, args.clients, args.seconds, tmp)
            one = {"in_process": {"throughput": baseline, "single_client_ms": 1e3 * single}}
            for kind, address in addresses.items():
                one[f"server_{kind}"] = drive(address, request, args.clients, args.seconds)
            rounds.append(one)
            print(json.dumps(one), file=sys.stderr)
    result: dict = {
        "benchmark": "server_throughput",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "onnxruntime": ort.__version__,
                    "loadavg_1m_at_end": os.getloadavg()[0]},
        "model": args.model,
        "slice_bytes": len(data),
        "input_shape": list(x.shape),
        "clients": args.clients,
        "seconds_per_measurement": args.seconds,
        "rounds": rounds,
    }  # fmt: skip
    base_total = sum(r["in_process"]["throughput"] for r in rounds)
    for variant in ("in_process", "server_sync", "server_asyncio"):
        total = sum(r[variant]["throughput"] for r in rounds)
        summary = {
            "throughput": total / len(rounds),
            "single_client_ms": statistics.median(r[variant]["single_client_ms"] for r in rounds),
            "ratio_vs_in_process": total / base_total,
        }
        if variant != "in_process":
            summary["errors"] = sum(r[variant]["errors"] for r in rounds)
        result[variant] = summary
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
