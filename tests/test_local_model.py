"""Local parts of a split: cut with their large weights handed to ONNX Runtime as arrays (`rr_edge.local_model`)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import random_inputs, run_onnx
from onnx import TensorProto, helper, numpy_helper

from rr_edge.blocks import analyze
from rr_edge.errors import ModelError
from rr_edge.local_model import MIN_BYTES, LocalModel, handed_over
from rr_edge.offload import plan_slices
from rr_edge.runner import Runner
from rr_edge.session import OrtSettings
from rr_edge.slicing import Slicer

SETTINGS = OrtSettings(provider="cpu", intra_op_threads=1)


def _run(model, feeds):  # type: ignore[no-untyped-def]
    session = SETTINGS.create_session(model)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_a_split_cut_for_this_device_runs_as_the_model_does(zoo, name: str) -> None:
    model, graph = zoo(name)
    feeds = random_inputs(graph)
    expected = run_onnx(model, feeds)
    slicer = Slicer(model, graph)
    n = len(graph.blocks)
    head, tail = slicer.local(0, n // 3, "head"), slicer.local(n // 3 + 1, n - 1, "tail")
    handed = {t.name for t in model.graph.initializer if handed_over(t)}
    assert set(head.weights) | set(tail.weights) == handed and handed  # each large weight once, in its part
    for part in (head, tail):  # the bytes hold none of them
        inits = onnx.load_from_string(part.onnx).graph.initializer
        assert all(not t.raw_data for t in inits if t.name in handed)
    got = _run(tail, _run(head, feeds))
    for out, want in expected.items():
        np.testing.assert_allclose(got[out], want, rtol=1e-4, atol=1e-5)


def test_a_runner_of_a_split_answers_as_the_model_does(zoo) -> None:
    model, graph = zoo("resnet18")
    feeds = random_inputs(graph)
    expected = run_onnx(model, feeds)
    slicer = Slicer(model, graph)
    n = len(graph.blocks)
    for split in [(n - 1, n - 1), (2, 2)]:  # all local (the whole model cut for here), and head + tail
        got = Runner(plan_slices(slicer, n, *split), settings=SETTINGS)(feeds)
        for out, want in expected.items():
            np.testing.assert_allclose(got[out], want, rtol=1e-4, atol=1e-5, err_msg=f"split {split}")


def _matmul_model(weight: np.ndarray, *, shape_input: bool = True, weights_as_inputs: bool = False) -> onnx.ModelProto:
    """x [1, k] -> Reshape (a shape read by shape inference: stays in the bytes) -> MatMul with `weight` -> y."""
    k, m = weight.shape
    dtype = helper.np_dtype_to_tensor_dtype(weight.dtype)
    inits = [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(np.array([1, k], np.int64), "shape")]
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["r"]), helper.make_node("MatMul", ["r", "w"], ["y"])]
    inputs = [helper.make_tensor_value_info("x", dtype, [k])]
    if weights_as_inputs:  # as old exporters list them
        inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits]
    graph = helper.make_graph(nodes, "mm", inputs, [helper.make_tensor_value_info("y", dtype, [1, m])], inits)
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8 if weights_as_inputs else 9
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_large_weights_of_each_type_are_handed_over_and_shapes_stay(dtype: type) -> None:
    weight = np.random.default_rng(0).standard_normal((256, 128)).astype(dtype)
    model = _matmul_model(weight)
    slicer = Slicer(model, analyze(model, "mm"))
    local = slicer.local(0, len(slicer) - 1, "the model")
    assert list(local.weights) == ["w"] and local.weights["w"].dtype == weight.dtype
    kept = {t.name: t for t in onnx.load_from_string(local.onnx).graph.initializer}
    assert kept["w"].data_location == TensorProto.EXTERNAL and not kept["w"].raw_data
    assert kept["shape"].data_location == TensorProto.DEFAULT  # small: inline, for shape inference
    x = np.random.default_rng(1).standard_normal(256).astype(dtype)
    np.testing.assert_allclose(_run(local, {"x": x})["y"], _run(model.SerializeToString(), {"x": x})["y"], rtol=1e-3)


def test_small_weights_and_types_numpy_cannot_read_stay_in_the_bytes() -> None:
    small = numpy_helper.from_array(np.ones(MIN_BYTES // 4 - 1, np.float32), "small")
    large = numpy_helper.from_array(np.ones(MIN_BYTES // 4, np.float32), "large")
    bf16 = helper.make_tensor("bf16", TensorProto.BFLOAT16, [MIN_BYTES], b"\0\0" * MIN_BYTES, raw=True)
    typed = helper.make_tensor("typed", TensorProto.FLOAT, [MIN_BYTES], [0.0] * MIN_BYTES)  # float_data, no raw
    assert [handed_over(t) for t in (small, large, bf16, typed)] == [False, True, False, False]


def test_a_model_listing_its_weights_as_inputs_keeps_them_in_the_bytes() -> None:
    weight = np.random.default_rng(0).standard_normal((256, 128)).astype(np.float32)
    model = _matmul_model(weight, weights_as_inputs=True)
    slicer = Slicer(model, analyze(model, "mm"))
    local = slicer.local(0, len(slicer) - 1, "the model")
    assert not local.weights
    x = np.random.default_rng(1).standard_normal(256).astype(np.float32)
    np.testing.assert_allclose(_run(local, {"x": x})["y"], x[None] @ weight, rtol=1e-4, atol=1e-4)


def _two_matmuls(sparse_second: bool) -> tuple[onnx.ModelProto, np.ndarray]:
    """x [1, 256] -> MatMul w1 -> Relu -> MatMul w2 -> y; w2 a sparse initializer when `sparse_second`."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((256, 256)).astype(np.float32)
    w2 = (rng.standard_normal((256, 256)) * (rng.random((256, 256)) < 0.1)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("MatMul", ["b", "w2"], ["y"])]  # fmt: skip
    dense = [numpy_helper.from_array(w1, "w1")]
    sparse = []
    if sparse_second:
        at = np.flatnonzero(w2)
        values, indices = numpy_helper.from_array(w2.reshape(-1)[at], "w2"), numpy_helper.from_array(at, "")
        sparse.append(helper.make_sparse_tensor(values, indices, [256, 256]))
    else:
        dense.append(numpy_helper.from_array(w2, "w2"))
    graph = helper.make_graph(nodes, "mm2", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 256])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 256])], dense,
                              sparse_initializer=sparse)  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return model, np.maximum(np.ones((1, 256), np.float32) @ w1, 0) @ w2


def test_the_local_plan_runs_the_model_itself_not_a_cut_of_its_blocks() -> None:
    """A model built in memory with a sparse initializer (`load_model` makes them dense): the cut of all its blocks
    does not know that weight, the model itself runs (the local plan had run the model's own bytes; review)."""
    model, want = _two_matmuls(sparse_second=True)
    slicer = Slicer(model, analyze(model, "mm2"))
    n = len(slicer)
    slices = plan_slices(slicer, n, n - 1, n - 1)
    assert isinstance(slices.head, LocalModel) and list(slices.head.weights) == ["w1"]
    got = Runner(slices, settings=SETTINGS)({"x": np.ones((1, 256), np.float32)})["y"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)


def test_a_weight_whose_data_is_short_of_its_dims_is_a_model_error() -> None:
    model, _ = _two_matmuls(sparse_second=False)
    slicer = Slicer(model, analyze(model, "mm2"))
    model.graph.initializer[1].raw_data = model.graph.initializer[1].raw_data[:-4]  # built in memory, not loaded
    with pytest.raises(ModelError, match=r"weight 'w2' holds 262140 bytes, expected 262144"):
        slicer.local(0, len(slicer) - 1, "the model")
