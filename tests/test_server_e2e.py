"""End to end: `rr-server` as a subprocess; a resnet18 middle slice uploaded and run by unmodified tritonclient;
durability across kill -9; SIGTERM shutdown."""

from __future__ import annotations

import json
import subprocess
import sys

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from _server_process import REPO, ServerProcess
from _server_support import Stubs, conv_model, layer, report, sha256

from rr_proto import codec
from rr_proto.roadrunner.v1 import roadrunner_pb2 as rr


def resnet18_middle_slice(zoo) -> bytes:
    from rr_edge.slicing import slice_model

    model, graph = zoo("resnet18")
    n = len(graph.blocks)
    return slice_model(model, graph, n // 3, 2 * n // 3).SerializeToString()


def run_tritonclient(address: str, slice_id: str, x: np.ndarray, out_dir) -> dict:
    np.save(out_dir / "x.npy", x)
    subprocess.run(
        [
            sys.executable,
            str(REPO / "tests" / "tritonclient_check.py"),
            "--url",
            address,
            "--model",
            slice_id,
            "--input",
            str(out_dir / "x.npy"),
            "--out-dir",
            str(out_dir),
        ],
        check=True,
        timeout=120,
        cwd=REPO,
    )
    return json.loads((out_dir / "summary.json").read_text())


def test_resnet18_middle_slice_with_tritonclient(tmp_path, zoo):
    data = resnet18_middle_slice(zoo)
    reference = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    (inp,) = reference.get_inputs()
    x = np.random.default_rng(0).standard_normal(inp.shape).astype(np.float32)
    expected = reference.run(None, {inp.name: x})[0]
    server = ServerProcess(tmp_path / "data")
    try:
        stubs = Stubs.connect(server.address)
        ack = stubs.upload(data)
        assert ack.slice_id == sha256(data) and not ack.cached
        stubs.close()
        summary = run_tritonclient(server.address, ack.slice_id, x, tmp_path)
    finally:
        server.stop()
    assert summary["live"] and summary["ready"] and summary["model_ready"]
    assert summary["metadata"]["inputs"][0]["datatype"] == "FP32"
    assert summary["metadata"]["inputs"][0]["shape"] == [str(d) for d in inp.shape]
    got = np.load(tmp_path / "infer.npy")
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    for k in range(4):
        np.testing.assert_allclose(np.load(tmp_path / f"stream_s{k}.npy"), expected, atol=1e-4, rtol=0)
    assert len(summary["stream_errors"]) == 1 and "INVALID_ARGUMENT" in summary["stream_errors"][0]
    states = {m["name"]: m.get("state") for m in summary["index"]["models"]}
    assert states[ack.slice_id] == "READY"
    after = {m["name"]: m.get("state") for m in summary["index_after_unload"]["models"]}
    assert after[ack.slice_id] == "UNAVAILABLE"


def test_acknowledged_report_and_upload_survive_kill_9(tmp_path):
    data_dir = tmp_path / "data"
    data = conv_model(seed=21)
    server = ServerProcess(data_dir)
    stubs = Stubs.connect(server.address)
    stubs.nodes.RegisterNode(rr.RegisterNodeRequest(node_id="pi4"), timeout=10)
    ack = stubs.profiles.ReportLayerProfiles(report("pi4", layer("durable", 4.5, energy_mj=9.0)), timeout=10)
    assert ack.accepted_layers == 1
    assert not stubs.upload(data).cached
    server.kill9()  # immediately after the acknowledgements
    stubs.close()

    server = ServerProcess(data_dir)
    try:
        stubs = Stubs.connect(server.address)
        listed = stubs.profiles.ListMeasuredSignatures(rr.ListMeasuredSignaturesRequest(node_id="pi4"), timeout=10)
        assert list(listed.signatures) == ["durable"]
        (p,) = stubs.predictions.Predict(
            rr.PredictRequest(node_id="pi4", signatures=["durable"]), timeout=10
        ).predictions
        assert (p.latency_ms, p.energy_mj, p.latency_provenance) == (4.5, 9.0, rr.PROVENANCE_MEASURED)
        status = stubs.slices.GetSliceStatus(rr.GetSliceStatusRequest(slice_id=sha256(data)), timeout=10)
        assert status.cached and status.bytes == len(data)
        assert stubs.upload(data).cached
        x = np.ones((1, 3, 8, 8), np.float32)
        out = codec.decode_infer_response(
            stubs.kserve.ModelInfer(codec.encode_infer_request(sha256(data), {"x": x}), timeout=10)
        )["y"]
        ref = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        np.testing.assert_allclose(out, ref, atol=1e-5)
        stubs.close()
    finally:
        server.stop()


def test_sigterm_exits_cleanly_and_logs_json(tmp_path):
    server = ServerProcess(tmp_path / "data")
    stubs = Stubs.connect(server.address)
    stubs.nodes.ListNodes(rr.ListNodesRequest(), timeout=10)
    stubs.close()
    assert server.terminate() == 0
    lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    messages = [entry["msg"] for entry in lines]
    assert any("listening on" in m for m in messages) and messages[-1] == "stopped"
    with pytest.raises(grpc.RpcError):
        Stubs.connect(server.address).nodes.ListNodes(rr.ListNodesRequest(), timeout=2)
