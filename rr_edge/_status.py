"""The one mapping from gRPC status codes to this package's exceptions (`rr_edge.client` draws the tree)."""

from __future__ import annotations

import math

import grpc

from rr_edge.errors import ServerBusy, ServerError, ServerUnavailable
from rr_proto.status import RETRY_PUSHBACK_KEY

_UNAVAILABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}


def server_error(exc: grpc.RpcError, what: str) -> ServerError:
    """This package's exception for a failed call."""
    code = exc.code() if callable(getattr(exc, "code", None)) else None
    details = exc.details() if callable(getattr(exc, "details", None)) else str(exc)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        pushback_ms = _pushback_ms(exc)
        if pushback_ms is not None:
            return ServerBusy(f"{what}: {code.name}: {details}", pushback_ms / 1e3)
    return status_error(code, details, what)


def _pushback_ms(exc: grpc.RpcError) -> float | None:
    """The server's retry pushback of a refused call (RETRY_PUSHBACK_KEY), or None when it gave none."""
    trailing = exc.trailing_metadata() if callable(getattr(exc, "trailing_metadata", None)) else None
    for key, value in trailing or ():
        if key == RETRY_PUSHBACK_KEY:  # gRFC A6: a negative or unreadable pushback means "do not retry"
            try:
                ms = float(value)
            except ValueError:
                return None
            return ms if math.isfinite(ms) and ms >= 0 else None
    return None


def status_error(code: grpc.StatusCode | None, details: str, what: str) -> ServerError:
    """The one mapping from a status code (of a call, or of one answer in a stream) to this package's exceptions."""
    name = code.name if code is not None else "UNKNOWN"
    cls = ServerUnavailable if code in _UNAVAILABLE else ServerError
    return cls(f"{what}: {name}: {details}", name)
