"""argparse helpers shared by the `rr-edge` and `rr-server` command lines: types for a finite number within a bound,
or a one-line usage error. NaN passes no comparison (a `<= 0` check lets it through, and no clock ever reaches it)
and infinity is no byte count or clock either: both are refused here rather than fail later as tracebacks. `Parser`
makes every usage error one line (argparse's usage of `rr-edge run`, 17 lines, came before it)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import NoReturn

__all__ = ["Parser", "fraction", "non_negative_float", "positive_float", "positive_float_at_most"]


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line, naming where the options are listed (its subcommands'
    parsers are of this class too)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    return _finite_float(text, "> 0", lambda v: v > 0)


def positive_float_at_most(most: float) -> Callable[[str], float]:
    """argparse type: a finite number > 0 and <= `most` (a deadline gRPC's clock can still add to its time)."""
    return lambda text: _finite_float(text, f"> 0 and <= {most:g}", lambda v: 0 < v <= most)


def fraction(text: str) -> float:
    """argparse type: a number in (0, 1] (a share of something, of which at least a little is taken)."""
    return _finite_float(text, "in (0, 1]", lambda v: 0 < v <= 1)


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    return _finite_float(text, ">= 0", lambda v: v >= 0)


def _finite_float(text: str, bound: str, within: Callable[[float], bool]) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number {bound}, got {text!r}") from None
    if not (math.isfinite(value) and within(value)):
        raise argparse.ArgumentTypeError(f"must be a finite number {bound}, got {text}")
    return value
