"""The one mapping from gRPC status codes to this package's exceptions (`rr_edge.client` draws the tree), the one
way of waiting out a busy server (`retry_busy`), and of waiting out an unreachable one with a finished measurement
to report (`retry_unreachable`)."""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from rr_edge.errors import ServerBusy, ServerError, ServerUnavailable
from rr_proto.status import RETRY_PUSHBACK_KEY

log = logging.getLogger(__name__)

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


def stream_error(exc: grpc.RpcError, what: str) -> ServerError:
    """`server_error` of a stream's call this side did not cancel: one a server cancelled (when it stops, between
    requests) said only "CANCELLED: CANCELLED" (review)."""
    if exc.code() == grpc.StatusCode.CANCELLED and exc.details() == "CANCELLED":  # a closed channel: "Stream removed"
        return ServerUnavailable(f"{what}: the server cancelled the stream (stopping?)", "UNAVAILABLE")
    return server_error(exc, what)


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


def retry_busy(call: Callable[[float | None], Any], timeout_s: float | None, busy_wait_s: float) -> Any:
    """`call(attempt_timeout_s)`, made again while the server answers busy (ServerBusy): after its pushback, doubled
    each time (jittered, capped), for up to `busy_wait_s`; then ServerBusy. An explicit `timeout_s` bounds the
    whole: each attempt gets what is left of it (None: the attempt's own default)."""
    start = time.monotonic()
    give_up = start + (busy_wait_s if timeout_s is None else min(busy_wait_s, timeout_s))
    pause_s: float | None = None
    while True:
        left_s = None if timeout_s is None else timeout_s - (time.monotonic() - start)
        try:
            return call(left_s)
        except ServerBusy as exc:
            pause_s = exc.pause_s(pause_s)
            sleep_s = pause_s * random.uniform(0.5, 1.5)  # edges refused together do not come back together
            if time.monotonic() + sleep_s > give_up:
                raise
            log.debug("%s; trying again in %.2f s", exc, sleep_s)
            time.sleep(sleep_s)


T = TypeVar("T")
REPORT_WAIT_S = 120.0  # how long a finished measurement waits for an unreachable server to take its report
_FIRST_PAUSE_S, _MOST_PAUSE_S = 0.5, 8.0


def retry_unreachable(
    call: Callable[[], T], what: str, wait_s: float = REPORT_WAIT_S, closed: Callable[[], bool] = lambda: False
) -> T:
    """`call()`, made again while the server cannot be reached (ServerUnavailable: a restart, a link down), after
    pauses doubling from 0.5 s to 8 s, starting no try after `wait_s`; then that ServerUnavailable. For the report
    that ends a long measurement: a profile of minutes was lost to a server restarting for a second as it reported
    (walkthrough). Not once `closed()` (the client closed on purpose, which also says ServerUnavailable)."""
    give_up = time.monotonic() + wait_s
    pause_s = _FIRST_PAUSE_S
    warned = False
    while True:
        try:
            return call()
        except ServerUnavailable as exc:
            if closed() or time.monotonic() + pause_s > give_up:
                raise
            if not warned:
                log.warning("%s: %s; trying again for up to %.0f s", what, exc, wait_s)
                warned = True
            time.sleep(pause_s)
            pause_s = min(2 * pause_s, _MOST_PAUSE_S)
