"""The streams of one kind open now (ModelStreamInfer calls, or EchoService.Exchange calls), so that a stopping server
ends them instead of waiting out its grace period.

An edge's runner keeps its stream open between requests, for as long as it runs: a server asked to stop waited its
whole grace period (10 s) whenever an edge was connected, and then cancelled the stream anyway (walkthrough). Now
`end()` cancels each stream waiting for its next request at once (a request arriving just then is not run), and one
serving a request ends after its answer with UNAVAILABLE (requests it has not read yet are not run: a client sending
several at once learns that they went unanswered). The edge finishes its next request locally either way, as it
does when a server goes away. An Exchange stream (a network profile) is ended the same way, between transfers.
"""

from __future__ import annotations

import threading
from typing import Any

import grpc


class OpenStreams:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[int, Any] = {}  # id(context) -> the context of a stream waiting for its next request
        self._ended = False

    @property
    def ended(self) -> bool:
        return self._ended

    @property
    def idle(self) -> int:
        """How many streams wait for their next request."""
        with self._lock:
            return len(self._waiting)

    def waiting(self, context: Any) -> bool:
        """The stream waits for its next request (it opened, or sent its last answer); False when the server is
        stopping: the stream ends now."""
        with self._lock:
            if not self._ended:
                self._waiting[id(context)] = context
            return not self._ended

    def serving(self, context: Any) -> bool:
        """A request arrived on the stream (waiting until now): whether to run it. It is, also when the server stops
        meanwhile; not when `end` cancelled the stream as it arrived."""
        with self._lock:
            return self._waiting.pop(id(context), None) is not None

    def closed(self, context: Any) -> None:
        with self._lock:
            self._waiting.pop(id(context), None)

    def end(self) -> int:
        """Cancel the streams waiting for a request, and end the others after their answer; how many were open and
        waiting."""
        with self._lock:
            self._ended = True
            waiting, self._waiting = list(self._waiting.values()), {}
            for context in waiting:
                # The status its metrics count, set before a request arriving now finds the stream cancelled: grpcio
                # ends the request iterator of a cancelled call either by raising or as if the client had closed it,
                # whichever of its events comes first, and the second read as OK.
                context.set_code(grpc.StatusCode.CANCELLED)
        for context in waiting:
            context.cancel()
        return len(waiting)
