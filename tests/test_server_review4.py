"""Review 4 of the server's policy layer: calls without a token that never send their message, token files with a
byte-order mark or unusable ids and tokens, a stream thread that cannot start under the memory bound, and server
streams the client cancels."""

from __future__ import annotations

import re
import threading
import time

import grpc
import numpy as np
import pytest
from _server_support import conv_model, serving, sha256
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rr_proto import codec
from rr_proto.roadrunner.v1 import roadrunner_pb2 as rr
from rr_server.auth import TokenTable


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def _requests_counted(server, method: str, code: str) -> float:
    labels = {"method": method, "code": code}
    return server.metrics.registry.get_sample_value("rr_requests_total", labels) or 0.0


def _ended(call, timeout_s: float) -> grpc.StatusCode | None:
    """The status code `call` ended with, or None if it had not ended within `timeout_s`."""
    done = threading.Event()
    call.add_done_callback(lambda _call: done.set())
    return call.code() if done.wait(timeout_s) else None


def test_calls_without_a_token_that_never_send_their_message_hold_no_thread(tmp_path):
    """A unary request is read by the worker thread that runs the call; the token was checked only after it arrived,
    so callers without one that sent headers and no message held every thread, and health checks timed out."""
    tokens = tmp_path / "tokens"
    tokens.write_text("alice tok-alice\n")
    never = threading.Event()

    def no_message():  # the headers go out; the request message never does
        never.wait()
        yield b""

    with serving(tmp_path / "data", auth_token_file=tokens, workers=2) as (server, stubs):
        attacker = grpc.insecure_channel(server.address)
        same = (lambda b: b, lambda b: b)
        list_nodes = attacker.stream_unary("/roadrunner.v1.NodeService/ListNodes", *same)  # unary-unary
        receive = attacker.stream_stream("/roadrunner.v1.EchoService/Receive", *same)  # unary-stream
        try:
            calls = [
                (list_nodes.future if k % 2 else receive)(no_message(), timeout=60)
                for k in range(2 * server.stream_slots.threads)  # twice the server's threads
            ]
            health = health_pb2_grpc.HealthStub(stubs.channel)
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=20).status == (
                health_pb2.HealthCheckResponse.SERVING
            )
            assert stubs.nodes.ListNodes(rr.ListNodesRequest(), timeout=20, metadata=bearer("tok-alice")) is not None
            assert [_ended(call, 20) for call in calls] == [grpc.StatusCode.UNAUTHENTICATED] * len(calls)
            assert not never.is_set()  # refused without their message
            assert _requests_counted(server, "ListNodes", "UNAUTHENTICATED") == len(calls) // 2
            assert _requests_counted(server, "Receive", "UNAUTHENTICATED") == len(calls) // 2
        finally:
            never.set()
            attacker.close()


def test_a_token_file_with_a_byte_order_mark_is_read_as_written(tmp_path):
    """Saved by Windows Notepad: the first node id was read as U+FEFF 'alice', and her own writes were refused."""
    tokens = tmp_path / "tokens"
    tokens.write_bytes("\ufeffalice tok-alice\r\nbob tok-bob\r\n".encode())
    with serving(tmp_path / "data", auth_token_file=tokens) as (_, stubs):
        for node, token in (("alice", "tok-alice"), ("bob", "tok-bob")):
            reply = stubs.nodes.RegisterNode(rr.RegisterNodeRequest(node_id=node), timeout=10, metadata=bearer(token))
            assert reply.node.node_id == node
    tokens.write_bytes("\ufeff# node token\nalice tok-alice\n".encode())  # start-up failed on the first line
    assert TokenTable.from_file(tokens).node_of("tok-alice") == "alice"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("alice tok-alice\nb\x07b tok-bob\n", r":2: node id 'b\\x07b' must be up to 256 printable characters"),
        ("alice tok-alice\n\n" + "x" * 300 + " tok-x\n", r":3: the first field, the node id, has 300 characters"),
        (
            "alice t\u00f6k-alice\n",
            r":1: node .alice.: a bearer token is printable ASCII without spaces or line breaks; character 2 of 9 "
            r"is U\+00F6$",
        ),
        ("# node token\n\n# alice tok-alice\n", r": no 'node_id token' line"),
    ],
    ids=["node id not printable", "node id too long", "token not ASCII", "only comments"],
)
def test_token_file_errors_name_the_file_and_line(tmp_path, text, message):
    tokens = tmp_path / "tokens"
    tokens.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=f"^{re.escape(str(tokens))}{message}") as err:
        TokenTable.from_file(tokens)
    assert "t\u00f6k" not in str(err.value)  # a token is never shown


