"""KServe v2 / Open Inference Protocol gRPC service over cached slices (a model name is a slice id).

ModelInfer and ModelStreamInfer use the zero-copy framing of `rr_server.wire` (registered by `add_to_server`);
every other method uses the generated protobuf classes. Clients see the standard messages either way. Outputs of
`PLACE_MIN_BYTES` and more are written by ONNX Runtime straight into the response message (`wire.allocate_response`,
`Session.run`'s `allocate`): one full-tensor copy less per call. Every run is stopped when its call ends early (the
client cancelled it, its deadline passed, the server cancelled it on stop) or outlives its deadline (`_caller`).
A request whose outputs, as the slice declares them, are larger than the server's message limit is refused before
it runs (`Session.check_output_size`): its response could never be sent, and computing it only cost time and memory.
"""

from __future__ import annotations

import logging
import math
import time

import grpc
import numpy as np

from rr_proto import codec
from rr_proto.framing import ENVELOPE_BYTES
from rr_proto.inference import grpc_service_pb2 as pb
from rr_proto.inference import grpc_service_pb2_grpc as pb_grpc
from rr_server import wire
from rr_server.errors import (
    Cancelled,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
    as_server_error,
)
from rr_server.open_streams import OpenStreams
from rr_server.repository import PLATFORM, VERSION, ModelRepository
from rr_server.run_watchdog import RunCaller

SERVICE = "inference.GRPCInferenceService"

log = logging.getLogger(__name__)

SERVER_NAME = "rr-server"
# Outputs at least this large (all together) are written by ONNX Runtime straight into the response message;
# below it, binding costs more than the copy it saves (4-byte tensor: 1.80 vs 1.51 ms round trip, always binding).
PLACE_MIN_BYTES = 256 * 1024
EXTENSIONS = ("model_repository", "streaming")
_STOPPING = "the server is stopping: requests not answered on this stream were not run"
# A ModelStreamInferResponse wraps the response in a field: its tag and a length of up to 5 bytes.
_STREAM_ITEM_BYTES = 6


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, repository: ModelRepository, version: str, is_ready, max_message_bytes: int) -> None:
        self._repo = repository
        self._version = version
        self._is_ready = is_ready
        self._max_message_bytes = max_message_bytes
        self.streams = OpenStreams()  # ended by a server that stops (`OpenStreams.end`)

    def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self._is_ready())

    def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=self._version, extensions=list(EXTENSIONS))

    def ModelReady(self, request, context):
        _check_version(request.version)
        return pb.ModelReadyResponse(ready=self._repo.is_ready(request.name))

    def ModelMetadata(self, request, context):
        _check_version(request.version)
        session = self._repo.session(request.name)
        return pb.ModelMetadataResponse(
            name=request.name,
            versions=[VERSION],
            platform=PLATFORM,
            inputs=[
                pb.ModelMetadataResponse.TensorMetadata(name=s.name, datatype=s.datatype, shape=s.shape)
                for s in session.inputs
            ],
            outputs=[
                pb.ModelMetadataResponse.TensorMetadata(name=s.name, datatype=s.datatype, shape=s.shape)
                for s in session.outputs
            ],
        )

    def ModelInfer(self, request, context):
        return self._infer(request, caller=_caller(context))

    def ModelStreamInfer(self, request_iterator, context):
        caller = _caller(context)
        if not self.streams.waiting(context):
            raise Unavailable(_STOPPING)
        try:
            for request in request_iterator:
                if not self.streams.serving(context):  # cancelled by a stopping server as it arrived
                    return
                yield self._stream_answer(request, caller)
                if not self.streams.waiting(context):
                    raise Unavailable(_STOPPING)
        finally:
            self.streams.closed(context)

    def _stream_answer(self, request: wire.InferRequest, caller: RunCaller) -> wire.StreamItem:
        try:
            return wire.StreamItem(response=self._infer(request, stream=True, caller=caller))
        except Exception as exc:  # noqa: BLE001 - one bad message must not end the stream
            if (error := as_server_error(exc)) is not None:
                return _stream_error(request, f"{error.code.name}: {error.details()}")
            log.exception("ModelStreamInfer message %r failed", request.header.id[:64])
            return _stream_error(request, "INTERNAL: internal server error (see server log)")

    def RepositoryIndex(self, request, context):
        states = self._repo.index(ready_only=request.ready)
        return pb.RepositoryIndexResponse(
            models=[
                pb.RepositoryIndexResponse.ModelIndex(name=s.name, version=s.version, state=s.state, reason=s.reason)
                for s in states
            ]
        )

    def RepositoryModelLoad(self, request, context):
        self._repo.load(request.model_name)
        return pb.RepositoryModelLoadResponse()

    def RepositoryModelUnload(self, request, context):
        self._repo.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    def _infer(
        self, request: wire.InferRequest, stream: bool = False, caller: RunCaller | None = None
    ) -> wire.InferResponse:
        if request.error:
            raise InvalidArgument(request.error)
        header = request.header
        _check_version(header.model_version)
        self._repo.require(header.model_name)  # an unknown model first: decoding 4M strings for it took 4 s (review)
        try:
            inputs = wire.decode_inputs(request)
        except codec.CodecError as exc:
            raise InvalidArgument(str(exc)) from None
        # ONNX Runtime writes the outputs straight into the response message when the session can bind them.
        allocated: list[tuple[wire.InferResponse, list[np.ndarray]]] = []

        def allocate(specs: list[tuple[str, np.dtype, tuple[int, ...]]]) -> list[np.ndarray] | None:
            if sum(math.prod(shape) * dtype.itemsize for _, dtype, shape in specs) < PLACE_MIN_BYTES:
                return None
            allocated.append(wire.allocate_response(header.model_name, VERSION, header.id, specs, stream))
            return allocated[-1][1]

        names = [o.name for o in header.outputs]
        started = time.perf_counter()
        outputs = self._repo.infer(
            header.model_name, inputs, names, allocate, caller, max_output_bytes=self._max_message_bytes
        )
        run_ms = (time.perf_counter() - started) * 1e3
        if allocated and _filled(allocated[-1][1], outputs):  # unless the run fell back to ORT's own output memory
            response = allocated[-1][0]
        else:  # none of `outputs` may be a view of memory laid out above: it goes with its message (a use after free)
            placed = allocated[-1][1] if allocated else []
            outputs = {k: v.copy() if any(np.shares_memory(v, a) for a in placed) else v for k, v in outputs.items()}
            response = wire.encode_outputs(header.model_name, VERSION, header.id, outputs)
        response.set_run_ms(run_ms)
        self._check_response_size(response, header.model_name)
        return response

    def _check_response_size(self, response: wire.InferResponse, slice_id: str) -> None:
        """ResourceExhausted for a response gRPC would refuse to send: the outputs' contents are within the limit
        (checked before and after the run) but their names and shapes (an output named with 70,000 characters), or
        the request id the response repeats, took it past the framing allowed beyond it. gRPC's own refusal ended a
        ModelStreamInfer stream. The error names what takes the bytes: it had blamed the names for a long id."""
        size = wire.encoded_size(response)
        if size > self._max_message_bytes + ENVELOPE_BYTES - _STREAM_ITEM_BYTES:
            contents = sum(memoryview(raw).nbytes for raw in response.raw)
            request_id = len(response.header.id.encode())
            raise ResourceExhausted(
                f"slice {slice_id[:12]}: its response takes {size:,} bytes ({contents:,} of output contents, "
                f"{request_id:,} of request id, {size - contents - request_id:,} of output names, shapes and "
                f"framing), over the server's message limit of {self._max_message_bytes:,} bytes plus "
                f"{ENVELOPE_BYTES:,} of framing; not sent (a shorter request id or fewer outputs)"
            )


