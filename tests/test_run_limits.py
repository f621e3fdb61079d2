"""Runs that never end are stopped: by the call's deadline, the client's cancel, the server's cap on one run, the
server's stop, and the cloud profiler's time and input budgets."""

from __future__ import annotations

import gc
import os
import threading
import time
import weakref
from pathlib import Path

import grpc
import numpy as np
import pytest
from _server_process import ServerProcess
from _server_support import IR_VERSION, Stubs, conv_model, layer, report, serving, sha256
from onnx import TensorProto, helper, numpy_helper

from rr_proto import codec
from rr_proto.roadrunner.v1 import roadrunner_pb2 as rr
from rr_server import sessions
from rr_server.errors import ResourceExhausted

X = np.ones(1, np.float32)


def loop_model() -> bytes:
    """x[1] -> Loop of 10^15 trips doubling it: a few hundred bytes that run for ever."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Add", ["v_in", "v_in"], ["v_out"])],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [1]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [1]),
        ],
    )
    trip = numpy_helper.from_array(np.array(10**15, np.int64), "trip")
    cond = numpy_helper.from_array(np.array(True), "cond")
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trip", "cond", "x"], ["y"], body=body)],
        "loop_forever",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        initializer=[trip, cond],
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=IR_VERSION
    ).SerializeToString()


def relu_model(shape: list[int]) -> bytes:
    """x[shape] -> Relu: declares inputs as large as `shape` says, in ~100 bytes."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=IR_VERSION
    ).SerializeToString()


@pytest.fixture
def env(tmp_path):
    with serving(tmp_path) as (server, stubs):
        yield server, stubs


def wait_busy(server, timeout: float = 20.0) -> None:
    """Until a run is in progress on `server`."""
    deadline = time.monotonic() + timeout
    while server.repository.activity.wait_idle(0) is not None:
        assert time.monotonic() < deadline, "the run never started"
        time.sleep(0.02)


def test_the_calls_deadline_stops_an_endless_run(env):
    server, stubs = env
    stubs.upload(loop_model())
    with pytest.raises(grpc.RpcError) as err:
        stubs.kserve.ModelInfer(codec.encode_infer_request(sha256(loop_model()), {"x": X}), timeout=1)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert server.repository.activity.wait_idle(20) is not None  # the server's run ended too
    stubs.upload(relu_model([1]))
    ok = stubs.kserve.ModelInfer(codec.encode_infer_request(sha256(relu_model([1])), {"x": X}), timeout=10)
    assert codec.decode_infer_response(ok)["y"].tolist() == [1.0]


def test_cancelling_the_call_stops_an_endless_run(env):
    server, stubs = env
    stubs.upload(loop_model())
    call = stubs.kserve.ModelInfer.future(codec.encode_infer_request(sha256(loop_model()), {"x": X}))
    wait_busy(server)
    call.cancel()
    assert server.repository.activity.wait_idle(20) is not None


def test_the_servers_limit_stops_a_run_without_deadline(tmp_path, monkeypatch):
    monkeypatch.setattr(sessions, "MAX_RUN_SECONDS", 0.5)
    with serving(tmp_path) as (server, stubs):
        stubs.upload(loop_model())
        stubs.upload(relu_model([1]))
        loop = codec.encode_infer_request(sha256(loop_model()), {"x": X})
        with pytest.raises(grpc.RpcError) as err:
            stubs.kserve.ModelInfer(loop, timeout=30)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "the server's limit for one run" in err.value.details()
        relu = codec.encode_infer_request(sha256(relu_model([1])), {"x": X})
        answers = list(stubs.kserve.ModelStreamInfer(iter([loop, relu]), timeout=30))
        assert answers[0].error_message.startswith("DEADLINE_EXCEEDED: ")
        assert answers[1].error_message == "" and codec.decode_infer_response(answers[1].infer_response)["y"] == 1


