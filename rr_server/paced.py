"""A client stream that must keep moving: `paced(requests, idle_s, method)` yields its messages, each within `idle_s`
of the one before, else raises DeadlineExceeded.

An upload, a report or an echo holds one of the server's few slots for such streams while it is open, and gRPC's
keepalive only ends a stream whose peer stopped answering pings: seven clients that sent an upload's header and then
nothing, while answering pings, kept every other client's uploads and reports out for good. The stream is read by a
thread of its own, so that the wait for its next message can time out; when the call ends (the handler raised or
returned), gRPC ends that read too, and the thread with it.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

from rr_server.errors import DeadlineExceeded

_END = object()


def paced(requests: Iterator[Any], idle_s: float, method: str) -> Iterator[Any]:
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
    reader.start()
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
