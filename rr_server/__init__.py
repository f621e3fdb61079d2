"""RoaD-RuNNer cloud server: profiles, predictions, slice registry and KServe v2 inference over gRPC.

In-process use (tests, the edge demo)::

    from rr_server import Server, ServerConfig

    with Server(ServerConfig(data_dir=Path("/tmp/rr"), listen="127.0.0.1:0")) as server:
        print(server.address)          # "127.0.0.1:PORT", bound and serving
"""

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
from rr_server.server import Server, grpc_options, serve

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
    "grpc_options",
    "serve",
]
