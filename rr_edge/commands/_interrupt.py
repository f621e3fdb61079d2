"""Ctrl-C in a long command: `with stop_requested() as stop:` sets `stop` at the first SIGINT, so the command ends
after the work in flight and reports what it did (`rr-edge run` dropped a run of thousands of requests without a
word, walkthrough); a second Ctrl-C interrupts at once (KeyboardInterrupt, as without it)."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator

log = logging.getLogger(__name__)

INTERRUPTED = 128 + signal.SIGINT  # the exit code of a command Ctrl-C ended, as a shell reports it


@contextlib.contextmanager
def stop_requested(what: str) -> Iterator[threading.Event]:
    """The event the first Ctrl-C sets (`what`: what is finished first, for the message); the next one meets the
    handler there was before. Only the main thread receives signals: elsewhere (an application's thread) the event is
    never set, and so where SIGINT is ignored (a background job of a script)."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        yield stop
        return

    def first(signum: int, frame: object) -> None:
        stop.set()
        signal.signal(signal.SIGINT, previous)
        log.warning("interrupted: stopping after %s (Ctrl-C again to stop at once)", what)

    previous = signal.signal(signal.SIGINT, first)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)
