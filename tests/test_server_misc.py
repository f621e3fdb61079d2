"""EchoService, metrics, reflection, public API, concurrency and graceful shutdown (in-process)."""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import types
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from _server_support import Stubs, conv_model, serving, sha256, start_server
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

import rr_server
from rr_proto import codec
from rr_proto.inference import grpc_service_pb2 as pb
from rr_proto.roadrunner.v1 import roadrunner_pb2 as rr
from rr_proto.status import RETRY_PUSHBACK_KEY
from rr_server.config import DEFAULT_PROVIDERS, OPEN_CHECK_SLOTS, OPEN_STREAM_SLOTS


@pytest.fixture
def env(tmp_path):
    with serving(tmp_path, metrics_port=0) as (server, stubs):
        yield server, stubs


def test_public_api_matches_all():
    public = {
        name
        for name in dir(rr_server)
        if not name.startswith("_") and not isinstance(getattr(rr_server, name), types.ModuleType)
    }
    assert public == set(rr_server.__all__)


def test_echo_send_and_receive(env):
    _, stubs = env
    chunks = [rr.SendRequest(payload=b"x" * n) for n in (1, 1000, 1 << 20)]
    assert stubs.echo.Send(iter(chunks), timeout=10).received_bytes == 1 + 1000 + (1 << 20)
    got = list(stubs.echo.Receive(rr.ReceiveRequest(bytes=3 * 1000 + 5, chunk_bytes=1000), timeout=10))
    assert [len(r.payload) for r in got] == [1000, 1000, 1000, 5]
    assert sum(len(r.payload) for r in stubs.echo.Receive(rr.ReceiveRequest(bytes=5 << 20), timeout=10)) == 5 << 20
    assert list(stubs.echo.Receive(rr.ReceiveRequest(bytes=0), timeout=10)) == []
    with pytest.raises(grpc.RpcError) as err:
        list(stubs.echo.Receive(rr.ReceiveRequest(bytes=-1), timeout=10))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:
        list(stubs.echo.Receive(rr.ReceiveRequest(bytes=1 << 40), timeout=10))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_echo_refuses_transfers_over_its_limit_both_ways(tmp_path):
    with serving(tmp_path, max_echo_bytes=1 << 20) as (_, stubs):
        for call in (
            lambda: stubs.echo.Send(iter([rr.SendRequest(payload=bytes(600_000))] * 2), timeout=10),
            lambda: list(stubs.echo.Receive(rr.ReceiveRequest(bytes=(1 << 20) + 1), timeout=10)),
        ):
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "echo limit" in err.value.details()
        assert stubs.echo.Send(iter([rr.SendRequest(payload=bytes(1 << 20))]), timeout=10).received_bytes == 1 << 20


def test_metrics_endpoint(env):
    server, stubs = env
    data = conv_model()
    stubs.upload(data)
    request = codec.encode_infer_request(sha256(data), {"x": np.zeros((1, 3, 8, 8), np.float32)})
    for _ in range(3):
        stubs.kserve.ModelInfer(request, timeout=10)
    with pytest.raises(grpc.RpcError):
        stubs.kserve.ModelInfer(codec.encode_infer_request("0" * 64, {"x": np.zeros(1, np.float32)}), timeout=10)
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
    assert 'rr_requests_total{code="OK",method="ModelInfer"} 3.0' in text
    assert 'rr_requests_total{code="NOT_FOUND",method="ModelInfer"} 1.0' in text
    assert 'rr_session_cache_total{result="hit"} 2.0' in text
    assert 'rr_session_cache_total{result="miss"} 1.0' in text
    assert f"rr_upload_bytes_total {float(len(data))}" in text
    assert 'rr_request_seconds_count{method="ModelInfer"} 4.0' in text
    with pytest.raises(OSError):  # served where gRPC listens (127.0.0.1), not on every interface
        urllib.request.urlopen(f"http://127.0.0.2:{server.metrics_port}/metrics", timeout=5)


