"""Status conventions both ends share, beyond the code and its message."""

from __future__ import annotations

__all__ = ["RETRY_PUSHBACK_KEY"]

# Trailing metadata of a call refused only because the server is busy: how many milliseconds to wait before trying
# again. The key is gRPC's own (gRFC A6, "grpc-retry-pushback-ms"), so a gRPC client with a retry policy follows it
# too; rr_edge.client reads it into ServerBusy.retry_after_s.
RETRY_PUSHBACK_KEY = "grpc-retry-pushback-ms"
