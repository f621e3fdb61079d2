"""Plausible ranges of what a node reports, which the server enforces (`rr_server.records`) and the edge checks
before it reports: one value out of range makes the server refuse the whole report, every latency with it."""

from __future__ import annotations

__all__ = ["MAX_ENERGY_MJ", "MAX_ID_LENGTH", "MAX_LATENCY_MS", "MIN_ENERGY_MJ", "MIN_LATENCY_MS", "id_problem"]

# A block taking more than a day or a joule-hour, or less than 0.1 us or a nanojoule, is a unit bug (or a lie), not a
# measurement; one such value would drag the fleet's log-space predictions with it.
MAX_LATENCY_MS = 86_400_000.0
MAX_ENERGY_MJ = 3.6e9
MIN_LATENCY_MS = 1e-4
MIN_ENERGY_MJ = 1e-6

MAX_ID_LENGTH = 256  # a node id or a model name


def id_problem(value: str) -> str | None:
    """Why `value` cannot be a node id (None: it can): ids are 1-MAX_ID_LENGTH printable characters without spaces."""
    if not value:
        return "is empty"
    if len(value) > MAX_ID_LENGTH or not value.isprintable() or any(c.isspace() for c in value):
        return f"must be up to {MAX_ID_LENGTH} printable characters, no spaces"
    return None
