"""Connection settings of the edge's gRPC client (`rr_edge.client.Client`): small value objects with their defaults."""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from rr_edge.errors import ArgumentError
from rr_proto.transport import DEFAULT_MAX_MESSAGE_BYTES, MAX_MESSAGE_BYTES, grpc_options, token_fault

__all__ = [
    "DEFAULT_BUSY_WAIT_S",
    "DEFAULT_CHUNK_BYTES",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_MAX_RECONNECT_BACKOFF_S",
    "DEFAULT_MIN_BANDWIDTH_BYTES_PER_S",
    "DEFAULT_TIMEOUT_S",
    "MAX_TIMEOUT_S",
    "ClientOptions",
    "TlsOptions",
    "check_address",
    "check_chunk",
    "check_token",
    "split_scheme",
]

DEFAULT_TIMEOUT_S = 30.0
DEFAULT_CHUNK_BYTES = 1024 * 1024
# Transfers get timeout_s plus bytes / this rate: 1 MB/s still completes, a stalled link does not hang forever.
DEFAULT_MIN_BANDWIDTH_BYTES_PER_S = 1_000_000
DEFAULT_MAX_RECONNECT_BACKOFF_S = 1.0
DEFAULT_BUSY_WAIT_S = 10.0
# The longest deadline a call is given (about 31 years: "no deadline"). gRPC adds a timeout to its clock in int64
# nanoseconds: from about 7e9 s on that overflows, and every call then fails at once with DEADLINE_EXCEEDED.
MAX_TIMEOUT_S = 1e9
# gRPC takes the reconnect backoff in milliseconds as a C int; an hour is already far past its own 120 s default.
MAX_RECONNECT_BACKOFF_S = 3600.0
_INITIAL_RECONNECT_BACKOFF_S = 0.1


@dataclass(frozen=True)
class TlsOptions:
    """PEM files: the CA that signed the server (None: system roots), and a client certificate/key for mTLS."""

    root_certificates: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    server_name: str | None = None  # override the name checked against the server certificate

    def credentials(self) -> grpc.ChannelCredentials:
        def read(p: Path | None) -> bytes | None:
            if p is None:
                return None
            try:
                return Path(p).read_bytes()
            except OSError as exc:
                raise ArgumentError(f"cannot read TLS file {p}: {exc.strerror or exc}") from None

        if (self.client_cert is None) != (self.client_key is None):
            raise ArgumentError("mTLS needs both a client certificate and its key")
        return grpc.ssl_channel_credentials(read(self.root_certificates), read(self.client_key), read(self.client_cert))


@dataclass(frozen=True)
class ClientOptions:
    """Connection settings (see the module docstring)."""

    timeout_s: float = DEFAULT_TIMEOUT_S
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    min_bandwidth_bytes_per_s: float = DEFAULT_MIN_BANDWIDTH_BYTES_PER_S
    # Longest wait between two connection attempts to a server that went away (gRPC's default is 120 s).
    max_reconnect_backoff_s: float = DEFAULT_MAX_RECONNECT_BACKOFF_S
    # How long an upload, report, echo transfer or prediction the server is too busy for is retried (0: not retried).
    busy_wait_s: float = DEFAULT_BUSY_WAIT_S
    token: str | None = None
    tls: TlsOptions | None = None

    def __post_init__(self) -> None:
        # NaN passes every `<= 0` check and no clock ever reaches it (a busy retry then never ended): finite only.
        check_number("ClientOptions.timeout_s", self.timeout_s, positive=True, most=MAX_TIMEOUT_S)
        check_number("ClientOptions.min_bandwidth_bytes_per_s", self.min_bandwidth_bytes_per_s, positive=True)
        check_number(
            "ClientOptions.max_reconnect_backoff_s", self.max_reconnect_backoff_s, most=MAX_RECONNECT_BACKOFF_S
        )
        check_number("ClientOptions.busy_wait_s", self.busy_wait_s)
        if not 0 < self.max_message_bytes <= MAX_MESSAGE_BYTES:  # gRPC's channel arguments are C ints
            raise ArgumentError(
                f"ClientOptions.max_message_bytes must be in 1..{MAX_MESSAGE_BYTES:,}, got {self.max_message_bytes}"
            )
        check_chunk(self.chunk_bytes, self.max_message_bytes)
        if self.token:  # "" is no token, as None
            check_token(self.token)

    def channel_options(self) -> list[tuple[str, Any]]:
        backoff_s = max(self.max_reconnect_backoff_s, 0.001)
        return [
            *grpc_options(self.max_message_bytes),  # as the server's
            ("grpc.primary_user_agent", "rr-edge"),
            # Reconnect quickly after a server restart: the backoff between attempts starts at 0.1 s and stays
            # under `max_reconnect_backoff_s` (the connect timeout, grpc.min_reconnect_backoff_ms, keeps its 20 s).
            ("grpc.initial_reconnect_backoff_ms", round(1e3 * min(_INITIAL_RECONNECT_BACKOFF_S, backoff_s))),
            ("grpc.max_reconnect_backoff_ms", round(1e3 * backoff_s)),
        ]


