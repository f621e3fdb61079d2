"""The server of /metrics: prometheus_client's WSGI app on its threading server, over HTTPS when given a TLS context.

prometheus_client's own `start_http_server(certfile=...)` wraps the listening socket, so each TLS handshake runs in
its accept loop: one client that connected and said nothing held every scrape after it (a scrape beside one silent
connection timed out). Here the handshake runs in the connection's own thread, and a connection silent for
CONNECTION_TIMEOUT_S ends, so it holds no thread either.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

log = logging.getLogger(__name__)

CONNECTION_TIMEOUT_S = 10.0


class _Handler(WSGIRequestHandler):
    timeout = CONNECTION_TIMEOUT_S

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class's name)
        """No line per scrape."""


def serve(registry: CollectorRegistry, addr: str, port: int, tls: ssl.SSLContext | None = None) -> WSGIServer:
    """Serve `registry` at /metrics on `addr`:`port` (0: a free port) in a daemon thread; `shutdown()` and
    `server_close()` the server returned to stop."""
    family = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]  # IPv6 too

    class Server(ThreadingWSGIServer):
        address_family = family

        def get_request(self) -> tuple[socket.socket, object]:
            conn, peer = super().get_request()
            if tls is not None:  # the handshake waits for the connection's first read, in its own thread
                conn = tls.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
            return conn, peer

        def handle_error(self, request: object, client_address: object) -> None:
            log.debug("metrics: a connection from %s failed", client_address, exc_info=True)  # a bad client's

    httpd = make_server(addr, port, make_wsgi_app(registry), Server, handler_class=_Handler)
    threading.Thread(target=httpd.serve_forever, name="rr-metrics", daemon=True).start()
    return httpd
