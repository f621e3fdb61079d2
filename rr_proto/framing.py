"""Zero-copy framing of KServe ModelInfer messages: tensor bytes never pass through protobuf objects.

The tensors of a KServe ModelInferRequest/Response travel in one repeated `bytes` field (`raw_input_contents` = 7,
`raw_output_contents` = 6). Letting protobuf build and parse them costs several full copies of every tensor (and
upb's serializer is slow for multi-MB fields). Protobuf's wire format allows splitting a message: fields may come in
any order and concatenated encodings merge, so

* serialising: the small header (names, shapes, datatypes) is serialised by protobuf and each raw tensor is appended
  as `tag + length + bytes`, in one join (the only copy of the tensor on this side);
* parsing: one pass over the top-level fields keeps each raw tensor as a `memoryview` of the received bytes and
  hands only the small remainder to protobuf; arrays are then numpy views of those bytes (read-only, like protobuf's).

Raw contents are the last field of both messages, so what `serialize_*` produces is byte-for-byte what protobuf
itself would serialise: any KServe peer (tritonclient included) reads it. Both sides use this module: rr_server
(`rr_server.wire` registers it as the servicer's (de)serialisers) and the edge client (`rr_edge.client`).

    request  = serialize_infer_request("slice-id", {"x": x})          # client -> bytes
    parsed   = parse_infer_request(request); decode_inputs(parsed)     # server -> {"x": view of x}
    response = serialize_infer_response(encode_outputs("slice-id", "1", "", {"y": y}))
    decode_outputs(parse_infer_response(response))                    # client -> {"y": view of y}

Malformed bytes raise `FramingError` (a `codec.CodecError`); `parse_infer_request` records it in `.error` instead,
so the server can answer INVALID_ARGUMENT from its servicer (a deserializer that raises becomes INTERNAL in grpcio).
"""

from __future__ import annotations

import ctypes
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from google.protobuf.message import DecodeError

from rr_proto import codec
from rr_proto.inference import grpc_service_pb2 as pb

__all__ = [
    "FramingError",
    "InferRequest",
    "InferResponse",
    "StreamItem",
    "allocate_response",
    "decode_inputs",
    "decode_outputs",
    "encode_outputs",
    "encoded_size",
    "parse_infer_request",
    "parse_infer_response",
    "parse_stream_item",
    "run_ms",
    "serialize_infer_request",
    "serialize_infer_response",
    "serialize_stream_item",
    "split_field",
]

RAW_INPUT_FIELD = 7  # ModelInferRequest.raw_input_contents
RAW_OUTPUT_FIELD = 6  # ModelInferResponse.raw_output_contents
INFER_RESPONSE_FIELD = 2  # ModelStreamInferResponse.infer_response
# ModelInferResponse.parameters entry with the server's run time of the request (ms, double): what the edge needs to
# tell the network's share of a round trip from the server's.
RUN_MS_PARAMETER = "server_run_ms"
_VARINT, _FIXED64, _LENGTH_DELIMITED, _FIXED32 = 0, 1, 2, 5
# Both ends allow a gRPC message this much beyond their payload limit (max_message_bytes), for protobuf framing:
# a tensor of exactly the limit still travels.
ENVELOPE_BYTES = 64 * 1024
# A request or response has a handful of fields plus two per tensor (its metadata and its raw contents).
MAX_TOP_LEVEL_FIELDS = 65_536


class FramingError(codec.CodecError):
    """The bytes are not a well-formed protobuf message of the expected type."""


@dataclass
class InferRequest:
    """A parsed ModelInferRequest: every field but the raw contents in `header`, raw contents as views."""

    header: pb.ModelInferRequest
    raw: list[memoryview] = field(default_factory=list)
    error: str = ""  # set when the bytes are not a valid message (the server reports it as INVALID_ARGUMENT)


