"""Protobuf <-> record conversions shared by the roadrunner.v1 servicers (the only place that knows both)."""

from __future__ import annotations

from google.protobuf import json_format

from rr_proto.roadrunner.v1 import roadrunner_pb2 as rr
from rr_server.errors import InvalidArgument
from rr_server.predictor import COLD_START, MEASURED, PREDICTED, PredictionRecord
from rr_server.records import ROLE_CLOUD, ROLE_EDGE, Features, Measurement, ModelRun, NodeRecord

_ROLES: dict[int, str] = {rr.NODE_ROLE_EDGE: ROLE_EDGE, rr.NODE_ROLE_CLOUD: ROLE_CLOUD}
_ROLE_PB: dict[str, rr.NodeRole] = {ROLE_EDGE: rr.NODE_ROLE_EDGE, ROLE_CLOUD: rr.NODE_ROLE_CLOUD}
_PROVENANCE = {
    MEASURED: rr.PROVENANCE_MEASURED,
    PREDICTED: rr.PROVENANCE_PREDICTED,
    COLD_START: rr.PROVENANCE_COLD_START,
}


def role_from_pb(role: int) -> str:
    if role == rr.NODE_ROLE_UNSPECIFIED:
        return ROLE_EDGE
    try:
        return _ROLES[role]
    except KeyError:
        raise InvalidArgument(f"unknown node role {role}") from None


def node_to_pb(node: NodeRecord) -> rr.Node:
    device = json_format.ParseDict(node.device, rr.DeviceDescriptor(), ignore_unknown_fields=True)
    return rr.Node(node_id=node.node_id, role=_ROLE_PB[node.role], device=device, registered_at=node.registered_at)


def device_to_dict(device: rr.DeviceDescriptor) -> dict:
    return json_format.MessageToDict(device, preserving_proto_field_name=True)


def features_from_pb(f: rr.BlockFeatures) -> Features:
    return Features(tuple(f.ops), int(f.flops), int(f.param_bytes), int(f.input_bytes), int(f.output_bytes))


def measurement_from_pb(node_id: str, settings: rr.RuntimeSettings, layer: rr.LayerProfile, now: float) -> Measurement:
    return Measurement(
        node_id=node_id,
        signature=layer.signature,
        latency_ms=layer.latency.median_ms,
        p10_ms=layer.latency.p10_ms,
        p90_ms=layer.latency.p90_ms,
        cv=layer.latency.cv,
        samples=layer.latency.samples,
        energy_mj=layer.energy_mj if layer.HasField("energy_mj") else None,
        energy_source=layer.energy_source,
        settings=json_format.MessageToDict(settings, preserving_proto_field_name=True),
        measured_at=now,
    )


def model_run_from_pb(node_id: str, model: rr.ModelProfile, now: float) -> ModelRun:
    return ModelRun(
        node_id=node_id,
        model=model.model,
        latency_ms=model.latency.median_ms,
        sum_of_blocks_ms=model.sum_of_blocks_ms,
        energy_mj=model.energy_mj if model.HasField("energy_mj") else None,
        energy_source=model.energy_source,
        measured_at=now,
    )


def network_profile_to_dict(profile: rr.NetworkProfile) -> dict:
    return json_format.MessageToDict(profile, preserving_proto_field_name=True)


def network_profile_from_dict(data: dict) -> rr.NetworkProfile:
    return json_format.ParseDict(data, rr.NetworkProfile(), ignore_unknown_fields=True)


def prediction_to_pb(p: PredictionRecord) -> rr.Prediction:
    return rr.Prediction(
        signature=p.signature,
        latency_ms=p.latency_ms,
        energy_mj=p.energy_mj,
        latency_provenance=_PROVENANCE.get(p.latency_provenance, rr.PROVENANCE_UNSPECIFIED),
        energy_provenance=_PROVENANCE.get(p.energy_provenance, rr.PROVENANCE_UNSPECIFIED),
        energy_source=p.energy_source,
    )