def add_to_server(servicer: InferenceServicer, server: grpc.Server) -> None:
    """Register the service: protobuf (de)serialisers everywhere except the tensor-carrying methods."""
    handlers = {}
    for method in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods:
        name = method.name
        behavior = getattr(servicer, name)
        request_type = getattr(pb, method.input_type.name)
        deserialize = request_type.FromString
        serialize = _serialize_message
        if name == "ModelInfer":
            handlers[name] = grpc.unary_unary_rpc_method_handler(
                behavior, wire.parse_infer_request, wire.serialize_infer_response
            )
        elif name == "ModelStreamInfer":
            handlers[name] = grpc.stream_stream_rpc_method_handler(
                behavior, wire.parse_infer_request, wire.serialize_stream_item
            )
        else:
            handlers[name] = grpc.unary_unary_rpc_method_handler(behavior, deserialize, serialize)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))


def _caller(context: grpc.ServicerContext) -> RunCaller:
    """The runs of one call: none outlives the call's deadline, and its run in progress is stopped when the call ends
    (gRPC calls back on completion, cancellation by the client, a passed deadline and the server's stop)."""
    caller = RunCaller(context.time_remaining)

    def ended() -> None:
        if context.time_remaining() <= 0:
            caller.end(DeadlineExceeded("the call's deadline passed; its run was stopped"))
        else:
            caller.end(Cancelled("the call was cancelled (the client went away, or the server is stopping)"))

    context.add_callback(ended)
    return caller


def _stream_error(request: wire.InferRequest, message: str) -> wire.StreamItem:
    """A stream's per-message error, with the request's model and id: a client with several requests in flight
    tells by them which one failed."""
    h = request.header
    header = pb.ModelInferResponse(model_name=h.model_name[:256], model_version=h.model_version[:64], id=h.id[:256])
    return wire.StreamItem(response=wire.InferResponse(header), error_message=message)


def _filled(placed: list[np.ndarray], outputs: dict[str, np.ndarray]) -> bool:
    """Whether ONNX Runtime wrote every output into the arrays laid out for it."""
    return len(placed) == len(outputs) and all(a is b for a, b in zip(outputs.values(), placed, strict=True))


def _serialize_message(message) -> bytes:
    return message.SerializeToString()


def _check_version(version: str) -> None:
    if version not in ("", VERSION):
        raise NotFound(f"model version {version!r} does not exist (slices have version {VERSION!r})")
