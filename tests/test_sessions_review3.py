"""Review 3 of the server's inference path: string outputs sized as sent, raw BOOL bytes, session opens that fail
for want of (GPU) memory, concurrent and evicted opens, and an upload with load over a damaged stored copy."""

from __future__ import annotations

import threading

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from _server_support import IR_VERSION, conv_model, serving, sha256, stored_slice_files, upload_requests
from onnx import TensorProto, helper
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, RuntimeException

from rr_proto import codec
from rr_proto.inference import grpc_service_pb2 as pb
from rr_proto.roadrunner.v1 import roadrunner_pb2 as rr
from rr_server import sessions
from rr_server.errors import InvalidArgument, NotFound, ResourceExhausted, Unavailable

MIB = 1 << 20


def _model(nodes: list, inputs: list, outputs: list) -> bytes:
    graph = helper.make_graph(nodes, "g", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=IR_VERSION)
    return model.SerializeToString()


def test_a_string_output_over_the_message_limit_fails_its_message_and_the_stream_goes_on(tmp_path):
    """A string output was counted by its characters: without the 4-byte length of each element, and a 3-byte UTF-8
    character as one. Over the limit, it passed the check, gRPC refused to send it and ended the ModelStreamInfer
    stream: the requests behind it got no answer (found by review). Counted as sent, an output of exactly the limit
    still travels."""
    expand = _model(
        [helper.make_node("Expand", ["x", "shape"], ["y"])],
        [
            helper.make_tensor_value_info("x", TensorProto.STRING, [1]),
            helper.make_tensor_value_info("shape", TensorProto.INT64, [2]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.STRING, ["a", "b"])],
    )

    def request(rows: int, text: str = "") -> pb.ModelInferRequest:
        feeds = {"x": np.array([text], dtype=object), "shape": np.array([rows, 256], np.int64)}
        return codec.encode_infer_request(sha256(expand), feeds, request_id=str(rows))

    with serving(tmp_path, max_message_bytes=MIB) as (_, stubs):
        stubs.upload(expand)
        answers = list(stubs.kserve.ModelStreamInfer(iter([request(4), request(2048), request(8)]), timeout=30))
        with pytest.raises(grpc.RpcError) as err:  # 768 rows of 256 "€": 4 + 3 bytes each, 196,608 characters
            stubs.kserve.ModelInfer(request(512 + 256, "\u20ac"), timeout=30)
        at_limit = stubs.kserve.ModelInfer(request(1024), timeout=30)  # 262,144 empty strings: 1 MiB of lengths
    assert [(a.error_message[:18] or a.infer_response.id) for a in answers] == ["4", "RESOURCE_EXHAUSTED", "8"]
    assert "its outputs take 2,097,152 bytes" in answers[1].error_message
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "its outputs take 1,376,256 bytes" in err.value.details()
    assert codec.decode_infer_response(at_limit)["y"].shape == (1024, 256)


def test_raw_bool_bytes_other_than_0_or_1_are_invalid_argument(tmp_path):
    """numpy took the byte 2 for True, ONNX Runtime did not: Not(2) answered True (found by review)."""
    model = _model(
        [helper.make_node("Not", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.BOOL, [3])],
        [helper.make_tensor_value_info("y", TensorProto.BOOL, [3])],
    )

    def request(raw: bytes) -> pb.ModelInferRequest:
        req = pb.ModelInferRequest(model_name=sha256(model))
        req.inputs.add(name="x", datatype="BOOL", shape=[3])
        req.raw_input_contents.append(raw)
        return req

    with serving(tmp_path) as (_, stubs):
        stubs.upload(model)
        with pytest.raises(grpc.RpcError) as err:
            stubs.kserve.ModelInfer(request(bytes([1, 2, 255])), timeout=10)
        answer = codec.decode_infer_response(stubs.kserve.ModelInfer(request(bytes([1, 0, 1])), timeout=10))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'x'" in err.value.details() and "other than 0 or 1" in err.value.details()
    assert answer["y"].tolist() == [False, True, False]


