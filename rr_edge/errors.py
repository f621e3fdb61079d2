"""Domain errors of the edge package.

    RoadRunnerError            base of everything this package raises on purpose
    ├── ModelError             unreadable / invalid ONNX, bad block range, export failure
    ├── ServerError            the server answered with an error status (carries the gRPC code name)
    │   └── ServerUnavailable  the server cannot be reached (UNAVAILABLE, DEADLINE_EXCEEDED, broken stream)
    └── MeterError             an energy meter cannot be read

The CLI turns any RoadRunnerError into a one-line message on stderr and exit code 2.
"""

from __future__ import annotations


class RoadRunnerError(Exception):
    """Base class of the errors this package raises deliberately."""


class ModelError(RoadRunnerError):
    """A model file or a model operation is invalid."""


class ServerError(RoadRunnerError):
    """The server returned an error status."""

    def __init__(self, message: str, code: str = "UNKNOWN") -> None:
        super().__init__(message)
        self.code = code


class ServerUnavailable(ServerError):
    """The server could not be reached in time."""


class MeterError(RoadRunnerError):
    """An energy meter is absent or cannot be read."""
