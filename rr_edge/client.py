"""gRPC client of a RoaD-RuNNer server: the roadrunner.v1 services and the KServe v2 inference service.

    with Client("localhost:8001") as client:
        client.register_node("jetson-1", describe_device())
        slice_id = client.ensure_slice(onnx_bytes, label="resnet18[3:7]")
        outputs = client.infer(slice_id, {"input": x})

Every call has a deadline: the `timeout_s` argument when given, else `ClientOptions.timeout_s` plus, for
transfers, the time their bytes take at `ClientOptions.min_bandwidth_bytes_per_s`; gRPC is given at most
`MAX_TIMEOUT_S` (about 31 years), so `timeout_s=math.inf` is a call without a deadline. Inputs that cannot be sent
(a BYTES tensor of ints, a complex tensor) raise rr_edge.errors.InputError before anything is sent. Errors of the
call itself, all raised `from None` by one helper (`_rpc`):

    grpc.RpcError
    ├── UNAVAILABLE, DEADLINE_EXCEEDED, CANCELLED  ->  rr_edge.errors.ServerUnavailable(code)
    ├── RESOURCE_EXHAUSTED with a retry pushback   ->  rr_edge.errors.ServerBusy(retry_after_s)
    └── any other status                          ->  rr_edge.errors.ServerError(code)

A server with every stream slot in use refuses a new stream as busy, and one refitting its predictions to make room
for more never-measured blocks refuses such a query. Uploads, reports, echo transfers and predictions are then
tried again after the pushback the server gives, the wait doubling each time (jittered, at most 2 s), for up to
`ClientOptions.busy_wait_s` or the call's `busy_wait_s` (0: not retried), and never past an explicit `timeout_s`,
before ServerBusy is raised.

A lost connection is retried with gRPC's exponential backoff capped at `ClientOptions.max_reconnect_backoff_s` (gRPC's
own cap is 120 s), so that a restarted server is reachable again within about that long.

Messages are limited to `max_message_bytes` both ways (the server's default is the same 256 MiB); slices and echo
payloads travel in `chunk_bytes` chunks. With `token`, each call carries ``authorization: Bearer <token>``;
with `tls`, or an address given as ``grpcs://HOST:PORT`` (system root certificates unless `tls` says otherwise),
the channel is TLS (mTLS when a client certificate is given).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import grpc
import numpy as np

from rr_edge import _wire as wire
from rr_edge._status import retry_busy, server_error
from rr_edge.client_options import (
    DEFAULT_BUSY_WAIT_S,
    DEFAULT_CHUNK_BYTES,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_MAX_RECONNECT_BACKOFF_S,
    DEFAULT_TIMEOUT_S,
    MAX_TIMEOUT_S,
    ClientOptions,
    TlsOptions,
    check_address,
    check_chunk,
    check_number,
    split_scheme,
)
from rr_edge.client_types import NodeInfo, Prediction, Predictions, ServerInfo, SliceStatus, UploadResult, slice_id_of
from rr_edge.device import DeviceInfo
from rr_edge.echo import EchoStream, payload
from rr_edge.errors import ArgumentError, InputError, ServerError, ServerUnavailable
from rr_edge.infer_stream import InferOutputs, InferStream, Requests, decode
from rr_edge.profiles import (
    BlockFeatures,
    LayerMeasurement,
    ModelMeasurement,
    NetworkProfile,
)
from rr_edge.session import OrtSettings
from rr_proto import codec, framing
from rr_proto.inference import grpc_service_pb2 as ipb
from rr_proto.inference import grpc_service_pb2_grpc as igrpc
from rr_proto.roadrunner.v1 import roadrunner_pb2 as pb
from rr_proto.roadrunner.v1 import roadrunner_pb2_grpc as rgrpc

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_BUSY_WAIT_S",
    "DEFAULT_CHUNK_BYTES",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_MAX_RECONNECT_BACKOFF_S",
    "DEFAULT_TIMEOUT_S",
    "MAX_TIMEOUT_S",
    "Client",
    "ClientOptions",
    "InferOutputs",
    "InferStream",
    "NodeInfo",
    "Prediction",
    "Predictions",
    "ServerInfo",
    "SliceStatus",
    "TlsOptions",
    "UploadResult",
    "check_address",
    "slice_id_of",
]

UPLOAD_MARGIN = 3.0  # an upload with a predicted duration may take this many times that beyond timeout_s
_MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
_MODEL_STREAM_INFER = "/inference.GRPCInferenceService/ModelStreamInfer"
_HEALTH = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


class Client:
    """A connection to one server. Thread-safe (gRPC channels are); use as a context manager or call `close`."""

    def __init__(self, address: str, options: ClientOptions | None = None) -> None:
        scheme, self.address = split_scheme(check_address(address))
        opts = options or ClientOptions()
        if scheme == "grpcs" and opts.tls is None:  # a plaintext channel would send the bearer token in the clear
            opts = replace(opts, tls=TlsOptions())
        self.options = opts
        if opts.tls is not None:
            overrides = opts.channel_options()
            if opts.tls.server_name:
                overrides.append(("grpc.ssl_target_name_override", opts.tls.server_name))
            self._channel = grpc.secure_channel(self.address, opts.tls.credentials(), options=overrides)
        else:
            self._channel = grpc.insecure_channel(self.address, options=opts.channel_options())
        self._metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {opts.token}"),) if opts.token else ()
        self._closed = False
        self._nodes = rgrpc.NodeServiceStub(self._channel)
        self._profiles = rgrpc.ProfileServiceStub(self._channel)
        self._predictions = rgrpc.PredictionServiceStub(self._channel)
        self._slices = rgrpc.SliceServiceStub(self._channel)
        self._echo = rgrpc.EchoServiceStub(self._channel)
        self._infer = igrpc.GRPCInferenceServiceStub(self._channel)
        # The tensor-carrying methods exchange bytes framed by rr_proto.framing (no protobuf copies of tensors).
        self._model_infer = self._channel.unary_unary(_MODEL_INFER, request_serializer=None, response_deserializer=None)
        self._model_stream_infer = self._channel.stream_stream(
            _MODEL_STREAM_INFER, request_serializer=None, response_deserializer=None
        )
        self._health = self._channel.unary_unary(
            "/grpc.health.v1.Health/Check", request_serializer=None, response_deserializer=None
        )

    # -- plumbing ------------------------------------------------------------------------------------------------

    def close(self) -> None:
        self._closed = True
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self, what: str) -> None:
        if self._closed:  # gRPC's own error is a bare ValueError ("Channel closed!")
            raise ServerUnavailable(f"{what}: this client is closed", "UNAVAILABLE")

    @contextmanager
    def _rpc(self, what: str) -> Iterator[None]:
        self._check_open(what)
        try:
            yield
        except grpc.RpcError as exc:
            raise server_error(exc, what) from None
        except ValueError:
            self._check_open(what)  # closed while the call ran
            raise

    def _retry_busy(
        self,
        what: str,
        call: Callable[[float | None], Any],
        timeout_s: float | None,
        busy_wait_s: float | None = None,
    ) -> Any:
        """`call(attempt_timeout_s)` under `_rpc(what)`, made again while the server answers busy (`retry_busy`) for
        up to `busy_wait_s` (None: `options.busy_wait_s`); an explicit `timeout_s` bounds the whole."""

        def attempt(left_s: float | None) -> Any:
            with self._rpc(what):
                return call(left_s)

        if busy_wait_s is not None:
            check_number("busy_wait_s", busy_wait_s)  # NaN: retried forever
        return retry_busy(attempt, timeout_s, self.options.busy_wait_s if busy_wait_s is None else busy_wait_s)

    def _kw(self, timeout_s: float | None, nbytes: int = 0) -> dict[str, Any]:
        """Call options: an explicit `timeout_s` is the deadline; by default `options.timeout_s` plus the time
        `nbytes` take at `options.min_bandwidth_bytes_per_s`."""
        if timeout_s is None:
            timeout_s = self._transfer_timeout_s(nbytes)
        return {"timeout": _deadline_s(timeout_s), "metadata": self._metadata}

    def _transfer_timeout_s(self, nbytes: int) -> float:
        return self.options.timeout_s + nbytes / self.options.min_bandwidth_bytes_per_s

    # -- health and server ---------------------------------------------------------------------------------------

    def health(self, service: str = "", timeout_s: float | None = None) -> str:
        """grpc.health.v1 status of `service` ("" = the whole server): SERVING, NOT_SERVING... A service the server
        does not know is ServerError NOT_FOUND, as the health protocol answers it."""
        name = service.encode()
        request = (b"\x0a" + _varint(len(name)) + name) if name else b""
        with self._rpc("Health.Check"):
            raw = self._health(request, **self._kw(timeout_s))
        return _HEALTH.get(_health_status(raw), "UNKNOWN")

    def healthy(self, timeout_s: float | None = None) -> bool:
        """True when the server answers SERVING within the deadline; never raises."""
        try:
            return self.health(timeout_s=timeout_s) == "SERVING"
        except ServerError:
            return False

    def server_info(self, timeout_s: float | None = None) -> ServerInfo:
        with self._rpc("GetServerInfo"):
            r = self._nodes.GetServerInfo(pb.GetServerInfoRequest(), **self._kw(timeout_s))
        return ServerInfo(r.cloud_node_id, tuple(r.providers), r.version, r.max_message_bytes, r.max_slice_bytes)

    # -- nodes ---------------------------------------------------------------------------------------------------

    def register_node(
        self, node_id: str, device: DeviceInfo | None = None, role: str = "edge", timeout_s: float | None = None
    ) -> bool:
        """Register (or update) this node; True when it was created, False when it existed."""
        if role not in wire.ROLES:
            raise ArgumentError(f"role must be one of {', '.join(wire.ROLES)}")
        request = pb.RegisterNodeRequest(node_id=node_id, role=wire.ROLES[role])
        if device is not None:
            request.device.CopyFrom(wire.device_pb(device))
        with self._rpc("RegisterNode"):
            return bool(self._nodes.RegisterNode(request, **self._kw(timeout_s)).created)

    def get_node(self, node_id: str, timeout_s: float | None = None) -> NodeInfo:
        with self._rpc("GetNode"):
            return NodeInfo(
                *wire.node_fields(self._nodes.GetNode(pb.GetNodeRequest(node_id=node_id), **self._kw(timeout_s)).node)
            )

    def list_nodes(self, timeout_s: float | None = None) -> list[NodeInfo]:
        with self._rpc("ListNodes"):
            return [
                NodeInfo(*wire.node_fields(n))
                for n in self._nodes.ListNodes(pb.ListNodesRequest(), **self._kw(timeout_s)).nodes
            ]

    # -- profiles ------------------------------------------------------------------------------------------------

    def list_measured_signatures(self, node_id: str, timeout_s: float | None = None) -> set[str]:
        """Block signatures `node_id` has already measured."""
        request = pb.ListMeasuredSignaturesRequest(node_id=node_id)
        with self._rpc("ListMeasuredSignatures"):
            return set(self._profiles.ListMeasuredSignatures(request, **self._kw(timeout_s)).signatures)

    def report_layer_profiles(
        self,
        node_id: str,
        settings: OrtSettings,
        layers: Iterable[LayerMeasurement],
        models: Iterable[ModelMeasurement] = (),
        timeout_s: float | None = None,
    ) -> tuple[int, int]:
        """Stream block (and whole-model) measurements; returns (accepted layers, accepted models) once stored."""
        wire_settings = wire.settings_pb(settings)

        # Built before the call: a measurement that cannot be encoded raises here, before any of them is stored.
        requests = [
            *(pb.ReportLayerProfilesRequest(node_id=node_id, settings=wire_settings, layer=wire.layer_pb(layer))
              for layer in layers),
            *(pb.ReportLayerProfilesRequest(node_id=node_id, settings=wire_settings, model=wire.model_pb(model))
              for model in models),
        ]  # fmt: skip
        requests.append(pb.ReportLayerProfilesRequest(node_id=node_id, end=pb.ReportEnd(items=len(requests))))
        r = self._retry_busy(
            "ReportLayerProfiles",
            lambda t: self._profiles.ReportLayerProfiles(iter(requests), **self._kw(t)),
            timeout_s,
        )
        return r.accepted_layers, r.accepted_models

    def report_network_profile(self, node_id: str, profile: NetworkProfile, timeout_s: float | None = None) -> None:
        request = pb.ReportNetworkProfileRequest(node_id=node_id, profile=wire.network_pb(profile))
        with self._rpc("ReportNetworkProfile"):
            self._profiles.ReportNetworkProfile(request, **self._kw(timeout_s))

    def get_network_profile(self, node_id: str, timeout_s: float | None = None) -> NetworkProfile | None:
        """The node's stored network profile, or None when it has none."""
        try:
            with self._rpc("GetNetworkProfile"):
                r = self._profiles.GetNetworkProfile(
                    pb.GetNetworkProfileRequest(node_id=node_id), **self._kw(timeout_s)
                )
        except ServerError as exc:
            if exc.code == "NOT_FOUND":
                return None
            raise
        return wire.network_from_pb(r.profile) if r.HasField("profile") else None

    # -- predictions ---------------------------------------------------------------------------------------------

    def predict(
        self,
        node_id: str,
        signatures: Sequence[str],
        features: Sequence[BlockFeatures] | None = None,
        timeout_s: float | None = None,
        model: str = "",
    ) -> Predictions:
        """Latency/energy of each signature on `node_id` (features let the server cold-start unknown blocks); `model`
        selects that model's end-to-end correction when this node profiled it."""
        request = pb.PredictRequest(node_id=node_id, signatures=list(signatures), model=model)
        if features is not None:
            if len(features) != len(signatures):
                raise ArgumentError("features must be parallel to signatures")
            request.features.extend(wire.features_pb(f) for f in features)
        r = self._retry_busy("Predict", lambda t: self._predictions.Predict(request, **self._kw(t)), timeout_s)
        by_sig = {
            p.signature: Prediction(
                p.signature,
                p.latency_ms,
                p.energy_mj,
                wire.PROVENANCE.get(p.latency_provenance, "unknown"),
                wire.PROVENANCE.get(p.energy_provenance, "unknown"),
                p.energy_source,
            )
            for p in r.predictions
        }
        return Predictions(by_sig, r.e2e_correction or 1.0, r.model_latency_ms)

    # -- slices --------------------------------------------------------------------------------------------------

    def slice_status(self, slice_id: str, timeout_s: float | None = None) -> SliceStatus:
        """Whether the server holds `slice_id` (an unknown id is simply not cached)."""
        try:
            with self._rpc("GetSliceStatus"):
                r = self._slices.GetSliceStatus(pb.GetSliceStatusRequest(slice_id=slice_id), **self._kw(timeout_s))
        except ServerError as exc:
            if exc.code == "NOT_FOUND":
                return SliceStatus(slice_id, False, 0, False)
            raise
        return SliceStatus(r.slice_id or slice_id, r.cached, r.bytes, r.loaded)

    def upload_slice(
        self,
        data: bytes,
        label: str = "",
        *,
        check_cached: bool = True,
        timeout_s: float | None = None,
        probe: bool = False,
        load: bool = False,
        busy_wait_s: float | None = None,
        slice_id: str | None = None,
        status_timeout_s: float | None = None,
    ) -> UploadResult:
        """Upload ONNX bytes in chunks (verified by SHA-256 on the server); nothing is sent when already cached.

        ``load``: the server also opens the slice's session before it answers (unless it is open already), so that
        the first request does not wait for it. ``probe``: time this path without storing anything: the status
        query, then an upload that the server verifies, validates and opens as a load would, then discards.
        ``busy_wait_s``: how long to retry while the server is busy (None: `ClientOptions.busy_wait_s`).
        ``slice_id``: `slice_id_of(data)` where the caller has it already (`rr_edge.slicing.SliceBytes`), not hashed
        again; the server still verifies the bytes it is sent against it. ``timeout_s``: the upload's deadline
        (None: `ClientOptions.timeout_s` and the bytes at its `min_bandwidth_bytes_per_s`); the status query and the
        load of a cached slice send no slice and take `ClientOptions.timeout_s` at most (an upload-sized deadline
        held them for tens of seconds on a server that holds the slice but stopped answering: review);
        ``status_timeout_s`` shortens the status query's further (a runner starting beside a hung server)."""
        slice_id = slice_id or slice_id_of(data)
        small_s = self.options.timeout_s if timeout_s is None else min(timeout_s, self.options.timeout_s)
        if check_cached:  # the status query and the load of a cached slice send no slice: small_s at most
            status_s = small_s if status_timeout_s is None else min(small_s, status_timeout_s)
            status = self.slice_status(slice_id, status_s)
            if status.cached and not probe:
                log.debug("slice %s (%s) already cached", slice_id[:12], label)
                if load and not status.loaded:
                    self.load_model(slice_id, small_s)
                return UploadResult(slice_id, True, status.bytes or len(data))
        chunk = self.options.chunk_bytes
        view = memoryview(data)
        try:  # here, not in the generator gRPC reads: there a bad label became "UNKNOWN: Exception iterating"
            header = pb.SliceHeader(slice_id=slice_id, size_bytes=len(data), label=label, probe=probe, load=load)
        except ValueError as exc:  # a label protobuf cannot hold as UTF-8 (a lone surrogate)
            raise ArgumentError(f"upload_slice: label {label!r} is not valid UTF-8 text") from exc

        def parts() -> Iterator[pb.UploadSliceRequest]:
            yield pb.UploadSliceRequest(header=header)
            for offset in range(0, len(data), chunk):
                yield pb.UploadSliceRequest(chunk=bytes(view[offset : offset + chunk]))

        r = self._retry_busy(
            f"UploadSlice {label or slice_id[:12]}",
            lambda t: self._slices.UploadSlice(parts(), **self._kw(t, len(data))),
            timeout_s,
            busy_wait_s,
        )
        if r.slice_id and r.slice_id != slice_id:
            raise ServerError(f"UploadSlice: server stored {r.slice_id}, expected {slice_id}", "DATA_LOSS")
        return UploadResult(slice_id, r.cached, r.bytes or len(data))

    def ensure_slice(
        self,
        onnx_bytes: bytes,
        label: str = "",
        load: bool = False,
        busy_wait_s: float | None = None,
        expected_s: float | None = None,
        slice_id: str | None = None,
        status_timeout_s: float | None = None,
    ) -> str:
        """Make sure the server holds the slice (uploading it if needed) and, with `load`, has its session open;
        returns its id. `expected_s`: how long the upload is predicted to take; its deadline then allows
        `UPLOAD_MARGIN` times that beyond `timeout_s`, when that is later than the default (a link slower than
        `min_bandwidth_bytes_per_s` would otherwise never finish a large slice, sending it again and again); it is the
        upload's alone, not the status query's or the load's (`upload_slice`). `slice_id`, `status_timeout_s`: see
        `upload_slice`."""
        timeout_s = None
        if expected_s is not None:
            planned = self.options.timeout_s + UPLOAD_MARGIN * expected_s
            timeout_s = max(planned, self._transfer_timeout_s(len(onnx_bytes)))
        result = self.upload_slice(
            onnx_bytes,
            label,
            load=load,
            busy_wait_s=busy_wait_s,
            timeout_s=timeout_s,
            slice_id=slice_id,
            status_timeout_s=status_timeout_s,
        )
        return result.slice_id

    # -- inference (KServe v2) -----------------------------------------------------------------------------------

    def server_live(self, timeout_s: float | None = None) -> bool:
        with self._rpc("ServerLive"):
            return bool(self._infer.ServerLive(ipb.ServerLiveRequest(), **self._kw(timeout_s)).live)

    def server_ready(self, timeout_s: float | None = None) -> bool:
        with self._rpc("ServerReady"):
            return bool(self._infer.ServerReady(ipb.ServerReadyRequest(), **self._kw(timeout_s)).ready)

    def model_ready(self, slice_id: str, timeout_s: float | None = None) -> bool:
        with self._rpc("ModelReady"):
            return bool(self._infer.ModelReady(ipb.ModelReadyRequest(name=slice_id), **self._kw(timeout_s)).ready)

    def model_metadata(self, slice_id: str, timeout_s: float | None = None) -> dict[str, Any]:
        """{"name", "platform", "inputs": [{"name","datatype","shape"}], "outputs": [...]}."""
        with self._rpc("ModelMetadata"):
            r = self._infer.ModelMetadata(ipb.ModelMetadataRequest(name=slice_id), **self._kw(timeout_s))

        def tensors(ts: Iterable[Any]) -> list[dict[str, Any]]:
            return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in ts]

        return {"name": r.name, "platform": r.platform, "inputs": tensors(r.inputs), "outputs": tensors(r.outputs)}

    def load_model(self, slice_id: str, timeout_s: float | None = None) -> None:
        """Open an inference session for a cached slice ahead of the first request."""
        with self._rpc("RepositoryModelLoad"):
            self._infer.RepositoryModelLoad(ipb.RepositoryModelLoadRequest(model_name=slice_id), **self._kw(timeout_s))

    def unload_model(self, slice_id: str, timeout_s: float | None = None) -> None:
        request = ipb.RepositoryModelUnloadRequest(model_name=slice_id)
        with self._rpc("RepositoryModelUnload"):
            self._infer.RepositoryModelUnload(request, **self._kw(timeout_s))

    def infer(
        self,
        slice_id: str,
        inputs: Mapping[str, np.ndarray],
        timeout_s: float | None = None,
        outputs: Sequence[str] = (),
    ) -> InferOutputs:
        """Run a cached slice on the server (raw tensor contents both ways, framed without copies by
        rr_proto.framing; the outputs are read-only views of the received message)."""
        with _sendable(slice_id):
            request = framing.serialize_infer_request(slice_id, inputs, outputs)
        with self._rpc(f"ModelInfer {slice_id[:12]}"):
            response = self._model_infer(request, **self._kw(timeout_s, 2 * len(request)))
        return decode(response)

    def stream_infer(
        self, slice_id: str, batches: Iterable[Mapping[str, np.ndarray]], timeout_s: float | None = None
    ) -> InferStream:
        """Run many requests over one ModelStreamInfer stream, outputs in order (see InferStream).

        The stream lives as long as `batches` yields, so it has no deadline unless `timeout_s` (for the whole stream)
        is given; `InferStream.cancel` ends it at once.
        """
        requests = Requests(_stream_requests(slice_id, batches))
        kw: dict[str, Any] = {"metadata": self._metadata}
        if timeout_s is not None:
            kw["timeout"] = _deadline_s(timeout_s)
        what = f"ModelStreamInfer {slice_id[:12]}"
        with self._rpc(what):  # a client closed meanwhile by another thread: ServerUnavailable, not ValueError
            call = self._model_stream_infer(requests, **kw)
        return InferStream(call, what, requests)

    # -- echo (network profiling) --------------------------------------------------------------------------------

    def echo_send(
        self,
        nbytes: int,
        chunk_bytes: int | None = None,
        timeout_s: float | None = None,
        busy_wait_s: float | None = None,
    ) -> int:
        """Send `nbytes` bytes to the server in chunks; returns what it says it received."""
        _check_nbytes(nbytes)
        chunk = check_chunk(chunk_bytes or self.options.chunk_bytes, self.options.max_message_bytes)
        block = payload(min(chunk, max(nbytes, 1)))

        def parts() -> Iterator[pb.SendRequest]:
            left = nbytes
            while left > 0:
                n = min(left, chunk)
                yield pb.SendRequest(payload=block if n == len(block) else block[:n])
                left -= n

        received = self._retry_busy(
            f"Echo.Send {nbytes} B",
            lambda t: self._echo.Send(parts(), **self._kw(t, nbytes)).received_bytes,
            timeout_s,
            busy_wait_s,
        )
        if received != nbytes:
            raise ServerError(f"Echo.Send: server received {received} of {nbytes} bytes", "DATA_LOSS")
        return received

    def echo_receive(
        self,
        nbytes: int,
        chunk_bytes: int | None = None,
        timeout_s: float | None = None,
        busy_wait_s: float | None = None,
    ) -> int:
        """Have the server stream `nbytes` bytes to this node; returns the byte count received."""
        _check_nbytes(nbytes)
        chunk = check_chunk(chunk_bytes or self.options.chunk_bytes, self.options.max_message_bytes)
        request = pb.ReceiveRequest(bytes=nbytes, chunk_bytes=chunk)

        def receive(attempt_timeout_s: float | None) -> int:
            return sum(len(m.payload) for m in self._echo.Receive(request, **self._kw(attempt_timeout_s, nbytes)))

        received = self._retry_busy(f"Echo.Receive {nbytes} B", receive, timeout_s, busy_wait_s)
        if received != nbytes:
            raise ServerError(f"Echo.Receive: got {received} of {nbytes} bytes", "DATA_LOSS")
        return received

    def echo_stream(self, chunk_bytes: int | None = None) -> EchoStream:
        """One open EchoService.Exchange stream (`rr_edge.echo.EchoStream`): transfers and their answers timed as the
        requests of an open inference stream travel, in messages of at most `chunk_bytes` (the client's chunk size
        by default). Each exchange waits for its answer as long as a call moving its bytes would (`timeout_s`
        plus the bytes at `min_bandwidth_bytes_per_s`); close the stream, or use it as a context manager."""
        chunk = check_chunk(chunk_bytes or self.options.chunk_bytes, self.options.max_message_bytes)

        def open_call(requests: Iterator[pb.ExchangeRequest]) -> Any:
            with self._rpc(EchoStream.what):  # a closed client: ServerUnavailable
                return self._echo.Exchange(requests, metadata=self._metadata)

        return EchoStream(open_call, payload, lambda nbytes: _deadline_s(self._transfer_timeout_s(nbytes)), chunk)


