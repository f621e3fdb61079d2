"""SliceService: chunked upload verified by SHA-256, idempotent, and the untrusted-ONNX bad-input suite."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import grpc
import numpy as np
import onnx
import pytest
from _server_support import (
    IR_VERSION,
    conv_model,
    serving,
    sha256,
    stored_slice_files,
    upload_requests,
)
from onnx import TensorProto, helper

from rr_proto import codec
from rr_proto.inference import grpc_service_pb2 as kpb
from rr_proto.roadrunner.v1 import roadrunner_pb2 as rr
from rr_server.slices import SliceInfo, SliceStore


@pytest.fixture
def env(tmp_path):
    with serving(tmp_path, max_slice_bytes=256 * 1024) as (server, stubs):
        yield server, stubs, tmp_path


def external_data_model() -> bytes:
    """An initializer whose data lives 'outside' the model, at ../../etc/passwd."""
    w = onnx.TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4])
    w.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "../../etc/passwd"), ("offset", "0"), ("length", "16")):
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "ext", [x], [y], initializer=[w])
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=IR_VERSION
    ).SerializeToString()


def custom_domain_model() -> bytes:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    node = helper.make_node("Pwn", ["x"], ["y"], domain="com.evil.ops")
    graph = helper.make_graph([node], "custom", [x], [y])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.evil.ops", 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=IR_VERSION).SerializeToString()


def checker_failure_model() -> bytes:
    """Parses, standard domain, but invalid: Relu with two inputs."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    graph = helper.make_graph([helper.make_node("Relu", ["x", "x"], ["y"])], "bad", [x], [y])
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=IR_VERSION
    ).SerializeToString()