@pytest.mark.parametrize(
    ("failure", "refusal"),
    [
        (RuntimeException("Exception during initialization: CUDA failure 2: out of memory ; GPU=0"), ResourceExhausted),
        (
            Fail("Exception during initialization: Failed to allocate memory for requested buffer of size 1073741824"),
            ResourceExhausted,
        ),
        (
            RuntimeException("Exception during initialization: CUDNN failure 4: CUDNN_STATUS_INTERNAL_ERROR"),
            Unavailable,
        ),
    ],
)
def test_a_session_open_the_gpu_fails_is_tried_again(tmp_path, monkeypatch, failure, refusal):
    """A GPU full for a moment (ONNX Runtime's CUDA and arena messages; no GPU here) was INVALID_ARGUMENT, remembered
    as a slice ONNX Runtime refuses: the valid slice was refused for good (found by review)."""
    data = conv_model()
    x = {"x": np.ones((1, 3, 8, 8), np.float32)}
    with serving(tmp_path) as (_, stubs):
        real, failing = ort.InferenceSession, [True]

        def open_session(*args, **kwargs):
            if failing[0]:
                raise failure
            return real(*args, **kwargs)

        monkeypatch.setattr(sessions.ort, "InferenceSession", open_session)
        with pytest.raises(grpc.RpcError) as err:
            stubs.slices.UploadSlice(upload_requests(data, load=True), timeout=30)
        ready = stubs.kserve.ModelReady(pb.ModelReadyRequest(name=sha256(data)), timeout=10).ready
        failing[0] = False  # the device recovered
        answer = stubs.kserve.ModelInfer(codec.encode_infer_request(sha256(data), x), timeout=10)
    code = grpc.StatusCode.RESOURCE_EXHAUSTED if refusal is ResourceExhausted else grpc.StatusCode.UNAVAILABLE
    assert err.value.code() == code and ready
    assert codec.decode_infer_response(answer)["y"].shape == (1, 4, 8, 8)


def test_requests_waiting_for_an_open_that_is_refused_do_not_open_it_again(tmp_path, monkeypatch):
    """The refusal was remembered but consulted only before waiting for the open in progress: each request already
    waiting opened the same bytes again, one after another (found by review)."""
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an ONNX model")
    pool = sessions.SessionPool(["CPUExecutionProvider"], 2)
    waiting, go, opened = threading.Semaphore(0), threading.Event(), []

    class Loading(dict):  # a request past the first lookup registers for the open
        def setdefault(self, key, default):
            waiting.release()
            return super().setdefault(key, default)

    load = pool._load

    def slow_load(slice_id, path):
        opened.append(slice_id)
        go.wait()
        return load(slice_id, path)

    monkeypatch.setattr(pool, "_loading", Loading())
    monkeypatch.setattr(pool, "_load", slow_load)
    refusals: list[Exception] = []

    def request() -> None:
        try:
            pool.get("a" * 64, bad)
        except InvalidArgument as exc:
            refusals.append(exc)

    threads = [threading.Thread(target=request) for _ in range(4)]
    for thread in threads:
        thread.start()
    for _ in threads:
        waiting.acquire()  # all four past the first lookup before the open fails
    go.set()
    for thread in threads:
        thread.join()
    assert len(refusals) == 4 and opened == ["a" * 64]


def test_a_slice_evicted_while_it_opens_is_not_cached(tmp_path, monkeypatch):
    """Unloaded (or evicted from the store) while its session opened, a slice was cached anyway once the open ended:
    memory and a cache slot for a slice no longer wanted (found by review). The request that opened it came before the
    eviction and runs on the session; the next request opens the slice again."""
    path = tmp_path / "conv.onnx"
    path.write_bytes(conv_model())
    slice_id = sha256(conv_model())
    pool = sessions.SessionPool(["CPUExecutionProvider"], 2)
    opening, go = threading.Event(), threading.Event()
    load = pool._load

    def slow_load(slice_id, path):
        opening.set()
        go.wait()
        return load(slice_id, path)

    monkeypatch.setattr(pool, "_load", slow_load)
    got: list[sessions.Session] = []
    thread = threading.Thread(target=lambda: got.append(pool.get(slice_id, path)))
    thread.start()
    opening.wait()
    assert not pool.evict(slice_id)  # not open yet
    go.set()
    thread.join()
    assert got and got[0].run({"x": np.ones((1, 3, 8, 8), np.float32)})["y"].shape == (1, 4, 8, 8)
    assert not pool.loaded(slice_id)
    assert pool.get(slice_id, path) is not got[0] and pool.loaded(slice_id)