def test_a_status_a_handler_sets_without_raising_is_the_one_counted(tmp_path):
    """Health's Check answers an unknown service NOT_FOUND by setting the code and returning: /metrics counted it OK."""
    with serving(tmp_path) as (server, stubs):
        health = health_pb2_grpc.HealthStub(stubs.channel)
        health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        with pytest.raises(grpc.RpcError) as err:
            health.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=5)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        count = server.metrics.registry.get_sample_value
        assert count("rr_requests_total", {"method": "Check", "code": "OK"}) == 1
        assert count("rr_requests_total", {"method": "Check", "code": "NOT_FOUND"}) == 1


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="this host has no IPv6 loopback")
def test_the_metrics_url_logged_for_an_ipv6_host_is_a_url(caplog):
    """`--listen [::1]:PORT --metrics-port P` logged "http://::1:P/metrics" (walkthrough)."""
    from rr_server.metrics import Metrics

    metrics = Metrics()
    caplog.set_level(logging.INFO, logger="rr_server.metrics")
    try:
        port = metrics.serve_http(0, "::1")
    finally:
        metrics.close()
    assert f"metrics on http://[::1]:{port}/metrics" in caplog.text


def test_health_and_reflection(env):
    _, stubs = env
    health = health_pb2_grpc.HealthStub(stubs.channel)
    for service in ("", "inference.GRPCInferenceService", "roadrunner.v1.SliceService"):
        status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    reflect = reflection_pb2_grpc.ServerReflectionStub(stubs.channel)
    answer = next(
        reflect.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
    )
    names = {s.name for s in answer.list_services_response.service}
    assert {
        "inference.GRPCInferenceService",
        "roadrunner.v1.NodeService",
        "roadrunner.v1.ProfileService",
        "roadrunner.v1.PredictionService",
        "roadrunner.v1.SliceService",
        "roadrunner.v1.EchoService",
        "grpc.health.v1.Health",
    } <= names


def test_sixteen_clients_fifty_inferences_each(env):
    server, stubs = env
    data = conv_model(size=32)
    slice_id = stubs.upload(data).slice_id
    import onnxruntime as ort

    reference = ort.InferenceSession(data, providers=["CPUExecutionProvider"])

    def client(k: int) -> int:
        own = Stubs.connect(server.address)  # a separate channel (HTTP/2 connection) per client
        rng = np.random.default_rng(k)
        errors = 0
        try:
            for _ in range(50):
                x = rng.standard_normal((1, 3, 32, 32)).astype(np.float32)
                try:
                    out = codec.decode_infer_response(
                        own.kserve.ModelInfer(codec.encode_infer_request(slice_id, {"x": x}), timeout=30)
                    )["y"]
                    if not np.allclose(out, reference.run(None, {"x": x})[0], atol=1e-4):
                        errors += 1
                except grpc.RpcError:
                    errors += 1
        finally:
            own.close()
        return errors

    with ThreadPoolExecutor(16) as pool:
        assert sum(pool.map(client, range(16))) == 0


def _health(health: health_pb2_grpc.HealthStub) -> int | None:
    """The server's health status, None when it takes no new calls."""
    try:
        return health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
    except grpc.RpcError:
        return None


def test_graceful_stop_finishes_in_flight_calls(tmp_path):
    """A stopping server answers health NOT_SERVING while it drains, then takes no new calls, and a call in flight
    still finishes within the grace period. No clock: the upload waits for the test, and the drain is long and ended
    by the test (as its end would) once health said NOT_SERVING."""
    server = start_server(tmp_path, drain_s=600)
    stubs = Stubs.connect(server.address)
    health = health_pb2_grpc.HealthStub(stubs.channel)
    sending, go = threading.Event(), threading.Event()

    def held_stream():  # a client-streaming upload still sending when the server is asked to stop
        yield rr.SendRequest(payload=b"z" * 1000)
        sending.set()
        go.wait(60)
        for _ in range(19):
            yield rr.SendRequest(payload=b"z" * 1000)

    pool = ThreadPoolExecutor(2)
    try:
        upload = pool.submit(lambda: stubs.echo.Send(held_stream(), timeout=120).received_bytes)
        assert sending.wait(20)
        stopping = pool.submit(server.stop, grace=60)
        _wait_for(lambda: _health(health) == health_pb2.HealthCheckResponse.NOT_SERVING)
        server._now.set()  # the drain's end
        _wait_for(lambda: _health(health) is None)  # no new calls now
        go.set()
        assert upload.result(timeout=60) == 20_000
        stopping.result(timeout=60)
    finally:
        go.set()
        server.stop_now()
        pool.shutdown()
        stubs.close()


