"""`rr-server`: run the RoaD-RuNNer cloud service. Logging is configured here and only here."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sqlite3
import sys
import threading
import time
from pathlib import Path

from rr_proto.allocator import tune_allocator
from rr_proto.argtypes import Parser, non_negative_float, positive_float
from rr_proto.extras import missing_extra
from rr_proto.providers import PROVIDER_NAMES
from rr_server.config import (
    DEFAULT_CLI_DRAIN_S,
    DEFAULT_GRACE_S,
    DEFAULT_KEEPALIVE_S,
    DEFAULT_KEEPALIVE_TIMEOUT_S,
    DEFAULT_LISTEN,
    DEFAULT_MAX_SLICE_MB,
    DEFAULT_STREAM_IDLE_S,
    DEFAULT_WORKERS,
    OPEN_CHECK_SLOTS,
    OPEN_STREAM_SLOTS,
    ServerConfig,
    TlsConfig,
)
from rr_server.memory_limit import exit_when_serving_stops, limit_memory

log = logging.getLogger("rr_server")

_INT64_MAX = 2**63 - 1  # a byte limit travels in GetServerInfo's int64 fields


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg (+ exc)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


_MAX_SECONDS = 86_400.0  # the longest timing flag: a day


def _directory(text: str) -> Path:
    """argparse type: a path, not an empty one (Path("") is the working directory: the state would land there)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path (write . for the working directory)")
    return Path(text)


def _bytes(value: float, unit: int) -> int:
    """A limit given in MiB or GiB, in whole bytes."""
    return int(value * unit)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="rr-server", description="RoaD-RuNNer cloud server (gRPC).")
    p.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help="address to listen on; 0.0.0.0:PORT accepts other machines, port 0 picks a free one (default %(default)s)",
    )
    p.add_argument("--data-dir", required=True, type=_directory, help="SQLite database and slice files live here")
    p.add_argument("--tls-cert", type=Path, help="server certificate (PEM); enables TLS with --tls-key")
    p.add_argument("--tls-key", type=Path, help="server private key (PEM)")
    p.add_argument("--client-ca", type=Path, help="CA (PEM) that signs client certificates; enables mTLS")
    p.add_argument("--auth-token-file", type=Path, help="file of 'node_id token' lines; requires bearer tokens")
    p.add_argument(
        "--max-slice-mb",
        type=positive_float,
        default=DEFAULT_MAX_SLICE_MB,
        help="largest accepted slice upload in MiB (default %(default)g)",
    )
    p.add_argument(
        "--max-store-gb",
        type=positive_float,
        help="disk budget of all stored slices in GiB; least recently used ones are evicted to fit (default: no bound)",
    )
    p.add_argument(
        "--max-memory-gb",
        type=positive_float,
        help="bound on the address space the server process maps (its data segment; an idle server maps about 0.2 "
        "GiB, each thread 8 MiB): a request whose tensors would pass it fails with RESOURCE_EXHAUSTED instead of "
        "the server being killed for memory (default: no bound)",
    )
    p.add_argument(
        "--providers", default="cuda,cpu", help="execution providers in order of preference (default %(default)s)"
    )
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port (on the --listen interface)")
    p.add_argument(
        "--metrics-tls",
        action="store_true",
        help="serve the metrics over HTTPS with --tls-cert/--tls-key (with --client-ca, only to scrapers holding a "
        "certificate it signed)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=DEFAULT_WORKERS,
        help="gRPC worker threads; each open stream (an edge runner keeps one) holds one, and a quarter stays free "
        f"for unary calls; health Watch and reflection streams have {OPEN_STREAM_SLOTS} more threads of their own, "
        f"health Checks {OPEN_CHECK_SLOTS} (default %(default)s)",
    )
    p.add_argument(
        "--drain-seconds",
        type=non_negative_float,
        default=DEFAULT_CLI_DRAIN_S,
        help="on SIGTERM, report NOT_SERVING this many seconds before closing the port; in-flight calls then finish "
        "(default %(default)g)",
    )
    p.add_argument(
        "--grace-seconds",
        type=non_negative_float,
        default=DEFAULT_GRACE_S,
        help="on SIGTERM, after the drain, calls in flight get this long to end before they are cut (an edge's "
        "inference stream ends after its answer, or at once when it waits for a request); a second SIGTERM cuts them "
        "at once (default %(default)g)",
    )
    p.add_argument(
        "--keepalive-seconds",
        type=positive_float,
        default=DEFAULT_KEEPALIVE_S,
        help="ping each connection with open calls this often; one that does not answer within "
        f"{DEFAULT_KEEPALIVE_TIMEOUT_S:g} s is closed and its streams end (default %(default)g)",
    )
    p.add_argument(
        "--stream-idle-seconds",
        type=positive_float,
        default=DEFAULT_STREAM_IDLE_S,
        help="close an upload, report or echo stream that sends nothing for this long (or reads none of its answer "
        "for twice this long), freeing its slot for other clients (default %(default)g; a 1 MiB upload chunk takes "
        "84 s at 100 kbit/s)",
    )
    p.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging level (default %(default)s)",
    )
    p.add_argument(
        "--log-format", default="json", choices=["json", "text"], help="log line format (default %(default)s)"
    )
    p.add_argument("--port-file", type=Path, help="write the bound HOST:PORT here once serving (for scripts/tests)")
    return p


