"""roadrunner.v1.EchoService: payload streams in both directions for the network profiler.

Send and Receive move one transfer per call; Exchange answers each transfer of one open stream with the bytes it asks
for, as ModelStreamInfer answers an edge's requests. Every transfer and every answer is held to the echo limit
(`max_total_bytes`) and a message to the message limit. A stopping server ends the Exchange streams as it ends the
inference streams (`rr_server.open_streams`): one waiting for its next transfer at once, one moving a transfer after
its answer (a network profile under way held a stop for its whole grace period)."""

from __future__ import annotations

from collections.abc import Iterator

from rr_proto.roadrunner.v1 import roadrunner_pb2 as rr
from rr_proto.roadrunner.v1 import roadrunner_pb2_grpc as rr_grpc
from rr_server.errors import InvalidArgument, ResourceExhausted, Unavailable
from rr_server.open_streams import OpenStreams

DEFAULT_CHUNK_BYTES = 1024 * 1024
_STOPPING = "the server is stopping: transfers not answered on this stream were not echoed"


class EchoServicer(rr_grpc.EchoServiceServicer):
    def __init__(self, max_total_bytes: int, max_chunk_bytes: int) -> None:
        self._max_total = max_total_bytes
        self._max_chunk = max_chunk_bytes
        self.streams = OpenStreams()  # ended by a server that stops (`OpenStreams.end`)

    def Send(self, request_iterator, context):
        received = 0
        for request in request_iterator:
            received = self._received(received, request.payload)
        return rr.SendResponse(received_bytes=received)

    def Receive(self, request, context):
        for payload in self._chunks(request.bytes, request.chunk_bytes):
            yield rr.ReceiveResponse(payload=payload)

    def Exchange(self, request_iterator, context):
        if not self.streams.waiting(context):
            raise Unavailable(_STOPPING)
        received, moving = 0, False  # the bytes of the transfer under way; whether one is (a piece may be empty)
        try:
            for request in request_iterator:
                if not moving and not self.streams.serving(context):  # cancelled by a stopping server as it came
                    return
                received, moving = self._received(received, request.payload), request.more
                if moving:
                    continue
                received = 0
                answered = False  # an answer of 0 bytes is one empty response: the client counts responses
                for payload in self._chunks(request.reply_bytes, request.reply_chunk_bytes):
                    answered = True
                    yield rr.ExchangeResponse(payload=payload)
                if not answered:
                    yield rr.ExchangeResponse()
                if not self.streams.waiting(context):
                    raise Unavailable(_STOPPING)
        finally:
            self.streams.closed(context)

    def _received(self, so_far: int, payload: bytes) -> int:
        """The bytes of a transfer with `payload` added; ResourceExhausted past the echo limit (as Receive: a
        transfer is a measurement, not a way to load the server)."""
        received = so_far + len(payload)
        if received > self._max_total:
            raise ResourceExhausted(f"more than the echo limit of {self._max_total} bytes sent")
        return received

    def _chunks(self, nbytes: int, chunk_bytes: int) -> Iterator[bytes]:
        """`nbytes` zero bytes in pieces of `chunk_bytes` (0: DEFAULT_CHUNK_BYTES), checked against the limits first."""
        if nbytes < 0 or chunk_bytes < 0:
            raise InvalidArgument("byte counts must not be negative")
        if nbytes > self._max_total:
            raise ResourceExhausted(f"{nbytes} bytes exceeds the echo limit of {self._max_total} bytes")
        chunk = chunk_bytes or DEFAULT_CHUNK_BYTES
        if chunk > self._max_chunk:
            raise ResourceExhausted(f"chunk_bytes {chunk} exceeds the message limit of {self._max_chunk} bytes")
        block = bytes(min(chunk, nbytes))
        for left in range(nbytes, 0, -chunk):
            yield block if left >= chunk else block[:left]
