"""Client argument and input checks found by the review of the edge's client path (stop 38): each used to end in a
bare Python exception, a server outage that was the caller's own, or a retry without end."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rr_edge.client import Client, ClientOptions
from rr_edge.errors import ArgumentError, InputError
from rr_proto import codec
from rr_proto.transport import MAX_MESSAGE_BYTES

NOBODY = "127.0.0.1:1"  # nothing listens on port 1: every check below must refuse before a call is made
SLICE = "a" * 64
SURROGATE = "\udcffname"  # what os.fsdecode makes of a file name that is not UTF-8


def test_a_bytes_element_that_is_not_utf8_is_an_input_error_before_sending() -> None:
    with pytest.raises(codec.CodecError, match="BYTES element 1 is not encodable as UTF-8"):
        codec.to_raw(np.array(["ok", SURROGATE], dtype=object), "s")
    with Client(NOBODY) as client, pytest.raises(InputError, match="not encodable"):
        client.infer(SLICE, {"s": np.array([SURROGATE], dtype=object)})


def test_an_upload_label_that_is_not_utf8_is_an_argument_error() -> None:
    """It was built in the generator gRPC reads, which turned it into "UNKNOWN: Exception iterating requests"."""
    with Client(NOBODY) as client, pytest.raises(ArgumentError, match="label"):
        client.upload_slice(b"bytes", SURROGATE, check_cached=False)


@pytest.mark.parametrize("timeout_s", [0.0, -1.0, math.nan])
def test_a_timeout_that_is_not_positive_is_an_argument_error_not_an_outage(timeout_s: float) -> None:
    with Client(NOBODY) as client, pytest.raises(ArgumentError, match="timeout_s"):
        client.infer(SLICE, {"x": np.ones(1, np.float32)}, timeout_s=timeout_s)


@pytest.mark.parametrize("busy_wait_s", [math.nan, math.inf, -1.0])
def test_a_busy_wait_that_is_not_a_finite_duration_is_refused(busy_wait_s: float) -> None:
    """NaN never ends a busy retry: `start + nan` is never passed."""
    with Client(NOBODY) as client, pytest.raises(ArgumentError, match="busy_wait_s"):
        client.upload_slice(b"bytes", check_cached=False, busy_wait_s=busy_wait_s)


def test_a_message_limit_grpc_cannot_take_is_an_argument_error() -> None:
    """gRPC's channel arguments are C ints: past them Client() raised a bare OverflowError."""
    with pytest.raises(ArgumentError, match="max_message_bytes"):
        ClientOptions(max_message_bytes=2**31 - 1)
    with Client(NOBODY, ClientOptions(max_message_bytes=MAX_MESSAGE_BYTES)):
        pass  # the largest one gRPC takes
