"""Helpers for the rr_server tests: tiny ONNX models, a started in-process server, stubs, upload."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from rr_proto.inference import grpc_service_pb2_grpc as kserve_grpc
from rr_proto.roadrunner.v1 import roadrunner_pb2 as rr
from rr_proto.roadrunner.v1 import roadrunner_pb2_grpc as rr_grpc
from rr_proto.transport import grpc_options
from rr_server import Server, ServerConfig

IR_VERSION = 8  # what the installed ONNX Runtime reads (onnx.helper would write a newer one)
CHUNK = 64 * 1024


def conv_model(channels: int = 3, size: int = 8, out_channels: int = 4, seed: int = 0, batch: int | str = 1) -> bytes:
    """x[B,C,H,W] float -> Conv3x3(pad 1) -> Relu -> y[B,O,H,W]: a small, real block."""
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.standard_normal((out_channels, channels, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(out_channels).astype(np.float32), "b")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, channels, size, size])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, out_channels, size, size])
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "conv_relu", [x], [y], initializer=[w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def two_output_model() -> bytes:
    """a[2,3] float, n[4] int64 -> sum = a + a, doubled = n * 2: two inputs, two outputs, two dtypes."""
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3])
    n = helper.make_tensor_value_info("n", TensorProto.INT64, [4])
    s = helper.make_tensor_value_info("sum", TensorProto.FLOAT, [2, 3])
    d = helper.make_tensor_value_info("doubled", TensorProto.INT64, [4])
    two = numpy_helper.from_array(np.array(2, dtype=np.int64), "two")
    nodes = [helper.make_node("Add", ["a", "a"], ["sum"]), helper.make_node("Mul", ["n", "two"], ["doubled"])]
    graph = helper.make_graph(nodes, "two", [a, n], [s, d], initializer=[two])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=IR_VERSION)
    return model.SerializeToString()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def upload_requests(
    data: bytes, slice_id: str | None = None, size: int | None = None, probe: bool = False, load: bool = False
) -> Iterator:
    size_bytes = len(data) if size is None else size
    yield rr.UploadSliceRequest(
        header=rr.SliceHeader(slice_id=slice_id or sha256(data), size_bytes=size_bytes, probe=probe, load=load)
    )
    for k in range(0, len(data), CHUNK):
        yield rr.UploadSliceRequest(chunk=data[k : k + CHUNK])


@dataclass
class Stubs:
    channel: grpc.Channel
    kserve: kserve_grpc.GRPCInferenceServiceStub
    nodes: rr_grpc.NodeServiceStub
    profiles: rr_grpc.ProfileServiceStub
    predictions: rr_grpc.PredictionServiceStub
    slices: rr_grpc.SliceServiceStub
    echo: rr_grpc.EchoServiceStub

    @classmethod
    def connect(cls, address: str, credentials: grpc.ChannelCredentials | None = None) -> Stubs:
        options = grpc_options(256 * 1024 * 1024)
        if credentials is None:
            channel = grpc.insecure_channel(address, options=options)
        else:
            channel = grpc.secure_channel(address, credentials, options=options)
        return cls(
            channel,
            kserve_grpc.GRPCInferenceServiceStub(channel),
            rr_grpc.NodeServiceStub(channel),
            rr_grpc.ProfileServiceStub(channel),
            rr_grpc.PredictionServiceStub(channel),
            rr_grpc.SliceServiceStub(channel),
            rr_grpc.EchoServiceStub(channel),
        )

    def upload(self, data: bytes, **kw) -> rr.UploadSliceResponse:
        return self.slices.UploadSlice(upload_requests(data), timeout=30, **kw)

    def close(self) -> None:
        self.channel.close()


def start_server(data_dir: Path, **overrides) -> Server:
    config = ServerConfig(**{"data_dir": data_dir, "listen": "127.0.0.1:0", "refresh_debounce_s": 0.05, **overrides})
    server = Server(config)
    server.start()
    return server


@contextmanager
def serving(data_dir: Path, **overrides) -> Iterator[tuple[Server, Stubs]]:
    """An in-process server (`start_server`) and stubs connected to it, both closed on the way out."""
    server = start_server(data_dir, **overrides)
    stubs = Stubs.connect(server.address)
    try:
        yield server, stubs
    finally:
        stubs.close()
        server.stop(grace=1)


def stored_slice_files(data_dir: Path) -> list[Path]:
    """Every file under the slice store (committed slices and temporaries)."""
    root = data_dir / "slices"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def layer(signature: str, median_ms: float, energy_mj: float | None = None, **features) -> rr.LayerProfile:
    msg = rr.LayerProfile(
        signature=signature,
        latency=rr.LatencyStats(
            median_ms=median_ms, p10_ms=median_ms * 0.9, p90_ms=median_ms * 1.1, cv=0.05, samples=10
        ),
        features=rr.BlockFeatures(**features) if features else None,
    )
    if energy_mj is not None:
        msg.energy_mj = energy_mj
        msg.energy_source = "rapl"
    return msg


def report(node_id: str, *items: rr.LayerProfile | rr.ModelProfile) -> Iterator[rr.ReportLayerProfilesRequest]:
    """A whole report: one message per layer or whole-model profile, then the end message that counts them."""
    settings = rr.RuntimeSettings(execution_provider="CPUExecutionProvider", intra_op_threads=1)
    for item in items:
        kind = "model" if isinstance(item, rr.ModelProfile) else "layer"
        yield rr.ReportLayerProfilesRequest(node_id=node_id, settings=settings, **{kind: item})
    yield rr.ReportLayerProfilesRequest(node_id=node_id, end=rr.ReportEnd(items=len(items)))
