"""gRPC settings both ends use: the message limit, HTTP/2 windows sized for multi-MB tensors, what a bearer token may
hold."""

from __future__ import annotations

from rr_proto.framing import ENVELOPE_BYTES

__all__ = ["DEFAULT_MAX_MESSAGE_BYTES", "MAX_MESSAGE_BYTES", "MAX_TOKEN_LENGTH", "grpc_options", "token_fault"]

# Largest single gRPC message either way. ModelInfer carries whole tensors in one message (intermediate activations
# of the paper's models at batch 1 are a few MB; the transport benchmark goes to 64 MB), uploads and echo traffic are
# chunked, so 256 MiB bounds memory per call while leaving ample room for big batches.
DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024 * 1024
# The most either end may be set to: gRPC's channel arguments are C ints, and the envelope is added to the limit.
MAX_MESSAGE_BYTES = 2**31 - 1 - ENVELOPE_BYTES
# The longest bearer token. gRPC limits the metadata a call carries (grpc.max_metadata_size, 8 KiB by default; each
# entry counts its name and value plus 32 bytes): past it the receiver refuses calls at random as RESOURCE_EXHAUSTED,
# past 16 KiB all of them, after both ends had accepted the token (a 9,000-character one failed 11 of 40 calls).
# 4 KiB leaves the other half of the 8 KiB to the call's own headers (path, authority, user agent, timeout: some
# 500 bytes) and any metadata a client adds; a random token needs no more than 64 characters.
MAX_TOKEN_LENGTH = 4096


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


def token_fault(token: str) -> str | None:
    """Why `token` cannot travel as `authorization: Bearer <token>`, or None: gRPC sends only printable ASCII without
    spaces in metadata, anything else fails every call with INTERNAL "Invalid metadata" (a copied line break, a
    whole multi-line token file), and at most MAX_TOKEN_LENGTH characters. The edge checks its own token by this
    rule, the server its token file. The token itself is never shown."""
    if not token:
        return "the bearer token is empty"
    bad = next((k for k, char in enumerate(token) if not "\x21" <= char <= "\x7e"), None)
    if bad is not None:
        looks = ""
        first = token.strip().split("\n")[0]
        if len(first.split()) == 2:  # "NODE_ID TOKEN": the server's token file copied, or one line of it (walkthrough)
            looks = " (a line of rr-server's --auth-token-file is NODE_ID TOKEN: give the token alone)"
        return (
            "a bearer token is printable ASCII without spaces or line breaks; character "
            f"{bad + 1} of {len(token)} is U+{ord(token[bad]):04X}{looks}"
        )
    if len(token) > MAX_TOKEN_LENGTH:
        return (
            f"a bearer token is at most {MAX_TOKEN_LENGTH:,} characters (gRPC limits a call's metadata to 8 KiB), "
            f"this one has {len(token):,}"
        )
    return None
