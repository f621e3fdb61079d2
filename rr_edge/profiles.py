"""Plain records of what the profilers measure (no I/O; `rr_edge.client` converts them to and from the wire).

Units are in the names: *_ms milliseconds, *_mJ millijoules, *_bytes bytes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class LatencyStats:
    """Summary of repeated timings: median, 10th/90th percentile, coefficient of variation (stdev / mean)."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    cv: float
    samples: int

    @classmethod
    def of(cls, times_ms: Sequence[float]) -> LatencyStats:
        t = np.asarray(times_ms, dtype=np.float64)
        if t.size == 0 or not np.all(np.isfinite(t)):
            raise ValueError("latency statistics need at least one finite timing")
        mean = float(t.mean())
        cv = float(t.std(ddof=1) / mean) if t.size > 1 and mean > 0 else 0.0
        p10, median, p90 = (float(v) for v in np.percentile(t, [10, 50, 90]))
        return cls(median, p10, p90, cv, int(t.size))

    def to_json(self) -> dict[str, float]:
        return {"median": self.median_ms, "p10": self.p10_ms, "p90": self.p90_ms, "cv": self.cv}


@dataclass(frozen=True)
class BlockFeatures:
    """Structural features of a block (for cold-start predictions on the server)."""

    ops: tuple[str, ...]
    flops: int
    param_bytes: int
    input_bytes: int
    output_bytes: int


@dataclass(frozen=True)
class LayerMeasurement:
    """One profiled block signature on this node."""

    signature: str
    block_index: int
    features: BlockFeatures
    latency: LatencyStats
    energy_mJ: float | None
    energy_source: str
    slice_id: str = ""
    slice_bytes: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "signature": self.signature,
            "block": self.block_index,
            "ops": list(self.features.ops),
            "latency_ms": self.latency.to_json(),
            "samples": self.latency.samples,
            "energy_mJ": self.energy_mJ,
            "energy_source": self.energy_source,
            "slice_id": self.slice_id or None,
        }


@dataclass(frozen=True)
class ModelMeasurement:
    """The whole model run end to end, against the sum of its blocks run one by one."""

    model: str
    block_signatures: tuple[str, ...]
    latency: LatencyStats
    sum_of_blocks_ms: float
    energy_mJ: float | None
    energy_source: str
    slice_id: str = ""  # the whole model as uploaded, for the server to time it (empty: not uploaded)

    @property
    def e2e_ratio(self) -> float:
        return self.latency.median_ms / self.sum_of_blocks_ms if self.sum_of_blocks_ms > 0 else math.nan

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "blocks": len(self.block_signatures),
            "latency_ms": self.latency.to_json(),
            "sum_of_blocks_ms": self.sum_of_blocks_ms,
            "e2e_over_sum_of_blocks": self.e2e_ratio,
            "energy_mJ": self.energy_mJ,
            "energy_source": self.energy_source,
            "slice_id": self.slice_id or None,
        }


@dataclass(frozen=True)
class NetworkSample:
    bytes: int
    ms: float
    energy_mJ: float | None = None


@dataclass(frozen=True)
class DirectionProfile:
    """Samples of one direction and its fitted model (`model` = rr_edge.netmodel.NetworkModel.to_dict())."""

    samples: tuple[NetworkSample, ...]
    chosen_model: str
    poly4_error: float
    affine_error: float
    model: dict[str, Any] = field(default_factory=dict)
    pwl_error: float = -1.0  # negative: not computed
    # why the chosen curve was chosen over another, what was not fitted (local: the server keeps no notes)
    notes: tuple[str, ...] = field(default=(), compare=False)


@dataclass(frozen=True)
class NetworkProfile:
    """Echo transfers up and down, and (optionally) whole slice uploads, which weight uploads are costed with."""

    uplink: DirectionProfile
    downlink: DirectionProfile
    energy_source: str
    measured_at: float
    upload: DirectionProfile | None = None
