"""Outputs written by ONNX Runtime straight into the response message: `framing.allocate_response` lays out exactly
the bytes protobuf would, `Session.run` binds outputs only when it knows their shapes (and falls back when a model's
shapes depend on the data), and the server answers big tensors correctly through this path (unary and stream)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from _server_support import start_server
from onnx import TensorProto, helper

from rr_edge.client import Client
from rr_proto import framing
from rr_server import wire
from rr_server.inference_servicer import PLACE_MIN_BYTES
from rr_server.sessions import Session


def _model(op: str, out_type: int, out_shape: list) -> bytes:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])
    y = helper.make_tensor_value_info("y", out_type, out_shape)
    graph = helper.make_graph([helper.make_node(op, ["x"], ["y"])], op.lower(), [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def relu_model() -> bytes:  # output shape follows the input shape
    return _model("Relu", TensorProto.FLOAT, ["n"])


def nonzero_model() -> bytes:  # output shape depends on the input values
    return _model("NonZero", TensorProto.INT64, [1, "k"])


def static_model() -> bytes:  # every shape fixed in the model
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    graph = helper.make_graph([helper.make_node("Neg", ["x"], ["y"])], "neg", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def session(model: bytes) -> Session:
    return Session("s" * 64, ort.InferenceSession(model, providers=["CPUExecutionProvider"]))


class Recorder:
    """An allocator that hands out fresh zeroed arrays and remembers them."""

    def __init__(self, decline: bool = False) -> None:
        self.decline = decline
        self.given: list[list[np.ndarray]] = []

    def __call__(self, specs):
        if self.decline:
            self.given.append([])
            return None
        self.given.append([np.zeros(shape, dtype) for _, dtype, shape in specs])
        return self.given[-1]


@pytest.mark.parametrize("stream", [False, True])
def test_allocated_response_is_byte_identical_to_protobuf(stream):
    y = np.arange(12, dtype=np.float32).reshape(3, 4)
    z = np.array([[1, -2]], dtype=np.int64)
    empty = np.zeros((0, 5), np.int8)
    specs = [("y", y.dtype, y.shape), ("z", z.dtype, z.shape), ("e", empty.dtype, empty.shape)]
    response, arrays = framing.allocate_response("m", "1", "id7", specs, stream=stream)
    for out, value in zip(arrays, (y, z, empty), strict=True):
        assert out.flags.writeable and out.flags.c_contiguous and out.shape == value.shape
        out[...] = value
    expected = framing.encode_outputs("m", "1", "id7", {"y": y, "z": z, "e": empty})
    for r in (response, expected):  # the server's run time, known only after the outputs were laid out
        r.set_run_ms(12.375)
    if stream:
        wanted = framing.serialize_stream_item(framing.StreamItem(expected))
        assert framing.serialize_stream_item(framing.StreamItem(response)) == wanted
        # Laid out for a stream, but sent as a unary response: still the right bytes (copied).
        assert framing.serialize_infer_response(response) == framing.serialize_infer_response(expected)
    else:
        assert framing.serialize_infer_response(response) == framing.serialize_infer_response(expected)
        assert framing.serialize_stream_item(framing.StreamItem(response)) == framing.serialize_stream_item(
            framing.StreamItem(expected)
        )
    message = response.serialized
    assert message is not None and np.shares_memory(arrays[0], np.frombuffer(message, np.uint8))
    parsed = framing.parse_stream_item(message).response if stream else framing.parse_infer_response(message)
    assert parsed is not None and framing.run_ms(parsed) == 12.375
    assert framing.run_ms(framing.encode_outputs("m", "1", "", {"y": y})) is None  # a server that does not say


def test_allocated_response_refuses_non_numeric_outputs():
    with pytest.raises(ValueError, match="cannot be laid out"):
        framing.allocate_response("m", "1", "", [("s", np.dtype(object), (2,))])


def test_dynamic_shapes_are_bound_from_the_second_run():
    s, alloc = session(relu_model()), Recorder()
    x = np.array([-1.0, 2.0, -3.0], np.float32)
    first = s.run({"x": x}, (), alloc)
    assert alloc.given == []  # output shape not known before the first run with this input shape
    second = s.run({"x": x}, (), alloc)
    assert len(alloc.given) == 1 and second["y"] is alloc.given[0][0]
    np.testing.assert_array_equal(second["y"], first["y"])
    np.testing.assert_array_equal(second["y"], [0.0, 2.0, 0.0])
    other = s.run({"x": np.ones(5, np.float32)}, (), alloc)  # new input shape: plain run again
    assert len(alloc.given) == 1 and other["y"].shape == (5,)


def test_static_shapes_are_bound_at_once_and_decline_means_a_plain_run():
    s, alloc = session(static_model()), Recorder()
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    out = s.run({"x": x}, ["y"], alloc)
    assert out["y"] is alloc.given[0][0]
    np.testing.assert_array_equal(out["y"], -x)
    declined = Recorder(decline=True)
    out = s.run({"x": x}, ["y"], declined)
    assert declined.given == [[]] and out["y"] is not None
    np.testing.assert_array_equal(out["y"], -x)


def test_data_dependent_shapes_fall_back_and_stay_unbound():
    s, alloc = session(nonzero_model()), Recorder()
    a = np.array([1, 0, 1, 1], np.float32)
    b = np.array([1, 0, 0, 1], np.float32)  # same input shape, fewer non-zeros
    np.testing.assert_array_equal(s.run({"x": a}, (), alloc)["y"], [[0, 2, 3]])
    np.testing.assert_array_equal(s.run({"x": b}, (), alloc)["y"], [[0, 3]])  # bound run failed
    assert len(alloc.given) == 1
    np.testing.assert_array_equal(s.run({"x": a}, (), alloc)["y"], [[0, 2, 3]])
    assert len(alloc.given) == 1  # that input shape is not bound again


def test_a_static_shape_that_lies_falls_back_once():
    """A model that declares a static output shape its data does not follow: the bound run fails once, and that
    input shape is then run plainly without asking the allocator again."""
    s, alloc = session(_model("NonZero", TensorProto.INT64, [1, 2])), Recorder()
    a = np.array([1, 0, 1, 1], np.float32)  # three non-zeros, not the declared two
    for _ in range(3):
        np.testing.assert_array_equal(s.run({"x": a}, (), alloc)["y"], [[0, 2, 3]])
    assert len(alloc.given) == 1


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("placement"))
    client = Client(server.address)
    ids = {name: client.upload_slice(model()).slice_id for name, model in (("relu", relu_model), ("nz", nonzero_model))}
    yield client, ids
    client.close()
    server.stop(grace=1)


def test_server_answers_big_tensors_through_the_placed_path(served, monkeypatch):
    client, ids = served
    placed: list[bool] = []
    allocate = wire.allocate_response

    def counting(*args, **kw):
        placed.append(kw.get("stream", args[-1] if len(args) > 4 else False))
        return allocate(*args, **kw)

    monkeypatch.setattr(wire, "allocate_response", counting)
    n = 2 * PLACE_MIN_BYTES // 4  # above the size from which outputs are written into the response
    for seed in range(3):  # the first call learns the output shape, the next ones are placed
        x = np.random.default_rng(seed).standard_normal(n).astype(np.float32)
        np.testing.assert_array_equal(client.infer(ids["relu"], {"x": x})["y"], np.maximum(x, 0))
    xs = [np.random.default_rng(10 + k).standard_normal(n).astype(np.float32) for k in range(3)]
    for x, got in zip(xs, client.stream_infer(ids["relu"], ({"x": x} for x in xs)), strict=True):
        np.testing.assert_array_equal(got["y"], np.maximum(x, 0))
    assert placed == [False, False, True, True, True]  # unary from its second call; the stream's shapes were known
    small = np.ones(8, np.float32)
    np.testing.assert_array_equal(client.infer(ids["relu"], {"x": small})["y"], small)
    np.testing.assert_array_equal(client.infer(ids["relu"], {"x": small})["y"], small)
    assert len(placed) == 5  # small outputs are copied, not placed


def test_server_answers_data_dependent_shapes(served):
    client, ids = served
    n = PLACE_MIN_BYTES
    for zeros in (0, 1, 5, 5, 2):
        x = np.ones(n, np.float32)
        x[:zeros] = 0
        y = client.infer(ids["nz"], {"x": x})["y"]
        np.testing.assert_array_equal(y, np.arange(zeros, n, dtype=np.int64)[None, :])
