"""The one place where requests meet policy: authentication, domain errors -> status codes, open streams, metrics.

Every handler is wrapped so that a `ServerError` becomes its status code with its message (`ServerError.details`,
cut to fit the status metadata), a request that does not parse becomes INVALID_ARGUMENT (grpcio answers INTERNAL to
a deserializer that raises), and anything else becomes INTERNAL with a generic message (the traceback goes to the
log only). Health and reflection stay open without a token so that probes and `buf curl`/`grpcurl` discovery work;
every other method needs a valid bearer token when the server runs with a token table, and a call without one is
refused before its request message is read (`_refusal`).

Every call holds one of the server's worker threads for as long as it is open, and a stream may stay open while
idle: an edge keeps its ModelStreamInfer stream open between requests, a slow client can hold an upload or a health
Watch open. So streams take `StreamSlots` from three pools: most workers for the edges' inference streams, a few for
every other stream (uploads, reports, echo), and OPEN_STREAM_SLOTS threads of their own, on top of the workers, for
the streams open without a token (health Watch, reflection: gRPC's client-side health checking keeps a Watch open
per channel, and one such Watch must not shut out reflection or a second client). Health Checks, unary but open to
anyone as well, take OPEN_CHECK_SLOTS more threads of their own: such a call is read as a stream, so that it takes
its slot before its message arrives, and the message must arrive within CHECK_READ_S (a unary call holds its thread
while gRPC waits for its message, and callers that sent none held every worker). Past its pool a new call is
RESOURCE_EXHAUSTED at once, with gRPC's retry pushback in its trailing metadata (`Busy`: nothing was done, try again
shortly), and the workers left over always answer the other unary calls (ModelInfer, slice status), however
many streams are open.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator

import grpc

from rr_proto.status import RETRY_PUSHBACK_KEY
from rr_server.auth import CALLER, TokenTable
from rr_server.config import CHECK_READ_S, OPEN_CHECK_SLOTS, OPEN_STREAM_SLOTS
from rr_server.errors import Busy, DeadlineExceeded, InvalidArgument, ServerError, Unauthenticated, as_server_error
from rr_server.metrics import Metrics
from rr_server.paced import drained, paced

log = logging.getLogger(__name__)

_OPEN_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")
_EDGE_STREAMS = frozenset({"ModelStreamInfer"})  # kept open by every edge runner between its requests
_INTERNAL_MESSAGE = "internal server error (details in the server log)"
BUSY_RETRY_AFTER_S = 0.25  # the pushback of a stream refused for want of a slot: most streams that hold one are short


class StreamSlots:
    """Open streams per pool. Out of `workers`, a reserve of a quarter (at least 4) is kept from the edges' inference
    streams; less than half of it may serve other streams, the rest only unary calls. Streams open without a token
    have OPEN_STREAM_SLOTS threads of their own, health Checks OPEN_CHECK_SLOTS: the server's thread pool has
    `threads` of them in all."""

    def __init__(self, workers: int) -> None:
        reserve = max(4, workers // 4)
        self.capacity = {
            "edge": max(1, workers - reserve),
            "other": max(1, reserve // 2 - 1),
            "open": OPEN_STREAM_SLOTS,
            "check": OPEN_CHECK_SLOTS,
        }
        self.threads = workers + OPEN_STREAM_SLOTS + OPEN_CHECK_SLOTS
        self.in_use = dict.fromkeys(self.capacity, 0)
        self._lock = threading.Lock()

    @staticmethod
    def pool_of(method: str, streaming: bool) -> str | None:
        """The pool a call of `method` (full path) takes a slot from; None for a unary call that needs a token."""
        if not streaming:
            return "check" if method.startswith(_OPEN_PREFIXES) else None
        if method.startswith(_OPEN_PREFIXES):
            return "open"
        return "edge" if method.rsplit("/", 1)[-1] in _EDGE_STREAMS else "other"

    def take(self, pool: str, method: str) -> bool:
        """Take a slot of `pool` for a new stream of `method` (True), or raise Busy when none is free."""
        with self._lock:
            if self.in_use[pool] >= self.capacity[pool]:
                raise Busy(_busy_message(pool, method, self.capacity[pool]), BUSY_RETRY_AFTER_S)
            self.in_use[pool] += 1
        return True

    def give_back(self, pool: str) -> None:
        with self._lock:
            self.in_use[pool] -= 1


def _busy_message(pool: str, method: str, capacity: int) -> str:
    """Why a stream was refused, naming the limit it met and what changes it."""
    if pool == "check":
        return (
            f"{method}: all {capacity} slots of this server for health checks are in use, a fixed number; retry later"
        )
    if pool == "open":
        return (
            f"{method}: all {capacity} slots of this server for streams open without a token (health Watch, "
            "reflection) are in use, a fixed number; retry later, or use the unary health Check"
        )
    return (
        f"{method}: all {capacity} slots of this server for such streams are in use (each open stream holds a worker "
        "thread); retry later, use the unary call, or start rr-server with more --workers"
    )


class PolicyInterceptor(grpc.ServerInterceptor):
    """Authenticates, maps errors, bounds open streams and records metrics for every RPC."""

    def __init__(
        self, tokens: TokenTable | None, metrics: Metrics, slots: StreamSlots, stream_idle_s: float | None = None
    ) -> None:
        self._tokens = tokens
        self._metrics = metrics
        self._slots = slots
        self._idle_s = stream_idle_s  # an upload, report or echo stream silent this long is closed (None: never)

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        short = method.rsplit("/", 1)[-1]
        caller: str | None = None
        if self._tokens is not None and not method.startswith(_OPEN_PREFIXES):
            try:
                caller = self._tokens.authenticate(handler_call_details.invocation_metadata or ())
            except Unauthenticated as exc:
                return _refusal(handler, short, exc, self._metrics)
        pool = StreamSlots.pool_of(method, not handler.unary_unary)
        idle_s = {"other": self._idle_s, "check": CHECK_READ_S}.get(pool)
        return _wrap(handler, short, caller, self._metrics, self._slots, pool, idle_s)


def _refusal(handler, method: str, error: ServerError, metrics: Metrics):
    """A handler that ends the call with `error` at once, its request unread. It takes the request as a stream,
    which gRPC runs without waiting for a message: a handler of a unary request holds a worker thread until the
    message arrives, and callers without a token that sent their headers and no message held every thread, health
    checks shut out with the rest (found by review)."""

    def refuse(_requests, context) -> None:
        _finish(context, metrics, method, time.perf_counter(), error)

    if handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse)
    return grpc.stream_unary_rpc_method_handler(refuse)


def _record(metrics: Metrics, method: str, started: float, code: grpc.StatusCode) -> None:
    metrics.requests.labels(method, code.name).inc()
    metrics.latency.labels(method).observe(time.perf_counter() - started)


def _finish(context, metrics: Metrics, method: str, started: float, exc: BaseException | None) -> None:
    code = context.code() or grpc.StatusCode.OK  # a handler may set its status and return (health's NOT_FOUND)
    exc = exc if exc is None else as_server_error(exc) or exc
    if isinstance(exc, ServerError):
        code = exc.code
        log.info("%s from %s -> %s: %s", method, context.peer(), code.name, exc.details())  # peer: whose token failed
    elif isinstance(exc, grpc.RpcError):  # the stream ended under us while we read it
        code = grpc.StatusCode.CANCELLED
        log.info("%s cancelled: the client went away, or the server is stopping", method)
    elif exc is not None:
        code = grpc.StatusCode.INTERNAL
        log.error("%s failed", method, exc_info=exc)
    _record(metrics, method, started, code)
    if isinstance(exc, Busy):
        context.set_trailing_metadata(((RETRY_PUSHBACK_KEY, str(round(1e3 * exc.retry_after_s))),))
    if exc is not None:
        # Raises; grpc then ends the call with this status.
        context.abort(code, exc.details() if isinstance(exc, ServerError) else _INTERNAL_MESSAGE)
    return None


class _Malformed:
    """What a request that does not parse is handed to its handler as (the interceptor raises for it)."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def _lenient(deserialize: Callable | None) -> Callable | None:
    """`deserialize`, returning `_Malformed` instead of raising."""
    if deserialize is None:
        return None

    def parse(data: bytes):
        try:
            return deserialize(data)
        except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError, or any error of a custom parser
            return _Malformed(exc)

    return parse


