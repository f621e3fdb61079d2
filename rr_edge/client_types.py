"""What the calls of the edge's gRPC client (`rr_edge.client.Client`) return, as plain values."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Any

__all__ = ["NodeInfo", "Prediction", "Predictions", "ServerInfo", "SliceStatus", "UploadResult", "slice_id_of"]


@dataclass(frozen=True)
class ServerInfo:
    cloud_node_id: str
    providers: tuple[str, ...]
    version: str
    max_message_bytes: int
    max_slice_bytes: int


@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    role: str
    device: dict[str, Any]
    registered_at: float


@dataclass(frozen=True)
class UploadResult:
    """`rr-edge upload --json`: {"slice_id", "cached", "bytes"}."""

    slice_id: str
    cached: bool
    bytes: int

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SliceStatus:
    slice_id: str
    cached: bool
    bytes: int
    loaded: bool


@dataclass(frozen=True)
class Prediction:
    """Predicted (or measured) cost of one block signature on one node; provenances: measured/predicted/cold-start."""

    signature: str
    latency_ms: float
    energy_mJ: float
    latency_provenance: str
    energy_provenance: str
    energy_source: str


@dataclass(frozen=True)
class Predictions:
    by_signature: dict[str, Prediction]
    e2e_correction: float
    model_latency_ms: float = 0.0  # the node's measured whole-model latency of the queried model (0: unknown)


def slice_id_of(data: bytes) -> str:
    """Slice id: lowercase hex SHA-256 of the ONNX bytes as uploaded."""
    return hashlib.sha256(data).hexdigest()
