"""In-process tests of inference.GRPCInferenceService (KServe v2) over uploaded slices."""

from __future__ import annotations

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from _server_support import IR_VERSION, Stubs, conv_model, serving, sha256, start_server, two_output_model
from onnx import TensorProto, helper, numpy_helper

from rr_proto import codec
from rr_proto.inference import grpc_service_pb2 as pb

UNKNOWN = "0" * 64


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("inference"))
    stubs = Stubs.connect(server.address)
    conv, two = conv_model(), two_output_model()
    stubs.upload(conv)
    stubs.upload(two)
    yield server, stubs, sha256(conv), sha256(two), conv
    stubs.close()
    server.stop(grace=1)


def local(model: bytes, feeds: dict) -> dict:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def x_input(seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, 3, 8, 8)).astype(np.float32)


def test_server_live_ready_metadata(env):
    _, stubs, *_ = env
    assert stubs.kserve.ServerLive(pb.ServerLiveRequest(), timeout=5).live
    assert stubs.kserve.ServerReady(pb.ServerReadyRequest(), timeout=5).ready
    meta = stubs.kserve.ServerMetadata(pb.ServerMetadataRequest(), timeout=5)
    assert meta.name == "rr-server" and meta.version
    assert "model_repository" in meta.extensions


def test_model_ready(env):
    _, stubs, conv_id, *_ = env
    assert stubs.kserve.ModelReady(pb.ModelReadyRequest(name=conv_id), timeout=5).ready
    assert not stubs.kserve.ModelReady(pb.ModelReadyRequest(name=UNKNOWN), timeout=5).ready
    assert not stubs.kserve.ModelReady(pb.ModelReadyRequest(name="not-a-slice-id"), timeout=5).ready


def test_model_metadata(env):
    _, stubs, conv_id, two_id, _ = env
    meta = stubs.kserve.ModelMetadata(pb.ModelMetadataRequest(name=conv_id), timeout=10)
    assert meta.name == conv_id and meta.platform == "onnxruntime_onnx" and list(meta.versions) == ["1"]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("x", "FP32", [1, 3, 8, 8])]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [("y", "FP32", [1, 4, 8, 8])]
    meta = stubs.kserve.ModelMetadata(pb.ModelMetadataRequest(name=two_id), timeout=10)
    assert {t.name: t.datatype for t in meta.inputs} == {"a": "FP32", "n": "INT64"}


def test_model_infer_raw_matches_local_ort(env):
    _, stubs, conv_id, _, conv = env
    x = x_input()
    response = stubs.kserve.ModelInfer(codec.encode_infer_request(conv_id, {"x": x}, request_id="r1"), timeout=10)
    assert response.id == "r1" and response.model_name == conv_id
    got = codec.decode_infer_response(response)
    np.testing.assert_allclose(got["y"], local(conv, {"x": x})["y"], atol=1e-5)


def test_model_infer_typed_contents(env):
    _, stubs, _, two_id, _ = env
    request = pb.ModelInferRequest(model_name=two_id)
    a = request.inputs.add(name="a", datatype="FP32", shape=[2, 3])
    a.contents.fp32_contents.extend([1, 2, 3, 4, 5, 6])
    n = request.inputs.add(name="n", datatype="INT64", shape=[4])
    n.contents.int64_contents.extend([1, -2, 3, 40])
    got = codec.decode_infer_response(stubs.kserve.ModelInfer(request, timeout=10))
    np.testing.assert_array_equal(got["sum"], np.arange(1, 7, dtype=np.float32).reshape(2, 3) * 2)
    np.testing.assert_array_equal(got["doubled"], [2, -4, 6, 80])


