"""What the network profiler sends and how: echo payloads (`payload`), one open `EchoService.Exchange` stream
(`EchoStream`, made by `rr_edge.client.Client.echo_stream`), and the transfers a profile or a link probe times
(`echo_transfers`).

A transfer and its answer are timed on a stream that is already open, as an edge's inference requests travel on
theirs. A call-based echo (`Echo.Send` / `Echo.Receive`) also pays for starting the call, about 1.2 ms on loopback,
which a streamed request does not: small tensors on a fast link were charged three times their network time
(docs/performance.md, "A request's round trip"). A transfer goes in requests of at most `chunk_bytes`, and its
answer comes in responses of at most that. Each `exchange` waits for its answer at most its deadline
(`timeout_s(bytes)`); a stream that failed or timed out is dropped, and the next exchange opens a new one.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import math
import queue
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np

from rr_edge._status import retry_busy, server_error, stream_error
from rr_edge.errors import ServerError, ServerUnavailable
from rr_proto.roadrunner.v1 import roadrunner_pb2 as pb

if TYPE_CHECKING:
    from rr_edge.client import Client

log = logging.getLogger(__name__)

__all__ = ["PER_CALL", "STREAMED", "EchoStream", "echo_transfers", "payload"]

_END = None  # queued to half-close the stream
CLOSE_DRAIN_S = 1.0  # how long closing a stream waits for the server to end it
# How a profile's transfers were timed (`echo_transfers`; a network direction's note).
STREAMED = "timed as exchanges on one open echo stream, as inference requests travel"
PER_CALL = "timed with one echo call per transfer: each holds a call's start-up, which a streamed request does not pay"


class EchoStream:
    """`open_call(requests)` starts an Exchange call over the request iterator; `payload(n)` gives n bytes to
    send; `timeout_s(n)` is how long an exchange moving n bytes may wait for its answer; `chunk_bytes` is the
    largest message either way."""

    what = "Echo.Exchange"

    def __init__(
        self,
        open_call: Callable[[Iterator[pb.ExchangeRequest]], Any],
        payload: Callable[[int], bytes],
        timeout_s: Callable[[int], float],
        chunk_bytes: int,
    ) -> None:
        if chunk_bytes < 1:
            raise ValueError(f"chunk_bytes must be at least 1, got {chunk_bytes}")
        self._open_call, self._payload, self._timeout_s = open_call, payload, timeout_s
        self._chunk = chunk_bytes
        self._call: Any = None
        self._closed = False
        self._requests: queue.SimpleQueue[pb.ExchangeRequest | None] = queue.SimpleQueue()
        self._reader = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="echo-stream")

    def exchange(self, send_bytes: int, reply_bytes: int) -> None:
        """Send `send_bytes` bytes and wait for the answer of `reply_bytes` bytes."""
        if send_bytes < 0 or reply_bytes < 0:
            raise ValueError(f"an exchange moves bytes >= 0, got {send_bytes} and {reply_bytes}")
        if self._closed:  # opened again, it would hold a server slot no one ends (found by review)
            raise ServerUnavailable(f"{self.what}: the stream is closed", "CANCELLED")
        if self._call is None:
            self._open()
        for request in self._transfer(send_bytes, reply_bytes):
            self._requests.put(request)
        answer = self._reader.submit(self._receive, self._call, max(1, math.ceil(reply_bytes / self._chunk)))
        wait_s = self._timeout_s(send_bytes + reply_bytes)
        try:
            received = answer.result(timeout=wait_s)
        except concurrent.futures.TimeoutError:
            self._drop()
            raise ServerUnavailable(f"{self.what}: no answer within {wait_s:g} s", "DEADLINE_EXCEEDED") from None
        except grpc.RpcError as exc:
            self._drop()
            raise stream_error(exc, self.what) from None
        if received is None:
            self._drop()
            raise ServerUnavailable(f"{self.what}: the server ended the stream", "UNAVAILABLE")
        if received != reply_bytes:
            self._drop()
            raise ServerError(f"{self.what}: got {received} of {reply_bytes} bytes", "DATA_LOSS")

    def _transfer(self, send_bytes: int, reply_bytes: int) -> Iterator[pb.ExchangeRequest]:
        """The requests of one transfer: its bytes in chunks, the last one asking for the answer."""
        chunks = max(1, math.ceil(send_bytes / self._chunk))
        for _ in range(chunks - 1):
            yield pb.ExchangeRequest(payload=self._payload(self._chunk), more=True)
        last = send_bytes - (chunks - 1) * self._chunk
        yield pb.ExchangeRequest(payload=self._payload(last), reply_bytes=reply_bytes, reply_chunk_bytes=self._chunk)

    @staticmethod
    def _receive(call: Any, responses: int) -> int | None:
        """The bytes of the next `responses` answers; None when the stream ends before them."""
        received = 0
        for _ in range(responses):
            response = next(call, None)
            if response is None:
                return None
            received += len(response.payload)
        return received

    def close(self, drain_s: float = CLOSE_DRAIN_S) -> None:
        """End the stream and its reader thread. Idempotent. Half-closes, then waits up to `drain_s` for the server
        to end the stream, so that the call finishes OK: cancelled at once, every netprofile counted as CANCELLED in
        the server's rr_requests_total (found by review). What is left then is cancelled."""
        self._closed = True
        if self._call is not None and drain_s > 0:
            self._requests.put(_END)
            ended = self._reader.submit(deque, self._call, 0)  # reads to the server's end of the stream
            with contextlib.suppress(concurrent.futures.TimeoutError, grpc.RpcError):
                ended.result(timeout=drain_s)
        self._drop()
        self._reader.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> EchoStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open(self) -> None:
        requests: queue.SimpleQueue[pb.ExchangeRequest | None] = queue.SimpleQueue()
        self._requests = requests
        try:
            self._call = self._open_call(iter(requests.get, _END))
        except grpc.RpcError as exc:
            raise server_error(exc, self.what) from None

    def _drop(self) -> None:
        call, self._call = self._call, None
        if call is not None:
            self._requests.put(_END)
            call.cancel()


