"""EchoService.Exchange and `rr_edge.echo.EchoStream`: each transfer on one open stream is answered by the bytes it
asks for; a stream that failed or got no answer in time is dropped, and the next exchange opens a new one."""

from __future__ import annotations

import threading

import grpc
import pytest
from _server_support import serving

from rr_edge.echo import EchoStream
from rr_edge.errors import ServerError, ServerUnavailable
from rr_proto.roadrunner.v1 import roadrunner_pb2 as rr
from rr_server.echo_servicer import EchoServicer


def _stream(stubs, timeout_s: float = 10.0, chunk_bytes: int = 1 << 20) -> EchoStream:
    return EchoStream(lambda requests: stubs.echo.Exchange(requests), bytes, lambda n: timeout_s, chunk_bytes)


def test_a_clients_echo_stream_exchanges_with_the_server(tmp_path):
    from rr_edge.client import Client

    with serving(tmp_path) as (server, _), Client(str(server.address)) as client:
        with client.echo_stream(chunk_bytes=4096) as stream:
            for send, reply in ((10_000, 0), (0, 10_000), (1, 1)):
                stream.exchange(send, reply)


def test_each_transfer_is_answered_by_the_bytes_it_asks_for(tmp_path):
    """A transfer is its requests up to the first without `more`; its answer comes in max(1, ceil(bytes / chunk))
    responses."""
    with serving(tmp_path) as (_, stubs):
        requests = [
            rr.ExchangeRequest(reply_bytes=5),
            rr.ExchangeRequest(payload=bytes(1 << 20), more=True),
            rr.ExchangeRequest(payload=bytes(3)),  # the transfer's end: answered by 0 bytes, one empty response
            rr.ExchangeRequest(reply_bytes=(2 << 20) + 1, reply_chunk_bytes=1 << 20),
        ]
        answers = [len(a.payload) for a in stubs.echo.Exchange(iter(requests), timeout=10)]
        assert answers == [5, 0, 1 << 20, 1 << 20, 1]
        for chunk in (1 << 20, 1000):
            with _stream(stubs, chunk_bytes=chunk) as stream:
                for send, reply in ((1024, 0), (0, 1024), (0, 0), (1 << 20, (1 << 20) + 7), (3000, 2000)):
                    stream.exchange(send, reply)  # raises unless the answer had `reply` bytes


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        (rr.ExchangeRequest(reply_bytes=-1), grpc.StatusCode.INVALID_ARGUMENT),
        (rr.ExchangeRequest(reply_bytes=(1 << 20) + 1), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (rr.ExchangeRequest(reply_bytes=1, reply_chunk_bytes=(1 << 30)), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (rr.ExchangeRequest(payload=bytes(600_000), more=True), grpc.StatusCode.RESOURCE_EXHAUSTED),
    ],
)
def test_an_exchange_past_the_echo_limit_or_negative_is_refused(tmp_path, request_, code):
    with serving(tmp_path, max_echo_bytes=1 << 20) as (_, stubs):
        sent = [rr.ExchangeRequest(reply_bytes=1), request_, rr.ExchangeRequest(payload=bytes(600_000))]
        answers = stubs.echo.Exchange(iter(sent), timeout=10)
        assert len(next(answers).payload) == 1  # the transfer before is answered
        with pytest.raises(grpc.RpcError) as err:
            next(answers)
        assert err.value.code() == code


def test_a_failed_stream_is_dropped_and_the_next_exchange_opens_a_new_one(tmp_path):
    with serving(tmp_path, max_echo_bytes=1 << 20) as (_, stubs), _stream(stubs) as stream:
        stream.exchange(10, 10)
        with pytest.raises(ServerError) as err:
            stream.exchange(0, 2 << 20)
        assert err.value.code == "RESOURCE_EXHAUSTED" and "exceeds the echo limit" in str(err.value)
        stream.exchange(10, 10)


def test_an_exchange_that_gets_no_answer_in_time_is_unavailable_and_the_stream_recovers(tmp_path, monkeypatch):
    """The first stream's server holds its answer past the exchange's deadline: the stream is cancelled (which
    ends the server's wait) and the next exchange opens a new one."""
    real = EchoServicer.Exchange
    streams: list[threading.Event] = []

    def first_stalls(self, request_iterator, context):  # type: ignore[no-untyped-def]
        streams.append(threading.Event())
        if len(streams) == 1:
            next(request_iterator)
            context.add_callback(streams[0].set)  # run when the call ends: the client cancelled it
            streams[0].wait(30)
            return
        yield from real(self, request_iterator, context)

    monkeypatch.setattr(EchoServicer, "Exchange", first_stalls)
    with serving(tmp_path) as (_, stubs), _stream(stubs, timeout_s=0.3) as stream:
        with pytest.raises(ServerUnavailable, match="no answer within 0.3 s"):
            stream.exchange(1, 1)
        stream.exchange(1, 1)
        assert streams[0].wait(10) and len(streams) == 2
