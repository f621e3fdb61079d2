"""rr_edge.client against the real server started in-process on a free port."""

from __future__ import annotations

import contextlib
import queue
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest
from _server_support import Stubs, conv_model, start_server

from rr_edge._status import retry_unreachable, server_error
from rr_edge.client import Client, ClientOptions, TlsOptions, slice_id_of
from rr_edge.device import describe_device, setup_changes
from rr_edge.errors import ServerBusy, ServerError, ServerUnavailable
from rr_edge.profiles import (
    BlockFeatures,
    DirectionProfile,
    LatencyStats,
    LayerMeasurement,
    ModelMeasurement,
    NetworkProfile,
    NetworkSample,
)
from rr_edge.session import OrtSettings
from rr_proto.status import RETRY_PUSHBACK_KEY
from rr_server import TlsConfig


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    srv = start_server(tmp_path_factory.mktemp("rr-client"))
    try:
        yield srv.address
    finally:
        srv.stop(grace=0.5)


@pytest.fixture()
def client(server: str) -> Iterator[Client]:
    with Client(server) as c:
        yield c


def test_health_and_server_info(client: Client) -> None:
    assert client.health() == "SERVING"
    assert client.healthy()
    info = client.server_info()
    assert info.cloud_node_id and "CPUExecutionProvider" in info.providers
    assert info.max_slice_bytes > 0
    assert client.server_live() and client.server_ready()


def test_register_and_get_node(client: Client) -> None:
    device = describe_device(OrtSettings(intra_op_threads=1))
    assert client.register_node("client-node", device) is True  # a node this module has not registered yet
    assert client.register_node("client-node", device) is False  # idempotent: updated, not created
    node = client.get_node("client-node")
    assert node.role == "edge"
    assert node.device["cpu_model"] == device.cpu_model
    assert node.device["intra_op_threads"] == 1
    assert node.device["ort_providers"] == list(device.ort_providers)
    assert "client-node" in {n.node_id for n in client.list_nodes()}
    # the timing setup read back compares as unchanged; a changed one is named; an older descriptor's gaps are not
    assert setup_changes(node.device, device) == {}
    cuda = replace(device, extra={**device.extra, "ort_provider": "CUDAExecutionProvider"}, graph_optimization="basic")
    assert setup_changes(node.device, cuda) == {
        "graph_optimization": (device.graph_optimization, "basic"),
        "ort_provider": ("CPUExecutionProvider", "CUDAExecutionProvider"),
    }
    assert setup_changes({"cpu_model": device.cpu_model}, replace(device, intra_op_threads=7)) == {}


def test_upload_is_chunked_verified_and_idempotent(server: str) -> None:
    data = conv_model(channels=8, size=16, out_channels=8, seed=11)
    with Client(server, ClientOptions(chunk_bytes=512)) as c:  # many chunks
        assert not c.slice_status(slice_id_of(data)).cached
        first = c.upload_slice(data, label="conv")
        assert first.slice_id == slice_id_of(data) and not first.cached and first.bytes == len(data)
        again = c.upload_slice(data, label="conv")
        assert again.cached and again.slice_id == first.slice_id
        assert again.to_json() == {"slice_id": first.slice_id, "cached": True, "bytes": len(data)}
        assert c.slice_status(first.slice_id).cached
        assert c.ensure_slice(data) == first.slice_id


