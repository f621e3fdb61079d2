"""Plain records the core works with (protobuf stops at the servicers)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from rr_proto.limits import (  # plausible ranges, shared
    MAX_ENERGY_MJ,
    MAX_LATENCY_MS,
    MIN_ENERGY_MJ,
    MIN_LATENCY_MS,
    id_problem,
)
from rr_server.errors import InvalidArgument, ResourceExhausted

ROLE_EDGE = "edge"
ROLE_CLOUD = "cloud"

SOURCE_EDGE = "edge-report"
SOURCE_CLOUD_PROFILER = "cloud-profiler"


@dataclass(frozen=True)
class NodeRecord:
    node_id: str
    role: str
    device: dict
    registered_at: float


@dataclass(frozen=True)
class Features:
    """Structural features of an atomic block (SPEC section 3)."""

    ops: tuple[str, ...] = ()
    flops: int = 0
    param_bytes: int = 0
    input_bytes: int = 0
    output_bytes: int = 0

    def is_empty(self) -> bool:
        return not self.ops and not (self.flops or self.param_bytes or self.input_bytes or self.output_bytes)


@dataclass(frozen=True)
class Measurement:
    """One node's measurement of one block signature."""

    node_id: str
    signature: str
    latency_ms: float
    p10_ms: float = 0.0
    p90_ms: float = 0.0
    cv: float = 0.0
    samples: int = 1
    energy_mj: float | None = None
    energy_source: str = ""
    source: str = SOURCE_EDGE
    settings: dict = field(default_factory=dict)
    measured_at: float = 0.0


class LatestValue(NamedTuple):
    """A node's latest latency of one signature and its latest metered energy (None: never metered): what the
    predictor fits, as a plain tuple."""

    node_id: str
    signature: str
    latency_ms: float
    energy_mj: float | None
    energy_source: str | None  # of that energy (None with it)


@dataclass(frozen=True)
class ModelRun:
    """A whole-model end-to-end measurement against the sum of its blocks."""

    node_id: str
    model: str
    latency_ms: float
    sum_of_blocks_ms: float
    energy_mj: float | None = None
    energy_source: str = ""
    measured_at: float = 0.0


MAX_OPS_PER_BLOCK = 10_000
MAX_OP_NAME_LENGTH = 128
MAX_SETTING_LENGTH = 64  # a RuntimeSettings string (execution provider, graph optimization level)
ENERGY_SOURCES = ("nvml", "rapl", "jetson", "model")


def check_id(value: str, what: str) -> str:
    if (problem := id_problem(value)) is not None:
        raise InvalidArgument(f"{what} {problem}" if not value else f"{what} {value[:40]!r} {problem}")
    return value


def check_positive(value: float, what: str, upper: float, lower: float = 0.0) -> float:
    """`value` must be finite, positive, at least `lower` and at most `upper`."""
    if not math.isfinite(value) or value <= 0 or value < lower or value > upper:
        low = f"[{lower:g}" if lower > 0 else "(0"
        raise InvalidArgument(f"{what} must be a finite number in {low}, {upper:g}], got {value!r}")
    return value


def check_features(features: Features, what: str) -> Features:
    for name in ("flops", "param_bytes", "input_bytes", "output_bytes"):
        value = getattr(features, name)
        if value < 0:
            raise InvalidArgument(f"{what}: {name} must not be negative, got {value}")
    if len(features.ops) > MAX_OPS_PER_BLOCK:  # a size limit, as docs/protocol.md says
        raise ResourceExhausted(f"{what}: {len(features.ops)} ops is not a block (at most {MAX_OPS_PER_BLOCK})")
    for op in features.ops:
        if not op or len(op) > MAX_OP_NAME_LENGTH or not op.isprintable():
            raise InvalidArgument(f"{what}: op {op[:40]!r} must be 1-{MAX_OP_NAME_LENGTH} printable characters")
    return features


def check_measurement(m: Measurement) -> Measurement:
    """Validate a reported measurement; raises InvalidArgument naming the bad field."""
    where = f"signature {m.signature[:16]!r}"
    check_id(m.signature, "signature")
    check_positive(m.latency_ms, f"{where}: latency median_ms", MAX_LATENCY_MS, MIN_LATENCY_MS)
    for name in ("p10_ms", "p90_ms", "cv"):
        value = getattr(m, name)
        if not math.isfinite(value) or value < 0:
            raise InvalidArgument(f"{where}: {name} must be finite and >= 0, got {value!r}")
    if m.p10_ms and m.p90_ms and m.p10_ms > m.p90_ms:
        raise InvalidArgument(f"{where}: p10_ms {m.p10_ms} > p90_ms {m.p90_ms}")
    if m.samples < 0 or m.samples > 10_000_000:
        raise InvalidArgument(f"{where}: samples must be in [0, 1e7], got {m.samples}")
    for name, value in m.settings.items():  # stored with every measurement: a 1 MB string grew the database 384 MiB
        if isinstance(value, str) and (len(value) > MAX_SETTING_LENGTH or not value.isprintable()):
            raise InvalidArgument(
                f"{where}: settings {name} {value[:40]!r} must be at most {MAX_SETTING_LENGTH} printable characters"
            )
    return replace(m, energy_source=check_energy_source(m.energy_mj, m.energy_source, where))


def check_energy_source(energy_mj: float | None, source: str, where: str) -> str:
    """The source of a reported energy (checked with the energy); "" without one, whatever was sent."""
    if energy_mj is None:
        return ""
    check_positive(energy_mj, f"{where}: energy_mj", MAX_ENERGY_MJ, MIN_ENERGY_MJ)
    if source not in ENERGY_SOURCES:
        raise InvalidArgument(f"{where}: energy_source must be one of {', '.join(ENERGY_SOURCES)}, got {source[:40]!r}")
    return source