def check_number(name: str, value: float, positive: bool = False, most: float = math.inf) -> None:
    """ArgumentError naming `name` unless `value` is a finite number > 0 (`positive`) or >= 0, at
    most `most`."""
    low = "> 0" if positive else ">= 0"
    if not (math.isfinite(value) and (value > 0 if positive else value >= 0) and value <= most):
        bound = f" and at most {most:g}" if math.isfinite(most) else ""
        raise ArgumentError(f"{name} must be a finite number {low}{bound}, got {value}")


def check_token(token: str, source: str = "ClientOptions.token") -> str:
    """`token`, if it can travel as `authorization: Bearer <token>` (`rr_proto.transport.token_fault`); `source` names
    where the token came from."""
    fault = token_fault(token)
    if fault is not None:
        raise ArgumentError(f"{source}: {fault}")
    return token


def split_scheme(text: str) -> tuple[str, str]:
    """(scheme, rest) of an address: ("grpcs", "host:8001") for "grpcs://host:8001" (any case), ("", text) without
    a scheme. Only grpc:// and grpcs:// are taken; other schemes stay in `rest`, for `check_address` to refuse."""
    scheme, sep, rest = text.partition("://")
    if sep and scheme.lower() in ("grpc", "grpcs"):
        return scheme.lower(), rest
    return "", text


def check_address(text: str) -> str:
    """`text` if it is HOST:PORT (IPv6 hosts in brackets, `[::1]:8001`; an optional grpc:// or grpcs:// prefix, in
    any case: grpcs:// means TLS), else ValueError. Without a port gRPC would quietly dial 443; an http(s):// URL, as
    buf curl takes, it would look up whole as a host name ("Misformatted domain name")."""
    scheme, sep, rest = text.partition("://")
    if sep and scheme.lower() in ("http", "https"):
        tls = " and TLS (--tls or --tls-ca)" if scheme.lower() == "https" else ""
        raise ArgumentError(f"expected HOST:PORT, not a URL: give {rest.rstrip('/')!r}{tls}, got {text!r}")
    host, sep, port = split_scheme(text)[1].rpartition(":")
    if not sep or not host or (host.endswith(":") and not host.startswith("[")):
        raise ArgumentError(f"expected HOST:PORT (e.g. 127.0.0.1:8001, rr-server's default), got {text!r}")
    if _is_ipv6(host):  # "::1:8001": which colon ends the host? gRPC guesses
        raise ArgumentError(f"an IPv6 host goes in brackets, as in [::1]:8001; got {text!r}")
    if not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):  # "²".isdigit(), but int("²") fails
        raise ArgumentError(f"{text!r}: the port must be a number from 1 to 65535")
    return text


def _is_ipv6(host: str) -> bool:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True


def check_chunk(chunk_bytes: int, max_message_bytes: int) -> int:
    """`chunk_bytes`, if a chunk of that size can be sent: 0 or less would send nothing forever."""
    if not 0 < chunk_bytes <= max_message_bytes:
        raise ArgumentError(f"chunk_bytes must be in 1..{max_message_bytes} (max_message_bytes), got {chunk_bytes}")
    return chunk_bytes