def echo_transfers(
    client: Client,
    stack: contextlib.ExitStack,
    chunk_bytes: int | None = None,
    warmup: int = 3,
    warmup_bytes: int = 1024,
    stream: bool = True,
) -> tuple[Callable[[int], object], Callable[[int], object], str]:
    """Uplink and downlink transfers of n bytes to time, warmed up, and how they travel (`STREAMED` or `PER_CALL`):
    exchanges on one open echo stream (closed with `stack`), as the runner's requests travel on their inference
    stream, or, without `stream` or from a server without `EchoService.Exchange`, one echo call per transfer, which
    also pays for starting the call (about 1.2 ms on loopback: small tensors on a fast link were charged three times
    their network time). A busy server is not waited out inside a transfer (ServerBusy): time it outside."""
    if stream:
        echo = stack.enter_context(client.echo_stream(chunk_bytes))
        try:
            for _ in range(warmup):  # untimed: a busy server is waited out, as the per-call warm-up waits it out
                retry_busy(lambda _: echo.exchange(warmup_bytes, 0), None, client.options.busy_wait_s)
                retry_busy(lambda _: echo.exchange(0, warmup_bytes), None, client.options.busy_wait_s)
        except ServerError as exc:
            if exc.code != "UNIMPLEMENTED":
                raise
            log.warning("the server has no EchoService.Exchange: timing one echo call per transfer, whose start-up "
                        "a request on an open stream does not pay (small messages are costed high)")  # fmt: skip
        else:
            return (lambda n: echo.exchange(n, 0)), (lambda n: echo.exchange(0, n)), STREAMED

    def up(n: int) -> object:
        return client.echo_send(n, chunk_bytes, busy_wait_s=0)

    def down(n: int) -> object:
        return client.echo_receive(n, chunk_bytes, busy_wait_s=0)

    for _ in range(warmup):  # untimed: the client may wait out a busy server itself
        client.echo_send(warmup_bytes, chunk_bytes)
        client.echo_receive(warmup_bytes, chunk_bytes)
    return up, down, PER_CALL


class _Payloads:
    """Incompressible bytes for echo sends, cut from one block as long as the largest payload asked for so far. The
    network profiler sends each size many times, interleaved, and times every send: a payload must not be copied
    anew each time (a cost per byte that is no network's), so the recent ones, CACHE_BYTES at most, are kept. Every
    size of a sweep stayed cached before, 402 MiB of them after a sweep in 64 MiB chunks."""

    CACHE_BYTES = 16 * 1024 * 1024  # a sweep in 1 MiB chunks (the default) keeps all its sizes: about 6 MiB
    _lock = threading.Lock()
    _block = b""
    _cut: OrderedDict[int, bytes] = OrderedDict()  # the payloads shorter than the block, least recently used first
    _cut_bytes = 0

    @classmethod
    def get(cls, n: int) -> bytes:
        with cls._lock:  # one client serves many threads
            if len(cls._block) < n:
                cls._block = np.random.default_rng(n).bytes(n)
            if n == len(cls._block):
                return cls._block
            payload = cls._cut.pop(n, None)
            if payload is None:
                payload = cls._block[:n]
                cls._cut_bytes += n
            cls._cut[n] = payload
            while cls._cut_bytes > cls.CACHE_BYTES:
                cls._cut_bytes -= len(cls._cut.popitem(last=False)[1])
            return payload


def payload(n: int) -> bytes:
    """Incompressible bytes of length n (echo sends the same ones repeatedly)."""
    return _Payloads.get(n)
