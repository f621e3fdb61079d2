"""The server's view of the zero-copy KServe framing: `rr_proto.framing`, shared with the edge client.

The inference servicer registers `parse_infer_request` / `serialize_infer_response` / `serialize_stream_item` as the
(de)serialisers of ModelInfer and ModelStreamInfer (protobuf objects everywhere else), works on `InferRequest`
(header + memoryviews of the raw tensors) and answers with `encode_outputs(...)`. Everything is re-exported from
`rr_proto.framing`; this module only names what the server side uses (and the two client-side functions that
tools/bench_server.py drives the server with).
"""

from __future__ import annotations

from rr_proto.framing import (
    InferRequest,
    InferResponse,
    StreamItem,
    allocate_response,
    decode_inputs,
    encode_outputs,
    encoded_size,
    parse_infer_request,
    parse_infer_response,
    serialize_infer_request,
    serialize_infer_response,
    serialize_stream_item,
)

__all__ = [
    "InferRequest",
    "InferResponse",
    "StreamItem",
    "allocate_response",
    "decode_inputs",
    "encode_outputs",
    "encoded_size",
    "parse_infer_request",
    "parse_infer_response",
    "serialize_infer_request",
    "serialize_infer_response",
    "serialize_stream_item",
]
