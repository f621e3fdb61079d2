"""Bearer tokens (UNAUTHENTICATED / PERMISSION_DENIED), TLS and mutual TLS with certificates made at test time."""

from __future__ import annotations

import logging
import socket
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from _server_support import Stubs, layer, report, serving, start_server
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rr_proto.inference import grpc_service_pb2 as pb
from rr_proto.roadrunner.v1 import roadrunner_pb2 as rr
from rr_server import TlsConfig


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


@pytest.fixture
def env(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("# node token\nalice tok-alice\nbob tok-bob\n")
    with serving(tmp_path / "data", auth_token_file=tokens) as (server, stubs):
        yield server, stubs


def test_missing_or_invalid_token_is_unauthenticated(env, caplog):
    _, stubs = env
    for metadata in (None, bearer("wrong"), [("authorization", "Basic abc")]):
        with pytest.raises(grpc.RpcError) as err, caplog.at_level(logging.INFO, logger="rr_server.interceptor"):
            stubs.nodes.ListNodes(rr.ListNodesRequest(), timeout=5, metadata=metadata)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # the log names the peer whose token failed (it named none, walkthrough)
    assert "ListNodes from ipv4:127.0.0.1:" in caplog.text and "-> UNAUTHENTICATED" in caplog.text
    with pytest.raises(grpc.RpcError) as err:
        stubs.kserve.ServerLive(pb.ServerLiveRequest(), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert stubs.nodes.ListNodes(rr.ListNodesRequest(), timeout=5, metadata=bearer("tok-bob")).nodes


def test_health_is_open_without_token(env):
    _, stubs = env
    health = health_pb2_grpc.HealthStub(stubs.channel)
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING


def test_node_writes_only_its_own_reports(env):
    server, stubs = env
    alice = bearer("tok-alice")
    stubs.nodes.RegisterNode(rr.RegisterNodeRequest(node_id="alice"), timeout=5, metadata=alice)
    stubs.nodes.RegisterNode(rr.RegisterNodeRequest(node_id="bob"), timeout=5, metadata=bearer("tok-bob"))
    with pytest.raises(grpc.RpcError) as err:
        stubs.nodes.RegisterNode(rr.RegisterNodeRequest(node_id="bob"), timeout=5, metadata=alice)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as err:
        stubs.profiles.ReportLayerProfiles(report("bob", layer("s", 1.0)), timeout=5, metadata=alice)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "'alice'" in err.value.details() and "'bob'" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        stubs.profiles.ReportNetworkProfile(
            rr.ReportNetworkProfileRequest(node_id="bob", profile=rr.NetworkProfile()), timeout=5, metadata=alice
        )
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert server.storage.count_measurements() == 0
    ack = stubs.profiles.ReportLayerProfiles(report("alice", layer("s", 1.0)), timeout=5, metadata=alice)
    assert ack.accepted_layers == 1
    # reading is allowed to any authenticated node
    listed = stubs.profiles.ListMeasuredSignatures(
        rr.ListMeasuredSignaturesRequest(node_id="alice"), timeout=5, metadata=bearer("tok-bob")
    )
    assert list(listed.signatures) == ["s"]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A CA, a server certificate for localhost/127.0.0.1 and a client certificate, all signed by the CA."""
    d = tmp_path_factory.mktemp("pki")
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=rr-test-ca",
        cwd=d,
    )
    (d / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name in ("server", "client"):
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN={name}",
            cwd=d,
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            cwd=d,
        )
    return d


def test_tls(tmp_path, pki):
    server = start_server(tmp_path, tls=TlsConfig(pki / "server.pem", pki / "server.key"))
    try:
        creds = grpc.ssl_channel_credentials(root_certificates=(pki / "ca.pem").read_bytes())
        stubs = Stubs.connect(server.address, creds)
        assert stubs.kserve.ServerLive(pb.ServerLiveRequest(), timeout=10).live
        stubs.close()
        plain = Stubs.connect(server.address)
        with pytest.raises(grpc.RpcError) as err:
            plain.kserve.ServerLive(pb.ServerLiveRequest(), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        plain.close()
    finally:
        server.stop(grace=1)


def test_mutual_tls(tmp_path, pki, caplog):
    with caplog.at_level(logging.INFO, logger="rr_server.server"):
        server = start_server(tmp_path, tls=TlsConfig(pki / "server.pem", pki / "server.key", pki / "ca.pem"))
    assert "(mTLS)" in caplog.text  # it said TLS, client certificates or not (walkthrough)
    try:
        ca = (pki / "ca.pem").read_bytes()
        with_cert = grpc.ssl_channel_credentials(
            root_certificates=ca,
            private_key=(pki / "client.key").read_bytes(),
            certificate_chain=(pki / "client.pem").read_bytes(),
        )
        stubs = Stubs.connect(server.address, with_cert)
        assert stubs.kserve.ServerLive(pb.ServerLiveRequest(), timeout=10).live
        stubs.close()
        without = Stubs.connect(server.address, grpc.ssl_channel_credentials(root_certificates=ca))
        with pytest.raises(grpc.RpcError) as err:
            without.kserve.ServerLive(pb.ServerLiveRequest(), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        without.close()
    finally:
        server.stop(grace=1)


REFUSED = (urllib.error.URLError, ssl.SSLError, ConnectionError)  # each as the handshake fails on either side


def _scrape(port: int, context: ssl.SSLContext | None = None) -> str:
    scheme = "https" if context is not None else "http"
    with urllib.request.urlopen(f"{scheme}://127.0.0.1:{port}/metrics", context=context, timeout=10) as answer:
        return answer.read().decode()


def test_metrics_over_tls_and_mutual_tls(tmp_path, pki):
    """`--metrics-tls`: /metrics over HTTPS with the server's certificate; with its client CA, only to a scraper
    holding a certificate that CA signed."""
    ca = ssl.create_default_context(cafile=pki / "ca.pem")
    server = start_server(tmp_path / "tls", tls=TlsConfig(pki / "server.pem", pki / "server.key"), metrics_port=0,
                          metrics_tls=True)  # fmt: skip
    try:
        assert "rr_requests_total" in _scrape(server.metrics_port, ca)
        with pytest.raises(REFUSED):
            _scrape(server.metrics_port)  # plain HTTP
    finally:
        server.stop(grace=1)
    mutual = TlsConfig(pki / "server.pem", pki / "server.key", pki / "ca.pem")
    server = start_server(tmp_path / "mtls", tls=mutual, metrics_port=0, metrics_tls=True)
    try:
        with pytest.raises(REFUSED):
            _scrape(server.metrics_port, ca)  # no client certificate
        ca.load_cert_chain(pki / "client.pem", pki / "client.key")
        assert "rr_requests_total" in _scrape(server.metrics_port, ca)
    finally:
        server.stop(grace=1)


def test_a_silent_connection_does_not_hold_the_metrics_of_others(tmp_path, pki):
    """prometheus_client's own TLS runs each handshake in its accept loop: one client that connected and said nothing
    held every scrape after it."""
    server = start_server(tmp_path, tls=TlsConfig(pki / "server.pem", pki / "server.key"), metrics_port=0,
                          metrics_tls=True)  # fmt: skip
    try:
        with socket.create_connection(("127.0.0.1", server.metrics_port)):
            assert "rr_requests_total" in _scrape(
                server.metrics_port, ssl.create_default_context(cafile=pki / "ca.pem")
            )
    finally:
        server.stop(grace=1)


def test_metrics_tls_needs_the_servers_certificate_and_a_metrics_port(tmp_path):
    from rr_server import ServerConfig

    with pytest.raises(ValueError, match="metrics_tls needs tls"):
        ServerConfig(data_dir=tmp_path, metrics_port=0, metrics_tls=True)


def test_a_token_shared_by_two_nodes_is_refused(tmp_path):
    """The caller would silently be whichever node is listed last."""
    from rr_server.auth import TokenTable

    tokens = tmp_path / "tokens"
    tokens.write_text("alice s3cret\nbob s3cret\n")
    with pytest.raises(ValueError, match="node 'bob' has the same token as node 'alice'"):
        TokenTable.from_file(tokens)


def test_unusable_tls_files_and_addresses_are_one_clear_error(tmp_path, pki):
    """gRPC only says "Failed to bind to address" for all of these; the server names the cause, starts nothing."""
    from rr_server import Server, ServerConfig

    def start(**kw) -> None:
        Server(ServerConfig(data_dir=tmp_path / "d", listen="127.0.0.1:0", **kw)).start()

    with pytest.raises(ValueError, match="not a matching PEM certificate and key"):
        start(tls=TlsConfig(pki / "server.pem", pki / "client.key"))
    (tmp_path / "garbage.pem").write_text("not a certificate")
    with pytest.raises(ValueError, match="is not a PEM CA bundle"):
        start(tls=TlsConfig(pki / "server.pem", pki / "server.key", tmp_path / "garbage.pem"))
    with pytest.raises(ValueError, match="cannot read .*missing.pem"):  # ssl's own error names no file
        start(tls=TlsConfig(tmp_path / "missing.pem", pki / "server.key"))
    with pytest.raises(ValueError, match="cannot read .*missing-ca.pem"):
        start(tls=TlsConfig(pki / "server.pem", pki / "server.key", tmp_path / "missing-ca.pem"))
    running = start_server(tmp_path / "first", metrics_port=0)
    try:
        with pytest.raises(OSError, match="cannot listen on"):
            Server(ServerConfig(data_dir=tmp_path / "d", listen=running.address)).start()
        with pytest.raises(OSError, match=f"cannot serve metrics on port {running.metrics_port}"):
            start(metrics_port=running.metrics_port)
    finally:
        running.stop(grace=1)
    with socket.socket() as probe:  # a port free now
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    with pytest.raises(OSError, match=f"port {free}: it is the gRPC port of --listen"):  # was "Address already in use"
        Server(ServerConfig(data_dir=tmp_path / "d", listen=f"127.0.0.1:{free}", metrics_port=free))
    with pytest.raises(OSError, match="No such file"):
        start(auth_token_file=tmp_path / "no-tokens")
    assert not (tmp_path / "d").exists()  # a failed start had made the data dir, its database and its lock


def test_the_edges_tls_errors_say_what_to_fix(tmp_path, pki, capsys):
    """Against a TLS server, an edge that does not trust its certificate was told to check that the server trusts
    the client's, and one whose --server host the certificate does not name was told to pass a token (walkthrough)."""
    from rr_edge.cli import main

    server = start_server(tmp_path / "a", tls=TlsConfig(pki / "server.pem", pki / "server.key"), listen="127.0.0.2:0")
    try:
        port = server.address.rsplit(":", 1)[1]
        for address, ca, said in (
            (f"127.0.0.2:{port}", pki / "client.pem", f"the server's certificate is not signed by --tls-ca {pki}"),
            (f"127.0.0.2:{port}", pki / "ca.pem", "the server's certificate does not name the host of --server"),
            (f"127.0.0.2:{port}", None, "(a server with TLS needs --tls or --tls-ca)"),
        ):
            tls = ["--tls-ca", str(ca)] if ca else []
            code = main(["netprofile", "--server", address, "--node", "n", "--timeout", "5", *tls])
            err = capsys.readouterr().err.strip().splitlines()[-1]
            assert code == 2 and said in err, err
            assert "token" not in err and "client certificate" not in err
    finally:
        server.stop(grace=0)
    # signed by the CA given, but expired (an edge without a real-time clock boots in the past): not "not signed"
    _openssl("x509", "-req", "-in", str(pki / "server.csr"), "-CA", str(pki / "ca.pem"), "-CAkey", str(pki / "ca.key"),
             "-CAcreateserial", "-out", "expired.pem", "-days", "-1", "-extfile", str(pki / "san.ext"),
             cwd=tmp_path)  # fmt: skip
    server = start_server(tmp_path / "b", tls=TlsConfig(tmp_path / "expired.pem", pki / "server.key"))
    try:
        code = main(["netprofile", "--server", server.address, "--node", "n", "--timeout", "5",
                     "--tls-ca", str(pki / "ca.pem")])  # fmt: skip
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert code == 2 and "outside its dates of validity: check the clock of this device" in err, err
    finally:
        server.stop(grace=0)
