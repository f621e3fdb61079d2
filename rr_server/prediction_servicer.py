"""roadrunner.v1.PredictionService: per-block latency and energy for a node, with provenance."""

from __future__ import annotations

from rr_proto.roadrunner.v1 import roadrunner_pb2 as rr
from rr_proto.roadrunner.v1 import roadrunner_pb2_grpc as rr_grpc
from rr_server.convert import features_from_pb, prediction_to_pb
from rr_server.errors import InvalidArgument, NotFound, ResourceExhausted
from rr_server.predictor import Predictor
from rr_server.records import check_features, check_id
from rr_server.storage import Storage

MAX_SIGNATURES = 100_000


class PredictionServicer(rr_grpc.PredictionServiceServicer):
    def __init__(self, storage: Storage, predictor: Predictor) -> None:
        self._storage = storage
        self._predictor = predictor

    def Predict(self, request, context):
        node_id = check_id(request.node_id, "node_id")
        if self._storage.get_node(node_id) is None:
            raise NotFound(f"node {node_id!r} is not registered")
        if len(request.signatures) > MAX_SIGNATURES:
            raise ResourceExhausted(f"more than {MAX_SIGNATURES} signatures in one query")
        if request.features and len(request.features) != len(request.signatures):
            raise InvalidArgument(
                f"features must be empty or parallel to signatures ({len(request.features)} vs "
                f"{len(request.signatures)})"
            )
        for s in request.signatures:
            check_id(s, "signature")
        features = {
            s: check_features(features_from_pb(f), f"signature {s[:16]!r}")
            for s, f in zip(request.signatures, request.features, strict=False)
        }
        features = {s: f for s, f in features.items() if not f.is_empty()}  # a query's features are not stored
        records = self._predictor.predict(node_id, list(request.signatures), features)
        return rr.PredictResponse(
            predictions=[prediction_to_pb(p) for p in records],
            e2e_correction=self._storage.e2e_correction(node_id, request.model),
            model_latency_ms=(self._storage.model_latency(node_id, request.model) or 0.0) if request.model else 0.0,
        )
