"""Conversions between the edge's plain records and the roadrunner.v1 messages.

Used only by `rr_edge.client`. Protobuf stops at the client modules (`client`, `_wire`, `echo`, `infer_stream`);
everything else in the edge package works on `rr_edge.profiles`, `rr_edge.device` and `rr_edge.session` records.
"""

from __future__ import annotations

import json
from typing import Any

from rr_edge.device import DeviceInfo
from rr_edge.profiles import (
    BlockFeatures,
    DirectionProfile,
    LatencyStats,
    LayerMeasurement,
    ModelMeasurement,
    NetworkProfile,
    NetworkSample,
)
from rr_edge.session import OrtSettings
from rr_proto.roadrunner.v1 import roadrunner_pb2 as pb

ROLES = {"edge": pb.NODE_ROLE_EDGE, "cloud": pb.NODE_ROLE_CLOUD}
PROVENANCE = {
    pb.PROVENANCE_MEASURED: "measured",
    pb.PROVENANCE_PREDICTED: "predicted",
    pb.PROVENANCE_COLD_START: "cold-start",
}


def settings_pb(s: OrtSettings) -> pb.RuntimeSettings:
    return pb.RuntimeSettings(
        execution_provider=s.provider,
        intra_op_threads=s.intra_op_threads,
        inter_op_threads=s.inter_op_threads,
        graph_optimization=s.graph_optimization,
    )


def device_pb(d: DeviceInfo) -> pb.DeviceDescriptor:
    return pb.DeviceDescriptor(
        cpu_model=d.cpu_model,
        cpu_cores=d.cpu_cores,
        memory_bytes=d.memory_bytes,
        gpu_name=d.gpu_name,
        ort_version=d.ort_version,
        ort_providers=list(d.ort_providers),
        intra_op_threads=d.intra_op_threads,
        inter_op_threads=d.inter_op_threads,
        graph_optimization=d.graph_optimization,
        device_class=d.device_class,
        hostname=d.hostname,
        extra={str(k): str(v) for k, v in d.extra.items()},
    )


def node_fields(n: pb.Node) -> tuple[str, str, dict[str, Any], float]:
    """(node_id, role, device as a dict, registered_at) of a Node message."""
    roles = {v: k for k, v in ROLES.items()}
    dev = n.device
    device = {
        "cpu_model": dev.cpu_model,
        "cpu_cores": dev.cpu_cores,
        "memory_bytes": dev.memory_bytes,
        "gpu_name": dev.gpu_name,
        "ort_version": dev.ort_version,
        "ort_providers": list(dev.ort_providers),
        "intra_op_threads": dev.intra_op_threads,
        "inter_op_threads": dev.inter_op_threads,
        "graph_optimization": dev.graph_optimization,
        "device_class": dev.device_class,
        "hostname": dev.hostname,
        "extra": dict(dev.extra),
    }
    return n.node_id, roles.get(n.role, "unspecified"), device, n.registered_at


def features_pb(f: BlockFeatures) -> pb.BlockFeatures:
    return pb.BlockFeatures(
        ops=list(f.ops),
        flops=f.flops,
        param_bytes=f.param_bytes,
        input_bytes=f.input_bytes,
        output_bytes=f.output_bytes,
    )


def latency_pb(s: LatencyStats) -> pb.LatencyStats:
    return pb.LatencyStats(median_ms=s.median_ms, p10_ms=s.p10_ms, p90_ms=s.p90_ms, cv=s.cv, samples=s.samples)


def layer_pb(m: LayerMeasurement) -> pb.LayerProfile:
    layer = pb.LayerProfile(
        signature=m.signature,
        features=features_pb(m.features),
        latency=latency_pb(m.latency),
        energy_source=m.energy_source if m.energy_mJ is not None else "",
        slice_id=m.slice_id,
    )
    if m.energy_mJ is not None:
        layer.energy_mj = m.energy_mJ
    return layer


def model_pb(m: ModelMeasurement) -> pb.ModelProfile:
    model = pb.ModelProfile(
        model=m.model,
        block_signatures=list(m.block_signatures),
        latency=latency_pb(m.latency),
        sum_of_blocks_ms=m.sum_of_blocks_ms,
        energy_source=m.energy_source if m.energy_mJ is not None else "",
        slice_id=m.slice_id,
    )
    if m.energy_mJ is not None:
        model.energy_mj = m.energy_mJ
    return model


def direction_pb(d: DirectionProfile) -> pb.DirectionProfile:
    samples = []
    for s in d.samples:
        sample = pb.NetworkSample(bytes=s.bytes, ms=s.ms)
        if s.energy_mJ is not None:
            sample.energy_mj = s.energy_mJ
        samples.append(sample)
    return pb.DirectionProfile(
        samples=samples,
        chosen_model=d.chosen_model,
        poly4_error=d.poly4_error,
        affine_error=d.affine_error,
        model_json=json.dumps(d.model),
        pwl_error=d.pwl_error,
    )


def network_pb(p: NetworkProfile) -> pb.NetworkProfile:
    return pb.NetworkProfile(
        uplink=direction_pb(p.uplink),
        downlink=direction_pb(p.downlink),
        energy_source=p.energy_source,
        measured_at=p.measured_at,
        upload=direction_pb(p.upload) if p.upload is not None else None,
    )


def direction_from_pb(d: pb.DirectionProfile) -> DirectionProfile:
    samples = tuple(NetworkSample(s.bytes, s.ms, s.energy_mj if s.HasField("energy_mj") else None) for s in d.samples)
    try:
        model = json.loads(d.model_json) if d.model_json else {}
    except ValueError:
        model = {}
    return DirectionProfile(samples, d.chosen_model, d.poly4_error, d.affine_error, model,
                            d.pwl_error if d.HasField("pwl_error") else -1.0)  # fmt: skip


def network_from_pb(p: pb.NetworkProfile) -> NetworkProfile:
    upload = direction_from_pb(p.upload) if p.HasField("upload") else None
    return NetworkProfile(
        direction_from_pb(p.uplink), direction_from_pb(p.downlink), p.energy_source, p.measured_at, upload
    )
