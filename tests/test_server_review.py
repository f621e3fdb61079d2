"""Server defects found in review: a full disk under the database, training_info in slices, non-finite CLI limits,
one health Watch shutting out the others, and outputs too large to send that were computed anyway."""

from __future__ import annotations

import json
import queue
import time
from collections.abc import Callable

import grpc
import numpy as np
import onnx
import pytest
from _server_support import IR_VERSION, Stubs, conv_model, layer, report, serving, sha256, stored_slice_files
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from onnx import TensorProto, helper, numpy_helper

import rr_server
from rr_proto import codec
from rr_proto.roadrunner.v1 import roadrunner_pb2 as rr
from rr_server import cli as server_cli
from rr_server.config import OPEN_STREAM_SLOTS
from rr_server.errors import InvalidArgument
from rr_server.server import Server
from rr_server.slices import validate_onnx

MIB = 1024 * 1024


def _wait_for(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert predicate()


# -- a full disk under the database ------------------------------------------------------------------------------------


def _database_full(server: Server, full: bool) -> None:
    """Make the database as full as a full disk would (SQLite's page limit: the same SQLITE_FULL, and SQLite rolls
    the transaction back itself as it does on a full disk), or give it room again."""
    storage = server.storage
    with storage._lock:
        pages = storage._db.execute("PRAGMA page_count").fetchone()[0]
        storage._db.execute(f"PRAGMA max_page_count = {pages if full else 2**30}")


def test_a_full_disk_under_the_database_is_resource_exhausted_and_the_server_keeps_serving(tmp_path):
    """A write that met a full disk answered INTERNAL: SQLite had rolled the transaction back, and the ROLLBACK that
    followed raised 'no transaction is active' in place of 'database or disk is full'."""
    with serving(tmp_path) as (server, stubs):
        stubs.nodes.RegisterNode(rr.RegisterNodeRequest(node_id="e1"), timeout=5)
        _database_full(server, True)
        big_device = rr.DeviceDescriptor(cpu_model="y" * 10_000)
        layers = [layer(f"sig{k}", 1.5, ops=["Conv"] * 200) for k in range(200)]
        for call in (
            lambda: stubs.nodes.RegisterNode(rr.RegisterNodeRequest(node_id="e2", device=big_device), timeout=5),
            lambda: stubs.profiles.ReportLayerProfiles(report("e1", *layers), timeout=10),
        ):
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "disk is full" in err.value.details()
        assert server.storage.get_node("e2") is None and server.storage.count_measurements() == 0  # nothing stored
        _database_full(server, False)  # the operator frees space: the same writes now work
        assert stubs.nodes.RegisterNode(rr.RegisterNodeRequest(node_id="e2", device=big_device), timeout=5).created
        stubs.profiles.ReportLayerProfiles(report("e1", *layers), timeout=10)
        assert server.storage.count_measurements() == len(layers)


def test_a_commit_that_fails_leaves_no_transaction_open(tmp_path):
    """Every later write would fail with 'cannot start a transaction within a transaction' otherwise."""
    with serving(tmp_path) as (server, stubs):
        _database_full(server, True)
        with pytest.raises(Exception, match="disk is full"):
            server.storage.upsert_node("e3", "edge", {"cpu_model": "z" * 100_000})
        assert not server.storage._db.in_transaction
        _database_full(server, False)
        assert server.storage.upsert_node("e3", "edge", {})[1]


# -- slices with training_info ----------------------------------------------------------------------------------------


def _with_training_info(data: bytes) -> bytes:
    """The slice with a training_info whose graph reads /etc/hostname as external data and runs a custom op."""
    model = onnx.load_from_string(data)
    secret = TensorProto(name="secret", data_type=TensorProto.FLOAT, dims=[4], data_location=TensorProto.EXTERNAL)
    secret.external_data.add(key="location", value="/etc/hostname")
    out = helper.make_tensor_value_info("o", TensorProto.FLOAT, [4])
    evil = helper.make_node("Evil", ["secret"], ["o"], domain="com.evil")
    model.training_info.add().initialization.CopyFrom(helper.make_graph([evil], "init", [], [out], [secret]))
    return model.SerializeToString()


def test_a_slice_with_training_info_is_refused_and_nothing_stored(tmp_path):
    """training_info graphs were never walked: external data pointing at /etc/hostname and a node in domain com.evil
    were accepted, stored and served."""
    data = _with_training_info(conv_model())
    with serving(tmp_path) as (_, stubs):
        with pytest.raises(grpc.RpcError) as err:
            stubs.upload(data)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "training_info" in err.value.details()
        assert not stubs.slices.GetSliceStatus(rr.GetSliceStatusRequest(slice_id=sha256(data)), timeout=5).cached
    assert stored_slice_files(tmp_path) == []


def test_sparse_attribute_indices_with_external_data_are_refused_before_the_checker_reads_them(tmp_path):
    """Only a sparse attribute's values were checked: its indices could point at a file on the server's disk, which
    onnx.checker then looked at."""
    values = numpy_helper.from_array(np.ones(2, np.float32), "values")
    indices = TensorProto(name="indices", data_type=TensorProto.INT64, dims=[2], data_location=TensorProto.EXTERNAL)
    indices.external_data.add(key="location", value="secret.bin")
    constant = helper.make_node("Constant", [], ["y"], sparse_value=helper.make_sparse_tensor(values, indices, [4]))
    path = tmp_path / "slice.onnx"
    path.write_bytes(_model([constant], [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])]))
    with pytest.raises(InvalidArgument, match="'indices' refers to external data 'secret.bin'"):
        validate_onnx(path)


