"""RoaD-RuNNer edge node: model export, atomic blocks, profiling, planning and offloaded execution.

The public surface for edge apps (see rr_edge.api)::

    import rr_edge

    with rr_edge.connect("cloud:8001", node="camera-1") as node:
        plan = node.plan("model.onnx")
        with node.runner("model.onnx", plan) as run:
            outputs = run(x)

Heavy modules (ONNX Runtime, gRPC) load on first use of a name, so `import rr_edge` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

from rr_edge.errors import (
    ArgumentError,
    InputError,
    MeterError,
    ModelError,
    PredictionsPending,
    RoadRunnerError,
    ServerBusy,
    ServerError,
    ServerUnavailable,
)

_LAZY = {
    "AsyncEdgeNode": "rr_edge.api",
    "AsyncRunner": "rr_edge.api",
    "EdgeNode": "rr_edge.api",
    "connect": "rr_edge.api",
    "connect_async": "rr_edge.api",
    "Client": "rr_edge.client",
    "ClientOptions": "rr_edge.client",
    "TlsOptions": "rr_edge.client",
    "PlanReport": "rr_edge.offload",
    "Runner": "rr_edge.runner",
    "RunnerConfig": "rr_edge.runner",
    "RunResult": "rr_edge.runner",
    "OrtSettings": "rr_edge.session",
}

__all__ = [
    "ArgumentError",
    "AsyncEdgeNode",
    "AsyncRunner",
    "Client",
    "ClientOptions",
    "EdgeNode",
    "InputError",
    "MeterError",
    "ModelError",
    "OrtSettings",
    "PlanReport",
    "PredictionsPending",
    "RoadRunnerError",
    "RunResult",
    "Runner",
    "RunnerConfig",
    "ServerBusy",
    "ServerError",
    "ServerUnavailable",
    "TlsOptions",
    "connect",
    "connect_async",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rr_edge' has no attribute {name!r}")