def _wait_for(predicate, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert predicate()


def test_open_streams_never_take_the_workers_unary_calls_need(tmp_path):
    """Each open stream holds a worker thread. Idle ModelStreamInfer streams (one per edge runner) used to take all of
    them, and then even health checks timed out; idle uploads and health Watch streams (open without a token) could do
    the same. Streams take slots of three pools (streams open without a token on threads of their own); past a pool's
    slots one more is refused, unary calls always answer."""
    server = start_server(tmp_path, workers=12)
    stubs = Stubs.connect(server.address)
    slots = server.stream_slots
    assert slots.capacity == {"edge": 8, "other": 1, "open": OPEN_STREAM_SLOTS, "check": OPEN_CHECK_SLOTS}
    assert slots.threads == 12 + OPEN_STREAM_SLOTS + OPEN_CHECK_SLOTS
    health = health_pb2_grpc.HealthStub(stubs.channel)
    queues = [queue.Queue() for _ in range(slots.capacity["edge"])]
    calls = [stubs.kserve.ModelStreamInfer(iter(q.get, None)) for q in queues]  # open, and idle
    upload_chunks: queue.Queue = queue.Queue()
    held_upload = stubs.slices.UploadSlice.future(iter(upload_chunks.get, None), timeout=30)  # open, and idle
    watches = [health.Watch(health_pb2.HealthCheckRequest(), timeout=30) for _ in range(slots.capacity["open"])]
    try:
        streams = ("edge", "other", "open")
        _wait_for(lambda: all(slots.in_use[pool] == slots.capacity[pool] for pool in streams))
        for pool in streams:  # what an operator sees: every stream pool full
            capacity = slots.capacity[pool]
            labels = {"pool": pool}
            assert server.metrics.registry.get_sample_value("rr_stream_slots", labels) == capacity
            assert server.metrics.registry.get_sample_value("rr_stream_slots_in_use", labels) == capacity
        for call_more in (
            lambda: next(stubs.kserve.ModelStreamInfer(iter([]), timeout=10)),
            lambda: stubs.upload(conv_model()),
            lambda: next(health.Watch(health_pb2.HealthCheckRequest(), timeout=10)),
        ):
            with pytest.raises(grpc.RpcError) as err:
                call_more()
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "slots" in err.value.details()
            # gRPC's retry pushback says it is a passing shortage, and when to try again
            assert (RETRY_PUSHBACK_KEY, "250") in [tuple(m) for m in err.value.trailing_metadata()]
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
        assert stubs.kserve.ServerReady(pb.ServerReadyRequest(), timeout=5).ready
        assert stubs.nodes.ListNodes(rr.ListNodesRequest(), timeout=5).nodes
        queues[0].put(None)  # one stream ends: its slot is free again
        list(calls[0])
        assert slots.in_use["edge"] == slots.capacity["edge"] - 1
        next(stubs.kserve.ModelStreamInfer(iter([]), timeout=10), None)  # a new stream is accepted (ends at once)
    finally:
        for q in queues:
            q.put(None)
        upload_chunks.put(None)
        for watch in watches:
            watch.cancel()
        for call in calls:
            list(call)
        with contextlib.suppress(grpc.RpcError):
            held_upload.result()
        _wait_for(lambda: sum(slots.in_use.values()) == 0)
        assert server.metrics.registry.get_sample_value("rr_stream_slots_in_use", {"pool": "edge"}) == 0
        stubs.close()
        server.stop(grace=1)


_IDLE_STREAM_CLIENT = """
import queue, sys
from _server_support import Stubs
q = queue.Queue()
call = Stubs.connect(sys.argv[1]).kserve.ModelStreamInfer(iter(q.get, None))  # open, and idle
q.get()
"""


def test_a_vanished_edge_gives_its_stream_slot_back(tmp_path):
    """An edge that stops answering (stopped here with SIGSTOP; in the field a power cut or a dropped link) used to
    hold its ModelStreamInfer stream, and the worker thread under it, until TCP noticed, which on an idle stream is
    never. The server pings each connection and closes one whose ping goes unanswered, which ends its streams."""
    with serving(tmp_path, keepalive_s=1.0, keepalive_timeout_s=1.0) as (server, _):
        client = subprocess.Popen(
            [sys.executable, "-c", _IDLE_STREAM_CLIENT, server.address],
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)},
        )
        try:
            _wait_for(lambda: server.stream_slots.in_use["edge"] == 1)
            os.kill(client.pid, signal.SIGSTOP)
            _wait_for(lambda: server.stream_slots.in_use["edge"] == 0, timeout_s=30)
        finally:
            client.kill()
            client.wait()