# -- rr-server's numeric flags ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags",
    [
        ["--max-slice-mb", "inf"],
        ["--max-slice-mb", "nan"],
        ["--max-slice-mb", "1e-9"],  # rounds to 0 bytes
        ["--max-store-gb", "inf"],
        ["--max-store-gb", "nan"],
        ["--keepalive-seconds", "nan"],
        ["--keepalive-seconds", "inf"],
        ["--drain-seconds", "nan"],
        # found by the operations review: past a day, threading's timeouts overflow (1e10 made every upload INTERNAL,
        # 1e12 crashed at SIGTERM); 1e-9 failed every stream; ports past 65535 and an empty data dir
        ["--stream-idle-seconds", "1e10"],
        ["--stream-idle-seconds", "1e-9"],
        ["--drain-seconds", "1e12"],
        ["--grace-seconds", "1e12"],
        ["--grace-seconds", "-1"],
        ["--keepalive-seconds", "1e12"],
        ["--metrics-port", "70000"],
        ["--metrics-port", "-5"],
        ["--data-dir", ""],
        ["--port-file", "/nonexistent-dir/port"],
    ],
)
def test_server_limits_that_are_no_number_of_bytes_or_seconds_are_usage_errors(tmp_path, capsys, flags):
    """inf crashed with an OverflowError traceback, nan with 'cannot convert float NaN to integer', and 1e-9 MiB
    started a server that took no slice at all."""
    with pytest.raises(SystemExit) as exit_:
        server_cli.parse_args(["--data-dir", str(tmp_path), *flags])
    assert exit_.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("rr-server: error:") and flags[-2] in last


@pytest.mark.parametrize(
    "flags", [["--metrics-tls", "--metrics-port", "0"], ["--metrics-tls", "--tls-cert", "c", "--tls-key", "k"]]
)
def test_metrics_tls_needs_a_metrics_port_and_the_servers_certificate(tmp_path, capsys, flags):
    with pytest.raises(SystemExit) as exit_:
        server_cli.parse_args(["--data-dir", str(tmp_path), *flags])
    assert exit_.value.code == 2
    assert "error: --metrics-tls needs --metrics-port and --tls-cert/--tls-key" in capsys.readouterr().err


def test_the_grace_for_calls_in_flight_is_a_flag(tmp_path):
    """Any open stream (an edge's idle inference stream, a health Watch) made every SIGTERM wait the fixed 10 s grace
    (found by review)."""
    args = server_cli.parse_args(["--data-dir", str(tmp_path), "--grace-seconds", "2.5"])
    assert server_cli.config_from_args(args).grace_s == 2.5
    assert server_cli.config_from_args(server_cli.parse_args(["--data-dir", str(tmp_path)])).grace_s == 10.0


