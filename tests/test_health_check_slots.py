"""Health Check is open to anyone, without a token: its calls take slots of their own before their message is read,
and that message must arrive within CHECK_READ_S (rr_server.interceptor)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from _server_support import serving
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rr_proto.inference import grpc_service_pb2 as pb
from rr_server import interceptor
from rr_server.config import OPEN_CHECK_SLOTS

CHECK = "/grpc.health.v1.Health/Check"
GENEROUS_S = 30.0


def _wait_for(predicate, timeout_s: float = GENEROUS_S) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert predicate()


def _code(future: grpc.Future) -> grpc.StatusCode:
    return future.exception().code() if future.exception() is not None else grpc.StatusCode.OK


@pytest.fixture
def read_s(monkeypatch: pytest.MonkeyPatch) -> float:
    monkeypatch.setattr(interceptor, "CHECK_READ_S", 1.0)
    return 1.0


def test_health_checks_that_send_no_message_do_not_hold_the_workers(tmp_path: Path, read_s: float) -> None:
    """Calls that sent their headers and no message held a worker thread each until they ended: more of them than
    workers shut out every client (review: 80 such calls, a valid ModelInfer timed out). Now they hold at most the
    health checks' own slots, the ones past them are refused at once, and each is closed after CHECK_READ_S."""
    release = threading.Event()

    def silent() -> Iterator[bytes]:
        release.wait()
        yield from ()

    with serving(tmp_path / "data", workers=4) as (server, stubs):
        slots = server.stream_slots
        attacker = grpc.insecure_channel(server.address)
        calls = attacker.stream_unary(CHECK)
        try:
            futures = [calls.future(silent(), timeout=GENEROUS_S) for _ in range(3 * slots.threads)]
            _wait_for(lambda: sum(f.done() for f in futures) >= len(futures) - OPEN_CHECK_SLOTS)
            assert slots.in_use["check"] == OPEN_CHECK_SLOTS
            refused = [f for f in futures if f.done()]
            assert {_code(f) for f in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
            assert "health checks" in refused[0].exception().details()
            assert stubs.kserve.ServerReady(pb.ServerReadyRequest(), timeout=5).ready  # the workers answer others
            _wait_for(lambda: all(f.done() for f in futures))  # the silent ones are closed after CHECK_READ_S
            held = [f for f in futures if f not in refused]
            assert {_code(f) for f in held} == {grpc.StatusCode.DEADLINE_EXCEEDED}
            assert "no request message within 1 s" in held[0].exception().details()
            _wait_for(lambda: slots.in_use["check"] == 0)
            health = health_pb2_grpc.HealthStub(stubs.channel)
            serving_ = health_pb2.HealthCheckResponse.SERVING
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == serving_
        finally:
            release.set()
            attacker.close()


def test_a_health_check_answers_as_a_unary_call(tmp_path: Path, read_s: float) -> None:
    """Read as a stream, a Check still answers its one request, names an unknown service NOT_FOUND, and refuses a
    call of two messages."""
    with serving(tmp_path / "data") as (server, stubs):
        health = health_pb2_grpc.HealthStub(stubs.channel)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as err:
            health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        two = stubs.channel.stream_unary(
            CHECK, request_serializer=health_pb2.HealthCheckRequest.SerializeToString, response_deserializer=None
        )
        with pytest.raises(grpc.RpcError) as err:
            two(iter([health_pb2.HealthCheckRequest(), health_pb2.HealthCheckRequest()]), timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert server.stream_slots.in_use["check"] == 0
