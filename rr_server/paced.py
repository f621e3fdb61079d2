"""A client stream that must keep moving: `paced(requests, idle_s, method)` yields its messages, each within `idle_s`
of the one before, else raises DeadlineExceeded; and `drained(responses, cancel, idle_s, method)` ends a call whose
client stops reading its answers for twice `idle_s`.

An upload, a report or an echo holds one of the server's few slots for such streams while it is open, and gRPC's
keepalive only ends a stream whose peer stopped answering pings: seven clients that sent an upload's header and then
nothing, while answering pings, kept every other client's uploads and reports out for good. The stream is read by a
thread of its own, so that the wait for its next message can time out; when the call ends (the handler raised or
returned), gRPC ends that read too, and the thread with it. An echo's answer that the client never reads holds its
slot as well (gRPC waits for the client's flow control before it takes the next response): a watch thread cancels the
call when one response has waited to be taken for twice `idle_s` (found by review).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any

from rr_server.errors import DeadlineExceeded, start_thread

_END = object()

log = logging.getLogger(__name__)


def paced(requests: Iterator[Any], idle_s: float, method: str) -> Generator[Any, None, None]:
    """The messages of `requests`, in order; DeadlineExceeded when none arrives for `idle_s` seconds."""
    arrived: queue.Queue[Any] = queue.Queue(maxsize=2)  # the reader stays at most two messages ahead
    done = threading.Event()  # the handler stopped reading (returned or raised): so does the reader

    def offer(item: Any) -> bool:
        while not done.is_set():
            try:
                arrived.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for request in requests:
                if not offer(request):
                    return
            offer(_END)
        except BaseException as exc:  # noqa: BLE001 - the client cancelled, or the message did not parse
            offer(exc)

    reader = threading.Thread(target=read, name=f"rr-read-{method}", daemon=True)
    start_thread(reader, method)
    try:
        while True:
            try:
                item = arrived.get(timeout=idle_s)
            except queue.Empty:
                raise DeadlineExceeded(
                    f"{method}: no message from the client for {idle_s:g} s; the stream was closed to free its slot "
                    "(rr-server --stream-idle-seconds)"
                ) from None
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        done.set()


def drained(responses: Iterator[Any], cancel: Callable[[], object], idle_s: float, method: str) -> Iterator[Any]:
    """The messages of `responses`; `cancel()` is called when gRPC has not taken one that was ready for twice
    `idle_s` (the client stopped reading). Twice: flow control hands responses over in bursts, so a client reading
    steadily on a slow link waits up to about 1.4 times a response's time on the wire for the next one to be taken
    (measured by review), where `paced` waits one request's time. The handler's time to make a response does not
    count."""
    limit_s = 2 * idle_s
    lock = threading.Lock()
    waiting_since: list[float | None] = [None]  # when the response now offered to gRPC was offered
    done = threading.Event()

    def watch() -> None:
        while not done.wait(min(idle_s, 1.0) / 4):
            with lock:
                since = waiting_since[0]
            if since is not None and time.monotonic() - since > limit_s:
                log.info("%s: the client read no answer for %g s; the stream was closed to free its slot", method,
                         limit_s)  # fmt: skip
                cancel()
                return

    watcher = threading.Thread(target=watch, name=f"rr-drain-{method}", daemon=True)
    start_thread(watcher, method)
    try:
        for response in responses:
            with lock:
                waiting_since[0] = time.monotonic()
            yield response
            with lock:
                waiting_since[0] = None
    finally:
        done.set()
