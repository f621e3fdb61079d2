"""RoaD-RuNNer cloud server: profiles, predictions, slice registry and KServe v2 inference over gRPC.

In-process use (tests, the edge demo)::

    from rr_server import Server, ServerConfig

    with Server(ServerConfig(data_dir=Path("/tmp/rr"), listen="127.0.0.1:0")) as server:
        print(server.address)          # "127.0.0.1:PORT", bound and serving

`Server` and `serve` load `rr_server.server` (ONNX Runtime, grpc health and reflection) on first
use, so `rr-server` can name a missing extra in one line.
"""

import typing

import rr_proto.grpc_verbosity  # noqa: F401 - before grpc is first imported
from rr_server.config import ServerConfig, TlsConfig
from rr_server.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    ServerError,
    Unauthenticated,
    Unavailable,
)

if typing.TYPE_CHECKING:
    from rr_server.server import Server, serve

_LAZY = ("Server", "serve")


def __getattr__(name: str) -> typing.Any:
    if name in _LAZY:
        from rr_server import server

        return getattr(server, name)
    raise AttributeError(f"module 'rr_server' has no attribute {name!r}")


def __dir__() -> list[str]:
    return [*globals(), *_LAZY]


__all__ = [
    "FailedPrecondition",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "Server",
    "ServerConfig",
    "ServerError",
    "TlsConfig",
    "Unauthenticated",
    "Unavailable",
    "serve",
]
