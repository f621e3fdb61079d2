"""The answers of a ModelStreamInfer call (`rr_edge.client.Client.stream_infer`), and the decoding of inference
responses."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np

from rr_edge._status import server_error, status_error, stream_error
from rr_edge.errors import ServerError
from rr_proto import codec, framing

__all__ = ["InferOutputs", "InferStream"]


class Requests(Iterator[Any]):
    """The requests of a streaming call, for gRPC to send. gRPC swallows an exception raised while it draws them
    (the call ends "UNKNOWN: Exception iterating requests!"), so it is kept here, the call is half-closed instead,
    and the caller re-raises it with `raise_error` where its message is seen."""

    def __init__(self, source: Iterator[Any]) -> None:
        self._source = source
        self._error: Exception | None = None

    def __next__(self) -> Any:
        try:
            return next(self._source)
        except StopIteration:
            raise
        except Exception as exc:  # noqa: BLE001 - kept for the caller, who raises it
            self._error = exc
            raise StopIteration from None

    def raise_error(self) -> None:
        if self._error is not None:
            raise self._error


class InferOutputs(dict[str, np.ndarray]):
    """A slice's outputs by name, with the server's run time of the request: `server_run_ms` (None when the server
    did not say), so that the rest of a round trip is the network's."""

    server_run_ms: float | None = None


class InferStream(Iterator[InferOutputs]):
    """The answers of one ModelStreamInfer call, in order. A per-message error raises ServerError with the status
    code the server gave it (its message reads "CODE: details"); the stream goes on after it. A broken call raises
    ServerUnavailable (or ServerError), as every call does."""

    def __init__(self, call: Any, what: str, requests: Requests) -> None:
        self._call = call
        self._what = what
        self._requests = requests
        self._cancelled = False  # by this side (`cancel`)

    def __next__(self) -> InferOutputs:
        try:
            message = next(self._call)
        except (grpc.RpcError, StopIteration) as exc:
            self._requests.raise_error()  # a batch this side could not send, after the answers to those before
            if isinstance(exc, StopIteration):
                raise
            raise (server_error if self._cancelled else stream_error)(exc, self._what) from None
        item = _stream_item(message)
        if item.error_message:  # the server writes "CODE: details"
            name, _, details = item.error_message.partition(": ")
            code = grpc.StatusCode.__members__.get(name)
            raise status_error(code, details if code is not None else item.error_message, self._what)
        return decode(item.response)

    def cancel(self) -> None:
        """End the call now (the server sees CANCELLED); a reader blocked in `next` gets ServerUnavailable."""
        self._cancelled = True
        self._call.cancel()


def decode(response: bytes | framing.InferResponse | None) -> InferOutputs:
    """Output arrays of a serialised ModelInferResponse (or one already split); malformed -> DATA_LOSS."""
    try:
        if response is None:
            raise codec.CodecError("stream message carries neither a response nor an error")
        if not isinstance(response, framing.InferResponse):
            response = framing.parse_infer_response(response)
        outputs = InferOutputs(framing.decode_outputs(response))
        outputs.server_run_ms = framing.run_ms(response)
        return outputs
    except codec.CodecError as exc:
        raise ServerError(f"malformed inference response: {exc}", "DATA_LOSS") from None


def _stream_item(message: bytes) -> framing.StreamItem:
    try:
        return framing.parse_stream_item(message)
    except codec.CodecError as exc:
        raise ServerError(f"malformed inference response: {exc}", "DATA_LOSS") from None