@dataclass
class InferResponse:
    """A ModelInferResponse: every field but the raw contents in `header`; `raw` holds buffers (bytes, memoryview,
    contiguous numpy arrays) parallel to `header.outputs`. `serialized`, when set, is the whole message already laid
    out (`allocate_response`; `raw` are then views of it), as a ModelStreamInferResponse when `stream`."""

    header: pb.ModelInferResponse
    raw: list = field(default_factory=list)
    serialized: bytes | None = None
    stream: bool = False
    run_ms_slot: np.ndarray | None = None  # the 8 bytes of RUN_MS_PARAMETER's double inside `serialized`

    def set_run_ms(self, ms: float) -> None:
        """Record the server's run time of the request (RUN_MS_PARAMETER), also in the laid-out message if any."""
        self.header.parameters[RUN_MS_PARAMETER].double_param = ms
        if self.run_ms_slot is not None:
            self.run_ms_slot[:] = np.frombuffer(struct.pack("<d", ms), np.uint8)


@dataclass
class StreamItem:
    """A ModelStreamInferResponse: a response, or a per-message error."""

    response: InferResponse | None = None
    error_message: str = ""


# -- protobuf wire primitives ----------------------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        bits, value = value & 0x7F, value >> 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _read_varint(data, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise FramingError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise FramingError("varint too long")


def _field_header(number: int, length: int) -> bytes:
    return _varint(number << 3 | _LENGTH_DELIMITED) + _varint(length)


def split_field(data: bytes | memoryview, field_number: int) -> tuple[bytes, list[memoryview]]:
    """(encoding of every other top-level field, views of each occurrence of length-delimited `field_number`).

    At most MAX_TOP_LEVEL_FIELDS fields: a message of millions of tiny fields is legal protobuf, but walking it here
    is Python work per field (a 32 MiB one used to take half a minute and gigabytes)."""
    view = memoryview(data).cast("B") if isinstance(data, memoryview) else memoryview(data)
    rest: list[memoryview] = []  # runs of other fields, cut only where an occurrence of field_number sits
    found: list[memoryview] = []
    pos, end, run_start, fields = 0, len(view), 0, 0
    while pos < end:
        fields += 1
        if fields > MAX_TOP_LEVEL_FIELDS:
            raise FramingError(f"more than {MAX_TOP_LEVEL_FIELDS} top-level fields")
        start = pos
        key, pos = _read_varint(view, pos, end)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise FramingError("field number 0")
        if wire_type == _VARINT:
            _, pos = _read_varint(view, pos, end)
        elif wire_type == _FIXED64:
            pos += 8
        elif wire_type == _FIXED32:
            pos += 4
        elif wire_type == _LENGTH_DELIMITED:
            length, pos = _read_varint(view, pos, end)
            if pos + length > end:
                raise FramingError("length-delimited field runs past the end of the message")
            if number == field_number:
                rest.append(view[run_start:start])
                found.append(view[pos : pos + length])
                pos += length
                run_start = pos
                continue
            pos += length
        else:  # groups (3, 4) are deprecated and no KServe peer sends them
            raise FramingError(f"unsupported wire type {wire_type}")
        if pos > end:
            raise FramingError("truncated message")
    rest.append(view[run_start:end])
    return b"".join(rest), found


def _buffer(array_or_bytes) -> memoryview | bytes:
    if isinstance(array_or_bytes, bytes | memoryview):
        return array_or_bytes
    # A flat byte view of the (contiguous) array; also right for empty arrays, which memoryview.cast refuses.
    return np.ascontiguousarray(array_or_bytes).reshape(-1).view(np.uint8).data


def _raw_buffer(array: np.ndarray, name: str = "") -> memoryview | bytes:
    """Raw contents of an array as a buffer, copied only when it is not C-contiguous little-endian (or BYTES)."""
    if array.dtype.kind in "OSU" or array.dtype.byteorder == ">":
        return codec.to_raw(array, name)
    return _buffer(np.ascontiguousarray(array))


def _parse(message_type, data: bytes | memoryview):
    try:
        return message_type.FromString(data)
    except DecodeError as exc:
        raise FramingError(f"malformed {message_type.DESCRIPTOR.name}: {exc}") from None


def _response_parts(response: InferResponse) -> list:
    parts: list = [response.header.SerializeToString()]
    for raw in response.raw:
        buf = _buffer(raw)
        parts += [_field_header(RAW_OUTPUT_FIELD, len(buf)), buf]
    return parts


# -- requests --------------------------------------------------------------------------------------------------------


