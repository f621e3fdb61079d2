"""Build, start and stop the gRPC server with every service, health checking and reflection.

`Server(config).start()` binds (port 0 picks a free port), returns the bound address and serves from a thread pool;
`stop()` marks health NOT_SERVING, lets in-flight calls finish within the grace period, then closes the background
workers and storage. The CLI calls `stop()` on SIGTERM/SIGINT.

Why the synchronous grpcio server: ONNX Runtime and SQLite release the GIL, so a thread pool runs slices in
parallel without an event loop; docs/performance.md ("Server and transport") has the sync-vs-asyncio measurement.
"""

from __future__ import annotations

import errno
import logging
import platform
import socket
import ssl
import threading
from concurrent import futures
from importlib import metadata
from pathlib import Path

import grpc
import onnxruntime as ort
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from rr_edge.device import cpu_cores, cpu_model, memory_bytes
from rr_proto.inference import grpc_service_pb2 as kserve_pb
from rr_proto.roadrunner.v1 import roadrunner_pb2 as rr
from rr_proto.roadrunner.v1 import roadrunner_pb2_grpc as rr_grpc
from rr_proto.transport import grpc_options
from rr_server.auth import TokenTable
from rr_server.cf_engine import engine_name, warn_if_biases_only
from rr_server.cloud_profiler import CloudProfiler
from rr_server.config import ServerConfig, TlsConfig
from rr_server.crash_journal import CrashJournal
from rr_server.dir_lock import DataDirLock
from rr_server.echo_servicer import EchoServicer
from rr_server.inference_servicer import InferenceServicer
from rr_server.inference_servicer import add_to_server as add_inference_service
from rr_server.interceptor import PolicyInterceptor, StreamSlots
from rr_server.metrics import Metrics
from rr_server.node_servicer import NodeServicer
from rr_server.prediction_servicer import PredictionServicer
from rr_server.predictor import Predictor
from rr_server.profile_servicer import ProfileServicer
from rr_server.records import ROLE_CLOUD
from rr_server.repository import ModelRepository
from rr_server.sessions import SessionPool, resolve_providers
from rr_server.slice_servicer import SliceServicer
from rr_server.slices import SliceInfo, SliceStore
from rr_server.storage import Storage

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    kserve_pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
    *(s.full_name for s in rr.DESCRIPTOR.services_by_name.values()),
)


def version() -> str:
    try:
        return metadata.version("roadrunner")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def keepalive_options(config: ServerConfig) -> list[tuple[str, int]]:
    """Server-only options: ping each connection with open calls every `keepalive_s` and close it when a ping goes
    unanswered for `keepalive_timeout_s`, so a vanished edge gives its stream slot back. Only the server pings: the
    server's default ping policy would answer keepalive pings from clients with GOAWAY."""
    timeout_ms = int(config.keepalive_timeout_s * 1000)
    return [
        ("grpc.keepalive_time_ms", int(config.keepalive_s * 1000)),
        ("grpc.keepalive_timeout_ms", timeout_ms),
        ("grpc.http2.ping_timeout_ms", timeout_ms),  # the ack deadline gRPC 1.85 applies to every ping (default 60 s)
    ]