def test_model_infer_requested_output_subset(env):
    _, stubs, _, two_id, _ = env
    feeds = {"a": np.ones((2, 3), np.float32), "n": np.arange(4, dtype=np.int64)}
    response = stubs.kserve.ModelInfer(codec.encode_infer_request(two_id, feeds, outputs=["doubled"]), timeout=10)
    assert [o.name for o in response.outputs] == ["doubled"]


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda r: setattr(r.inputs[0], "datatype", "FP64"), "needs"),  # byte count no longer matches
        (lambda r: setattr(r.inputs[0], "datatype", "INT32"), "datatype INT32"),
        (lambda r: (r.inputs[0].ClearField("shape"), r.inputs[0].shape.extend([1, 3, 16, 4])), "shape"),
        (lambda r: r.raw_input_contents.__setitem__(0, r.raw_input_contents[0][:-4]), "bytes"),
        (lambda r: setattr(r.inputs[0], "name", "z"), "unknown input"),
        (lambda r: setattr(r.inputs[0], "datatype", "FP99"), "unknown datatype"),
        (lambda r: r.outputs.add(name="nope"), "unknown output"),
    ],
    ids=["dtype-bytes", "dtype", "shape", "byte-count", "name", "datatype-name", "output"],
)
def test_model_infer_bad_input(env, mutate, fragment):
    _, stubs, conv_id, _, _ = env
    request = codec.encode_infer_request(conv_id, {"x": x_input()})
    mutate(request)
    with pytest.raises(grpc.RpcError) as err:
        stubs.kserve.ModelInfer(request, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in err.value.details()
    # the server keeps serving
    good = stubs.kserve.ModelInfer(codec.encode_infer_request(conv_id, {"x": x_input()}), timeout=10)
    assert good.outputs[0].name == "y"


def test_a_kernel_that_refuses_the_values_is_invalid_argument(tmp_path):
    """Inputs of the right dtype and shape whose values ONNX Runtime's kernel refuses (an index out of range) are the
    client's mistake: INVALID_ARGUMENT with ONNX Runtime's reason, not INTERNAL."""
    data = numpy_helper.from_array(np.arange(10, dtype=np.float32), "d")
    i = helper.make_tensor_value_info("i", TensorProto.INT64, [1])
    o = helper.make_tensor_value_info("o", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Gather", ["d", "i"], ["o"])], "gather", [i], [o], initializer=[data])
    gather = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=IR_VERSION)
    with serving(tmp_path) as (server, stubs):
        stubs.upload(gather.SerializeToString())
        slice_id = sha256(gather.SerializeToString())
        with pytest.raises(grpc.RpcError) as err:
            stubs.kserve.ModelInfer(codec.encode_infer_request(slice_id, {"i": np.array([99])}), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "cannot run on these inputs" in err.value.details() and "out of data bounds" in err.value.details()
        good = stubs.kserve.ModelInfer(codec.encode_infer_request(slice_id, {"i": np.array([7])}), timeout=10)
        assert codec.decode_infer_response(good)["o"].tolist() == [7.0]


def test_model_infer_unknown_model(env):
    _, stubs, *_ = env
    with pytest.raises(grpc.RpcError) as err:
        stubs.kserve.ModelInfer(codec.encode_infer_request(UNKNOWN, {"x": x_input()}), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "not cached" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        stubs.kserve.ModelMetadata(pb.ModelMetadataRequest(name="resnet18"), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND  # not a slice id: no such model
    assert "model names are slice ids" in err.value.details()


def test_model_stream_infer_reports_errors_per_message(env):
    _, stubs, conv_id, _, conv = env
    xs = [x_input(k) for k in range(3)]
    bad = codec.encode_infer_request(UNKNOWN, {"x": xs[0]}, request_id="bad")
    requests = [
        codec.encode_infer_request(conv_id, {"x": xs[0]}, request_id="0"),
        bad,
        codec.encode_infer_request(conv_id, {"x": xs[1]}, request_id="1"),
        codec.encode_infer_request(conv_id, {"x": xs[2][:, :2]}, request_id="bad-shape"),
        codec.encode_infer_request(conv_id, {"x": xs[2]}, request_id="2"),
    ]
    responses = list(stubs.kserve.ModelStreamInfer(iter(requests), timeout=20))
    assert len(responses) == 5
    assert responses[1].error_message.startswith("NOT_FOUND")
    assert responses[3].error_message.startswith("INVALID_ARGUMENT")
    # an error names its request, as a response does: a client with several in flight tells which one failed
    assert [responses[k].infer_response.id for k in (1, 3)] == ["bad", "bad-shape"]
    assert responses[3].infer_response.model_name == conv_id and not responses[3].infer_response.outputs
    for k, index in enumerate((0, 2, 4)):
        r = responses[index]
        assert not r.error_message and r.infer_response.id == str(k)
        np.testing.assert_allclose(
            codec.decode_infer_response(r.infer_response)["y"], local(conv, {"x": xs[k]})["y"], atol=1e-5
        )


def test_repository_index_load_unload(env):
    server, stubs, conv_id, two_id, _ = env
    stubs.kserve.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=conv_id), timeout=10)
    index = stubs.kserve.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=10)
    states = {m.name: m.state for m in index.models}
    assert states[conv_id] == "READY" and two_id in states
    stubs.kserve.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name=conv_id), timeout=10)
    assert not server.sessions.loaded(conv_id)
    ready = stubs.kserve.RepositoryIndex(pb.RepositoryIndexRequest(ready=True), timeout=10)
    assert conv_id not in {m.name for m in ready.models}
    # unloaded slices stay cached and load again on demand
    x = x_input()
    assert stubs.kserve.ModelInfer(codec.encode_infer_request(conv_id, {"x": x}), timeout=10).outputs
    with pytest.raises(grpc.RpcError) as err:
        stubs.kserve.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=UNKNOWN), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_unknown_version_is_not_found(env):
    _, stubs, conv_id, *_ = env
    with pytest.raises(grpc.RpcError) as err:
        stubs.kserve.ModelMetadata(pb.ModelMetadataRequest(name=conv_id, version="7"), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def _model(nodes: list, inputs: list, outputs: list) -> bytes:
    graph = helper.make_graph(nodes, "g", inputs, outputs)
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=IR_VERSION
    ).SerializeToString()