def test_an_upload_with_load_replaces_a_damaged_stored_copy(tmp_path):
    """UploadSlice with load opened the stored copy straight from the session pool: damaged on disk, it was refused
    as INVALID_ARGUMENT at every upload, and the good bytes the upload carried were never read (found by review).
    The damaged copy is removed, and the upload's bytes stored in its place; an upload of the header alone is told to
    upload again."""
    good = conv_model(seed=3)
    slice_id = sha256(good)
    x = codec.encode_infer_request(slice_id, {"x": np.ones((1, 3, 8, 8), np.float32)})
    with serving(tmp_path) as (_, stubs):
        stubs.upload(good)
        (stored,) = [p for p in stored_slice_files(tmp_path) if p.stem == slice_id]
        stored.write_bytes(b"\x00garbage" + good[8:])  # a disk fault
        answer = stubs.slices.UploadSlice(upload_requests(good, load=True), timeout=30)
        assert not answer.cached and stored.read_bytes() == good
        assert stubs.slices.GetSliceStatus(rr.GetSliceStatusRequest(slice_id=slice_id), timeout=5).loaded
        assert stubs.kserve.ModelInfer(x, timeout=10).outputs

        stubs.kserve.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name=slice_id), timeout=10)
        stored.write_bytes(good[: len(good) // 2])
        header_alone = iter([next(upload_requests(good, load=True))])
        with pytest.raises(grpc.RpcError) as err:
            stubs.slices.UploadSlice(header_alone, timeout=30)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and "upload it again" in err.value.details()
        assert not stored.exists()
        assert not stubs.slices.UploadSlice(upload_requests(good, load=True), timeout=30).cached
        assert stubs.kserve.ModelInfer(x, timeout=10).outputs


def test_a_request_handed_the_refusal_of_a_slice_removed_as_damaged_is_told_to_upload_it(tmp_path, monkeypatch):
    """A request that waited on an open of a damaged slice is handed that open's refusal; by the time it checks the
    stored file for damage, the request that opened it has removed the file. It answered INVALID_ARGUMENT ("ONNX
    Runtime cannot load") for a slice that is only gone: NOT_FOUND, upload it again (found by review)."""
    from rr_server.metrics import Metrics
    from rr_server.repository import ModelRepository
    from rr_server.slices import SliceStore

    store = SliceStore(tmp_path / "slices", 1 << 30)
    info = store.put_bytes(conv_model())
    info.path.write_bytes(b"a disk fault")
    pool = sessions.SessionPool(["CPUExecutionProvider"], 2)
    with pytest.raises(InvalidArgument):
        pool.get(info.slice_id, info.path)  # the opening request's refusal, remembered for its waiters
    get = pool.get

    def handed_the_refusal(slice_id, path):  # ... while that request found the file damaged and removed it
        try:
            return get(slice_id, path)
        finally:
            path.unlink(missing_ok=True)

    monkeypatch.setattr(pool, "get", handed_the_refusal)
    with pytest.raises(NotFound, match="upload it again"):
        ModelRepository(store, pool, Metrics()).session(info.slice_id)


@pytest.mark.parametrize("node_name", ["out of memory guard", "CUDA_relu"])
def test_a_slice_onnx_runtime_refuses_stays_refused_whatever_its_nodes_are_named(tmp_path, node_name):
    """An open's failure was read for memory and device faults in all of ONNX Runtime's message, which quotes the
    slice's own node names: a type error in a node named "out of memory ..." became RESOURCE_EXHAUSTED, not
    remembered, and opened again at every request (found by review)."""
    relu = helper.make_node("Relu", ["x"], ["y"], name=node_name)  # Relu has no int8 kernel at opset 13
    graph = helper.make_graph(
        [relu],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.INT8, [1])],
        [helper.make_tensor_value_info("y", TensorProto.INT8, [1])],
    )
    path = tmp_path / "s.onnx"
    path.write_bytes(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=IR_VERSION).SerializeToString()
    )
    pool = sessions.SessionPool(["CPUExecutionProvider"], 2)
    with pytest.raises(InvalidArgument, match="cannot load"):
        pool.get("a" * 64, path)
    assert pool.failure("a" * 64) is not None  # remembered: not opened again


def test_a_response_whose_output_names_overflow_the_envelope_fails_its_message_and_the_stream_goes_on(tmp_path):
    """Only the outputs' contents were checked against the message limit: an output of exactly the limit whose name
    took 70,000 bytes passed, and gRPC's refusal of the 1 MiB + 70 KB response (the limit allows 64 KiB of framing)
    ended the ModelStreamInfer stream. The whole response is now measured before it is sent."""
    long_name = "y" * 70_000
    identity = _model(
        [helper.make_node("Identity", ["x"], [long_name])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
        [helper.make_tensor_value_info(long_name, TensorProto.FLOAT, ["n"])],
    )

    def request(n: int) -> pb.ModelInferRequest:
        return codec.encode_infer_request(sha256(identity), {"x": np.ones(n, np.float32)}, request_id=str(n))

    with serving(tmp_path, max_message_bytes=MIB) as (_, stubs):
        stubs.upload(identity)
        answers = list(stubs.kserve.ModelStreamInfer(iter([request(4), request(MIB // 4), request(8)]), timeout=30))
        with pytest.raises(grpc.RpcError) as err:
            stubs.kserve.ModelInfer(request(MIB // 4), timeout=30)
        small = stubs.kserve.ModelInfer(request(16), timeout=30)
    assert [(a.error_message[:18] or a.infer_response.id) for a in answers] == ["4", "RESOURCE_EXHAUSTED", "8"]
    assert "its response takes 1,118,704 bytes" in answers[1].error_message
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert codec.decode_infer_response(small)[long_name].shape == (16,)
