"""Domain errors of the server, each tied to the gRPC status code it becomes.

    ServerError                 base; carries `code` (a grpc.StatusCode)
    ├── InvalidArgument         malformed or inconsistent request data        -> INVALID_ARGUMENT
    ├── NotFound                unknown node, slice or model                  -> NOT_FOUND
    ├── ResourceExhausted       size or limit violations                      -> RESOURCE_EXHAUSTED
    │   └── Busy                no capacity free right now: retry later       -> RESOURCE_EXHAUSTED + pushback
    ├── FailedPrecondition      request valid, but the state does not allow it -> FAILED_PRECONDITION
    ├── Unauthenticated         missing or invalid bearer token               -> UNAUTHENTICATED
    ├── PermissionDenied        valid token, but not allowed to do this       -> PERMISSION_DENIED
    ├── Unavailable             the server cannot serve right now             -> UNAVAILABLE
    ├── DeadlineExceeded        a run outlived its deadline and was stopped   -> DEADLINE_EXCEEDED
    └── Cancelled               a run's caller went away, so it was stopped   -> CANCELLED

Core modules raise these; one interceptor (`rr_server.interceptor`) turns them into status codes, a MemoryError
among them (`as_server_error`: the process's memory bound, `rr_server.memory_limit`). Anything else that escapes a
servicer becomes INTERNAL with the details in the log only.
"""

from __future__ import annotations

import threading

import grpc

MAX_DETAILS_BYTES = 1000  # UTF-8 bytes of a message sent back (grpc-message metadata, percent-encoded: at most 3x
# on the wire; clients allow it 8-16 KiB)


class ServerError(Exception):
    """Base class of the errors the server raises deliberately; the message goes to the client."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def details(self) -> str:
        """The message, cut to MAX_DETAILS_BYTES of UTF-8 (one quoting a 100 KB name outgrew gRPC's metadata limit,
        and the client got RESOURCE_EXHAUSTED instead)."""
        text = str(self)
        raw = text.encode()
        if len(raw) <= MAX_DETAILS_BYTES:
            return text
        head = raw[: MAX_DETAILS_BYTES - 30].decode(errors="ignore")  # no character cut in half
        return f"{head}... ({len(text)} characters)"


class InvalidArgument(ServerError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServerError):
    code = grpc.StatusCode.NOT_FOUND


class ResourceExhausted(ServerError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Busy(ResourceExhausted):
    """A passing shortage (every stream slot in use), not a refusal of the request: the interceptor tells the client
    to retry after `retry_after_s` (rr_proto.status.RETRY_PUSHBACK_KEY)."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class FailedPrecondition(ServerError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unauthenticated(ServerError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ServerError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unavailable(ServerError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(ServerError):
    """A run outlived its time (its caller's deadline or the server's limit) and was stopped."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(ServerError):
    """A run's caller went away (the client cancelled the call), so the run was stopped."""

    code = grpc.StatusCode.CANCELLED


def as_server_error(exc: BaseException) -> ServerError | None:
    """`exc` as the error a client is told of: itself, RESOURCE_EXHAUSTED for a MemoryError (an allocation the
    request asked for failed under the server's memory bound: the next request is served), else None (a bug)."""
    if isinstance(exc, ServerError):
        return exc
    if isinstance(exc, MemoryError):
        return ResourceExhausted(f"the server has not the memory this request needs: {exc}")
    return None


def start_thread(thread: threading.Thread, what: str) -> None:
    """Start `thread`, or raise ResourceExhausted: under the memory bound (--max-memory-gb) a new thread's stack is an
    allocation that can fail like any other, and Thread.start() then raises RuntimeError, not MemoryError (it reached
    the client as INTERNAL, found by review)."""
    try:
        thread.start()
    except RuntimeError as exc:
        raise ResourceExhausted(f"{what}: the server has not the memory for a thread: {exc}") from None
