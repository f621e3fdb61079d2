"""Benchmark: tensor transport of rr-server's ModelInfer vs a raw TCP socket echo (issue 8; docs/performance.md).

    python tools/bench_transport.py [--sizes-mb 1,4,16,64] [--repeat 7] [--tiny-repeat 300]
    sudo python tools/bench_transport.py --testbed-rate 667mbit [--testbed-device emu-agx]   # over the emulated link

One run, loopback, everything measured against a baseline in the same run:
* `socket`: a raw TCP echo (length-prefixed bytes, sendall/recv_into) in a separate process: the floor.
* `grpc_bytes`: a bare gRPC unary echo of the same bytes (generic handler, no protobuf, a separate process), with
  rr-server's options: the floor of any ModelInfer over grpcio, which does the same and more.
* `grpc_bytes_stream`: the same bytes through the same echo server as 1 MiB messages on one bidirectional stream
  per round trip (the server sends each message back as it arrives), the other way grpcio moves big payloads.
* `model_infer_*`: rr-server (subprocess, `python -m rr_server.cli`) running an Identity slice on an FP32 tensor of
  the same size via ModelInfer (raw contents), round trip including the client's encoding and decoding to numpy:
  `client` = the edge client, `rr_edge.client.Client.infer` (zero-copy framing of rr_proto.framing, its own
  channel options); `framing_default_options` = the same framing over a channel with grpcio's default options (only
  the message limits raised); `codec` = a client that builds/reads protobuf objects (rr_proto.codec, what generic
  KServe clients such as tritonclient do); `runner_stream` = the edge runner itself (`rr_edge.runner.Runner` over a
  plan whose only part is the Identity slice, on the server): what an offloaded plan pays per call, over the one
  ModelStreamInfer stream the runner keeps open.
Methods are measured round robin within each repetition (this machine is shared and noisy); median round trip per
size; `ratio_vs_socket` = socket RTT / method RTT (1.0 = as fast as the raw socket); `*_client_cpu_ms` = median CPU
time of the client process per call (all threads: where a CPU-limited client spends the difference).
Per-call overhead: median RTT of a 4-byte tensor via ModelInfer vs a bare gRPC unary call and the socket (also
round robin; both ModelInfer clients include their encoding and decoding).
With `--testbed-rate`, rr-server and the socket echo run in the testbed's server namespace (tools.testbed, own prefix
`rrt`, created and removed by the run) and the client in an edge namespace behind veth + tbf at that rate (667mbit =
80 MB/s of payload); the bare gRPC echo runs in the server namespace too. Prints one JSON object.
Every process runs with `rr_proto.allocator.tune_allocator()` as `rr-server` and `rr-edge` do (`RR_MALLOC_TUNING=0`
in the environment: without it; the JSON records which).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent import futures
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402
import numpy as np  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402

from rr_edge.client import Client  # noqa: E402
from rr_edge.runner import PlanSlices, Runner  # noqa: E402
from rr_proto import allocator, codec, framing  # noqa: E402
from rr_proto.inference import grpc_service_pb2_grpc as kserve_grpc  # noqa: E402
from rr_proto.roadrunner.v1 import roadrunner_pb2 as rr  # noqa: E402
from rr_proto.roadrunner.v1 import roadrunner_pb2_grpc as rr_grpc  # noqa: E402
from rr_proto.transport import grpc_options  # noqa: E402
from tools._server import emulated_link, rr_server, rr_server_command, serving  # noqa: E402

MB = 1024 * 1024
MAX_MESSAGE = 256 * MB
_ECHO_METHOD = "/bench.Echo/Echo"
_ECHO_STREAM_METHOD = "/bench.Echo/EchoStream"
STREAM_CHUNK = MB  # message size of the streamed echo
_INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
TESTBED_PREFIX = "rrt"  # own testbed objects, apart from other users of tools.testbed
TESTBED_PORT = 8001


def identity_slice() -> bytes:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


# -- raw socket echo ---------------------------------------------------------------------------------------------


def serve_socket(port_file: Path, bind: str = "127.0.0.1") -> None:
    """Echo server: each message is an 8-byte length followed by that many bytes, sent back unchanged."""
    listener = socket.create_server((bind, 0))
    port_file.write_text(str(listener.getsockname()[1]))
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=_echo_connection, args=(conn,), daemon=True).start()


def _echo_connection(conn: socket.socket) -> None:
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = bytearray()
    while True:
        head = _recv_exact(conn, 8, bytearray(8))
        if head is None:
            break
        (n,) = struct.unpack("<Q", head)
        if len(buf) < n:
            buf = bytearray(n)
        view = memoryview(buf)[:n]
        if _recv_exact(conn, n, view) is None:
            break
        conn.sendall(head)
        conn.sendall(view)
    conn.close()


def _recv_exact(conn: socket.socket, n: int, into) -> bytes | None:
    view = memoryview(into)
    got = 0
    while got < n:
        k = conn.recv_into(view[got:], n - got)
        if k == 0:
            return None
        got += k
    return bytes(into[:8]) if n == 8 else b""


def _socket_roundtrip(conn: socket.socket, payload: bytes, back: bytearray) -> None:
    conn.sendall(struct.pack("<Q", len(payload)))
    conn.sendall(payload)
    _recv_exact(conn, 8, bytearray(8))
    _recv_exact(conn, len(payload), back)


# -- bare gRPC bytes echo ----------------------------------------------------------------------------------------


def serve_grpc_echo(port_file: Path, bind: str = "127.0.0.1") -> None:
    """Bare gRPC echo server (a process of its own, as rr-server and the socket echo are: a server in the client's
    process would take the client's GIL and CPU, and its clean-up after each call would land on the next method)."""
    handler = grpc.method_handlers_generic_handler(
        "bench.Echo",
        {
            "Echo": grpc.unary_unary_rpc_method_handler(lambda request, context: request),
            "EchoStream": grpc.stream_stream_rpc_method_handler(lambda requests, context: requests),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(4), options=grpc_options(MAX_MESSAGE))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port(f"{bind}:0")
    server.start()
    port_file.write_text(str(port))
    server.wait_for_termination()


def stream_echo(call, payload: bytes) -> None:
    """One round trip of `payload` as STREAM_CHUNK messages on a fresh bidirectional stream, reassembled."""
    view = memoryview(payload)
    back = bytearray(len(payload))
    got = 0
    for message in call(bytes(view[i : i + STREAM_CHUNK]) for i in range(0, len(payload), STREAM_CHUNK)):
        back[got : got + len(message)] = message
        got += len(message)
    if got != len(payload):
        raise RuntimeError(f"streamed echo returned {got} of {len(payload)} bytes")


def round_robin(methods: dict, repeat: int, cpu: dict[str, float] | None = None) -> dict[str, float]:
    """Median seconds per call of each method, measured round robin (one call of each per repetition, so load
    changes on this shared machine hit every method alike), after one warm-up round. The order rotates by one
    method per repetition: a method's calls follow each of the others alike (the server of the method before
    may still be cleaning up when the next one starts). `cpu`, when given, receives the median CPU seconds this
    (client) process spent per call of each method, all its threads (grpcio's included)."""
    names = list(methods)
    times: dict[str, list[float]] = {name: [] for name in names}
    cpu_times: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(repeat + 1):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            c0, t0 = time.process_time(), time.perf_counter()
            methods[name]()
            times[name].append(time.perf_counter() - t0)
            cpu_times[name].append(time.process_time() - c0)
    if cpu is not None:
        cpu.update({name: statistics.median(values[1:]) for name, values in cpu_times.items()})
    return {name: statistics.median(values[1:]) for name, values in times.items()}


def codec_infer(stub, slice_id: str, x: np.ndarray) -> None:
    codec.decode_infer_response(stub.ModelInfer(codec.encode_infer_request(slice_id, {"x": x}), timeout=60))


def framing_infer(call, slice_id: str, x: np.ndarray) -> None:
    framing.decode_outputs(framing.parse_infer_response(call(framing.serialize_infer_request(slice_id, {"x": x}),
                                                             timeout=60)))  # fmt: skip


def runner_call(runner: Runner, x: np.ndarray) -> None:
    if runner.run({"x": x}).fallback:  # a local run would time the wrong thing
        raise RuntimeError("the runner fell back to running the slice locally")


def measure(
    address: str, sock_addr: tuple[str, int], echo_address: str, sizes: list[float], repeat: int, tiny_repeat: int
) -> dict:
    """Round trips against a running rr-server, socket echo server and bare gRPC echo server."""
    sock_conn = socket.create_connection(sock_addr)
    sock_conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def socket_call(payload: bytes) -> None:
        _socket_roundtrip(sock_conn, payload, bytearray(len(payload)))

    echo_channel = grpc.insecure_channel(echo_address, options=grpc_options(MAX_MESSAGE))
    echo = echo_channel.unary_unary(_ECHO_METHOD)
    echo_stream = echo_channel.stream_stream(_ECHO_STREAM_METHOD)
    tuned = grpc.insecure_channel(address, options=grpc_options(MAX_MESSAGE))
    default = grpc.insecure_channel(
        address,
        options=[("grpc.max_send_message_length", MAX_MESSAGE + MB), ("grpc.max_receive_message_length", MAX_MESSAGE + MB)],  # noqa: E501
    )  # fmt: skip
    data = identity_slice()
    slice_id = hashlib.sha256(data).hexdigest()
    rr_grpc.SliceServiceStub(tuned).UploadSlice(
        iter([rr.UploadSliceRequest(header=rr.SliceHeader(slice_id=slice_id, size_bytes=len(data))),
              rr.UploadSliceRequest(chunk=data)]),
        timeout=30,
    )  # fmt: skip
    kserve_tuned = kserve_grpc.GRPCInferenceServiceStub(tuned)
    framing_default = default.unary_unary(_INFER_METHOD)
    client = Client(address)
    runner = Runner(PlanSlices(split=(-1, 0), head=None, middle=data, tail=None, label="identity"), remote=client)

    rows = []
    for size in sizes:
        n = int(size * MB) // 4
        x = np.random.default_rng(0).standard_normal(n).astype(np.float32)
        payload = x.tobytes()
        methods: dict[str, Callable[[], object]] = {
            "socket": partial(socket_call, payload),
            "grpc_bytes": partial(echo, payload, timeout=120),
            "grpc_bytes_stream": partial(stream_echo, echo_stream, payload),
            "model_infer_client": partial(client.infer, slice_id, {"x": x}, 60),
            "runner_stream": partial(runner_call, runner, x),
            "model_infer_framing_default_options": partial(framing_infer, framing_default, slice_id, x),
            "model_infer_codec": partial(codec_infer, kserve_tuned, slice_id, x),
        }
        cpu: dict[str, float] = {}
        medians = round_robin(methods, repeat, cpu)
        row: dict = {"mb": size, "bytes": len(payload)}
        for name, value in medians.items():
            row[f"{name}_ms"] = 1e3 * value
        for name, value in cpu.items():
            row[f"{name}_client_cpu_ms"] = 1e3 * value
        for name in methods:
            if name != "socket":
                row[f"{name}_ratio_vs_socket"] = row["socket_ms"] / row[f"{name}_ms"]
        rows.append({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
        print(json.dumps(rows[-1]), file=sys.stderr)

    tiny = np.zeros(1, np.float32)
    back = bytearray(4)
    tiny_methods = {
        "socket": partial(_socket_roundtrip, sock_conn, tiny.tobytes(), back),
        "model_infer_client": partial(client.infer, slice_id, {"x": tiny}, 10),
        "runner_stream": partial(runner_call, runner, tiny),
        "model_infer_codec": partial(codec_infer, kserve_tuned, slice_id, tiny),
        "grpc_unary": partial(echo, b"1234", timeout=10),
    }
    overhead = {f"{name}_us": 1e6 * value for name, value in round_robin(tiny_methods, tiny_repeat).items()}
    overhead["model_infer_client_minus_grpc_unary_us"] = overhead["model_infer_client_us"] - overhead["grpc_unary_us"]
    sock_conn.close()
    runner.close()
    client.close()
    tuned.close()
    default.close()
    echo_channel.close()
    return {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "grpcio": grpc.__version__,
            "loadavg_1m_at_end": os.getloadavg()[0],
            "malloc_tuning": os.environ.get(allocator.MALLOC_TUNING_ENV, "1") not in ("0", "off", "false", "no"),
        },
        "repeat": repeat,
        "sizes": rows,
        "tiny_tensor": {k: round(v, 1) for k, v in overhead.items()},
    }


def run_loopback(sizes: list[float], repeat: int, tiny_repeat: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="rr-bench-transport-") as tmp_dir, contextlib.ExitStack() as stack:
        tmp = Path(tmp_dir)

        def start(flag: str, what: str) -> int:
            port_file = tmp / f"{flag.strip('-')}.port"
            return int(stack.enter_context(serving([sys.executable, __file__, flag, str(port_file)], port_file, what)))

        sock_port = start("--serve-socket", "socket echo")
        echo_port = start("--serve-grpc-echo", "gRPC echo")
        address = stack.enter_context(rr_server(tmp))
        result = measure(address, ("127.0.0.1", sock_port), f"127.0.0.1:{echo_port}", sizes, repeat, tiny_repeat)
        return {"benchmark": "transport", "link": "loopback", **result}


def run_testbed(rate: str, device: str, sizes: list[float], repeat: int, tiny_repeat: int) -> dict:
    """Server and socket echo in the testbed's server namespace, the client in `device`'s (veth + tbf `rate`)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with tempfile.TemporaryDirectory(prefix="rr-bench-link-") as tmp_dir, contextlib.ExitStack() as stack:
        tmp = Path(tmp_dir)
        testbed = stack.enter_context(emulated_link(TESTBED_PREFIX, rate, device))

        def in_server_namespace(cmd: list[str], port_file: Path, what: str) -> str:
            return stack.enter_context(serving([*testbed, "exec", "server", "--", *cmd], port_file, what))

        listen = f"0.0.0.0:{TESTBED_PORT}"
        in_server_namespace(rr_server_command(tmp / "d", tmp / "server.port", listen), tmp / "server.port", "rr-server")
        sock_cmd = [sys.executable, __file__, "--serve-socket", str(tmp / "sock.port"), "--bind", "0.0.0.0"]
        sock_port = in_server_namespace(sock_cmd, tmp / "sock.port", "socket echo")
        echo_cmd = [sys.executable, __file__, "--serve-grpc-echo", str(tmp / "echo.port"), "--bind", "0.0.0.0"]
        echo_port = in_server_namespace(echo_cmd, tmp / "echo.port", "gRPC echo")
        client_cmd = [sys.executable, __file__, "--client-of", f"$RR_SERVER_HOST:{TESTBED_PORT}",
                      "--socket-port", sock_port, "--echo-port", echo_port, "--sizes-mb", ",".join(map(str, sizes)),
                      "--repeat", str(repeat), "--tiny-repeat", str(tiny_repeat)]  # fmt: skip
        shell = " ".join(client_cmd)  # $RR_SERVER_HOST is set by `testbed exec`
        done = subprocess.run([*testbed, "exec", device, "--", "sh", "-c", shell], env=env, cwd=REPO,
                              capture_output=True, text=True, check=True)  # fmt: skip
        result = json.loads(done.stdout)
        return {"benchmark": "transport", "link": f"testbed veth + tbf {rate}, client as {device}", **result}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes-mb", default="1,4,16,64")
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--tiny-repeat", type=int, default=300)
    p.add_argument("--testbed-rate", help="measure over the testbed link at this tbf rate (root), e.g. 667mbit")
    p.add_argument("--testbed-device", default="emu-agx", help="device class the client runs as (default %(default)s)")
    p.add_argument("--serve-socket", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--serve-grpc-echo", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--bind", default="127.0.0.1", help=argparse.SUPPRESS)
    p.add_argument("--client-of", help=argparse.SUPPRESS)
    p.add_argument("--socket-port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--echo-port", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    # Every process of the run (this client, rr-server, the socket echo) has the allocator setting of the shipped
    # entry points (`rr-edge`, `rr-server`); RR_MALLOC_TUNING=0 in the environment measures without it.
    allocator.tune_allocator()
    if args.serve_socket:
        serve_socket(args.serve_socket, args.bind)
        return 0
    if args.serve_grpc_echo:
        serve_grpc_echo(args.serve_grpc_echo, args.bind)
        return 0
    sizes = [float(s) for s in args.sizes_mb.split(",")]
    if args.client_of:
        host = args.client_of.rsplit(":", 1)[0]
        result = measure(args.client_of, (host, args.socket_port), f"{host}:{args.echo_port}", sizes, args.repeat,
                         args.tiny_repeat)  # fmt: skip
    elif args.testbed_rate:
        result = run_testbed(args.testbed_rate, args.testbed_device, sizes, args.repeat, args.tiny_repeat)
    else:
        result = run_loopback(sizes, args.repeat, args.tiny_repeat)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    sys.exit(main())
