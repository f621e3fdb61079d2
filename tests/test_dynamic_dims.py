"""Models with a symbolic batch dimension are planned at batch 1 (SPEC section 3: one fixed input shape)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import run_onnx
from onnx import TensorProto, helper, numpy_helper
from test_blocks import flatten_constants
from test_graph_edge_cases import io, make

from rr_edge.blocks import analyze
from rr_edge.errors import ModelError
from rr_edge.onnx_io import load_model
from rr_edge.slicing import Slicer

RTOL, ATOL = 1e-5, 1e-6
Dim = int | str | None


def tail_model(batch: Dim, height: Dim = 8) -> onnx.ModelProto:
    """Conv/Relu x3, then a flatten whose target shape comes from the input: Shape->Gather->Concat->Reshape->MatMul."""
    rng = np.random.default_rng(0)

    def w(name: str, *shape: int) -> TensorProto:
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    nodes = [
        helper.make_node("Shape", ["x"], ["sx"]),
        helper.make_node("Gather", ["sx", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axes0"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus1"], ["newshape"], axis=0),
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Conv", ["r2", "w3"], ["c3"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c3"], ["r3"]),
        helper.make_node("Reshape", ["r3", "newshape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w4"], ["y"]),
    ]
    inits = [
        w("w1", 4, 3, 3, 3), w("w2", 4, 4, 3, 3), w("w3", 4, 4, 3, 3), w("w4", 4 * 8 * 8, 10),
        *flatten_constants(),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "tail",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, height, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 10])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    return model


def saved(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("batch", ["N", None], ids=["dim_param", "unknown"])
def test_dynamic_batch_gives_the_blocks_of_batch_1(tmp_path: Path, batch: Dim, caplog) -> None:  # type: ignore[no-untyped-def]
    static = analyze(load_model(saved(tail_model(1), tmp_path / "b1.onnx")), "tail")
    with caplog.at_level(logging.INFO, logger="rr_edge.onnx_io"):
        model = load_model(saved(tail_model(batch), tmp_path / "bn.onnx"))
    assert "input(s) x to 1" in caplog.text and ("'N'" in caplog.text) == (batch == "N")
    if batch == "N":  # the symbol is fixed in the declared output too
        assert [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim] == [1, 10]
    dynamic = analyze(model, "tail")
    assert len(dynamic.blocks) == len(static.blocks) == 5
    assert [b.signature for b in dynamic.blocks] == [b.signature for b in static.blocks]
    assert [(b.flops, b.param_bytes, b.input_bytes, b.output_bytes) for b in dynamic.blocks] == [
        (b.flops, b.param_bytes, b.input_bytes, b.output_bytes) for b in static.blocks
    ]
    assert all(b.input_bytes > 0 and b.output_bytes > 0 for b in dynamic.blocks)
    assert sum(b.flops for b in dynamic.blocks) > 0
    assert [t.shape for t in dynamic.inputs] == [(1, 3, 8, 8)]


def test_slices_of_dynamic_batch_model_reproduce_it(tmp_path: Path) -> None:
    original = tail_model("N")
    model = load_model(saved(original, tmp_path / "bn.onnx"))
    graph = analyze(model, "tail")
    slicer = Slicer(model, graph)
    head, tail = slicer.slice(0, 2), slicer.slice(3, len(graph) - 1)
    assert [i.name for i in tail.graph.input] == ["r3"]  # the flatten's shape no longer needs x
    assert [d.dim_value for d in tail.graph.input[0].type.tensor_type.shape.dim] == [1, 4, 8, 8]
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    want = run_onnx(original, {"x": x})["y"]
    got = run_onnx(tail, run_onnx(head, {"x": x}))["y"]
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


def test_dynamic_height_is_a_model_error_naming_the_input(tmp_path: Path) -> None:
    path = saved(tail_model("N", height="H"), tmp_path / "dyn_h.onnx")
    with pytest.raises(ModelError) as info:
        load_model(path)
    message = str(info.value)
    assert "'x'" in message and "H" in message and "make_dynamic_shape_fixed" in message
    assert "\n" not in message


def test_static_model_loads_unchanged(tmp_path: Path) -> None:
    path = saved(tail_model(1), tmp_path / "b1.onnx")
    assert load_model(path).SerializeToString() == onnx.load(str(path)).SerializeToString()


def test_initializers_listed_as_inputs_are_left_alone(tmp_path: Path) -> None:
    model = tail_model(1)
    model.graph.input.append(helper.make_tensor_value_info("w4", TensorProto.FLOAT, ["K", 10]))  # old-IR style
    path = saved(model, tmp_path / "old_ir.onnx")
    assert load_model(path).SerializeToString() == onnx.load(str(path)).SerializeToString()


def shuffle_model(batch: Dim) -> onnx.ModelProto:
    """(Conv, Relu, channel shuffle) x 2, the shuffle as the TorchScript exporter writes it for a dynamic batch: the
    Reshape's target [n, groups, c / groups, h, w] comes from Shape -> Gather -> Div -> Unsqueeze -> Concat of the
    tensor it reshapes, and the Reshape back from the Shape of the tensor before it."""
    rng = np.random.default_rng(0)
    nodes: list[onnx.NodeProto] = []
    inits = [
        numpy_helper.from_array(np.array(v, np.int64), n)
        for n, v in (("i0", 0), ("i1", 1), ("i2", 2), ("i3", 3), ("two", 2), ("ax", [0]))
    ]
    inits.append(numpy_helper.from_array(np.array([2], np.int64), "groups"))
    x = "x"
    for k in range(2):
        p = f"s{k}_"
        inits.append(numpy_helper.from_array(rng.standard_normal((8, 8 if k else 3, 3, 3)).astype(np.float32), p + "w"))
        nodes += [
            helper.make_node("Conv", [x, p + "w"], [p + "c"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", [p + "c"], [p + "r"]),
            helper.make_node("Shape", [p + "r"], [p + "shape"]),
            *(helper.make_node("Gather", [p + "shape", f"i{d}"], [p + f"d{d}"], axis=0) for d in range(4)),
            helper.make_node("Div", [p + "d1", "two"], [p + "half"]),
            *(helper.make_node("Unsqueeze", [p + n, "ax"], [p + n + "_1"]) for n in ("d0", "half", "d2", "d3")),
            helper.make_node(
                "Concat", [p + "d0_1", "groups", p + "half_1", p + "d2_1", p + "d3_1"], [p + "target"], axis=0
            ),  # fmt: skip
            helper.make_node("Reshape", [p + "r", p + "target"], [p + "split"]),
            helper.make_node("Transpose", [p + "split"], [p + "t"], perm=[0, 2, 1, 3, 4]),
            helper.make_node("Reshape", [p + "t", p + "shape"], [p + "out"]),
        ]
        x = p + "out"
    nodes.append(helper.make_node("ReduceMean", [x], ["y"], axes=[2, 3], keepdims=0))
    model = make(nodes, [io("x", [batch, 3, 8, 8])], [io("y", [batch, 8])], inits, ir=9)
    onnx.checker.check_model(model, full_check=True)
    return model


def test_shape_arithmetic_of_a_dynamic_batch_export_is_worked_out(tmp_path: Path) -> None:
    """Shape inference (with data propagation too) stops at the first Reshape whose target goes through a Div: every
    shape after it was unknown, the Shapes that read them depended on the input, and their results crossed the cuts
    (a TorchScript shufflenet_v2 exported with a dynamic batch had 39 blocks instead of 69, largest 38 nodes; swin_t
    needed 1,421 shapes from a run). Evaluating the shape arithmetic gives the static model's blocks and shapes."""
    static = analyze(load_model(saved(shuffle_model(1), tmp_path / "b1.onnx")), "shuffle")
    model = load_model(saved(shuffle_model("N"), tmp_path / "bn.onnx"))
    graph = analyze(model, "shuffle")
    assert [b.ops for b in graph.blocks] == [b.ops for b in static.blocks]
    assert len(graph.blocks) == 9  # Conv+Relu, Reshape, Transpose, Reshape (x2), ReduceMean
    outputs = [o for n in model.graph.node for o in n.output]
    assert all(graph.tensors[o].static for o in outputs) and not graph.sample_shapes
    assert [(b.flops, b.input_bytes, b.output_bytes) for b in graph.blocks] == [
        (b.flops, b.input_bytes, b.output_bytes) for b in static.blocks
    ]
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    want = run_onnx(model, {"x": x})["y"]
    slicer = Slicer(model, graph)
    values = {"x": x}
    for k, block in enumerate(graph.blocks):
        part = slicer.slice(k, k)
        assert [i.name for i in part.graph.input] == list(block.inputs)  # no shape read across a cut
        values.update(run_onnx(part, {n: values[n] for n in block.inputs}))
    np.testing.assert_allclose(values["y"], want, rtol=RTOL, atol=ATOL)