def _providers(args: argparse.Namespace) -> tuple[str, ...]:
    return tuple(p.strip() for p in args.providers.split(",") if p.strip())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    host, sep, port = args.listen.rpartition(":")
    if not sep or not host or not port.isdigit():  # without a port gRPC would bind 443
        p.error(f"--listen: expected HOST:PORT (e.g. {DEFAULT_LISTEN}, or 0.0.0.0:8001), got {args.listen!r}")
    if int(port) > 65535:
        p.error(f"--listen: the port must be 0..65535 (0: a free one), got {port}")
    if (args.tls_cert is None) != (args.tls_key is None):
        p.error("--tls-cert and --tls-key go together")
    if args.client_ca is not None and args.tls_cert is None:
        p.error("--client-ca needs --tls-cert and --tls-key")
    for flag, value, low, high in (  # past a day, threading's timeouts overflow (1e10 s made every upload INTERNAL)
        ("--keepalive-seconds", args.keepalive_seconds, 1.0, _MAX_SECONDS),
        ("--stream-idle-seconds", args.stream_idle_seconds, 0.1, _MAX_SECONDS),
        ("--drain-seconds", args.drain_seconds, 0.0, _MAX_SECONDS),
        ("--grace-seconds", args.grace_seconds, 0.0, _MAX_SECONDS),
    ):
        if not low <= value <= high:
            p.error(f"{flag} must be in [{low:g}, {high:g}] seconds, got {value:g}")
    if args.metrics_port is not None and not 0 <= args.metrics_port <= 65535:
        p.error(f"--metrics-port must be a port, 0..65535 (0: a free one), got {args.metrics_port}")
    if args.metrics_tls and (args.metrics_port is None or args.tls_cert is None):
        p.error("--metrics-tls needs --metrics-port and --tls-cert/--tls-key")
    if args.port_file is not None and not args.port_file.parent.is_dir():
        p.error(f"--port-file: no directory {str(args.port_file.parent)!r} to write it in")
    if args.port_file is not None and args.port_file.is_dir():
        p.error(f"--port-file: {str(args.port_file)!r} is a directory; name a file to write the address in")
    if args.workers < 4:
        p.error("--workers must be at least 4")
    unknown = [n for n in _providers(args) if n.lower() not in PROVIDER_NAMES and not n.endswith("ExecutionProvider")]
    if unknown:
        p.error(f"--providers: unknown {', '.join(unknown)}; use {', '.join(PROVIDER_NAMES)} or an ONNX Runtime name")
    for flag, value, unit in (
        ("--max-slice-mb", args.max_slice_mb, 2**20),
        ("--max-store-gb", args.max_store_gb, 2**30),
        ("--max-memory-gb", args.max_memory_gb, 2**30),
    ):
        if value is None:
            continue
        if _bytes(value, unit) < 1:
            p.error(f"{flag} {value:g} is less than one byte")
        if _bytes(value, unit) > _INT64_MAX:
            p.error(f"{flag} {value:g} is more bytes than a limit can hold ({_INT64_MAX})")
    if args.max_store_gb is not None and _bytes(args.max_store_gb, 2**30) < _bytes(args.max_slice_mb, 2**20):
        p.error("--max-store-gb must hold at least one slice of --max-slice-mb")
    return args


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    tls = TlsConfig(args.tls_cert, args.tls_key, args.client_ca) if args.tls_cert else None
    return ServerConfig(
        data_dir=args.data_dir,
        listen=args.listen,
        tls=tls,
        auth_token_file=args.auth_token_file,
        max_slice_bytes=_bytes(args.max_slice_mb, 2**20),
        max_store_bytes=None if args.max_store_gb is None else _bytes(args.max_store_gb, 2**30),
        providers=_providers(args),
        metrics_port=args.metrics_port,
        metrics_tls=args.metrics_tls,
        workers=args.workers,
        drain_s=args.drain_seconds,
        grace_s=args.grace_seconds,
        keepalive_s=args.keepalive_seconds,
        stream_idle_s=args.stream_idle_seconds,
    )