def tls_context(tls: TlsConfig) -> ssl.SSLContext:
    """The server side of `tls` (client certificates required with a client CA), for /metrics (`--metrics-tls`);
    ValueError, naming the file, unless the certificate and key match and the client CA file is a CA bundle (gRPC
    itself only says that it failed to bind)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(tls.cert, tls.key)
    except ssl.SSLError as exc:
        raise ValueError(f"TLS: {tls.cert} and {tls.key} are not a matching PEM certificate and key ({exc})") from None
    except OSError as exc:  # ssl does not name the file it could not read
        raise ValueError(f"TLS: cannot read {tls.cert} or {tls.key}: {exc.strerror or exc}") from None
    if tls.client_ca is not None:
        try:
            context.load_verify_locations(tls.client_ca)
        except ssl.SSLError as exc:
            raise ValueError(f"TLS: {tls.client_ca} is not a PEM CA bundle ({exc})") from None
        except OSError as exc:
            raise ValueError(f"TLS: cannot read {tls.client_ca}: {exc.strerror or exc}") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def check_addresses(config: ServerConfig) -> None:
    """OSError, with the reason (in use, not an address of this host, no such host, the other's port), when the gRPC
    address or the metrics port cannot be bound now. `Server` checks before it makes anything (the data dir) and
    before gRPC binds, whose own failure is a line of its log on stderr and an error without the reason. A Unix
    socket address (`unix:PATH`, which the library takes) is left to gRPC."""
    host, _, port = config.listen.rpartition(":")
    exc = _bind_error(host.strip("[]"), int(port)) if port.isdigit() else None
    if exc is not None:
        raise OSError(f"cannot listen on {config.listen}: {exc.strerror or exc}")
    if config.metrics_port is not None:
        if port.isdigit() and int(port) == config.metrics_port != 0:
            raise OSError(f"cannot serve metrics on port {config.metrics_port}: it is the gRPC port of --listen")
        exc = _bind_error(_metrics_host(config.listen), config.metrics_port)
        if exc is not None:
            raise OSError(f"cannot serve metrics on port {config.metrics_port}: {exc.strerror or exc}")


def _bind_error(host: str, port: int) -> OSError | None:
    """Why none of the addresses `host` resolves to can be bound to `port` now; None when one can (gRPC serves on
    those it can bind)."""
    try:
        addresses = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return exc
    first: OSError | None = None
    for family, kind, proto, _, address in addresses:
        try:  # a family the host lacks (IPv6 disabled) fails here: gRPC then serves on the others
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as both servers do: TIME_WAIT is free
                probe.bind(address)
                return None
        except OSError as exc:
            first = first or exc
    return first


def _metrics_host(listen: str) -> str:
    """The metrics' address: the gRPC listener's interface (a server on loopback does not publish them beyond it)."""
    return listen.rsplit(":", 1)[0].strip("[]") or "0.0.0.0"


class Server:
    """The rr-server, usable in-process: `with Server(config) as s: s.address`."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.address: str | None = None
        self.port: int | None = None
        self.metrics_port: int | None = None
        self.metrics = Metrics()
        check_addresses(config)  # these before the data dir is made: a failed start had left one
        tls = tls_context(config.tls) if config.tls is not None else None  # checked before gRPC reads the files
        self._metrics_tls = tls if config.metrics_tls else None
        self._tokens = TokenTable.from_file(config.auth_token_file) if config.auth_token_file else None
        data_dir = config.data_dir
        if (data_dir.exists() or data_dir.is_symlink()) and not data_dir.is_dir():  # mkdir said only "File exists"
            raise NotADirectoryError(errno.ENOTDIR, "not a directory (a file, or a link to nothing)", str(data_dir))
        data_dir.mkdir(parents=True, exist_ok=True)
        self._dir_lock = DataDirLock(data_dir)  # first: a second server must not touch the first one's files
        try:
            self._open_state(config, data_dir)
        except BaseException:
            self._dir_lock.release()
            raise

    def _open_state(self, config: ServerConfig, data_dir: Path) -> None:
        self.storage = Storage(data_dir)
        self.slices = SliceStore(
            data_dir / "slices",
            config.max_slice_bytes,
            config.max_store_bytes,
            on_evict=self._slice_evicted,
        )
        self.metrics.slice_evictions.inc(self.slices.trimmed)
        self.providers = resolve_providers(config.providers)
        self.sessions = SessionPool(
            self.providers,
            config.session_cache_size,
            on_lookup=lambda hit: self.metrics.session_cache.labels("hit" if hit else "miss").inc(),
        )
        self.repository = ModelRepository(self.slices, self.sessions, self.metrics)
        self.predictor = Predictor(self.storage, config.refresh_debounce_s)
        self.cloud_profiler = (
            CloudProfiler(
                config.cloud_node_id,
                self.storage,
                self.slices,
                self.sessions,
                self.predictor.notify,
                activity=self.repository.activity,
                journal=CrashJournal(data_dir / "cloud-profiler-running"),
            )
            if config.cloud_profiling
            else None
        )
        self.health = health.HealthServicer(experimental_non_blocking=True)
        self.stream_slots = StreamSlots(config.workers)
        self.metrics.track_stream_slots(self.stream_slots.capacity, self.stream_slots.in_use)
        self._grpc: grpc.Server | None = None
        self._stopped = threading.Event()
        self._now = threading.Event()  # stop_now was called

    def _slice_evicted(self, info: SliceInfo) -> None:
        """A slice left the store (its budget): its session goes too, or it would keep memory and a cache slot."""
        self.metrics.slice_evictions.inc()
        self.sessions.evict(info.slice_id)

    # -- lifecycle -------------------------------------------------------------------------------------------------

    def start(self) -> str:
        """Bind, start serving and return the bound address HOST:PORT (OSError or ValueError, with nothing started,
        when the address or the TLS files are unusable: the server is then stopped, the data dir free). `Server()`
        checked both first, and the token file, before it made the data dir."""
        try:
            return self._start()
        except BaseException:
            self.stop(grace=0)
            raise

    def _start(self) -> str:
        options = [
            *grpc_options(self.config.max_message_bytes),
            ("grpc.so_reuseport", 0),  # a second server on a port in use fails instead of sharing it
            *keepalive_options(self.config),
            *self.config.extra_grpc_options,
        ]
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self.stream_slots.threads, thread_name_prefix="rr-grpc"),
            interceptors=[PolicyInterceptor(self._tokens, self.metrics, self.stream_slots, self.config.stream_idle_s)],
            options=options,
        )
        self._add_services(server)
        host = self.config.listen.rsplit(":", 1)[0]
        try:
            if self.config.tls is not None:
                tls = self.config.tls
                credentials = grpc.ssl_server_credentials(
                    [(tls.key.read_bytes(), tls.cert.read_bytes())],
                    root_certificates=tls.client_ca.read_bytes() if tls.client_ca else None,
                    require_client_auth=tls.client_ca is not None,
                )
                self.port = server.add_secure_port(self.config.listen, credentials)
            else:
                self.port = server.add_insecure_port(self.config.listen)
        except RuntimeError as exc:  # gRPC's "Failed to bind to address": the port is taken or the address invalid
            raise OSError(
                f"cannot listen on {self.config.listen} (in use, or not an address of this host): {exc}"
            ) from None
        if not self.port:
            raise OSError(f"cannot listen on {self.config.listen}")
        if self.config.metrics_port is not None:
            try:
                self.metrics_port = self.metrics.serve_http(
                    self.config.metrics_port,
                    addr=_metrics_host(self.config.listen),
                    tls=self._metrics_tls,
                )
            except OSError as exc:
                server.stop(None)  # gives the bound gRPC port back
                raise OSError(
                    f"cannot serve metrics on port {self.config.metrics_port}: {exc.strerror or exc}"
                ) from None
        self._register_cloud_node()
        warn_if_biases_only()
        self.predictor.start()
        if self.cloud_profiler is not None:
            self.cloud_profiler.start()
        server.start()
        self._grpc = server
        for name in ("", *SERVICE_NAMES):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.address = f"{host}:{self.port}"
        log.info(
            "rr-server %s listening on %s (%s) providers=%s predictor=%s data=%s auth=%s",
            version(),
            self.address,
            "plaintext" if self.config.tls is None else "mTLS" if self.config.tls.client_ca else "TLS",
            ",".join(self.providers),
            engine_name(),
            self.config.data_dir,
            "tokens" if self._tokens else "off",
        )
        return self.address

    def stop(self, grace: float | None = None) -> None:
        """Graceful stop: health NOT_SERVING (for `drain_s`), then no new calls; in-flight calls get up to `grace`
        seconds to finish; then the background workers and storage close."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        grace = self.config.grace_s if grace is None else grace
        self.health.enter_graceful_shutdown()
        if self._grpc is not None and self.config.drain_s > 0:
            self._now.wait(self.config.drain_s)  # a second SIGTERM (stop_now) cuts it short
        if self._grpc is not None:
            ended = self._inference.streams.end()  # idle edges' streams would hold the stop for all of `grace`
            echoes = self._echo.streams.end()  # so would a network profile under way
            log.info(
                "stopping: ended %d idle inference and %d echo streams; finishing calls in flight (grace %.1f s)",
                ended,
                echoes,
                grace,
            )
            self._grpc.stop(grace).wait()
        self.repository.terminate_runs()  # a run stuck in ONNX Runtime would keep the process from exiting
        if self.cloud_profiler is not None:
            self.cloud_profiler.close()
        self.predictor.close()
        self.metrics.close()
        self.storage.close()
        self._dir_lock.release()
        log.info("stopped")

    def stop_now(self) -> None:
        """End every call at once, also while a graceful `stop` drains or waits for them (a second SIGTERM)."""
        self._now.set()
        if self._grpc is not None:
            self._grpc.stop(0)

    def wait(self) -> None:
        if self._grpc is not None:
            self._grpc.wait_for_termination()

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop(grace=1.0)

    def ready(self) -> bool:
        return self._grpc is not None and not self._stopped.is_set()

    # -- wiring ----------------------------------------------------------------------------------------------------

    def server_info(self) -> rr.GetServerInfoResponse:
        return rr.GetServerInfoResponse(
            cloud_node_id=self.config.cloud_node_id,
            providers=self.providers,
            version=version(),
            max_message_bytes=self.config.max_message_bytes,
            max_slice_bytes=self.config.max_slice_bytes,
        )

    def _register_cloud_node(self) -> None:
        device = {  # read as an edge reads its own (`rr_edge.device`): the CPUs this process may use, not all
            "cpu_model": cpu_model(),
            "cpu_cores": cpu_cores(),
            "memory_bytes": memory_bytes(),
            "ort_version": ort.__version__,
            "ort_providers": list(self.providers),
            "hostname": platform.node(),
        }
        node_id = self.config.cloud_node_id
        before = self.storage.get_node(node_id)
        was = (before.device.get("ort_providers") or ["?"])[0] if before is not None else self.providers[0]
        # The cloud profiler forgets block timings by their own provider; whole-model runs record none, and went only
        # with such a block timing: a row with model runs and no block timings kept the old ones for good. Forgotten
        # before the row records the new provider: a start that failed or died between the two had kept them for good.
        if was != self.providers[0] and (forgotten := self.storage.forget_model_runs(node_id)):
            log.warning(
                "%d whole-model runs were timed on %s, not %s: forgotten (a model whose whole-model slice is stored "
                "is timed again)",
                forgotten,
                was,
                self.providers[0],
            )
        self.storage.upsert_node(node_id, ROLE_CLOUD, device)

    def _add_services(self, server: grpc.Server) -> None:
        self._inference = InferenceServicer(self.repository, version(), self.ready, self.config.max_message_bytes)
        add_inference_service(self._inference, server)
        rr_grpc.add_NodeServiceServicer_to_server(NodeServicer(self.storage, self.server_info()), server)
        rr_grpc.add_ProfileServiceServicer_to_server(
            ProfileServicer(self.storage, self.predictor, self.slices, self.cloud_profiler), server
        )
        rr_grpc.add_PredictionServiceServicer_to_server(PredictionServicer(self.storage, self.predictor), server)
        rr_grpc.add_SliceServiceServicer_to_server(
            SliceServicer(self.slices, self.sessions, self.metrics, self.repository), server
        )
        self._echo = EchoServicer(self.config.max_echo_bytes, self.config.max_message_bytes)
        rr_grpc.add_EchoServiceServicer_to_server(self._echo, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection((*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server)


def serve(config: ServerConfig) -> Server:
    """Start a server and return it (its `address` is bound); call `stop()` when done."""
    server = Server(config)
    server.start()
    return server