def test_terminate_runs_stops_runs_in_progress_and_refuses_new_ones(env):
    server, stubs = env
    stubs.upload(loop_model())
    loop = codec.encode_infer_request(sha256(loop_model()), {"x": X})
    call = stubs.kserve.ModelInfer.future(loop)
    wait_busy(server)
    server.repository.terminate_runs()  # what Server.stop does once in-flight calls had their grace
    assert call.exception(20).code() == grpc.StatusCode.UNAVAILABLE
    assert "stopping" in call.exception().details()
    with pytest.raises(grpc.RpcError) as err:
        stubs.kserve.ModelInfer(loop, timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_sigterm_ends_the_process_while_runs_never_end(tmp_path):
    """An endless inference and an endless timing run in progress: SIGTERM still ends the process, cleanly."""
    server = ServerProcess(tmp_path / "data", "--providers", "cpu")
    stubs = Stubs.connect(server.address)
    try:
        stubs.upload(loop_model())
        stubs.nodes.RegisterNode(rr.RegisterNodeRequest(node_id="pi4", role=rr.NODE_ROLE_EDGE), timeout=5)
        item = layer("loopsig", 3.0)
        item.slice_id = sha256(loop_model())
        stubs.profiles.ReportLayerProfiles(report("pi4", item), timeout=10)
        call = stubs.kserve.ModelInfer.future(codec.encode_infer_request(sha256(loop_model()), {"x": X}))
        time.sleep(1.0)
        assert not call.done()  # running
        assert server.terminate(timeout=30) == 0
        assert "terminate called" not in server.log()
    finally:
        stubs.close()
        server.stop()


def report_slice(stubs: Stubs, signature: str, data: bytes) -> None:
    stubs.upload(data)
    item = layer(signature, 3.0)
    item.slice_id = sha256(data)
    stubs.profiles.ReportLayerProfiles(report("pi4", item), timeout=10)


def _watchdogs() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "rr-run-watchdog"}


def test_cloud_profiler_skips_an_endless_slice_and_times_the_next(tmp_path):
    others = _watchdogs()  # of servers other tests keep
    with serving(tmp_path) as (server, stubs):
        stubs.nodes.RegisterNode(rr.RegisterNodeRequest(node_id="pi4", role=rr.NODE_ROLE_EDGE), timeout=5)
        report_slice(stubs, "loopsig", loop_model())
        report_slice(stubs, "convsig", conv_model(seed=3))
        assert server.cloud_profiler.wait_idle(60)  # the loop's first run stops at the budget (5 s)
        assert server.storage.measured_signatures("cloud") == ["convsig"]
        assert not server.cloud_profiler.submit("loopsig", sha256(loop_model()))  # refused while the server runs
        stopped = weakref.ref(server)
    # Nothing keeps the stopped server alive: the watchdog's thread held the stopped run's exception, whose
    # traceback held the cloud profiler's frames, the server and its CF models until the interpreter exited.
    del server, stubs
    gc.collect()
    assert stopped() is None
    assert _watchdogs() <= others  # this server's ended with it


def test_cloud_profiler_skips_a_slice_with_huge_inputs_and_times_the_next(env):
    server, stubs = env
    stubs.nodes.RegisterNode(rr.RegisterNodeRequest(node_id="pi4", role=rr.NODE_ROLE_EDGE), timeout=5)
    huge = relu_model([12000, 12000])  # 549 MiB of float inputs (the budget is 256 MiB)
    report_slice(stubs, "hugesig", huge)
    report_slice(stubs, "convsig", conv_model(seed=4))
    assert server.cloud_profiler.wait_idle(60)
    assert server.storage.measured_signatures("cloud") == ["convsig"]
    assert not server.cloud_profiler.submit("hugesig", sha256(huge))


def test_random_inputs_refuses_declared_shapes_past_the_budget(tmp_path):
    pool = sessions.SessionPool(["CPUExecutionProvider"], 2)
    path = tmp_path / "relu.onnx"
    path.write_bytes(relu_model([1000, 1000]))  # 4 MB of float inputs
    session = pool.get(sha256(path.read_bytes()), path)
    with pytest.raises(ResourceExhausted, match="limited to 1 MiB"):
        sessions.random_inputs(session, max_bytes=1 << 20)
    (x,) = sessions.random_inputs(session, max_bytes=4_000_000).values()
    assert x.shape == (1000, 1000) and x.dtype == np.float32


def _rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_a_sessions_constants_are_not_folded_into_memory(tmp_path):
    """ConstantOfShape from a few bytes of graph: folded at load it would stay in memory with the cached session."""
    shape = numpy_helper.from_array(np.array([64, 1024, 1024], np.int64), "shape")  # 256 MiB of float32
    nodes = [
        helper.make_node("ConstantOfShape", ["shape"], ["big"], value=numpy_helper.from_array(np.ones(1, np.float32))),
        helper.make_node("Add", ["big", "x"], ["y"]),  # never run here: the session is only opened
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [64, 1024, 1024])
    model = helper.make_model(
        helper.make_graph(nodes, "fold", [x], [y], initializer=[shape]),
        opset_imports=[helper.make_opsetid("", 17)],
        ir_version=IR_VERSION,
    )
    path = tmp_path / "fold.onnx"
    path.write_bytes(model.SerializeToString())
    pool = sessions.SessionPool(["CPUExecutionProvider"], 2)
    before = _rss_bytes()
    pool.get("f" * 64, path)
    assert _rss_bytes() - before < 64 * 2**20  # folded, it grows by 256 MiB
