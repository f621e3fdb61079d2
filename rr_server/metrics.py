"""Prometheus metrics of one server instance (own registry, so several servers can live in one process)."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Mapping
from functools import partial
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from rr_server import metrics_http

log = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    """Request counts and latency per method, session-cache hits, upload bytes, slice evictions, inferences and their
    run time, stream slots per pool (docs/protocol.md, "Metrics")."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "rr_requests", "gRPC requests by method and status code", ["method", "code"], registry=self.registry
        )
        self.latency = Histogram(
            "rr_request_seconds",
            "gRPC request latency by method",
            ["method"],
            registry=self.registry,
            buckets=_LATENCY_BUCKETS,
        )
        self.session_cache = Counter(
            "rr_session_cache", "ONNX Runtime session lookups by result (hit/miss)", ["result"], registry=self.registry
        )
        self.upload_bytes = Counter("rr_upload_bytes", "Slice bytes received by UploadSlice", registry=self.registry)
        self.slice_evictions = Counter(
            "rr_slice_evictions", "Slices evicted to stay within the store budget", registry=self.registry
        )
        self.inferences = Counter("rr_inferences", "Slice executions by outcome", ["outcome"], registry=self.registry)
        self.inference_seconds = Histogram(
            "rr_inference_seconds",
            "Slice execution time per inference, of either method (a stream's rr_request_seconds is its lifetime)",
            registry=self.registry,
            buckets=_LATENCY_BUCKETS,
        )
        self.stream_slots = Gauge("rr_stream_slots", "Stream slots per pool", ["pool"], registry=self.registry)
        self.stream_slots_in_use = Gauge(
            "rr_stream_slots_in_use",
            "Stream slots in use per pool (a full pool refuses new streams as busy)",
            ["pool"],
            registry=self.registry,
        )
        self._http: Any = None

    def track_stream_slots(self, capacity: Mapping[str, int], in_use: Mapping[str, int]) -> None:
        """Report the stream slots of each pool (rr_server.interceptor.StreamSlots), read at every scrape."""
        for pool in capacity:
            self.stream_slots.labels(pool).set_function(partial(capacity.__getitem__, pool))
            self.stream_slots_in_use.labels(pool).set_function(partial(in_use.__getitem__, pool))

    def serve_http(self, port: int, addr: str = "0.0.0.0", tls: ssl.SSLContext | None = None) -> int:
        """Expose /metrics on `addr`:`port` (port 0 picks a free one), over HTTPS with `tls`; returns the bound
        port."""
        self._http = metrics_http.serve(self.registry, addr, port, tls)
        bound = self._http.server_address[1]
        host = f"[{addr}]" if ":" in addr else addr  # an IPv6 host
        clients = " (client certificates required)" if tls is not None and tls.verify_mode == ssl.CERT_REQUIRED else ""
        log.info("metrics on http%s://%s:%d/metrics%s", "s" * (tls is not None), host, bound, clients)
        return bound

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
