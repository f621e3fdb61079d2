"""Server configuration: one documented value object with its defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rr_proto.transport import DEFAULT_MAX_MESSAGE_BYTES

DEFAULT_LISTEN = "127.0.0.1:8001"
# Fits the largest paper model whole (vgg16: 553 MB of weights), so offload-all plans are uploadable by default.
DEFAULT_MAX_SLICE_MB = 1024
DEFAULT_SESSION_CACHE_SIZE = 16
DEFAULT_WORKERS = 64  # gRPC worker threads; streams may take all but a quarter (rr_server.interceptor)
# Streams open without a token (health Watch, reflection) at once, on threads of their own added to the workers:
# anyone may open them, so they never take a worker; --workers does not change how many there are.
OPEN_STREAM_SLOTS = 8
# Health Checks (unary, open without a token) at once, on threads of their own too, each with this long for its one
# request message to arrive: a call that sent its headers and no message held a worker thread until it ended, and 80
# such calls shut out every other client (found by review).
OPEN_CHECK_SLOTS = 8
CHECK_READ_S = 10.0
# An upload, report or echo stream that sends nothing for this long is closed, freeing its slot (a 1 MiB chunk
# takes 84 s at 100 kbit/s: slower links need more).
DEFAULT_STREAM_IDLE_S = 120.0
DEFAULT_PROVIDERS = ("cuda", "cpu")
DEFAULT_CLOUD_NODE_ID = "cloud"
# The server pings each connection this often while it has calls open and closes it when a ping goes unanswered for
# DEFAULT_KEEPALIVE_TIMEOUT_S: an edge that vanished without closing (power off, a dropped link) then gives back its
# stream's worker thread within about keepalive + timeout, instead of when TCP notices (never, on an idle stream).
DEFAULT_KEEPALIVE_S = 30.0
DEFAULT_KEEPALIVE_TIMEOUT_S = 10.0
DEFAULT_GRACE_S = 10.0
# On stop, health reports NOT_SERVING this long before the listener closes, so probes and balancers notice. In-process
# servers (tests, the demo) default to no drain; `rr-server` uses DEFAULT_CLI_DRAIN_S (--drain-seconds).
DEFAULT_DRAIN_S = 0.0
DEFAULT_CLI_DRAIN_S = 0.5
# Predictor refresh: wait this long after the last report before refitting (debounce).
DEFAULT_REFRESH_DEBOUNCE_S = 0.5
# Echo: largest stream the server sends in one Receive call.
DEFAULT_MAX_ECHO_BYTES = 1024 * 1024 * 1024


@dataclass(frozen=True)
class TlsConfig:
    """Server certificate and key (PEM); with `client_ca`, clients must present a certificate it signed (mTLS)."""

    cert: Path
    key: Path
    client_ca: Path | None = None


@dataclass(frozen=True)
class ServerConfig:
    """Everything `rr-server` can be told; `Server(ServerConfig(data_dir=...))` is a complete in-process server."""

    data_dir: Path
    listen: str = DEFAULT_LISTEN
    tls: TlsConfig | None = None
    auth_token_file: Path | None = None
    max_slice_bytes: int = DEFAULT_MAX_SLICE_MB * 1024 * 1024
    # Bytes all stored slices may take; least recently used slices are evicted to stay under it (None: no bound).
    max_store_bytes: int | None = None
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    providers: tuple[str, ...] = DEFAULT_PROVIDERS
    metrics_port: int | None = None
    # /metrics over HTTPS with `tls`'s certificate and key; with its client_ca, only to clients holding a certificate
    # it signed (the scraper's).
    metrics_tls: bool = False
    session_cache_size: int = DEFAULT_SESSION_CACHE_SIZE
    workers: int = DEFAULT_WORKERS
    cloud_node_id: str = DEFAULT_CLOUD_NODE_ID
    refresh_debounce_s: float = DEFAULT_REFRESH_DEBOUNCE_S
    # Time the blocks edges report with a slice_id on this server's execution provider (the cloud row).
    cloud_profiling: bool = True
    max_echo_bytes: int = DEFAULT_MAX_ECHO_BYTES
    grace_s: float = DEFAULT_GRACE_S
    drain_s: float = DEFAULT_DRAIN_S
    keepalive_s: float = DEFAULT_KEEPALIVE_S
    stream_idle_s: float = DEFAULT_STREAM_IDLE_S
    keepalive_timeout_s: float = DEFAULT_KEEPALIVE_TIMEOUT_S
    extra_grpc_options: tuple[tuple[str, int | str], ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir))  # a str too (it failed on data_dir.mkdir)
        if self.metrics_tls and (self.tls is None or self.metrics_port is None):
            raise ValueError("metrics_tls needs tls (its certificate and key) and a metrics_port")