def test_ensure_slice_with_load_opens_the_session_in_the_fewest_calls(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a runner's start costs in calls: the status query, then the upload that also opens the session; for a
    cached slice, a load call only when its session is not open yet. An upload probe makes the same status query."""
    calls: list[str] = []
    for name in ("slice_status", "load_model"):
        call = getattr(client, name)
        monkeypatch.setattr(client, name, lambda *a, _call=call, _name=name, **k: calls.append(_name) or _call(*a, **k))
    fresh = conv_model(seed=31)
    slice_id = client.ensure_slice(fresh, load=True)
    assert calls == ["slice_status"] and client.slice_status(slice_id).loaded
    cached = conv_model(seed=32)
    client.ensure_slice(cached)
    calls.clear()
    client.ensure_slice(cached, load=True)
    assert calls == ["slice_status", "load_model"] and client.slice_status(slice_id_of(cached)).loaded
    calls.clear()
    client.ensure_slice(cached, load=True)
    assert calls == ["slice_status"]  # open already: nothing more to do
    calls.clear()
    probe = client.upload_slice(conv_model(seed=33), probe=True)
    assert calls == ["slice_status"] and not probe.cached


def test_infer_matches_local_onnxruntime(client: Client) -> None:
    data = conv_model(seed=5)
    slice_id = client.ensure_slice(data)
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    expected = OrtSettings(provider="cpu", intra_op_threads=1).create_session(data).run(None, {"x": x})[0]
    out = client.infer(slice_id, {"x": x})
    np.testing.assert_allclose(out["y"], expected, rtol=1e-5, atol=1e-5)
    streamed = list(client.stream_infer(slice_id, [{"x": x}, {"x": 2 * x}]))
    assert len(streamed) == 2
    np.testing.assert_allclose(streamed[0]["y"], expected, rtol=1e-5, atol=1e-5)
    meta = client.model_metadata(slice_id)
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [1, 3, 8, 8]}]
    assert client.model_ready(slice_id)


def test_stream_infer_error_message_raises(client: Client) -> None:
    slice_id = client.ensure_slice(conv_model(seed=6))
    bad = {"x": np.zeros((1, 3, 4, 4), dtype=np.float32)}
    with pytest.raises(ServerError) as info:
        list(client.stream_infer(slice_id, [bad]))
    assert info.value.code == "INVALID_ARGUMENT"  # the server's own status code, as in unary calls


def test_stream_infer_errors_carry_their_code_and_the_stream_goes_on(client: Client) -> None:
    slice_id = client.ensure_slice(conv_model(seed=6))
    x = np.zeros((1, 3, 8, 8), dtype=np.float32)
    with pytest.raises(ServerError) as info:
        next(client.stream_infer("0" * 64, [{"x": x}]))
    assert info.value.code == "NOT_FOUND"
    answers = client.stream_infer(slice_id, [{"x": x[:, :, :4, :4]}, {"x": x}])
    with pytest.raises(ServerError) as info:
        next(answers)
    assert info.value.code == "INVALID_ARGUMENT"
    assert next(answers)["y"].shape == (1, 4, 8, 8)


def test_a_batch_that_cannot_be_sent_raises_its_own_error_after_the_answers_before_it(client: Client) -> None:
    """gRPC swallows what the request iterator raises ("UNKNOWN: Exception iterating requests!"), and the answer to
    the good batch before it was lost too; now that one arrives and then the batch's own error is raised."""
    slice_id = client.ensure_slice(conv_model(seed=6))
    x = np.zeros((1, 3, 8, 8), dtype=np.float32)
    answers = client.stream_infer(slice_id, [{"x": x}, {"x": x.astype(np.complex64)}])
    assert next(answers)["y"].shape == (1, 4, 8, 8)
    with pytest.raises(ValueError, match="complex64 has no KServe datatype"):
        next(answers)


def test_a_tensor_of_exactly_the_message_limit_travels(tmp_path: Path) -> None:
    """The server allows the protobuf envelope on top of its max_message_bytes, and so does the client now: a 1 MiB
    tensor under a 1 MiB limit was refused by the client itself ("Sent message larger than max")."""
    limit = 1 << 20
    server = start_server(tmp_path, max_message_bytes=limit)
    try:
        with Client(server.address, ClientOptions(max_message_bytes=limit)) as c:
            slice_id = c.ensure_slice(conv_model(channels=4, size=256, out_channels=4))
            x = np.ones((1, 4, 256, 256), np.float32)
            assert x.nbytes == limit and c.infer(slice_id, {"x": x})["y"].nbytes == limit
    finally:
        server.stop(grace=1)


@pytest.mark.parametrize("chunk_bytes", [0, -4096, 2 << 20])
def test_chunk_sizes_that_cannot_work_are_refused(chunk_bytes: int) -> None:
    """0 sent empty echo chunks until the deadline (reported as an unreachable server), a negative size uploaded
    nothing; more than a message cannot be sent."""
    with pytest.raises(ValueError, match="chunk_bytes must be in 1..1048576"):
        ClientOptions(chunk_bytes=chunk_bytes, max_message_bytes=1 << 20)


def test_a_cancelled_stream_frees_its_reader(client: Client) -> None:
    """A reader waiting for an answer that will never come (no request sent) is released by `cancel`."""
    slice_id = client.ensure_slice(conv_model(seed=6))
    never: queue.Queue[dict[str, np.ndarray]] = queue.Queue()
    answers = client.stream_infer(slice_id, iter(never.get, None))
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(next, answers)
        answers.cancel()
        with pytest.raises(ServerUnavailable) as info:
            waiting.result(timeout=30)
    never.put(None)  # lets gRPC's request thread end too
    assert info.value.code == "CANCELLED"


def test_reconnect_attempts_stay_frequent_while_a_server_is_away(monkeypatch: pytest.MonkeyPatch) -> None:
    """gRPC backs off exponentially between connection attempts (up to 120 s by default), which would keep a
    runner away from a restarted server long after it is back; the client caps the wait at
    `max_reconnect_backoff_s` (1 s): its channel is made with gRPC's backoff arguments set from it. How often gRPC
    then tries is not checked (that is a clock); that it keeps trying is, from a listener that accepts connections
    and drops them at once."""
    made: list[dict[str, object]] = []
    real_channel = grpc.insecure_channel

    def channel(target: str, options: list[tuple[str, object]], **kwargs: object) -> grpc.Channel:
        made.append(dict(options))
        return real_channel(target, options, **kwargs)

    monkeypatch.setattr(grpc, "insecure_channel", channel)
    attempts = 0
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        listener.settimeout(60)  # a client that stopped trying fails here, not at the pytest timeout
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        with Client(address, ClientOptions(max_reconnect_backoff_s=0.05)):
            assert made[-1]["grpc.max_reconnect_backoff_ms"] == 50
            assert made[-1]["grpc.initial_reconnect_backoff_ms"] == 50  # never above the cap

        def accept() -> None:
            nonlocal attempts
            with contextlib.suppress(TimeoutError):
                while attempts < 3:
                    conn, _ = listener.accept()
                    conn.close()
                    attempts += 1

        acceptor = threading.Thread(target=accept, daemon=True)
        acceptor.start()
        with Client(address) as c:
            assert made[-1]["grpc.max_reconnect_backoff_ms"] == 1000
            assert made[-1]["grpc.initial_reconnect_backoff_ms"] == 100
            while acceptor.is_alive():  # calls, so that the channel has a reason to connect
                assert not c.healthy(timeout_s=0.2)
                acceptor.join(0.05)
    assert attempts == 3


def test_echo_both_directions(client: Client) -> None:
    for n in (1, 1000, 3 * 1024 * 1024 + 7):
        assert client.echo_send(n) == n
        assert client.echo_receive(n) == n


def test_reports_round_trip(client: Client) -> None:
    client.register_node("reporter")
    settings = OrtSettings(provider="CPUExecutionProvider", intra_op_threads=1)
    features = BlockFeatures(("Conv", "Relu"), 1000, 400, 300, 300)
    lat = LatencyStats(2.0, 1.8, 2.4, 0.05, 20)
    layers = [
        LayerMeasurement("sig-a", 0, features, lat, 12.5, "model"),
        LayerMeasurement("sig-b", 1, features, lat, None, ""),
    ]
    model = ModelMeasurement("m", ("sig-a", "sig-b"), LatencyStats(3.5, 3.4, 3.7, 0.02, 5), 4.0, None, "")
    assert client.report_layer_profiles("reporter", settings, layers, [model]) == (2, 1)
    assert {"sig-a", "sig-b"} <= client.list_measured_signatures("reporter")
    predictions = client.predict("reporter", ["sig-a"])
    assert predictions.by_signature["sig-a"].latency_provenance == "measured"
    assert predictions.by_signature["sig-a"].latency_ms == pytest.approx(2.0, rel=0.05)

    samples = tuple(NetworkSample(b, 0.5 + b / 1e5, 1.0) for b in (1024, 4096, 16384))
    direction = DirectionProfile(samples, "affine", 0.1, 0.05, {"kind": "affine", "coeffs": [0.5, 1e-5]})
    client.report_network_profile("reporter", NetworkProfile(direction, direction, "model", 1.0))
    back = client.get_network_profile("reporter")
    assert back is not None and back.uplink.samples == samples and back.uplink.model["kind"] == "affine"
    assert back.energy_source == "model"
    assert client.get_network_profile("nobody-has-this") is None


def _refused(server, method: str) -> float:
    return (
        server.metrics.registry.get_sample_value("rr_requests_total", {"method": method, "code": "RESOURCE_EXHAUSTED"})
        or 0.0
    )


def test_uploads_and_reports_wait_for_a_busy_server(tmp_path: Path) -> None:
    """Many edges uploading or reporting at once take every stream slot the server keeps for such calls, and the next
    one is refused. That refusal is marked busy (gRPC's retry pushback); the client tries again after it instead of
    failing, for up to `busy_wait_s`, and with 0 raises ServerBusy at once."""
    data = conv_model(seed=11)
    settings = OrtSettings(provider="CPUExecutionProvider", intra_op_threads=1)
    features = BlockFeatures(("Conv",), 1000, 400, 300, 300)
    layer = LayerMeasurement("sig-busy", 0, features, LatencyStats(2.0, 2.0, 2.0, 0.0, 5), None, "")
    server = start_server(tmp_path, workers=4)  # one slot for uploads, reports and echo
    stubs = Stubs.connect(server.address)
    held: queue.Queue = queue.Queue()
    hold = stubs.slices.UploadSlice.future(iter(held.get, None), timeout=30)  # open, and idle
    try:
        with Client(server.address, ClientOptions(busy_wait_s=0)) as impatient:
            deadline = time.monotonic() + 10
            while server.stream_slots.in_use["other"] < 1:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            with pytest.raises(ServerBusy) as busy:
                impatient.upload_slice(data)
            assert busy.value.code == "RESOURCE_EXHAUSTED" and busy.value.retry_after_s == pytest.approx(0.25)
            with pytest.raises(ServerBusy):
                impatient.report_layer_profiles("busy-node", settings, [layer])
            assert not impatient.slice_status(slice_id_of(data)).cached  # a busy refusal stored nothing
        # An explicit timeout bounds the retries too (they went on for busy_wait_s). No clock: with an hour of
        # busy_wait_s, only the 0.5 s timeout can end the call while the slot is held, well before the 30 s hold ends.
        with Client(server.address, ClientOptions(busy_wait_s=3600)) as bounded, ThreadPoolExecutor(1) as pool:
            bounded_upload = pool.submit(bounded.upload_slice, data, timeout_s=0.5)
            with pytest.raises(ServerBusy):
                bounded_upload.result(timeout=20)

        with Client(server.address) as patient, ThreadPoolExecutor(2) as pool:
            patient.register_node("busy-node")
            refused = _refused(server, "UploadSlice"), _refused(server, "ReportLayerProfiles")
            upload = pool.submit(patient.upload_slice, data)
            report = pool.submit(patient.report_layer_profiles, "busy-node", settings, [layer])
            deadline = time.monotonic() + 10
            while (
                min(_refused(server, "UploadSlice") - refused[0], _refused(server, "ReportLayerProfiles") - refused[1])
                < 2
            ):
                assert time.monotonic() < deadline, "the calls were not retried"
                time.sleep(0.02)
            held.put(None)  # the slot comes free: both get through
            assert upload.result(timeout=20).slice_id == slice_id_of(data)
            assert report.result(timeout=20) == (1, 0)
            assert patient.slice_status(slice_id_of(data)).cached
    finally:
        held.put(None)
        with contextlib.suppress(Exception):
            hold.result()
        stubs.close()
        server.stop(grace=0.5)


def test_many_edges_uploading_at_once_all_get_through(tmp_path: Path) -> None:
    """Eight edges upload and report at once to a server with one slot for such streams: before, all but the first
    failed with RESOURCE_EXHAUSTED; now each waits its turn and every upload and report is stored."""
    server = start_server(tmp_path, workers=4)
    settings = OrtSettings(provider="CPUExecutionProvider", intra_op_threads=1)
    features = BlockFeatures(("Conv",), 1000, 400, 300, 300)

    def edge(k: int) -> tuple[str, tuple[int, int]]:
        with Client(server.address) as c:
            c.register_node(f"edge-{k}")
            slice_id = c.upload_slice(conv_model(channels=4, size=64, seed=100 + k)).slice_id
            layer = LayerMeasurement(f"sig-{k}", 0, features, LatencyStats(2.0, 2.0, 2.0, 0.0, 5), None, "")
            return slice_id, c.report_layer_profiles(f"edge-{k}", settings, [layer])

    try:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(edge, range(8)))
        with Client(server.address) as c:
            assert all(c.slice_status(slice_id).cached and accepted == (1, 0) for slice_id, accepted in results)
            assert all(f"sig-{k}" in c.list_measured_signatures(f"edge-{k}") for k in range(8))
    finally:
        server.stop(grace=0.5)