def test_a_stream_whose_thread_cannot_start_is_resource_exhausted(tmp_path, monkeypatch):
    """Under the memory bound (--max-memory-gb) a thread's stack may not fit, and Thread.start() raises RuntimeError,
    not MemoryError (seen under a real bound by review): the stream that needed the thread (paced reads an upload,
    drained watches an echo) was told INTERNAL, a server fault. Made to fail here for those threads alone: a real
    bound is not exact, glibc reuses the stacks of threads that ended."""
    start = threading.Thread.start

    def start_unless_a_stream_thread(thread: threading.Thread) -> None:
        if thread.name.startswith(("rr-read-", "rr-drain-")):
            raise RuntimeError("can't start new thread")  # what _thread.start_new_thread raises
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", start_unless_a_stream_thread)
    with serving(tmp_path / "data") as (server, stubs):
        streams = (
            ("Send", lambda: stubs.echo.Send(iter([rr.SendRequest(payload=b"x" * 10)]), timeout=20)),  # paced
            ("Receive", lambda: list(stubs.echo.Receive(rr.ReceiveRequest(bytes=10, chunk_bytes=5), timeout=20))),
        )
        for method, call in streams:
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value.details()
            assert err.value.details().startswith(f"{method}: the server has not the memory for a thread")
            assert _requests_counted(server, method, "RESOURCE_EXHAUSTED") == 1
        assert server.stream_slots.in_use["other"] == 0


def test_a_run_watchdog_that_cannot_start_refuses_its_run_and_starts_with_the_next(tmp_path, monkeypatch):
    """The watchdog's thread starts with the first run; one that failed to start was kept as if running: that run
    was INTERNAL, and every later run went unwatched (no deadline, no stop at shutdown)."""
    start, failures = threading.Thread.start, [RuntimeError("can't start new thread")]

    def start_unless_the_first_watchdog(thread: threading.Thread) -> None:
        if thread.name == "rr-run-watchdog" and failures:
            raise failures.pop()
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", start_unless_the_first_watchdog)
    model = conv_model()
    request = codec.encode_infer_request(sha256(model), {"x": np.ones((1, 3, 8, 8), np.float32)})
    with serving(tmp_path / "data") as (server, stubs):
        stubs.upload(model)
        with pytest.raises(grpc.RpcError) as err:
            stubs.kserve.ModelInfer(request, timeout=20)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value.details()
        stubs.kserve.ModelInfer(request, timeout=20)
        assert any(t.name == "rr-run-watchdog" and t.is_alive() for t in threading.enumerate())


def test_a_server_stream_the_client_cancels_is_counted_as_cancelled(tmp_path):
    """gRPC closes the response generator (GeneratorExit, not an Exception): the call went unrecorded."""
    with serving(tmp_path / "data") as (server, stubs):
        for _ in range(2):
            call = stubs.echo.Receive(rr.ReceiveRequest(bytes=200 * 2**20, chunk_bytes=2**20), timeout=30)
            next(call)
            call.cancel()
        timed = server.metrics.registry.get_sample_value
        deadline = time.monotonic() + 20
        while (
            _requests_counted(server, "Receive", "CANCELLED") < 2
            or timed("rr_request_seconds_count", {"method": "Receive"}) != 2
            or server.stream_slots.in_use["other"]  # given back after they are counted
        ):
            assert time.monotonic() < deadline, "the cancelled streams were never counted"
            time.sleep(0.02)
