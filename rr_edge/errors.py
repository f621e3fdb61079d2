"""Domain errors of the edge package.

    RoadRunnerError            base of everything this package raises on purpose
    ├── ModelError             unreadable / invalid ONNX, bad block range, export failure
    ├── InputError             a request's inputs do not match the model (also a ValueError)
    ├── ArgumentError          an invalid argument of the API: an address without a port, a timeout <= 0 (also a
    │                          ValueError)
    ├── PredictionsPending     the server has no prediction yet for some block (profile first, or wait)
    ├── ServerError            the server answered with an error status (carries the gRPC code name)
    │   ├── ServerUnavailable  the server cannot be reached (UNAVAILABLE, DEADLINE_EXCEEDED, broken stream)
    │   └── ServerBusy         the server had no capacity free for the call and said when to retry
    └── MeterError             an energy meter cannot be read

The CLI turns any RoadRunnerError into a one-line message on stderr and exit code 2.
"""

from __future__ import annotations


class RoadRunnerError(Exception):
    """Base class of the errors this package raises deliberately."""


class ModelError(RoadRunnerError):
    """A model file or a model operation is invalid."""


class InputError(RoadRunnerError, ValueError):
    """The inputs of a request do not match the model's (names, types, shapes)."""


class ArgumentError(RoadRunnerError, ValueError):
    """An argument of the API is invalid (a server address, a timeout, a chunk size)."""


class PredictionsPending(RoadRunnerError):
    """The server has not predicted every block yet (nothing measured, or a refit still running)."""


class ServerError(RoadRunnerError):
    """The server returned an error status."""

    def __init__(self, message: str, code: str = "UNKNOWN") -> None:
        super().__init__(message)
        self.code = code


class ServerUnavailable(ServerError):
    """The server could not be reached in time."""


class ServerBusy(ServerError):
    """The server refused the call only for want of capacity (RESOURCE_EXHAUSTED with a retry pushback): nothing was
    done, and the same call may succeed after `retry_after_s`."""

    MIN_PAUSE_S, MAX_PAUSE_S = 0.05, 2.0  # the pauses a client takes, whatever the pushback

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message, "RESOURCE_EXHAUSTED")
        self.retry_after_s = retry_after_s

    def pause_s(self, previous_s: float | None = None) -> float:
        """How long to wait before trying again: the pushback, or twice the `previous_s` pause of a retry already
        refused, kept within [MIN_PAUSE_S, MAX_PAUSE_S]."""
        wanted = self.retry_after_s if previous_s is None else 2 * previous_s
        return min(max(wanted, self.MIN_PAUSE_S), self.MAX_PAUSE_S)


class MeterError(RoadRunnerError):
    """An energy meter is absent or cannot be read."""