class _Refused(grpc.RpcError):
    def __init__(self, pushback: str) -> None:
        self._pushback = pushback

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.RESOURCE_EXHAUSTED

    def details(self) -> str:
        return "no slot"

    def trailing_metadata(self) -> tuple:
        return ((RETRY_PUSHBACK_KEY, self._pushback),)


def test_only_a_valid_pushback_makes_a_refusal_busy() -> None:
    """gRFC A6: a negative or unreadable pushback means "do not retry" (and a NaN one made the retry loop raise)."""
    busy = server_error(_Refused("250"), "UploadSlice")
    assert isinstance(busy, ServerBusy) and busy.retry_after_s == 0.25
    assert isinstance(server_error(_Refused("0"), "UploadSlice"), ServerBusy)
    for bad in ("-1", "nan", "inf", "soon"):
        error = server_error(_Refused(bad), "UploadSlice")
        assert type(error) is ServerError and error.code == "RESOURCE_EXHAUSTED"


def test_errors_map_to_domain_exceptions(client: Client, server: str) -> None:
    with pytest.raises(ServerError) as info:
        client.infer("0" * 64, {"x": np.zeros((1, 3, 8, 8), np.float32)})
    assert info.value.code == "NOT_FOUND" and not isinstance(info.value, ServerUnavailable)
    assert info.value.__cause__ is None and info.value.__suppress_context__
    with pytest.raises(ServerUnavailable) as late:
        client.echo_receive(64 * 1024 * 1024, timeout_s=0.0001)
    assert late.value.code == "DEADLINE_EXCEEDED"