def _parsed(method: str, request):
    if isinstance(request, _Malformed):
        raise InvalidArgument(f"{method}: the request message does not parse ({request.error})")
    return request


def _each_parsed(method: str, requests: Iterator) -> Iterator:
    for request in requests:
        yield _parsed(method, request)


def _one(method: str, requests: Iterator, read_s: float):
    """The one message of a unary call read as a stream, which must arrive within `read_s`."""
    try:
        with contextlib.closing(paced(_each_parsed(method, requests), read_s, method)) as stream:
            messages = list(itertools.islice(stream, 2))
    except DeadlineExceeded:
        raise DeadlineExceeded(f"{method}: no request message within {read_s:g} s; the call was closed") from None
    if len(messages) != 1:
        raise InvalidArgument(f"{method}: a call takes one request message, not {len(messages)}")
    return messages[0]


def _reset(token) -> None:
    try:
        CALLER.reset(token)
    except ValueError:  # a streaming handler closed from another thread (client went away)
        pass


def _wrap(
    handler,
    method: str,
    caller: str | None,
    metrics: Metrics,
    slots,
    pool: str | None,
    idle_s: float | None = None,
):

    def requests(request_or_iterator):
        if one_by_stream:
            assert idle_s is not None
            return _one(method, request_or_iterator, idle_s)
        if client_streams:
            stream = _each_parsed(method, request_or_iterator)
            return stream if idle_s is None else paced(stream, idle_s, method)
        return _parsed(method, request_or_iterator)

    @contextlib.contextmanager
    def policy(context) -> Iterator[None]:
        """Around the handler: the caller, a stream slot, the status code and the metrics."""
        started = time.perf_counter()
        token = CALLER.set(caller)
        slot = False
        try:
            slot = pool is not None and slots.take(pool, method)
            yield
        except GeneratorExit:  # gRPC closed a server stream the client cancelled: counted, nothing left to answer
            log.info("%s cancelled: the client went away while it was sent answers", method)
            _record(metrics, method, started, grpc.StatusCode.CANCELLED)
            raise
        except Exception as exc:  # noqa: BLE001 - mapped to a status code here, the one place that does so
            _finish(context, metrics, method, started, exc)
        finally:
            _reset(token)
            if slot:
                slots.give_back(pool)
        _finish(context, metrics, method, started, None)

    def unary(behavior: Callable):
        def run(request_or_iterator, context):
            with policy(context):
                return behavior(requests(request_or_iterator), context)

        return run

    def streaming(behavior: Callable):
        def run(request_or_iterator, context) -> Iterator:
            with policy(context):
                responses = behavior(requests(request_or_iterator), context)
                yield from responses if idle_s is None else drained(responses, context.cancel, idle_s, method)

        return run

    client_streams = bool(handler.request_streaming)
    one_by_stream = pool == "check"  # its slot is taken before its message is read (StreamSlots)
    kwargs = {
        "request_deserializer": _lenient(handler.request_deserializer),
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        make = grpc.stream_unary_rpc_method_handler if one_by_stream else grpc.unary_unary_rpc_method_handler
        return make(unary(handler.unary_unary), **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary), **kwargs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(streaming(handler.unary_stream), **kwargs)
    return grpc.stream_stream_rpc_method_handler(streaming(handler.stream_stream), **kwargs)