def test_string_tensors_arrive_as_text_and_a_refused_cast_is_invalid_argument(tmp_path):
    """A string Identity answered b'<memory at 0x7f...>' (raw contents) or "b'hello'" (typed), and a Cast of "abc" to
    float was INTERNAL "internal server error" (found by review)."""
    strings = [helper.make_tensor_value_info(n, TensorProto.STRING, [2]) for n in ("s", "t")]
    identity = _model([helper.make_node("Identity", ["s"], ["t"])], strings[:1], strings[1:])
    cast = _model([helper.make_node("Cast", ["s"], ["f"], to=TensorProto.FLOAT)], strings[:1],
                  [helper.make_tensor_value_info("f", TensorProto.FLOAT, [2])])  # fmt: skip
    words = np.array(["hello", "\u00e9t\u00e9"], dtype=object)
    with serving(tmp_path) as (_, stubs):
        for model in (identity, cast):
            stubs.upload(model)
        raw = codec.encode_infer_request(sha256(identity), {"s": words})
        typed = pb.ModelInferRequest(model_name=sha256(identity))
        typed.inputs.add(name="s", datatype="BYTES", shape=[2]).contents.bytes_contents.extend(
            [b"hello", "\u00e9t\u00e9".encode()]
        )
        for request in (raw, typed):
            answer = codec.decode_infer_response(stubs.kserve.ModelInfer(request, timeout=10))
            assert answer["t"].tolist() == ["hello", "\u00e9t\u00e9"]
        with pytest.raises(grpc.RpcError) as err:
            stubs.kserve.ModelInfer(codec.encode_infer_request(sha256(cast), {"s": words}), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "cannot run on these inputs" in err.value.details()
        numbers = np.array(["1.5", "-2"], dtype=object)
        answer = codec.decode_infer_response(
            stubs.kserve.ModelInfer(codec.encode_infer_request(sha256(cast), {"s": numbers}), timeout=10)
        )
        assert answer["f"].tolist() == [1.5, -2.0]


def test_an_output_over_the_message_limit_fails_its_message_and_the_stream_goes_on(tmp_path):
    """An output whose size depends on the input values (Expand to a shape sent in the request) was only refused by
    gRPC, after two more copies, and that ended the ModelStreamInfer stream: the requests behind it got no answer
    (found by review)."""
    expand = _model(
        [helper.make_node("Expand", ["x", "shape"], ["y"])],
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1]),
            helper.make_tensor_value_info("shape", TensorProto.INT64, [2]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["a", "b"])],
    )

    def request(rows: int) -> pb.ModelInferRequest:
        feeds = {"x": np.ones(1, np.float32), "shape": np.array([rows, 256], np.int64)}
        return codec.encode_infer_request(sha256(expand), feeds, request_id=str(rows))

    with serving(tmp_path, max_message_bytes=1 << 20) as (_, stubs):
        stubs.upload(expand)
        answers = list(stubs.kserve.ModelStreamInfer(iter([request(4), request(2048), request(8)]), timeout=30))
        with pytest.raises(grpc.RpcError) as err:
            stubs.kserve.ModelInfer(request(2048), timeout=10)
    assert [(a.error_message[:18] or a.infer_response.id) for a in answers] == ["4", "RESOURCE_EXHAUSTED", "8"]
    assert "its outputs take 2,097,152 bytes" in answers[1].error_message and "not sent" in answers[1].error_message
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_a_device_fault_is_unavailable_not_the_requests_fault(env, monkeypatch):
    """ONNX Runtime reports a failing GPU (a CUDA error) as a RuntimeException, like a string it cannot Cast: taken
    for the request's fault, the edge kept sending every request to a broken server (found by review)."""
    from onnxruntime.capi.onnxruntime_pybind11_state import RuntimeException

    server, stubs, conv_id, _, _ = env

    class Failing:
        def run(self, *args):  # type: ignore[no-untyped-def]
            raise RuntimeException("CUDA failure 700: an illegal memory access was encountered")

    session = server.repository.session(conv_id)
    monkeypatch.setattr(session, "_session", Failing())
    monkeypatch.setattr(session, "_bindable", False)
    with pytest.raises(grpc.RpcError) as err:
        stubs.kserve.ModelInfer(codec.encode_infer_request(conv_id, {"x": x_input()}), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "the server's device failed" in err.value.details()

    class Huge:  # an Expand to a shape the request chose, past the host's memory
        def run(self, *args):  # type: ignore[no-untyped-def]
            raise RuntimeException("Non-zero status code returned while running Expand node: std::bad_alloc")

    monkeypatch.setattr(session, "_session", Huge())
    with pytest.raises(grpc.RpcError) as err:  # the request's size, not a broken server (found by review)
        stubs.kserve.ModelInfer(codec.encode_infer_request(conv_id, {"x": x_input()}), timeout=10)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "more memory" in err.value.details()


BIG = 1 << 17  # floats: 512 KiB, past PLACE_MIN_BYTES, so ONNX Runtime writes outputs into the response message


def test_an_output_named_twice_is_refused_and_the_server_serves_on(tmp_path):
    """Laid out twice in the response with one result kept, an output named twice was encoded from memory freed with
    the message: the server died of SIGSEGV, or answered other requests' bytes (found by review). A slice whose graph
    lists one tensor twice as outputs did the same without any request trick: it is refused at upload."""
    fp = TensorProto.FLOAT
    x, y = helper.make_tensor_value_info("x", fp, [BIG]), helper.make_tensor_value_info("y", fp, [BIG])
    relu = _model([helper.make_node("Relu", ["x"], ["y"])], [x], [y])
    twice = _model([helper.make_node("Relu", ["x"], ["y"])], [x], [y, y])
    xin = np.linspace(-1, 1, BIG, dtype=np.float32)
    with serving(tmp_path) as (_, stubs):
        stubs.upload(relu)
        with pytest.raises(grpc.RpcError) as err:
            stubs.kserve.ModelInfer(
                codec.encode_infer_request(sha256(relu), {"x": xin}, outputs=["y", "y"]), timeout=10
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "twice" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            stubs.upload(twice)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "twice" in err.value.details()
        got = codec.decode_infer_response(
            stubs.kserve.ModelInfer(codec.encode_infer_request(sha256(relu), {"x": xin}), timeout=10)
        )
        np.testing.assert_array_equal(got["y"], np.maximum(xin, 0))


def test_an_output_that_is_an_input_answers_the_input(tmp_path):
    """ONNX Runtime hands an input back as an output that is the same tensor and never writes the memory bound for
    it: the caller got uninitialised bytes, among them another client's tensor (found by review)."""
    fp = TensorProto.FLOAT
    x, s = helper.make_tensor_value_info("x", fp, [BIG]), helper.make_tensor_value_info("s", fp, [BIG])
    echo = _model([helper.make_node("Relu", ["x"], ["s"])], [x], [x, s])
    relu = _model([helper.make_node("Relu", ["x"], ["s"])], [x], [s])
    with serving(tmp_path) as (_, stubs):
        stubs.upload(echo)
        stubs.upload(relu)
        for k in range(3):  # the first runs learn the shapes; later ones are the bound runs
            secret = np.full(BIG, 1234.5, np.float32)  # another client's request in between
            stubs.kserve.ModelInfer(codec.encode_infer_request(sha256(relu), {"x": secret}), timeout=10)
            xin = np.arange(BIG, dtype=np.float32) + k
            got = codec.decode_infer_response(
                stubs.kserve.ModelInfer(codec.encode_infer_request(sha256(echo), {"x": xin}), timeout=10)
            )
            np.testing.assert_array_equal(got["x"], xin)
            np.testing.assert_array_equal(got["s"], np.maximum(xin, 0))


def test_a_request_for_an_unknown_model_is_not_decoded(env, monkeypatch):
    """The inputs were decoded before the model was looked up: 4M strings sent to "no-such-model" took 4 s of the
    server's CPU before NOT_FOUND (found by review)."""
    from rr_server import inference_servicer

    _, stubs, _, _, _ = env

    def decoded(request):  # type: ignore[no-untyped-def]
        raise AssertionError("decoded the inputs of a request for no model")

    monkeypatch.setattr(inference_servicer.wire, "decode_inputs", decoded)
    request = codec.encode_infer_request("0" * 64, {"s": np.array(["a"] * 1000, dtype=object)})
    with pytest.raises(grpc.RpcError) as err:
        stubs.kserve.ModelInfer(request, timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