def _with_its_flag(exc: Exception, args: argparse.Namespace) -> str:
    """The error, naming the option whose file it is (`[Errno 2] No such file or directory: 'tokens'` did not say
    that the file was --auth-token-file's, nor "'utf-8' codec can't decode byte 0xff" that it was not text)."""
    token_file = args.auth_token_file
    if isinstance(exc, UnicodeDecodeError) and token_file is not None and not _is_utf8(token_file):
        return f"--auth-token-file {token_file}: not UTF-8 text"
    filename = getattr(exc, "filename", None)
    if not isinstance(exc, OSError) or filename is None:
        return str(exc)
    failed = Path(filename)
    for flag, path in (
        ("--auth-token-file", args.auth_token_file),
        ("--tls-cert", args.tls_cert),
        ("--tls-key", args.tls_key),
        ("--client-ca", args.client_ca),
        ("--data-dir", args.data_dir),
    ):
        related = flag == "--data-dir" and (path in failed.parents or failed in path.parents)  # a file in it, or above
        if path is not None and (failed == path or related):
            return f"{flag} {filename}: {exc.strerror or exc}"
    return str(exc)


def _write_port_file(path: Path, address: str) -> None:
    """Write the bound address whole (through a temporary file renamed over `path`: a script polling it never reads
    half of one); the temporary file is removed when that fails."""
    tmp = path.with_suffix(".tmp")
    try:
        tmp.write_text(address)
        tmp.replace(path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def _is_utf8(path: Path) -> bool:
    """Whether `path` reads as UTF-8 text (the token file is the text file the server reads as it starts; a decode
    error does not say whose bytes it could not decode)."""
    try:
        path.read_bytes().decode()
    except (OSError, UnicodeDecodeError):
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    tune_allocator()  # big tensors reuse heap memory instead of fresh pages per call; RR_MALLOC_TUNING=0 opts out
    try:
        from rr_server.errors import ServerError
        from rr_server.server import Server  # here, not at the top: a missing extra gets one line, not a traceback
    except ModuleNotFoundError as exc:
        hint = missing_extra(exc, role="server")
        if hint is None:
            raise
        log.error("cannot start: %s", hint)
        return 2
    try:
        server = Server(config_from_args(args))
        if args.max_memory_gb is not None:
            limit_memory(_bytes(args.max_memory_gb, 2**30))
        exit_when_serving_stops()
        address = server.start()
    except sqlite3.DatabaseError as exc:  # damaged, not a database, unreadable: one line, not a traceback
        log.error("cannot start: the database in --data-dir %s: %s", args.data_dir, exc)
        return 2
    except (OSError, ValueError, ServerError) as exc:  # ServerError: a full disk as the server registers itself
        log.error("cannot start: %s", _with_its_flag(exc, args))
        return 2
    if args.port_file:
        try:
            _write_port_file(args.port_file, address)
        except OSError as exc:  # made a directory, or the disk full, since the flags were checked
            log.error("cannot write --port-file %s: %s; stopping", args.port_file, exc.strerror or exc)
            server.stop_now()
            server.stop(grace=0)
            return 2
    stop = threading.Event()

    def on_signal(signum, _frame) -> None:
        if stop.is_set():  # a second signal: stop now, without the grace period
            log.info("received %s again: stopping now", signal.Signals(signum).name)
            server.stop_now()
            return
        log.info("received %s", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        while not stop.is_set():
            time.sleep(0.2)
        server.stop()
    finally:
        if args.port_file:  # the address is no longer served
            args.port_file.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
