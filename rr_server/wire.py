"""Zero-copy wire handling of ModelInfer messages (the tensor bytes never pass through protobuf objects).

The tensors of a KServe ModelInferRequest/Response travel in one repeated `bytes` field (`raw_input_contents` = 7,
`raw_output_contents` = 6). Letting protobuf parse and build them costs several full copies of every tensor (and
upb's serializer is slow for multi-MB fields). Protobuf's wire format allows splitting a message: fields may come
in any order and concatenated encodings merge, so

* parsing: one pass over the top-level fields keeps each raw tensor as a `memoryview` of the received bytes and
  hands only the small remainder (names, shapes, datatypes) to protobuf;
* serialising: the small header is serialised by protobuf and the raw tensors are appended as
  `tag + length + bytes` in a single join.

The results are byte-for-byte valid KServe messages, so any client (tritonclient included) reads them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from google.protobuf.message import DecodeError

from rr_proto import codec
from rr_proto.inference import grpc_service_pb2 as pb

RAW_INPUT_FIELD = 7  # ModelInferRequest.raw_input_contents
RAW_OUTPUT_FIELD = 6  # ModelInferResponse.raw_output_contents
INFER_RESPONSE_FIELD = 2  # ModelStreamInferResponse.infer_response
ERROR_MESSAGE_FIELD = 1  # ModelStreamInferResponse.error_message
_LENGTH_DELIMITED = 2


@dataclass
class InferRequest:
    """A parsed ModelInferRequest: every field but the raw contents in `header`, raw contents as views."""

    header: pb.ModelInferRequest
    raw: list[memoryview] = field(default_factory=list)
    error: str = ""  # set when the bytes are not a valid message (reported as INVALID_ARGUMENT)


@dataclass
class InferResponse:
    header: pb.ModelInferResponse
    raw: list = field(default_factory=list)  # buffers (bytes, memoryview, contiguous numpy arrays)


@dataclass
class StreamItem:
    response: InferResponse | None = None
    error_message: str = ""


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise DecodeError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise DecodeError("varint too long")


def split_field(data: bytes, field_number: int) -> tuple[bytes, list[memoryview]]:
    """(encoding of every other top-level field, views of each occurrence of length-delimited `field_number`)."""
    view = memoryview(data)
    rest: list[memoryview] = []
    found: list[memoryview] = []
    pos, end = 0, len(data)
    while pos < end:
        start = pos
        key, pos = _read_varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            _, pos = _read_varint(data, pos)
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        elif wire_type == _LENGTH_DELIMITED:
            length, pos = _read_varint(data, pos)
            if pos + length > end:
                raise DecodeError("length-delimited field runs past the end of the message")
            if number == field_number:
                found.append(view[pos : pos + length])
                pos += length
                continue
            pos += length
        else:
            raise DecodeError(f"unsupported wire type {wire_type}")
        if pos > end:
            raise DecodeError("truncated message")
        rest.append(view[start:pos])
    return b"".join(rest), found


def _field_header(number: int, length: int) -> bytes:
    return _varint(number << 3 | _LENGTH_DELIMITED) + _varint(length)


def _buffer(array_or_bytes) -> memoryview | bytes:
    if isinstance(array_or_bytes, bytes | memoryview):
        return array_or_bytes
    return memoryview(array_or_bytes).cast("B")


def _response_parts(response: InferResponse) -> list:
    parts: list = [response.header.SerializeToString()]
    for raw in response.raw:
        buf = _buffer(raw)
        parts.append(_field_header(RAW_OUTPUT_FIELD, len(buf)))
        parts.append(buf)
    return parts


# -- server side ----------------------------------------------------------------------------------------------------


def parse_infer_request(data: bytes) -> InferRequest:
    try:
        rest, raw = split_field(data, RAW_INPUT_FIELD)
        return InferRequest(pb.ModelInferRequest.FromString(rest), raw)
    except DecodeError as exc:
        return InferRequest(pb.ModelInferRequest(), [], f"malformed ModelInferRequest: {exc}")


def serialize_infer_response(response: InferResponse) -> bytes:
    return b"".join(_response_parts(response))


def serialize_stream_item(item: StreamItem) -> bytes:
    if item.response is None:
        return pb.ModelStreamInferResponse(error_message=item.error_message).SerializeToString()
    parts = _response_parts(item.response)
    inner = sum(len(p) for p in parts)
    return b"".join([_field_header(INFER_RESPONSE_FIELD, inner), *parts])


def decode_inputs(request: InferRequest) -> dict[str, np.ndarray]:
    """Input arrays (zero-copy views for raw contents); raises codec.CodecError on any mismatch."""
    header = request.header
    if request.raw and len(request.raw) != len(header.inputs):
        raise codec.CodecError(f"{len(request.raw)} raw contents for {len(header.inputs)} input tensors")
    arrays: dict[str, np.ndarray] = {}
    for k, tensor in enumerate(header.inputs):
        if tensor.name in arrays:
            raise codec.CodecError(f"input {tensor.name!r} appears twice")
        if request.raw:
            if tensor.HasField("contents"):
                raise codec.CodecError(f"tensor {tensor.name!r}: both raw and typed contents given")
            arrays[tensor.name] = codec.from_raw(request.raw[k], tensor.datatype, tensor.shape, tensor.name)
        else:
            arrays[tensor.name] = codec.from_contents(tensor.contents, tensor.datatype, tensor.shape, tensor.name)
    return arrays


def encode_outputs(model_name: str, version: str, request_id: str, outputs: dict[str, np.ndarray]) -> InferResponse:
    header = pb.ModelInferResponse(model_name=model_name, model_version=version, id=request_id)
    raw: list = []
    for name, array in outputs.items():
        datatype = codec.datatype_of(array.dtype)
        header.outputs.add(name=name, datatype=datatype, shape=array.shape)
        if datatype == "BYTES" or array.dtype.byteorder == ">":
            raw.append(codec.to_raw(array))
        else:
            raw.append(np.ascontiguousarray(array))
    return InferResponse(header, raw)


# -- client side (benchmarks; the same framing works for any client) ---------------------------------------------------


def serialize_infer_request(
    model_name: str, inputs: dict[str, np.ndarray], outputs: Sequence[str] = (), request_id: str = ""
) -> bytes:
    header = pb.ModelInferRequest(model_name=model_name, id=request_id)
    parts: list = []
    for name, array in inputs.items():
        header.inputs.add(name=name, datatype=codec.datatype_of(array.dtype), shape=array.shape)
        buf = _buffer(np.ascontiguousarray(array)) if array.dtype.kind not in "OSU" else codec.to_raw(array)
        parts += [_field_header(RAW_INPUT_FIELD, len(buf)), buf]
    for name in outputs:
        header.outputs.add(name=name)
    return b"".join([header.SerializeToString(), *parts])


def parse_infer_response(data: bytes) -> dict[str, np.ndarray]:
    rest, raw = split_field(data, RAW_OUTPUT_FIELD)
    header = pb.ModelInferResponse.FromString(rest)
    return {t.name: codec.from_raw(raw[k], t.datatype, t.shape, t.name) for k, t in enumerate(header.outputs)}