def test_unreachable_server_is_unavailable() -> None:
    with Client("127.0.0.1:1", ClientOptions(timeout_s=2.0)) as c:
        with pytest.raises(ServerUnavailable) as info:
            c.server_info()
        assert info.value.code == "UNAVAILABLE"
        assert not c.healthy(timeout_s=0.5)


def test_bearer_token(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("edge-1 s3cret\n")
    srv = start_server(tmp_path / "data", auth_token_file=tokens)
    try:
        with Client(srv.address, ClientOptions(token="s3cret")) as c:
            assert c.register_node("edge-1") is True  # a new node on a new server
        with Client(srv.address) as c, pytest.raises(ServerError) as info:
            c.register_node("edge-1")
        assert info.value.code == "UNAUTHENTICATED"
    finally:
        srv.stop(grace=0.5)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI needed to make a test certificate")
def test_tls(tmp_path: Path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    srv = start_server(tmp_path / "data", tls=TlsConfig(cert=cert, key=key))
    try:
        with Client(srv.address, ClientOptions(tls=TlsOptions(root_certificates=cert))) as c:
            assert c.health() == "SERVING"
        with Client(srv.address, ClientOptions(timeout_s=2.0)) as plain:
            assert not plain.healthy()
    finally:
        srv.stop(grace=0.5)


def test_upload_command_json(server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from rr_edge.cli import main

    data = conv_model(seed=21)
    path = tmp_path / "slice.onnx"
    path.write_bytes(data)
    assert main(["upload", str(path), "--server", server, "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first == {"slice_id": slice_id_of(data), "cached": False, "bytes": len(data)}
    assert main(["upload", str(path), "--server", server, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["cached"] is True
    with Client(server) as client:
        assert not client.slice_status(slice_id_of(data)).loaded
        assert main(["upload", str(path), "--server", server, "--load"]) == 0
        assert capsys.readouterr().out.strip() == slice_id_of(data)
        assert client.slice_status(slice_id_of(data)).loaded
    assert main(["upload", str(tmp_path / "missing.onnx"), "--server", server]) == 2
    assert "no such file" in capsys.readouterr().err


@pytest.mark.parametrize("url", ["http://127.0.0.1:8001", "HTTPS://rr.example:443/"])
def test_a_url_is_no_server_address(url: str) -> None:
    """A URL (buf curl's form) was taken and then looked up whole as a host name, failing as "server unavailable"
    (docs review); the CLI refused it, the Python API did not."""
    from rr_edge.errors import ArgumentError

    with pytest.raises(ArgumentError, match="expected HOST:PORT, not a URL"):
        Client(url)


def test_a_report_waits_out_an_unreachable_server_for_a_while_then_says_so(monkeypatch):
    """`retry_unreachable`: tries again after pauses doubling from 0.5 s while the server cannot be reached, and
    raises its last ServerUnavailable once the next pause would end past `wait_s`; other errors at once."""
    from rr_edge import _status

    clock = [0.0]
    monkeypatch.setattr(_status.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(_status.time, "sleep", lambda s: clock.__setitem__(0, clock[0] + s))
    calls: list[float] = []

    def down_for(seconds: float):
        def call() -> str:
            calls.append(clock[0])
            if clock[0] < seconds:
                raise ServerUnavailable(f"down at {clock[0]}")
            return "reported"

        return call

    assert retry_unreachable(down_for(3.0), "report", wait_s=60) == "reported"
    assert calls == [0.0, 0.5, 1.5, 3.5]
    calls.clear()
    clock[0] = 0.0
    with pytest.raises(ServerUnavailable, match="down at 7.5"):
        retry_unreachable(down_for(1e9), "report", wait_s=10)
    assert calls == [0.0, 0.5, 1.5, 3.5, 7.5]  # the next pause (8 s) ends past 10 s

    def refused() -> None:
        calls.append(clock[0])
        raise ServerError("refused")

    calls.clear()
    with pytest.raises(ServerError, match="refused"):
        retry_unreachable(refused, "report", wait_s=60)
    assert len(calls) == 1
    calls.clear()
    with pytest.raises(ServerUnavailable):  # a client closed on purpose: no server to wait for
        retry_unreachable(down_for(1e9), "report", wait_s=60, closed=lambda: True)
    assert len(calls) == 1
