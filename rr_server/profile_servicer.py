"""roadrunner.v1.ProfileService: layer-profile and network-profile reports.

A layer-profile stream is validated as a whole and stored in one transaction before the acknowledgement, so a report
is either completely stored or not at all; it must close with its `end` message, which counts its items (a cancelled
stream can reach a gRPC Python server as a clean end: grpc/grpc#33038). Only slices already uploaded are recorded
for their blocks and models; the cloud profiler times the slice storage holds for each (the first one reported).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace

from rr_edge.netmodel import KINDS, NetworkModel
from rr_proto.limits import MAX_ID_LENGTH
from rr_proto.roadrunner.v1 import roadrunner_pb2 as rr
from rr_proto.roadrunner.v1 import roadrunner_pb2_grpc as rr_grpc
from rr_server.auth import require_writer
from rr_server.cloud_profiler import CloudProfiler
from rr_server.convert import (
    features_from_pb,
    measurement_from_pb,
    model_run_from_pb,
    network_profile_from_dict,
    network_profile_to_dict,
)
from rr_server.errors import InvalidArgument, NotFound, PermissionDenied, ResourceExhausted
from rr_server.predictor import Predictor
from rr_server.records import (
    ENERGY_SOURCES,
    MAX_ENERGY_MJ,
    MAX_LATENCY_MS,
    MIN_LATENCY_MS,
    ROLE_CLOUD,
    Features,
    Measurement,
    ModelRun,
    check_energy_source,
    check_features,
    check_id,
    check_measurement,
    check_positive,
)
from rr_server.slices import SliceStore, check_slice_id
from rr_server.storage import Storage

MAX_ITEMS_PER_REPORT = 100_000
# The op names of one report's block features, in all: each block may name 10,000 ops of 128 characters, and 400 such
# blocks in one accepted report made a 505 MB database (a real model's blocks name tens of short ops each).
MAX_REPORT_OP_BYTES = 64 * 1024 * 1024
MAX_NETWORK_SAMPLES = 10_000
MAX_MODEL_JSON_BYTES = 64 * 1024  # a fitted curve: 5 coefficients, or a knot per profiled size
MAX_CLOCK_AHEAD_S = 365 * 86400.0  # an edge clock may run ahead; a time in milliseconds is 1000x ahead


class ProfileServicer(rr_grpc.ProfileServiceServicer):
    def __init__(self, storage: Storage, predictor: Predictor, slices: SliceStore, cloud: CloudProfiler | None) -> None:
        self._storage = storage
        self._predictor = predictor
        self._slices = slices
        self._cloud = cloud

    def _lost(self, slice_id: str) -> bool:
        return bool(slice_id) and self._slices.get(slice_id) is None

    def _known_node(self, node_id: str) -> str:
        check_id(node_id, "node_id")
        require_writer(node_id)
        node = self._storage.get_node(node_id)
        if node is None:
            raise NotFound(f"node {node_id!r} is not registered; call NodeService.RegisterNode first")
        if node.role == ROLE_CLOUD:  # its row is timed by the server itself (rr_server.cloud_profiler)
            raise PermissionDenied(f"node {node_id!r} is this server's own row; only the server reports for it")
        return node_id

    def ReportLayerProfiles(self, request_iterator, context):
        now = time.time()
        measurements: list[Measurement] = []
        runs: list[ModelRun] = []
        features: dict[str, Features] = {}
        slice_ids: dict[str, str] = {}
        model_slices: dict[str, str] = {}
        checked: set[str] = set()
        ended = False
        op_bytes = 0
        for k, request in enumerate(request_iterator):
            if ended:
                raise InvalidArgument("a report item came after the report's end message; nothing was stored")
            which = request.WhichOneof("item")
            if which == "end":
                if request.end.items != k:
                    raise InvalidArgument(f"the report's end message counts {request.end.items} items, {k} arrived")
                ended = True
                continue
            if k >= MAX_ITEMS_PER_REPORT:
                raise ResourceExhausted(f"more than {MAX_ITEMS_PER_REPORT} items in one report; split it")
            if request.node_id not in checked:
                checked.add(self._known_node(request.node_id))
            if which == "layer":
                layer = request.layer
                m = check_measurement(measurement_from_pb(request.node_id, request.settings, layer, now))
                measurements.append(m)
                if layer.HasField("features"):
                    f = check_features(features_from_pb(layer.features), f"signature {layer.signature[:16]!r}")
                    op_bytes += sum(map(len, f.ops))
                    if op_bytes > MAX_REPORT_OP_BYTES:
                        raise ResourceExhausted(
                            f"the report's block features name over {MAX_REPORT_OP_BYTES:,} bytes of ops in all; "
                            "nothing was stored (split the report)"
                        )
                    if not f.is_empty() and features.setdefault(layer.signature, f) != f:
                        raise InvalidArgument(f"signature {layer.signature[:16]!r}: two different features")
                if layer.slice_id:
                    slice_ids.setdefault(layer.signature, check_slice_id(layer.slice_id))
            elif which == "model":
                runs.append(_check_run(model_run_from_pb(request.node_id, request.model, now)))
                if request.model.slice_id:
                    model_slices.setdefault(request.model.model, check_slice_id(request.model.slice_id))
            else:
                raise InvalidArgument(f"report item {k} carries neither a layer nor a model profile")
        if not ended:
            raise InvalidArgument(
                "the report stream ended without its end message (cut short or cancelled?); nothing was stored. "
                "Edges before roadrunner 0.2 do not send it: upgrade the edge"
            )
        slice_ids = {s: i for s, i in slice_ids.items() if self._slices.get(i) is not None}
        model_slices = {m: i for m, i in model_slices.items() if self._slices.get(i) is not None}
        # a stored slice that the store has lost (evicted before the server timed it) gives way to the reported one;
        # kept, it had kept every later upload of the block from being timed
        lost = [s for s in slice_ids if self._lost(self._storage.slice_of(s))]
        lost += [m for m in model_slices if self._lost(self._storage.model_slice_of(m))]
        self._storage.add_reports(measurements, features, slice_ids, runs, model_slices, lost)
        if measurements or features:  # whole-model runs are read at query time: no refit for them
            self._predictor.notify()
        if self._cloud is not None:
            for signature in slice_ids:
                self._cloud.submit(signature, self._storage.slice_of(signature))
            for model in model_slices:
                self._cloud.submit_model(model, self._storage.model_slice_of(model))
        return rr.ReportLayerProfilesResponse(accepted_layers=len(measurements), accepted_models=len(runs))

    def ReportNetworkProfile(self, request, context):
        node_id = self._known_node(request.node_id)
        directions = ["uplink", "downlink"] + (["upload"] if request.profile.HasField("upload") else [])
        for direction in directions:
            samples = getattr(request.profile, direction).samples
            if len(samples) > MAX_NETWORK_SAMPLES:
                raise ResourceExhausted(f"{direction}: more than {MAX_NETWORK_SAMPLES} samples")
            for k, s in enumerate(samples):
                if s.bytes <= 0:
                    raise InvalidArgument(f"{direction} sample {k}: bytes must be positive, got {s.bytes}")
                check_positive(s.ms, f"{direction} sample {k}: ms", MAX_LATENCY_MS)
                if s.HasField("energy_mj"):
                    check_positive(s.energy_mj, f"{direction} sample {k}: energy_mj", MAX_ENERGY_MJ)
            for name in ("poly4_error", "affine_error", "pwl_error"):
                value = getattr(getattr(request.profile, direction), name)
                if not math.isfinite(value):  # negative: not computed (too few sizes)
                    raise InvalidArgument(f"{direction}: {name} must be finite, got {value!r}")
            _check_model_json(getattr(request.profile, direction).model_json, direction)
            chosen = getattr(request.profile, direction).chosen_model
            if chosen not in KINDS:
                raise InvalidArgument(
                    f"{direction}: chosen_model must be one of {', '.join(KINDS)}, got {chosen[:40]!r}"
                )
        measured_at = request.profile.measured_at
        if not (math.isfinite(measured_at) and 0 <= measured_at <= time.time() + MAX_CLOCK_AHEAD_S):
            raise InvalidArgument(f"measured_at must be Unix seconds (not milliseconds), got {measured_at!r}")
        if request.profile.energy_source not in ("", *ENERGY_SOURCES):
            raise InvalidArgument(f"energy_source must be empty or one of {', '.join(ENERGY_SOURCES)}")
        self._storage.put_network_profile(node_id, network_profile_to_dict(request.profile))
        return rr.ReportNetworkProfileResponse()

    def GetNetworkProfile(self, request, context):
        profile = self._storage.get_network_profile(request.node_id)
        if profile is None:
            raise NotFound(f"no network profile for node {request.node_id!r}")
        return rr.GetNetworkProfileResponse(profile=network_profile_from_dict(profile))

    def ListMeasuredSignatures(self, request, context):
        if self._storage.get_node(request.node_id) is None:
            raise NotFound(f"node {request.node_id[:80]!r} is not registered")
        return rr.ListMeasuredSignaturesResponse(signatures=self._storage.measured_signatures(request.node_id))


def _check_run(run: ModelRun) -> ModelRun:
    if not run.model or len(run.model) > MAX_ID_LENGTH or not run.model.isprintable():  # no newlines in the logs
        raise InvalidArgument(f"model name {run.model[:40]!r} must be 1-{MAX_ID_LENGTH} printable characters")
    check_positive(run.latency_ms, f"model {run.model!r}: latency median_ms", MAX_LATENCY_MS, MIN_LATENCY_MS)
    check_positive(run.sum_of_blocks_ms, f"model {run.model!r}: sum_of_blocks_ms", MAX_LATENCY_MS, MIN_LATENCY_MS)
    return replace(run, energy_source=check_energy_source(run.energy_mj, run.energy_source, f"model {run.model!r}"))


def _check_model_json(text: str, direction: str) -> None:
    """A direction's fitted model must be one the edge can plan with (`NetworkModel.to_dict` as JSON, finite numbers):
    a NaN in it, or no model at all, made every later plan of the node fail."""
    if len(text) > MAX_MODEL_JSON_BYTES:
        raise ResourceExhausted(
            f"{direction}: model_json of {len(text):,} characters (at most {MAX_MODEL_JSON_BYTES:,})"
        )
    try:
        model = json.loads(text)
        if not isinstance(model, dict):
            raise ValueError("not a JSON object")
        NetworkModel.from_dict(model)
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:  # RecursionError: nesting too deep
        raise InvalidArgument(
            f"{direction}: model_json is not a network model (NetworkModel.to_dict as JSON): {str(exc)[:120]}"
        ) from None
