"""gRPC settings both ends use: the message limit and HTTP/2 windows sized for multi-MB tensors."""

from __future__ import annotations

from rr_proto.framing import ENVELOPE_BYTES

__all__ = ["DEFAULT_MAX_MESSAGE_BYTES", "MAX_MESSAGE_BYTES", "grpc_options"]

# Largest single gRPC message either way. ModelInfer carries whole tensors in one message (intermediate activations
# of the paper's models at batch 1 are a few MB; the transport benchmark goes to 64 MB), uploads and echo traffic are
# chunked, so 256 MiB bounds memory per call while leaving ample room for big batches.
DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024 * 1024
# The most either end may be set to: gRPC's channel arguments are C ints, and the envelope is added to the limit.
MAX_MESSAGE_BYTES = 2**31 - 1 - ENVELOPE_BYTES


def grpc_options(max_message_bytes: int) -> list[tuple[str, int | str]]:
    """Channel and server options: the message limit (plus the envelope around a payload of that size), and larger
    HTTP/2 frames and flow-control window, so that a multi-MB tensor takes fewer round trips."""
    return [
        ("grpc.max_send_message_length", max_message_bytes + ENVELOPE_BYTES),
        ("grpc.max_receive_message_length", max_message_bytes + ENVELOPE_BYTES),
        ("grpc.http2.max_frame_size", 16 * 1024 * 1024 - 1),
        ("grpc.http2.lookahead_bytes", 64 * 1024 * 1024),
        ("grpc.http2.bdp_probe", 1),
    ]
