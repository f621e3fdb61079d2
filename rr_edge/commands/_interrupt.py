"""Ctrl-C or SIGTERM in a long command: `with stop_requested() as stop:` sets `stop` at the first SIGINT or SIGTERM,
so the command ends after the work in flight and reports what it did (`rr-edge run` dropped a run of thousands of
requests without a word, walkthrough; so did a run that `timeout` or systemd stopped); the same signal again stops at
once (KeyboardInterrupt for Ctrl-C, as without it; the handler there was before for SIGTERM)."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)

INTERRUPTED = 128 + signal.SIGINT  # the exit code of a command Ctrl-C ended, as a shell reports it
_SAID: dict[int, tuple[str, str]] = {
    signal.SIGINT: ("interrupted", "Ctrl-C"),
    signal.SIGTERM: ("terminated", "SIGTERM"),
}


def stopped_by(code: int) -> int | None:
    """The signal a command's exit `code` says ended it (`Stop.exit_code`, or INTERRUPTED), or None."""
    return code - 128 if code - 128 in _SAID else None


class Stop(threading.Event):
    """Set by the first SIGINT or SIGTERM, `signum`."""

    signum: int = 0

    @property
    def exit_code(self) -> int:
        """The command's exit code, as a shell reports a process that signal ended (130 for Ctrl-C, 143)."""
        return 128 + self.signum

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name


@contextlib.contextmanager
def stop_requested(what: str) -> Iterator[Stop]:
    """The event the first SIGINT or SIGTERM sets (`what`: what is finished first, for the message); the next one of
    the same signal meets the handler there was before. Only the main thread receives signals: elsewhere (an
    application's thread) the event is never set; a signal ignored (SIGINT in a background job of a script) stays
    ignored."""
    stop = Stop()
    previous: dict[int, Any] = {}  # the handler before, of each signal taken

    def first(signum: int, frame: object) -> None:
        if not stop.is_set():
            stop.signum = signum
            stop.set()
        signal.signal(signum, previous[signum])
        said, again = _SAID[signum]
        log.warning("%s: stopping after %s (%s again to stop at once)", said, what, again)

    if threading.current_thread() is threading.main_thread():
        for taken in _SAID:
            before = signal.getsignal(taken)
            if before is not signal.SIG_IGN and before is not None:  # None: a handler not set from Python
                previous[taken] = signal.signal(taken, first)
    try:
        yield stop
    finally:
        for taken, handler in previous.items():
            signal.signal(taken, handler)
