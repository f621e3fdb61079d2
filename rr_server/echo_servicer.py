"""roadrunner.v1.EchoService: payload streams in both directions for the network profiler.

Send and Receive move one transfer per call; Exchange answers each message of one open stream with a message of the
size it asks for, as ModelStreamInfer answers an edge's requests. Every message and every transfer is held to the
echo limit (`max_total_bytes`) and a message to the message limit."""

from __future__ import annotations

from rr_proto.roadrunner.v1 import roadrunner_pb2 as rr
from rr_proto.roadrunner.v1 import roadrunner_pb2_grpc as rr_grpc
from rr_server.errors import InvalidArgument, ResourceExhausted

DEFAULT_CHUNK_BYTES = 1024 * 1024


class EchoServicer(rr_grpc.EchoServiceServicer):
    def __init__(self, max_total_bytes: int, max_chunk_bytes: int) -> None:
        self._max_total = max_total_bytes
        self._max_chunk = max_chunk_bytes

    def Send(self, request_iterator, context):
        received = 0
        for request in request_iterator:
            received += len(request.payload)
            if received > self._max_total:  # as Receive: a transfer is a measurement, not a way to load the server
                raise ResourceExhausted(f"more than the echo limit of {self._max_total} bytes sent")
        return rr.SendResponse(received_bytes=received)

    def Receive(self, request, context):
        if request.bytes < 0 or request.chunk_bytes < 0:
            raise InvalidArgument("bytes and chunk_bytes must not be negative")
        if request.bytes > self._max_total:
            raise ResourceExhausted(f"{request.bytes} bytes exceeds the echo limit of {self._max_total} bytes")
        chunk = request.chunk_bytes or DEFAULT_CHUNK_BYTES
        if chunk > self._max_chunk:
            raise ResourceExhausted(f"chunk_bytes {chunk} exceeds the message limit of {self._max_chunk} bytes")
        payload = bytes(min(chunk, request.bytes))
        left = request.bytes
        while left > 0:
            n = min(chunk, left)
            yield rr.ReceiveResponse(payload=payload if n == len(payload) else payload[:n])
            left -= n

    def Exchange(self, request_iterator, context):
        for request in request_iterator:
            if len(request.payload) > self._max_total:
                raise ResourceExhausted(f"a message over the echo limit of {self._max_total} bytes")
            if request.reply_bytes < 0:
                raise InvalidArgument("reply_bytes must not be negative")
            limit = min(self._max_total, self._max_chunk)
            if request.reply_bytes > limit:
                raise ResourceExhausted(f"reply_bytes {request.reply_bytes} exceeds the limit of {limit} bytes")
            yield rr.ExchangeResponse(payload=bytes(request.reply_bytes))