def serialize_infer_request(
    model_name: str, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] = (), request_id: str = ""
) -> bytes:
    """A ModelInferRequest carrying every input as raw contents (same bytes as `codec.encode_infer_request(...)`
    serialised by protobuf)."""
    header = pb.ModelInferRequest(model_name=model_name, id=request_id)
    parts: list = []
    for name, array in inputs.items():
        array = np.asarray(array)
        header.inputs.add(name=name, datatype=codec.datatype_of(array.dtype), shape=array.shape)
        buf = _raw_buffer(array, name)
        parts += [_field_header(RAW_INPUT_FIELD, len(buf)), buf]
    for name in outputs:
        header.outputs.add(name=name)
    return b"".join([header.SerializeToString(), *parts])


def parse_infer_request(data: bytes) -> InferRequest:
    """Never raises: a malformed message comes back with `error` set and an empty header."""
    try:
        rest, raw = split_field(data, RAW_INPUT_FIELD)
        return InferRequest(_parse(pb.ModelInferRequest, rest), raw)
    except FramingError as exc:
        return InferRequest(pb.ModelInferRequest(), [], f"malformed ModelInferRequest: {exc}")


def decode_inputs(request: InferRequest) -> dict[str, np.ndarray]:
    """Input arrays (zero-copy views for raw contents, typed contents converted); raises codec.CodecError."""
    return codec.decode_tensors(request.header.inputs, request.raw, "input")


# -- responses -------------------------------------------------------------------------------------------------------


def encode_outputs(model_name: str, version: str, request_id: str, outputs: Mapping[str, np.ndarray]) -> InferResponse:
    header = pb.ModelInferResponse(model_name=model_name, model_version=version, id=request_id)
    raw: list = []
    for name, array in outputs.items():
        header.outputs.add(name=name, datatype=codec.datatype_of(array.dtype), shape=array.shape)
        raw.append(_raw_buffer(array, name))
    return InferResponse(header, raw)


def allocate_response(
    model_name: str,
    version: str,
    request_id: str,
    outputs: Sequence[tuple[str, np.dtype, tuple[int, ...]]],
    stream: bool = False,
) -> tuple[InferResponse, list[np.ndarray]]:
    """A response whose message exists before its outputs: the bytes of `serialize_infer_response` (or, with
    `stream`, of `serialize_stream_item` without an error) with the raw contents left to fill through the returned
    writable arrays (C-contiguous, numeric dtypes). ONNX Runtime then writes its outputs straight into the message,
    which is sent without another copy of the tensors (grpcio's serialiser must return one `bytes` object).

    The message is a `bytes` object allocated uninitialised and written before anyone else sees it, as C code that
    builds a `bytes` does; fill the arrays before handing `response` to grpcio and do not keep them afterwards.
    """
    header = pb.ModelInferResponse(model_name=model_name, model_version=version, id=request_id)
    # Serialised, fields 1-3 come first, then this parameters entry (field 4), whose last 8 bytes are the double that
    # set_run_ms fills in; the outputs (field 5) follow.
    header.parameters[RUN_MS_PARAMETER].double_param = 0.0
    run_ms_end = len(header.SerializeToString())
    sizes = []
    for name, dtype, shape in outputs:
        dtype = np.dtype(dtype)
        if dtype.kind in "OSU" or dtype.byteorder == ">":
            raise ValueError(f"output {name!r}: {dtype} cannot be laid out in place")
        header.outputs.add(name=name, datatype=codec.datatype_of(dtype), shape=shape)
        sizes.append(math.prod(shape) * dtype.itemsize)
    head = header.SerializeToString()
    field_heads = [_field_header(RAW_OUTPUT_FIELD, n) for n in sizes]
    inner = len(head) + sum(map(len, field_heads)) + sum(sizes)
    prefix = _field_header(INFER_RESPONSE_FIELD, inner) if stream else b""
    data, buf = _uninitialised_bytes(len(prefix) + inner)
    pos = 0
    for part in (prefix, head):
        buf[pos : pos + len(part)] = np.frombuffer(part, np.uint8)
        pos += len(part)
    arrays = []
    for field_head, n, (_, dtype, shape) in zip(field_heads, sizes, outputs, strict=True):
        buf[pos : pos + len(field_head)] = np.frombuffer(field_head, np.uint8)
        pos += len(field_head)
        arrays.append(buf[pos : pos + n].view(dtype).reshape(shape))
        pos += n
    slot = buf[len(prefix) + run_ms_end - 8 : len(prefix) + run_ms_end]
    return InferResponse(header, list(arrays), data, stream, slot), arrays


