"""Ctrl-C and SIGTERM in `rr-edge run` (`rr_edge.commands._interrupt.stop_requested`), with real signals sent to this
process."""

from __future__ import annotations

import os
import signal
import time

import pytest

from rr_edge.commands._interrupt import stop_requested


def _delivered() -> None:
    """Give Python a moment to run the handler of a signal just sent to this process."""
    for _ in range(100):
        time.sleep(0.001)


def test_the_first_ctrl_c_asks_to_stop_and_the_second_interrupts(sigint_default: None) -> None:
    with pytest.raises(KeyboardInterrupt), stop_requested("the work") as stop:
        os.kill(os.getpid(), signal.SIGINT)
        _delivered()
        assert stop.is_set()  # asked to stop, nothing raised
        os.kill(os.getpid(), signal.SIGINT)  # the handler there was before: KeyboardInterrupt
        _delivered()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_an_ignored_sigint_stays_ignored() -> None:
    """A script's background job starts with SIGINT ignored: the run must not start taking it (review)."""
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with stop_requested("the work") as stop:
            os.kill(os.getpid(), signal.SIGINT)
            _delivered()
            assert not stop.is_set() and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


def test_the_first_sigterm_asks_to_stop_and_the_handler_before_takes_the_second(sigint_default: None) -> None:
    """`timeout` or systemd stopping a run lost its report (walkthrough); SIGTERM now asks to stop as Ctrl-C does."""
    seen: list[int] = []
    before = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        with stop_requested("the work") as stop:
            os.kill(os.getpid(), signal.SIGTERM)
            _delivered()
            assert stop.is_set() and (stop.exit_code, stop.signal_name) == (143, "SIGTERM") and seen == []
            os.kill(os.getpid(), signal.SIGTERM)
            _delivered()
            assert seen == [signal.SIGTERM]
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C after it: still asks first; the stop stays SIGTERM's
            _delivered()
            assert stop.signal_name == "SIGTERM"
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGTERM, before)