def _deadline_s(timeout_s: float) -> float:
    """The deadline gRPC is given for `timeout_s`: at most MAX_TIMEOUT_S (beyond about 7e9 s gRPC's clock overflows
    and the call fails at once); NaN, which no clock reaches, is an ArgumentError."""
    if not timeout_s > 0:  # NaN too; a timeout <= 0 had gone to gRPC and come back as a server outage
        raise ArgumentError(f"timeout_s must be a number of seconds > 0, got {timeout_s}")
    return min(timeout_s, MAX_TIMEOUT_S)


@contextmanager
def _sendable(slice_id: str) -> Iterator[None]:
    """Inputs that cannot travel (a BYTES element that is no str or bytes, a dtype KServe has no datatype for) raise
    InputError, the package's error for a request's inputs: codec's own is no RoadRunnerError (a CLI traceback)."""
    try:
        yield
    except codec.CodecError as exc:
        raise InputError(f"ModelInfer {slice_id[:12]}: {exc}") from None


def _stream_requests(slice_id: str, batches: Iterable[Mapping[str, np.ndarray]]) -> Iterator[bytes]:
    for k, batch in enumerate(batches):
        with _sendable(slice_id):
            request = framing.serialize_infer_request(slice_id, batch, request_id=str(k))
        yield request


def _check_nbytes(nbytes: int) -> None:
    if nbytes < 0:  # the server would answer it as a transfer that lost data
        raise ArgumentError(f"nbytes must be >= 0, got {nbytes}")


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _health_status(raw: bytes) -> int:
    """`status` (field 1, varint) of a serialized HealthCheckResponse; 0 when absent."""
    if len(raw) >= 2 and raw[0] == 0x08:
        return raw[1] & 0x7F
    return 0