def _uninitialised_bytes(n: int) -> tuple[bytes, np.ndarray]:
    """A new `bytes` of length n (n >= 2: shorter ones may be shared singletons) and a writable uint8 view of it."""
    if n < 2:
        raise ValueError("a message of fewer than 2 bytes has nothing to fill")
    data = _PyBytes_FromStringAndSize(None, n)
    address = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value  # the object's own buffer, not a copy
    if address is None:
        raise MemoryError("no buffer for a new bytes object")
    return data, np.ctypeslib.as_array((ctypes.c_ubyte * n).from_address(address))


_PyBytes_FromStringAndSize = ctypes.pythonapi.PyBytes_FromStringAndSize
_PyBytes_FromStringAndSize.argtypes = [ctypes.c_char_p, ctypes.c_ssize_t]
_PyBytes_FromStringAndSize.restype = ctypes.py_object


def encoded_size(response: InferResponse) -> int:
    """Bytes of `serialize_infer_response(response)`, counted without laying them out. One laid out as a stream item
    counts without the item's field around it, as one built by encode_outputs: its size check had counted that field
    twice, and an identical response refused the second time (found by review)."""
    if response.serialized is not None and not response.stream:
        return len(response.serialized)
    sizes = [len(_buffer(raw)) for raw in response.raw]  # as _response_parts counts them
    return response.header.ByteSize() + sum(len(_field_header(RAW_OUTPUT_FIELD, n)) + n for n in sizes)


def serialize_infer_response(response: InferResponse) -> bytes:
    if response.serialized is not None and not response.stream:
        return response.serialized
    return b"".join(_response_parts(response))


def parse_infer_response(data: bytes | memoryview) -> InferResponse:
    """Raises FramingError on malformed bytes."""
    rest, raw = split_field(data, RAW_OUTPUT_FIELD)
    return InferResponse(_parse(pb.ModelInferResponse, rest), list(raw))


def run_ms(response: InferResponse) -> float | None:
    """The server's run time of the request (RUN_MS_PARAMETER), or None when the server did not say."""
    parameter = response.header.parameters.get(RUN_MS_PARAMETER)
    if parameter is None or parameter.WhichOneof("parameter_choice") != "double_param":
        return None
    return parameter.double_param


def decode_outputs(response: InferResponse) -> dict[str, np.ndarray]:
    """Output arrays (zero-copy views for raw contents, typed contents converted); raises codec.CodecError."""
    return codec.decode_tensors(response.header.outputs, response.raw, "output")


# -- ModelStreamInfer ------------------------------------------------------------------------------------------------


def serialize_stream_item(item: StreamItem) -> bytes:
    if item.response is None:
        return pb.ModelStreamInferResponse(error_message=item.error_message).SerializeToString()
    if item.response.serialized is not None and item.response.stream and not item.error_message:
        return item.response.serialized
    parts = _response_parts(item.response)
    error = pb.ModelStreamInferResponse(error_message=item.error_message).SerializeToString()
    inner = sum(len(p) for p in parts)
    return b"".join([error, _field_header(INFER_RESPONSE_FIELD, inner), *parts])


def parse_stream_item(data: bytes) -> StreamItem:
    """Raises FramingError on malformed bytes. Several `infer_response` occurrences merge, as in protobuf."""
    rest, inner = split_field(data, INFER_RESPONSE_FIELD)
    error_message = _parse(pb.ModelStreamInferResponse, rest).error_message
    if not inner:
        return StreamItem(None, error_message)
    if len(inner) == 1:
        return StreamItem(parse_infer_response(inner[0]), error_message)
    merged = parse_infer_response(b"".join(inner))  # rare: protobuf merges repeated occurrences of a message field
    return StreamItem(merged, error_message)