def test_stopped_server_refuses_new_calls(tmp_path):
    server = start_server(tmp_path)
    stubs = Stubs.connect(server.address)
    assert stubs.kserve.ServerLive(pb.ServerLiveRequest(), timeout=5).live
    server.stop(grace=0)
    with pytest.raises(grpc.RpcError) as err:
        stubs.kserve.ServerLive(pb.ServerLiveRequest(), timeout=2)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    stubs.close()


def test_oversized_message_is_resource_exhausted(tmp_path):
    with serving(tmp_path, max_message_bytes=1 << 20) as (server, stubs):
        data = conv_model()
        slice_id = stubs.upload(data).slice_id
        big = codec.encode_infer_request(slice_id, {"x": np.zeros((1, 3, 512, 512), np.float32)})  # 3 MiB
        with pytest.raises(grpc.RpcError) as err:
            stubs.kserve.ModelInfer(big, timeout=10)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        small = codec.encode_infer_request(slice_id, {"x": np.zeros((1, 3, 8, 8), np.float32)})
        assert stubs.kserve.ModelInfer(small, timeout=10).outputs


def test_a_request_that_does_not_parse_is_invalid_argument(env):
    """Invalid UTF-8 in a string field fails protobuf's parser; grpcio answered INTERNAL ("Exception deserializing
    request!") to that, before any handler or metric saw the call."""
    server, stubs = env
    not_utf8 = b"\x0a\x02\xff\xfe"  # field 1 (node_id / model name), 2 bytes that are not UTF-8

    def raw(method: str, streaming: bool = False):
        make = stubs.channel.stream_unary if streaming else stubs.channel.unary_unary
        return make(method, request_serializer=None, response_deserializer=None)

    for method, request in (
        ("/roadrunner.v1.NodeService/RegisterNode", not_utf8),
        ("/inference.GRPCInferenceService/ModelReady", not_utf8),
        ("/roadrunner.v1.ProfileService/ReportLayerProfiles", iter([not_utf8])),
    ):
        with pytest.raises(grpc.RpcError) as err:
            raw(method, streaming=not isinstance(request, bytes))(request, timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method
        assert "does not parse" in err.value.details()
    assert stubs.nodes.ListNodes(rr.ListNodesRequest(), timeout=5).nodes  # still serving


def test_error_messages_are_cut_to_fit_the_status_metadata(env):
    """An error quoting a 100 KB name outgrew gRPC's metadata limit: the client got RESOURCE_EXHAUSTED ("received
    metadata size exceeds hard limit") instead of the error."""
    _, stubs = env
    for name in ("n" * 100_000, "😀" * 100_000):  # percent-encoded, an emoji is 12 bytes on the wire
        with pytest.raises(grpc.RpcError) as err:
            stubs.nodes.GetNode(rr.GetNodeRequest(node_id=name), timeout=5)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        details = err.value.details()
        assert details.startswith(f"node '{name[:4]}") and details.endswith(" characters)")
        assert len(details.encode()) <= 1000


def test_sigterm_removes_the_port_file_and_a_second_one_stops_at_once(tmp_path):
    """A graceful stop waits up to its grace for calls in flight (an echo transfer half sent, here); a second SIGTERM
    ends them now. Either way the port file goes: nothing serves that address any more."""
    import signal

    from _server_process import ServerProcess

    for second_signal in (False, True):
        server = ServerProcess(tmp_path / f"data{int(second_signal)}", "--grace-seconds", "600")
        stubs = Stubs.connect(server.address)
        chunks: queue.Queue = queue.Queue()
        answers = stubs.echo.Exchange(iter(chunks.get, None), timeout=120)
        chunks.put(rr.ExchangeRequest(payload=b"z", reply_bytes=10))
        try:
            assert len(next(answers).payload) == 10  # the call is open on the server
            chunks.put(rr.ExchangeRequest(payload=b"z", more=True))  # a transfer begun, not ended
            server.proc.send_signal(signal.SIGTERM)
            _wait_for(lambda server=server: "finishing calls in flight" in server.log())
            if second_signal:
                server.proc.send_signal(signal.SIGTERM)
            else:  # the call ends by itself: the stop finishes
                chunks.put(rr.ExchangeRequest(payload=b"z", reply_bytes=7))
                assert len(next(answers).payload) == 7
                chunks.put(None)
            server.proc.wait(timeout=60)  # not the 600 s grace
            assert server.proc.returncode == 0 and not server.port_file.exists()
        finally:
            chunks.put(None)
            stubs.close()
            server.stop()


def test_a_stopping_server_ends_idle_inference_streams_at_once(tmp_path):
    """An edge's runner keeps its inference stream open between requests: a server asked to stop waited out its
    whole grace for it, then cut it anyway (walkthrough). A stream waiting for its next request is ended at once."""
    import signal

    from _server_process import ServerProcess

    server = ServerProcess(tmp_path / "data", "--grace-seconds", "600")
    stubs = Stubs.connect(server.address)
    requests: queue.Queue = queue.Queue()
    stream = stubs.kserve.ModelStreamInfer(iter(requests.get, None), timeout=120)
    requests.put(pb.ModelInferRequest(model_name="0" * 64))
    try:
        assert next(stream).error_message.startswith("NOT_FOUND")  # the stream is open on the server, and idle
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(timeout=60)  # not the 600 s grace
        assert server.proc.returncode == 0  # cancelled as idle, or (just after its answer) ended as it went idle
        with pytest.raises(grpc.RpcError) as ended:
            next(stream)
        assert ended.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
    finally:
        requests.put(None)
        stubs.close()
        server.stop()


def test_a_server_without_cf_cpp_says_so_when_it_starts(tmp_path, monkeypatch, caplog):
    """The warning came only with the first profile report, long after an operator looked at the start-up log
    (found by review)."""
    from rr_server import cf_engine

    monkeypatch.setattr(cf_engine, "_CFModel", None)
    monkeypatch.setattr(cf_engine, "_warned", False)
    with caplog.at_level(logging.INFO, logger="rr_server"):
        server = start_server(tmp_path / "data")
        server.stop(grace=0)
    assert "cf_cpp is not installed" in caplog.text and "predictor=numpy-biases" in caplog.text


def test_the_server_keeps_the_requested_providers_that_load_in_its_order(monkeypatch, caplog):
    """The server and the edge probe providers with one function and name them with one table."""
    from rr_server import sessions

    monkeypatch.setattr(sessions, "usable_providers", lambda wanted: ("CUDAExecutionProvider", "CPUExecutionProvider"))
    assert sessions.resolve_providers(["cpu", "CUDA"]) == ["CPUExecutionProvider", "CUDAExecutionProvider"]
    assert sessions.resolve_providers(["cuda"]) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(sessions, "usable_providers", lambda wanted: ("CPUExecutionProvider",))
    monkeypatch.setattr(
        sessions.ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    with caplog.at_level(logging.WARNING, logger="rr_server.sessions"):
        assert sessions.resolve_providers(["cuda", "rocm"]) == ["CPUExecutionProvider"]
    assert "['CUDAExecutionProvider'] are built in but do not load here" in caplog.text  # ROCm is not built in
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="rr_server.sessions"):
        monkeypatch.setattr(sessions, "nvidia_gpu_present", lambda: False)
        assert sessions.resolve_providers(DEFAULT_PROVIDERS) == ["CPUExecutionProvider"]
        monkeypatch.setattr(sessions, "nvidia_gpu_present", lambda: True)
        assert sessions.resolve_providers(DEFAULT_PROVIDERS) == ["CPUExecutionProvider"]
    # the default on a host with no GPU: CPU as expected, said once at INFO; with a GPU whose CUDA fails: a warning
    assert [(r.levelname, "(no NVIDIA GPU)" in r.getMessage()) for r in caplog.records] == [
        ("INFO", True), ("WARNING", False),
    ]  # fmt: skip


def test_a_second_sigterm_cuts_the_drain_short(tmp_path):
    """With --drain-seconds 20 the log said "stopping now" at the second SIGTERM, and the process still slept out
    the drain (found by review)."""
    import signal

    from _server_process import ServerProcess

    server = ServerProcess(tmp_path / "data", "--drain-seconds", "20")
    try:
        server.proc.send_signal(signal.SIGTERM)
        _wait_for(lambda: "received SIGTERM" in server.log())
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(timeout=15)  # well inside the 20 s drain the first signal began
        assert server.proc.returncode == 0
    finally:
        server.stop()


def test_an_nvidia_gpu_is_seen_from_the_drivers_files(tmp_path):
    """Without NVML (only the `gpu` extra installs it) a GPU host whose CUDA fails to load must still warn: the
    driver's /proc entries or a device node say a GPU is there (fake trees here: no GPU on this machine)."""
    from rr_server.sessions import nvidia_gpu_present

    driver, devices = tmp_path / "gpus", tmp_path / "dev"
    driver.mkdir()
    devices.mkdir()
    (devices / "nvidiactl").touch()  # the control node alone: a driver, no GPU
    assert not nvidia_gpu_present(driver, devices)
    (devices / "nvidia0").touch()
    assert nvidia_gpu_present(driver, devices)
    (devices / "nvidia0").unlink()
    (driver / "0000:01:00.0").mkdir()
    assert nvidia_gpu_present(driver, devices)
    assert not nvidia_gpu_present(tmp_path / "absent", tmp_path / "absent")


def test_a_stopping_server_answers_the_request_it_serves_and_says_the_rest_went_unrun(tmp_path, monkeypatch):
    """A client may send several requests on one stream: the stream of a stopping server ended with OK after the
    answer it was making, and the requests behind it went unanswered without a word (review). They are not run,
    and the stream ends with UNAVAILABLE."""
    from rr_server import inference_servicer

    serving_one, go, runs = threading.Event(), threading.Event(), []
    real = inference_servicer.InferenceServicer._infer

    def held(self, request, *a, **kw):  # type: ignore[no-untyped-def]
        runs.append(request.header.id)
        serving_one.set()
        assert go.wait(30)
        return real(self, request, *a, **kw)

    monkeypatch.setattr(inference_servicer.InferenceServicer, "_infer", held)
    server = start_server(tmp_path, grace_s=600)
    stubs = Stubs.connect(server.address)
    sent = [pb.ModelInferRequest(model_name="0" * 64, id=f"r{k}") for k in range(3)]
    answers = stubs.kserve.ModelStreamInfer(iter(sent), timeout=60)
    stopping = threading.Thread(target=server.stop, daemon=True)
    try:
        assert serving_one.wait(30)
        stopping.start()
        _wait_for(lambda: server._inference.streams.ended)
        go.set()
        first = next(answers)
        assert first.infer_response.id == "r0" and first.error_message.startswith("NOT_FOUND")
        with pytest.raises(grpc.RpcError) as ended:
            next(answers)
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE and "stopping" in ended.value.details()
        stopping.join(30)
        assert not stopping.is_alive() and runs == ["r0"]
    finally:
        go.set()
        stubs.close()
        server.stop_now()