def runtime_failure_model() -> bytes:
    """Passes `onnx.checker` (which infers no types), but ONNX Runtime refuses it: Add of a float and an int64."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    i = helper.make_tensor_value_info("i", TensorProto.INT64, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Add", ["x", "i"], ["y"])], "mixed", [x, i], [y])
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=IR_VERSION
    ).SerializeToString()


def test_upload_status_and_idempotence(env):
    server, stubs, data_dir = env
    data = conv_model()
    slice_id = sha256(data)
    status = stubs.slices.GetSliceStatus(rr.GetSliceStatusRequest(slice_id=slice_id), timeout=5)
    assert not status.cached and not status.loaded
    first = stubs.upload(data)
    assert (first.slice_id, first.cached, first.bytes) == (slice_id, False, len(data))
    again = stubs.upload(data)
    assert (again.cached, again.bytes) == (True, len(data))
    status = stubs.slices.GetSliceStatus(rr.GetSliceStatusRequest(slice_id=slice_id), timeout=5)
    assert status.cached and status.bytes == len(data) and not status.loaded
    stubs.kserve.ModelInfer(codec.encode_infer_request(slice_id, {"x": np.zeros((1, 3, 8, 8), np.float32)}), timeout=10)
    assert stubs.slices.GetSliceStatus(rr.GetSliceStatusRequest(slice_id=slice_id), timeout=5).loaded
    assert [p.name for p in stored_slice_files(data_dir)] == [f"{slice_id}.onnx"]
    assert (data_dir / "slices" / f"{slice_id}.onnx").read_bytes() == data


def test_header_only_cached_upload_needs_no_chunks(env):
    _, stubs, _ = env
    data = conv_model(seed=3)
    stubs.upload(data)
    header_only = iter([rr.UploadSliceRequest(header=rr.SliceHeader(slice_id=sha256(data), size_bytes=len(data)))])
    assert stubs.slices.UploadSlice(header_only, timeout=5).cached


def test_probe_upload_runs_the_whole_ingest_and_stores_nothing(env):
    """A probe (what `rr-edge netprofile` times to cost weight uploads) is verified and validated like an upload,
    opened in ONNX Runtime like a load, answered as not cached, and leaves nothing behind (no file, no open session):
    not even when the same bytes are already stored."""
    _, stubs, data_dir = env
    data = conv_model(seed=5)
    probe = stubs.slices.UploadSlice(upload_requests(data, probe=True), timeout=10)
    assert (probe.slice_id, probe.cached, probe.bytes) == (sha256(data), False, len(data))
    assert stored_slice_files(data_dir) == []
    status = stubs.slices.GetSliceStatus(rr.GetSliceStatusRequest(slice_id=sha256(data)), timeout=5)
    assert not status.cached and not status.loaded
    stubs.upload(data)
    again = stubs.slices.UploadSlice(upload_requests(data, probe=True), timeout=10)
    assert not again.cached  # a probe always sends its bytes, or it would time nothing
    assert [p.stem for p in stored_slice_files(data_dir)] == [sha256(data)]
    bad_probes = (
        (checker_failure_model(), "onnx.checker"),
        (data[:-1], "not an ONNX model"),
        (runtime_failure_model(), "ONNX Runtime cannot load the probe slice"),  # a probe opens it, as a load would
    )
    for bad, fragment in bad_probes:
        with pytest.raises(grpc.RpcError) as err:
            stubs.slices.UploadSlice(upload_requests(bad, probe=True), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and fragment in err.value.details()
    assert [p.stem for p in stored_slice_files(data_dir)] == [sha256(data)]


def test_upload_with_load_opens_the_session_before_answering(env):
    """`SliceHeader.load` (how the runner uploads its middle slice): the answer comes once the session is open, for a
    new upload and for a slice that was cached but not open; a slice ONNX Runtime refuses is stored, but refused."""
    _, stubs, data_dir = env

    def loaded(data: bytes) -> bool:
        return stubs.slices.GetSliceStatus(rr.GetSliceStatusRequest(slice_id=sha256(data)), timeout=5).loaded

    fresh = conv_model(seed=8)
    assert not stubs.slices.UploadSlice(upload_requests(fresh, load=True), timeout=10).cached
    assert loaded(fresh)
    cached = conv_model(seed=9)
    stubs.upload(cached)
    assert not loaded(cached)
    header_only = iter([rr.UploadSliceRequest(header=rr.SliceHeader(slice_id=sha256(cached), load=True))])
    assert stubs.slices.UploadSlice(header_only, timeout=10).cached
    assert loaded(cached)
    probe = conv_model(seed=10)
    stubs.slices.UploadSlice(upload_requests(probe, probe=True, load=True), timeout=10)
    assert not loaded(probe) and sha256(probe) not in {p.stem for p in stored_slice_files(data_dir)}
    refused = runtime_failure_model()
    with pytest.raises(grpc.RpcError) as err:
        stubs.slices.UploadSlice(upload_requests(refused, load=True), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "ONNX Runtime cannot load" in err.value.details()
    assert str(data_dir) not in err.value.details()  # ONNX Runtime's message named the file under the data dir
    status = stubs.slices.GetSliceStatus(rr.GetSliceStatusRequest(slice_id=sha256(refused)), timeout=5)
    assert status.cached and not status.loaded
    # KServe readiness says what a request would meet: not ready, and the index gives ONNX Runtime's reason
    assert not stubs.kserve.ModelReady(kpb.ModelReadyRequest(name=sha256(refused)), timeout=5).ready
    index = stubs.kserve.RepositoryIndex(kpb.RepositoryIndexRequest(), timeout=5).models
    (entry,) = [m for m in index if m.name == sha256(refused)]
    assert entry.state == "UNAVAILABLE" and "ONNX Runtime cannot load" in entry.reason


def division_model(divisor: str, elem: int = TensorProto.INT64, constant: int | None = None) -> bytes:
    """y = a / divisor, where divisor is the input "b" or a constant ("c", holding `constant`)."""
    nodes = [helper.make_node("Div", ["a", divisor], ["y"])]
    if divisor == "c":
        nodes.insert(0, helper.make_node("Constant", [], ["c"], value=helper.make_tensor("v", elem, [1], [constant])))
    io = [helper.make_tensor_value_info(n, elem, [1]) for n in ("a", "b")]
    graph = helper.make_graph(
        nodes, "div", io if divisor == "b" else io[:1], [helper.make_tensor_value_info("y", elem, [1])]
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def division_in_a_branch_model() -> bytes:
    """y = If(c, a / b, a): the division inside a subgraph, on the outer graph's int64 inputs."""
    out = [helper.make_tensor_value_info("q", TensorProto.INT64, [1])]
    then = helper.make_graph([helper.make_node("Div", ["a", "b"], ["q"])], "then", [], out)
    other = helper.make_graph([helper.make_node("Identity", ["a"], ["q"])], "else", [], out)
    node = helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)
    io = [helper.make_tensor_value_info(n, TensorProto.INT64, [1]) for n in ("a", "b", "y")]
    graph = helper.make_graph(
        [node], "branch", [helper.make_tensor_value_info("c", TensorProto.BOOL, []), *io[:2]], io[2:]
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def division_by_a_short_constant_model() -> bytes:
    """y = a / d, d an int64 initializer of 4 elements holding 3 bytes (onnx.checker refuses it, after this check)."""
    d = onnx.TensorProto(name="d", data_type=TensorProto.INT64, dims=[4], raw_data=b"\x01\x02\x03")
    io = [helper.make_tensor_value_info(n, TensorProto.INT64, [4]) for n in ("a", "y")]
    graph = helper.make_graph([helper.make_node("Div", ["a", "d"], ["y"])], "short", io[:1], io[1:], [d])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def _bad_uploads():
    good = conv_model(seed=7)
    garbage = np.random.default_rng(0).bytes(5000)
    return {
        "garbage": (upload_requests(garbage), grpc.StatusCode.INVALID_ARGUMENT, "not an ONNX model"),
        "external-data": (upload_requests(external_data_model()), grpc.StatusCode.INVALID_ARGUMENT, "external data"),
        "custom-domain": (upload_requests(custom_domain_model()), grpc.StatusCode.INVALID_ARGUMENT, "com.evil.ops"),
        "checker": (upload_requests(checker_failure_model()), grpc.StatusCode.INVALID_ARGUMENT, "onnx.checker"),
        "size-lie-short": (
            upload_requests(good, size=len(good) + 10),
            grpc.StatusCode.INVALID_ARGUMENT,
            "declared",
        ),
        "size-lie-long": (upload_requests(good, size=len(good) - 10), grpc.StatusCode.INVALID_ARGUMENT, "declared"),
        "sha-mismatch": (
            upload_requests(good, slice_id=sha256(good + b"x")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "SHA-256 mismatch",
        ),
        "bad-id": (upload_requests(good, slice_id="ABC"), grpc.StatusCode.INVALID_ARGUMENT, "64 lowercase hex"),
        "too-big": (
            upload_requests(good, size=10 * 1024 * 1024),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "exceeds",
        ),
        "no-header": (
            iter([rr.UploadSliceRequest(chunk=good)]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "starts with a SliceHeader",
        ),
        "empty": (iter([]), grpc.StatusCode.INVALID_ARGUMENT, "starts with a SliceHeader"),
        # INT64_MIN / -1 sent to such a slice killed the server with SIGFPE (found by review)
        "int-division-by-an-input": (
            upload_requests(division_model("b")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "divides int64 by 'b', a value computed from the inputs",
        ),
        "int-division-in-a-branch": (
            upload_requests(division_in_a_branch_model()),
            grpc.StatusCode.INVALID_ARGUMENT,
            "graph 'then': Div 'q' divides int64 by 'b'",
        ),
        "int-division-by-an-unreadable-constant": (  # it escaped as INTERNAL (found by review)
            upload_requests(division_by_a_short_constant_model()),
            grpc.StatusCode.INVALID_ARGUMENT,
            "a constant that cannot be read",
        ),
        "int-division-by-minus-one": (
            upload_requests(division_model("c", TensorProto.INT32, -1)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "divides int32 by a constant holding -1",
        ),
    }


@pytest.mark.parametrize("case", list(_bad_uploads()))
def test_bad_upload_is_rejected_and_nothing_stored(env, case):
    _, stubs, data_dir = env
    requests, code, fragment = _bad_uploads()[case]
    with pytest.raises(grpc.RpcError) as err:
        stubs.slices.UploadSlice(requests, timeout=10)
    assert err.value.code() == code, err.value.details()
    assert fragment in err.value.details()
    assert stored_slice_files(data_dir) == []
    # the next good request is answered
    good = conv_model(seed=11)
    assert not stubs.upload(good).cached
    assert [p.stem for p in stored_slice_files(data_dir)] == [sha256(good)]


def test_a_slice_of_more_nodes_than_a_dnn_has_is_refused(env, monkeypatch):
    """A 4.7 MiB slice of 200,000 Relu nodes uploaded in 0.7 s and then held a worker for 10.7 s to open, past the
    request's deadline (found by review). Here the limit is lowered to the nodes of a small model."""
    from rr_server import slices

    _, stubs, data_dir = env
    relus = [helper.make_node("Relu", [f"t{k}"], [f"t{k + 1}"]) for k in range(4)]
    io = [helper.make_tensor_value_info(f"t{k}", TensorProto.FLOAT, [1]) for k in (0, 4)]
    model = helper.make_model(helper.make_graph(relus, "relus", io[:1], io[1:]), ir_version=8).SerializeToString()
    monkeypatch.setattr(slices, "MAX_SLICE_NODES", 3)
    with pytest.raises(grpc.RpcError) as err:
        stubs.upload(model)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "more than 3 nodes" in err.value.details()
    monkeypatch.setattr(slices, "MAX_SLICE_NODES", 4)
    assert not stubs.upload(model).cached


def shape_division_model() -> bytes:
    """y = shape(x) / (shape(x) * shape(x)): int64 division by shape arithmetic, as dynamic-shape exports do (swin_t's
    TorchScript export divides by a product of dimensions)."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Mul", ["s", "s"], ["m"]),
             helper.make_node("Div", ["s", "m"], ["y"])]  # fmt: skip
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    graph = helper.make_graph(nodes, "shapes", [x], [helper.make_tensor_value_info("y", TensorProto.INT64, [2])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def test_divisions_that_cannot_trap_are_accepted(env):
    """Integer division by a constant other than -1 or by shape arithmetic, and float division by anything."""
    _, stubs, _ = env
    shapes = shape_division_model()
    stubs.upload(shapes)
    reply = stubs.kserve.ModelInfer(codec.encode_infer_request(sha256(shapes), {"x": np.ones((2, 3), np.float32)}))
    np.testing.assert_array_equal(codec.decode_infer_response(reply)["y"], [0, 0])
    for model, feeds, want in (
        (division_model("c", TensorProto.INT64, 2), {"a": np.array([-7], np.int64)}, [-3]),
        (
            division_model("b", TensorProto.FLOAT),
            {"a": np.array([3], np.float32), "b": np.array([-1], np.float32)},
            [-3],
        ),
        (division_model("b", TensorProto.INT8), {"a": np.array([-128], np.int8), "b": np.array([-1], np.int8)}, None),
    ):
        stubs.upload(model)
        reply = stubs.kserve.ModelInfer(codec.encode_infer_request(sha256(model), feeds), timeout=10)
        if want is not None:
            np.testing.assert_array_equal(codec.decode_infer_response(reply)["y"], want)


def test_validation_also_refuses_external_data_in_subgraph(tmp_path):
    from rr_server.errors import InvalidArgument
    from rr_server.slices import validate_onnx

    ext = onnx.load_from_string(external_data_model())
    cond = helper.make_tensor_value_info("c", TensorProto.BOOL, [])
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    then_branch = helper.make_graph(
        [helper.make_node("Identity", ["w"], ["t"])],
        "then",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, [4])],
        initializer=list(ext.graph.initializer),
    )
    else_branch = helper.make_graph(
        [helper.make_node("Identity", ["w2"], ["e"])],
        "else",
        [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, [4])],
        initializer=[helper.make_tensor("w2", TensorProto.FLOAT, [4], [0, 0, 0, 0])],
    )
    node = helper.make_node("If", ["c"], ["y"], then_branch=then_branch, else_branch=else_branch)
    graph = helper.make_graph([node], "if", [cond], [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=IR_VERSION)
    path = tmp_path / "if.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(InvalidArgument, match="external data"):
        validate_onnx(path)


_PEAK_OF_VALIDATION = """
import re, sys
from pathlib import Path
from rr_server.slices import validate_onnx
def peak():  # VmHWM: this process's own high-water mark (ru_maxrss would start from pytest's, across exec)
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024
before = peak()
validate_onnx(Path(sys.argv[1]))
print(peak() - before)
"""


def test_validating_an_upload_holds_at_most_two_copies_of_it(tmp_path):
    """The bytes read once, parsed, and checked by onnx.checker from those bytes: three copies of a slice of up to
    --max-slice-mb (1 GiB) per upload at once. One parse is dropped before the checker reads the file."""
    weights = onnx.numpy_helper.from_array(np.ones((4096, 8192), np.float32), "w")  # 128 MiB
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4096])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8192])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "big", [x], [y], initializer=[weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=IR_VERSION)
    path = tmp_path / "big.onnx"
    path.write_bytes(model.SerializeToString())
    del model, graph, weights
    run = subprocess.run(
        [sys.executable, "-c", _PEAK_OF_VALIDATION, str(path)], capture_output=True, text=True, check=True
    )
    assert int(run.stdout) <= 2.3 * path.stat().st_size  # 2.7x before


@pytest.fixture
def small_disk(tmp_path):
    """A real 1 MiB filesystem (tmpfs) for the server's data dir: uploads run out of disk space for real."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def test_full_disk_is_resource_exhausted_and_leaves_nothing(small_disk, caplog):
    """An upload larger than the free space fails with RESOURCE_EXHAUSTED (not INTERNAL), its partial file is gone,
    and the server stores the next upload that fits. The operator sees it at ERROR (it was INFO: walkthrough)."""
    caplog.set_level(logging.INFO, logger="rr_server")
    with serving(small_disk, max_slice_bytes=8 * 1024 * 1024) as (server, stubs):
        big = conv_model(channels=256, out_channels=256)  # 2.4 MB of weights on a 1 MiB disk
        with pytest.raises(grpc.RpcError) as err:
            stubs.slices.UploadSlice(upload_requests(big), timeout=10)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "out of disk space" in err.value.details()
        assert any(r.levelno >= logging.ERROR and "out of disk space" in r.getMessage() for r in caplog.records)
        assert stored_slice_files(small_disk) == []
        small = conv_model(seed=1)
        assert not stubs.upload(small).cached
        assert [p.stem for p in stored_slice_files(small_disk)] == [sha256(small)]


def test_a_store_the_server_may_not_write_is_unavailable_saying_so(small_disk):
    """A data dir on a filesystem turned read-only made every upload INTERNAL "internal server error" (found by
    review); the edge now learns why, as a server that is down for now, and the server serves again once writable."""
    with serving(small_disk) as (server, stubs):
        store = str(small_disk / "slices")  # the store alone read-only (the database stays writable): a bind mount
        subprocess.run(["mount", "--bind", store, store], check=True)
        try:
            subprocess.run(["mount", "-o", "remount,bind,ro", store], check=True)
            with pytest.raises(grpc.RpcError) as err:
                stubs.upload(conv_model(seed=3))
        finally:
            subprocess.run(["umount", store], check=True)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "cannot write its slice store" in err.value.details() and "Read-only file system" in err.value.details()
        assert not stubs.upload(conv_model(seed=3)).cached


def test_store_budget_evicts_the_least_recently_used_slices(tmp_path):
    a, b, c = (conv_model(channels=16, out_channels=16, seed=k) for k in range(3))
    assert len(a) == len(b) == len(c)
    evicted = []
    store = SliceStore(tmp_path, max_bytes=len(a), budget_bytes=2 * len(a) + 100, on_evict=evicted.append)
    ids = [store.put_bytes(x).slice_id for x in (a, b)]
    assert store.get(ids[0]) is not None  # a is now used more recently than b
    ids.append(store.put_bytes(c).slice_id)
    assert [e.slice_id for e in evicted] == [ids[1]]
    assert store.get(ids[1]) is None and store.get(ids[0]) is not None and store.get(ids[2]) is not None
    assert sum(s.bytes for s in store.list()) <= store.budget_bytes
    with pytest.raises(ValueError, match="must hold the largest slice"):
        SliceStore(tmp_path / "other", max_bytes=len(a), budget_bytes=len(a) - 1)


def test_a_store_over_a_lowered_budget_is_trimmed_when_it_opens(tmp_path, caplog):
    """A server restarted with a smaller --max-store-gb kept every slice until the next upload, which then evicted
    them together (walkthrough): the store is brought within its budget when it opens, the oldest first."""
    models = [conv_model(channels=16, out_channels=16, seed=k) for k in range(4)]
    store = SliceStore(tmp_path, max_bytes=len(models[0]))
    ids = [store.put_bytes(m).slice_id for m in models]
    for age, slice_id in enumerate(reversed(ids)):  # the first stored is the oldest
        os.utime(store.path_of(slice_id), (1e9 - age, 1e9 - age))
    evicted: list[SliceInfo] = []
    with caplog.at_level(logging.WARNING, logger="rr_server.slices"):
        trimmed = SliceStore(tmp_path, max_bytes=len(models[0]), budget_bytes=2 * len(models[0]) + 100,
                             on_evict=evicted.append)  # fmt: skip
    assert [s.slice_id for s in trimmed.list()] == sorted(ids[2:]) and evicted == []  # nothing was using them
    assert "over its budget" in caplog.text and "evicted 2 slices, least recently stored first" in caplog.text
    assert trimmed.trimmed == 2


def test_a_server_counts_the_slices_it_trims_as_it_starts(tmp_path):
    models = [conv_model(channels=16, out_channels=16, seed=k) for k in range(3)]
    store = SliceStore(tmp_path / "slices", max_bytes=len(models[0]))
    for m in models:
        store.put_bytes(m)
    with serving(tmp_path, max_slice_bytes=len(models[0]), max_store_bytes=len(models[0]) + 100) as (server, _):
        assert server.metrics.registry.get_sample_value("rr_slice_evictions_total") == 2


def test_evicting_a_slice_in_use_warns_once_a_minute(tmp_path, caplog):
    """Two edges whose slices did not fit the budget together evicted each other's 94 times in 35 s, the server
    saying so only at INFO (walkthrough): evicting a slice used within `IN_USE_S` is a warning, once a minute."""
    from rr_server import slices as slices_module

    models = [conv_model(channels=16, out_channels=16, seed=k) for k in range(4)]
    clock = [1000.0]
    store = SliceStore(tmp_path, max_bytes=len(models[0]), budget_bytes=len(models[0]) + 100)
    store.clock = lambda: clock[0]
    with caplog.at_level(logging.INFO, logger="rr_server.slices"):
        store.put_bytes(models[0])
        clock[0] += slices_module.IN_USE_S + 1
        store.put_bytes(models[1])  # the first, last used over a minute ago: no warning
        clock[0] += 1
        store.put_bytes(models[2])  # the second, used a second ago: warned
        clock[0] += 1
        store.put_bytes(models[3])  # the third, in use too, but warned about a second ago: INFO only
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    evictions = [r for r in caplog.records if r.getMessage().startswith("evicted slice")]
    assert len(evictions) == 3 + 1 and len(warnings) == 1 and "used 1 s ago" in warnings[0]
    assert "--max-store-gb" in warnings[0]


def test_server_with_a_store_budget_reports_evicted_slices_as_not_cached(tmp_path):
    a, b, c = (conv_model(channels=16, out_channels=16, seed=k) for k in range(3))
    with serving(tmp_path, max_slice_bytes=len(a), max_store_bytes=2 * len(a) + 100) as (server, stubs):
        stubs.slices.UploadSlice(upload_requests(a, load=True), timeout=10)  # a's session is open
        for data in (b, c):
            stubs.upload(data)
        status = stubs.slices.GetSliceStatus(rr.GetSliceStatusRequest(slice_id=sha256(a)), timeout=5)
        assert not status.cached and not status.loaded  # evicted with its session
        assert [p.stem for p in stored_slice_files(tmp_path)] == sorted([sha256(b), sha256(c)])
        assert server.metrics.registry.get_sample_value("rr_slice_evictions_total") == 1
        assert not stubs.upload(a).cached  # the edge uploads it again; b, now the oldest, makes room


def test_a_slice_evicted_while_it_is_opened_is_not_found_not_refused(tmp_path):
    """Its file gone between the lookup and ONNX Runtime's open: NOT_FOUND (the edge uploads it again), not
    INVALID_ARGUMENT remembered as a slice ONNX Runtime refused."""
    from rr_server import sessions
    from rr_server.errors import NotFound

    pool = sessions.SessionPool(["CPUExecutionProvider"], 2)
    gone = tmp_path / "gone.onnx"
    with pytest.raises(NotFound, match="evicted"):
        pool.get(sha256(conv_model()), gone)
    assert pool.failure(sha256(conv_model())) is None
    assert not pool._loading  # no per-slice load lock left behind for a slice that may never come back


def test_a_slice_onnx_runtime_refused_is_not_opened_again(tmp_path, monkeypatch):
    """The failure was remembered but not consulted: each request opened the same bytes again (1.1-1.4 s for a
    30k-node slice) before answering INVALID_ARGUMENT, past short deadlines (found by review). Evicted, it may be
    tried again."""
    from rr_server import sessions
    from rr_server.errors import InvalidArgument

    pool = sessions.SessionPool(["CPUExecutionProvider"], 2)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an ONNX model")
    opened: list[str] = []
    load = pool._load
    monkeypatch.setattr(pool, "_load", lambda slice_id, path: opened.append(slice_id) or load(slice_id, path))
    for _ in range(3):
        with pytest.raises(InvalidArgument, match="cannot load"):
            pool.get("a" * 64, bad)
    assert opened == ["a" * 64]
    pool.evict("a" * 64)
    with pytest.raises(InvalidArgument):
        pool.get("a" * 64, bad)
    assert len(opened) == 2


def test_listing_skips_a_slice_evicted_meanwhile(tmp_path, monkeypatch):
    store = SliceStore(tmp_path, max_bytes=1 << 20)
    info = store.put_bytes(conv_model())
    real_glob = type(store.root).glob
    evicted = info.path.with_stem("f" * 64)  # listed by the glob, gone before its stat

    monkeypatch.setattr(type(store.root), "glob", lambda self, pattern: [*real_glob(self, pattern), evicted])
    assert [i.slice_id for i in store.list()] == [info.slice_id]


def test_a_slice_whose_weights_were_damaged_before_this_server_opened_it_is_not_served(tmp_path):
    """Two bytes of a stored slice's weights changed: ONNX Runtime opens it all the same, and the damaged weights were
    served, their answers wrong, as long as the slice stayed cached (docs audit). Before a server first opens a stored
    slice it hashes it: damaged, it is removed, and the edge is told to upload it again."""
    good = conv_model(seed=22)
    weights = onnx.load_from_string(good).graph.initializer[0].raw_data
    request = codec.encode_infer_request(sha256(good), {"x": np.ones((1, 3, 8, 8), np.float32)})
    with serving(tmp_path / "first") as (_, stubs):
        stubs.upload(good)
        expected = stubs.kserve.ModelInfer(request, timeout=10)
    (stored,) = [p for p in stored_slice_files(tmp_path / "first") if p.stem == sha256(good)]
    data = bytearray(stored.read_bytes())
    at = bytes(data).find(weights) + len(weights) // 2
    data[at : at + 2] = bytes(b ^ 0x40 for b in data[at : at + 2])
    stored.write_bytes(bytes(data))
    onnx.load_from_string(bytes(data))  # still a model ONNX Runtime opens
    with serving(tmp_path / "first") as (_, stubs):  # the same data dir, a new process's first open
        with pytest.raises(grpc.RpcError) as err:
            stubs.kserve.ModelInfer(request, timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and "damaged" in err.value.details()
        assert not stored.exists() and not stubs.upload(good).cached
        assert stubs.kserve.ModelInfer(request, timeout=10).raw_output_contents == expected.raw_output_contents


def test_a_damaged_copy_replaced_while_it_was_hashed_is_not_the_copy_removed(tmp_path, monkeypatch):
    """A slow hash of a damaged copy, an upload of the genuine bytes installed meanwhile: the hash's verdict removed
    the fresh, verified file (review). The copy removed is the copy hashed."""
    import hashlib

    from rr_server import slices

    good = conv_model(seed=23)
    slice_id = sha256(good)
    SliceStore(tmp_path, 1 << 30).put_bytes(good)
    store = SliceStore(tmp_path, 1 << 30)  # another process's: nothing hashed yet
    path = store.path_of(slice_id)
    path.write_bytes(good[: len(good) // 2])  # damaged at rest
    real = hashlib.sha256

    class UploadedMeanwhile:
        def __init__(self) -> None:
            self._hash = real()

        def update(self, data: bytes) -> None:
            self._hash.update(data)

        def hexdigest(self) -> str:
            fresh = tmp_path / "fresh"
            fresh.write_bytes(good)
            os.replace(fresh, path)  # as an upload installs it
            return self._hash.hexdigest()

    monkeypatch.setattr(slices.hashlib, "sha256", UploadedMeanwhile)
    assert not store.drop_if_damaged(slice_id, before_open=True)
    assert path.read_bytes() == good


def test_a_slice_damaged_on_disk_is_removed_so_the_edge_uploads_it_again(env):
    """A stored slice cut in half stayed "cached" for good: the re-upload of the genuine bytes was answered cached,
    and every request failed as INVALID_ARGUMENT (found by review). A stored file ONNX Runtime cannot load is hashed:
    damaged, it is removed and the request is NOT_FOUND, which makes the edge upload it again."""
    _, stubs, data_dir = env
    good = conv_model(seed=21)
    stubs.upload(good)
    (stored,) = [p for p in stored_slice_files(data_dir) if p.stem == sha256(good)]
    stored.write_bytes(good[: len(good) // 2])
    request = codec.encode_infer_request(sha256(good), {"x": np.zeros((1, 3, 8, 8), np.float32)})
    with pytest.raises(grpc.RpcError) as err:
        stubs.kserve.ModelInfer(request, timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "damaged" in err.value.details()
    assert not stubs.upload(good).cached  # uploaded again, for real
    assert stubs.kserve.ModelInfer(request, timeout=10).outputs
    refused = runtime_failure_model()  # stored whole, refused by ONNX Runtime: still INVALID_ARGUMENT, still stored
    stubs.upload(refused)
    for _ in range(2):
        with pytest.raises(grpc.RpcError) as err:
            stubs.kserve.ModelInfer(kpb.ModelInferRequest(model_name=sha256(refused)), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert stubs.upload(refused).cached