def test_server_limits_in_fractions_of_a_unit_are_whole_bytes(tmp_path):
    args = server_cli.parse_args(["--data-dir", str(tmp_path), "--max-slice-mb", "0.5", "--max-store-gb", "0.25"])
    config = server_cli.config_from_args(args)
    assert (config.max_slice_bytes, config.max_store_bytes) == (MIB // 2, 256 * MIB)


# -- streams open without a token -------------------------------------------------------------------------------------


def _reflect(stubs: Stubs) -> list[str]:
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    responses = reflection_pb2_grpc.ServerReflectionStub(stubs.channel).ServerReflectionInfo(iter([request]), timeout=5)
    return [s.name for s in next(responses).list_services_response.service]


def test_an_idle_health_watch_leaves_reflection_and_other_watches_open(tmp_path):
    """gRPC's client-side health checking keeps a Watch open per channel; one such Watch took the only slot for
    streams open without a token, and reflection and every other Watch were RESOURCE_EXHAUSTED, told to add
    --workers, which changed nothing."""
    with serving(tmp_path, workers=12) as (server, stubs):
        health = health_pb2_grpc.HealthStub(stubs.channel)
        serving_ = health_pb2.HealthCheckResponse.SERVING
        held = [health.Watch(health_pb2.HealthCheckRequest(), timeout=30)]
        try:
            assert next(held[0]).status == serving_
            assert "grpc.health.v1.Health" in _reflect(stubs)
            assert next(health.Watch(health_pb2.HealthCheckRequest(), timeout=5)).status == serving_
            while len(held) < OPEN_STREAM_SLOTS:  # a handful, then the limit, named as it is
                held.append(health.Watch(health_pb2.HealthCheckRequest(), timeout=30))
                next(held[-1])
            _wait_for(lambda: server.stream_slots.in_use["open"] == OPEN_STREAM_SLOTS)
            with pytest.raises(grpc.RpcError) as err:
                _reflect(stubs)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert f"all {OPEN_STREAM_SLOTS} slots" in err.value.details() and "without a token" in err.value.details()
            assert "--workers" not in err.value.details()
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == serving_
        finally:
            for watch in held:
                watch.cancel()


# -- outputs too large to send ----------------------------------------------------------------------------------------


def _model(nodes, inputs, outputs, initializers=()) -> bytes:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=IR_VERSION)
    return model.SerializeToString()


def _expand_model(n: int) -> bytes:
    """x float[1] -> y float[n] (static): a tiny input, a large output."""
    shape = numpy_helper.from_array(np.array([n], np.int64), "shape")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [n])
    return _model([helper.make_node("Expand", ["x", "shape"], ["y"])], [x], [y], [shape])


def _tile_model(width: int) -> bytes:
    """x float[N,1] -> y float[N,width]: the output's batch is the input's."""
    repeats = numpy_helper.from_array(np.array([1, width], np.int64), "repeats")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", width])
    return _model([helper.make_node("Tile", ["x", "repeats"], ["y"])], [x], [y], [repeats])


def _runs(server: Server) -> float:
    return sum(
        server.metrics.registry.get_sample_value("rr_inferences_total", {"outcome": o}) or 0 for o in ("ok", "error")
    )


