"""One open `EchoService.Exchange` stream (`rr_edge.client.Client.echo_stream`): a message and its answer timed as
an edge's inference requests travel, on a stream that is already open.

The network profiler times the link with it. A call-based echo (`Echo.Send` / `Echo.Receive`) also pays for
starting a call, about 1.2 ms on loopback, which a request on the runner's open inference stream does not: small
tensors on a fast link were charged three times their network time (docs/performance.md, "A request's round
trip"). Each `exchange` waits for its answer at most its deadline (`timeout_s(bytes)`); a stream that failed or
timed out is dropped and the next exchange opens a new one.
"""

from __future__ import annotations

import concurrent.futures
import queue
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from rr_edge._status import server_error
from rr_edge.errors import ServerError, ServerUnavailable
from rr_proto.roadrunner.v1 import roadrunner_pb2 as pb

__all__ = ["EchoStream"]

_END = None  # queued to half-close the stream


class EchoStream:
    """`open_call(requests)` starts an Exchange call over the request iterator; `payload(n)` gives n bytes to
    send; `timeout_s(n)` is how long an exchange moving n bytes may wait for its answer."""

    what = "Echo.Exchange"

    def __init__(
        self,
        open_call: Callable[[Iterator[pb.ExchangeRequest]], Any],
        payload: Callable[[int], bytes],
        timeout_s: Callable[[int], float],
    ) -> None:
        self._open_call, self._payload, self._timeout_s = open_call, payload, timeout_s
        self._call: Any = None
        self._requests: queue.SimpleQueue[pb.ExchangeRequest | None] = queue.SimpleQueue()
        self._reader = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="echo-stream")

    def exchange(self, send_bytes: int, reply_bytes: int) -> None:
        """Send `send_bytes` bytes in one message and wait for the answer of `reply_bytes` bytes."""
        if send_bytes < 0 or reply_bytes < 0:
            raise ValueError(f"an exchange moves bytes >= 0, got {send_bytes} and {reply_bytes}")
        if self._call is None:
            self._open()
        self._requests.put(pb.ExchangeRequest(payload=self._payload(send_bytes), reply_bytes=reply_bytes))
        answer = self._reader.submit(next, self._call)
        wait_s = self._timeout_s(send_bytes + reply_bytes)
        try:
            response = answer.result(timeout=wait_s)
        except concurrent.futures.TimeoutError:
            self._drop()
            raise ServerUnavailable(f"{self.what}: no answer within {wait_s:g} s", "DEADLINE_EXCEEDED") from None
        except grpc.RpcError as exc:
            self._drop()
            raise server_error(exc, self.what) from None
        except StopIteration:
            self._drop()
            raise ServerUnavailable(f"{self.what}: the server ended the stream", "UNAVAILABLE") from None
        if len(response.payload) != reply_bytes:
            self._drop()
            raise ServerError(f"{self.what}: got {len(response.payload)} of {reply_bytes} bytes", "DATA_LOSS")

    def close(self) -> None:
        """End the stream (half-close, then cancel whatever is left) and its reader thread. Idempotent."""
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