def test_an_output_larger_than_a_message_is_refused_before_it_runs(tmp_path):
    """A slice declaring a float[2^28] output (1 GiB, over the 256 MiB limit) ran for seconds and took 2 GB, and then
    the client got 'Sent message larger than max'. Here the limit is 1 MiB and the outputs 2 MiB."""
    static, batched = _expand_model(MIB // 2), _tile_model(64 * 1024)
    with serving(tmp_path, max_message_bytes=MIB) as (server, stubs):
        for data in (static, batched):
            stubs.upload(data)
        ok = stubs.kserve.ModelInfer(codec.encode_infer_request(sha256(batched), {"x": np.ones((2, 1), np.float32)}))
        assert codec.decode_infer_response(ok)["y"].shape == (2, 64 * 1024)  # 512 KiB: within the limit
        runs = _runs(server)
        for data, x in ((static, np.ones(1, np.float32)), (batched, np.ones((8, 1), np.float32))):
            with pytest.raises(grpc.RpcError) as err:
                stubs.kserve.ModelInfer(codec.encode_infer_request(sha256(data), {"x": x}), timeout=30)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "'y' 2,097,152 bytes" in err.value.details() and "1,048,576" in err.value.details()
        requests: queue.Queue = queue.Queue()
        stream = stubs.kserve.ModelStreamInfer(iter(requests.get, None), timeout=30)
        requests.put(codec.encode_infer_request(sha256(static), {"x": np.ones(1, np.float32)}))
        assert next(stream).error_message.startswith("RESOURCE_EXHAUSTED:")  # and the stream goes on
        requests.put(None)
        assert _runs(server) == runs  # refused before running


def test_a_second_server_on_a_data_dir_in_use_is_refused(tmp_path, capsys):
    """A second server on the same data dir swept the first one's uploads in progress from slices/tmp (the upload
    then failed as INVALID_ARGUMENT), evicted its slices under its own budget, and its predictor missed the first's
    reports (found by review). The first server's data dir is free again once it stops, or if it fails to start."""
    from _server_process import ServerProcess

    from rr_server.dir_lock import DataDirInUse

    first = ServerProcess(tmp_path / "data")
    try:
        assert server_cli.main(["--data-dir", str(tmp_path / "data"), "--listen", "127.0.0.1:0"]) == 2
        assert f"is in use by another rr-server (pid {first.proc.pid})" in capsys.readouterr().err
    finally:
        first.stop()
    with pytest.raises(OSError):  # a port that cannot be bound: start fails, and frees the data dir
        rr_server.Server(rr_server.ServerConfig(data_dir=tmp_path / "data", listen="256.0.0.1:0")).start()
    with rr_server.Server(rr_server.ServerConfig(data_dir=str(tmp_path / "data"), listen="127.0.0.1:0")) as server:
        assert server.address  # a str data dir too (it failed on str.mkdir: API review)
        with pytest.raises(DataDirInUse):
            rr_server.Server(rr_server.ServerConfig(data_dir=tmp_path / "data", listen="127.0.0.1:0"))


def test_an_address_that_cannot_be_bound_is_refused_before_anything_is_made(tmp_path, capfd):
    """A port in use printed gRPC's own log line ("Failed to add port") before the server's error, which gave no
    reason, and the failed start had made the data dir (review). Now one line with the reason, and no data dir."""
    with serving(tmp_path / "first", metrics_port=0) as (running, _):
        port = running.address.rsplit(":", 1)[1]
        for argv, error in (
            (["--listen", running.address], f"cannot listen on {running.address}: Address already in use"),
            (["--listen", f"0.0.0.0:{port}"], f"cannot listen on 0.0.0.0:{port}: Address already in use"),
            (["--listen", "127.0.0.1:0", "--metrics-port", str(running.metrics_port)],
             f"cannot serve metrics on port {running.metrics_port}: Address already in use"),
        ):  # fmt: skip
            capfd.readouterr()
            assert server_cli.main(["--data-dir", str(tmp_path / "second"), *argv]) == 2
            lines = [json.loads(line) for line in capfd.readouterr().err.splitlines() if line.startswith("{")]
            assert {"level": "ERROR", "logger": "rr_server", "msg": f"cannot start: {error}"}.items() <= lines[
                -1
            ].items()
            assert not any(line["msg"] == "stopped" for line in lines)  # no server was made, to be stopped
            assert not (tmp_path / "second").exists()
        with pytest.raises(OSError, match=f"cannot listen on {running.address}: Address already in use"):
            Server(rr_server.ServerConfig(data_dir=tmp_path / "third", listen=running.address)).start()
    assert "Failed to add port" not in capfd.readouterr().err  # gRPC was not asked to bind it


def test_the_address_check_leaves_unix_sockets_and_missing_families_to_grpc(tmp_path, monkeypatch):
    """The check before binding refused a Unix socket address, which the library serves on (`int("/path")`), and
    an IPv6 socket the host cannot make (IPv6 disabled) ended the check before its IPv4 address was tried (review)."""
    import errno
    import socket

    from rr_server import server as server_module

    with Server(rr_server.ServerConfig(data_dir=tmp_path / "d", listen=f"unix:{tmp_path}/rr.sock")):
        assert (tmp_path / "rr.sock").is_socket()
    real_socket = socket.socket

    def no_ipv6(family=socket.AF_INET, *a, **kw):  # type: ignore[no-untyped-def]
        if family == socket.AF_INET6:
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
        return real_socket(family, *a, **kw)

    monkeypatch.setattr(server_module.socket, "socket", no_ipv6)
    assert server_module._bind_error("::", 0) is not None  # only IPv6 to try: refused, with the reason
    monkeypatch.setattr(server_module.socket, "getaddrinfo", lambda *a, **kw: [
        (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", 0, 0, 0)),
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 0)),
    ])  # fmt: skip
    assert server_module._bind_error("localhost", 0) is None  # its IPv4 address binds


def test_a_damaged_database_is_one_line_at_start(tmp_path, capsys):
    """A database that is not one printed a sqlite3 traceback and exited 1 (found by review); it is refused, not
    overwritten."""
    (tmp_path / "roadrunner.sqlite3").write_bytes(b"not a database" * 100)
    assert server_cli.main(["--data-dir", str(tmp_path), "--listen", "127.0.0.1:0"]) == 2
    err = capsys.readouterr().err
    assert "cannot start: the database in --data-dir" in err and "not a database" in err and "Traceback" not in err
    assert (tmp_path / "roadrunner.sqlite3").read_bytes() == b"not a database" * 100


def test_each_inference_run_is_timed_apart_from_its_call(tmp_path):
    """A stream's rr_request_seconds is its whole life (an edge keeps one open for a run): the server's run time per
    inference has a histogram of its own, fed by both methods (walkthrough)."""
    from _server_support import conv_model

    data = conv_model()
    with serving(tmp_path) as (server, stubs):
        stubs.upload(data)
        session = server.repository.session(sha256(data))
        feed = {spec.name: np.ones(spec.shape, np.float32) for spec in session.inputs}
        request = codec.encode_infer_request(sha256(data), feed)
        stubs.kserve.ModelInfer(request, timeout=10)
        assert len(list(stubs.kserve.ModelStreamInfer(iter([request, request]), timeout=10))) == 2
        sample = server.metrics.registry.get_sample_value
        assert sample("rr_inference_seconds_count") == _runs(server) == 3 and sample("rr_inference_seconds_sum") > 0
