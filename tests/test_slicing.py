"""Slicing: chained slices reproduce the full model (SPEC section 3, issue 2 'Must hold')."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import random_inputs, run_onnx

from rr_edge.blocks import analyze
from rr_edge.errors import ModelError
from rr_edge.slicing import Slicer, slice_model

RTOL, ATOL = 1e-4, 1e-5
PAPER_MODELS = ["alexnet", "mobilenet_v2", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
                "vgg11", "vgg13", "vgg16"]  # fmt: skip


def spread(n: int, count: int) -> list[int]:
    """`count` boundaries k (cut after block k) spread over 0..n-2, all of them when n is small."""
    if n - 1 <= count:
        return list(range(n - 1))
    if count == 1:
        return [(n - 2) // 2]
    return sorted({round(i * (n - 2) / (count - 1)) for i in range(count)})


def check_chained(model: onnx.ModelProto, graph, splits: int = 3) -> None:  # type: ignore[no-untyped-def]
    feeds = random_inputs(graph)
    expected = run_onnx(model, feeds)
    slicer = Slicer(model, graph)
    # every boundary: run the single-block slices one after the other
    values = dict(feeds)
    for k, block in enumerate(graph.blocks):
        part = slicer.slice(k, k)
        assert [i.name for i in part.graph.input] == list(block.inputs)
        assert [o.name for o in part.graph.output] == list(block.outputs)
        if part.ByteSize() < 64_000_000:  # checking re-serialises the proto; skip the huge FC slices
            onnx.checker.check_model(part)
        values.update(run_onnx(part, {n: values[n] for n in block.inputs}))
    for name, want in expected.items():
        np.testing.assert_allclose(values[name], want, rtol=RTOL, atol=ATOL, err_msg=f"chain of all blocks, {name}")
    # two pieces, 0:k and k+1:N-1, at spread boundaries (fewer for huge models: each costs a full copy)
    n = len(graph)
    if sum(b.param_bytes for b in graph.blocks) > 150_000_000:
        splits = min(splits, 1)
    for k in spread(n, splits):
        head, tail = slicer.slice(0, k), slicer.slice(k + 1, n - 1)
        mid = run_onnx(head, feeds)
        got = run_onnx(tail, mid)
        for name, want in expected.items():
            np.testing.assert_allclose(got[name], want, rtol=RTOL, atol=ATOL, err_msg=f"split after block {k}")


@pytest.mark.parametrize("name", PAPER_MODELS)
def test_chained_slices_reproduce_paper_models_224(zoo, name: str) -> None:
    model, graph = zoo(name, 224)
    check_chained(model, graph)


@pytest.mark.parametrize(
    "name", ["resnet50", pytest.param("vgg16", marks=pytest.mark.slow), "mobilenet_v2"]
)  # vgg16 @ 512: ~50 s on 2 cores
def test_chained_slices_reproduce_paper_models_512(zoo, name: str) -> None:
    model, graph = zoo(name, 512)
    check_chained(model, graph)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["googlenet", "densenet121", "vit_b_16", "swin_t", "efficientnet_b0"])
def test_chained_slices_multibranch_and_attention(zoo, name: str) -> None:
    model, graph = zoo(name, 224)
    assert len(graph) >= 8, "expected a useful number of cut points"
    check_chained(model, graph, splits=3)


def test_slice_keeps_names_and_only_needed_weights(zoo) -> None:
    model, graph = zoo("resnet18", 224)
    part = slice_model(model, graph, 2, 4)
    assert [i.name for i in part.graph.input] == list(graph.blocks[2].inputs)
    assert [o.name for o in part.graph.output] == list(graph.blocks[4].outputs)
    own = {t.name for t in part.graph.initializer}
    wanted = {x for k in (2, 3, 4) for i in graph.blocks[k].nodes for x in model.graph.node[i].input}
    assert own <= wanted
    assert sum(t.ByteSize() for t in part.graph.initializer) >= sum(graph.blocks[k].param_bytes for k in (2, 3, 4))


@pytest.mark.parametrize("name", ["mobilenet_v2", "resnet18"])
def test_slice_bytes_predict_the_size_of_any_slice(zoo, name: str) -> None:
    """What the planner costs an upload with (`Block.slice_bytes`, summed over the slice's blocks) is the size of the
    slice's ONNX bytes within 1%, not only its weights: mobilenet_v2's first 14 blocks carry a third more."""
    model, graph = zoo(name, 224)
    n = len(graph)
    for a, b in [(0, min(13, n - 1)), (0, n - 1), (n // 3, 2 * n // 3), (n - 2, n - 1)]:
        size = len(slice_model(model, graph, a, b).SerializeToString())
        blocks = graph.blocks[a : b + 1]
        assert sum(k.slice_bytes for k in blocks) == pytest.approx(size, rel=0.01)
        assert all(k.slice_bytes > k.param_bytes for k in blocks)
    first = graph.blocks[:14]
    if name == "mobilenet_v2":
        assert sum(k.slice_bytes for k in first) > 1.25 * sum(k.param_bytes for k in first)


@pytest.mark.parametrize("a,b", [(-1, 0), (3, 2), (0, 10_000)])
def test_slice_out_of_range(zoo, a: int, b: int) -> None:
    model, graph = zoo("resnet18", 224)
    with pytest.raises(ModelError, match="out of bounds"):
        slice_model(model, graph, a, b)


def test_whole_model_slice_equals_model(zoo) -> None:
    model, graph = zoo("mobilenet_v2", 224)
    whole = slice_model(model, graph, 0, len(graph) - 1)
    again = analyze(whole, "again")
    assert [b.signature for b in again.blocks] == [b.signature for b in graph.blocks]


def _function_in_if_model() -> onnx.ModelProto:
    """x -> Tanh -> If(ReduceSum > -1e9: local.MyAct, else Neg) -> Tanh -> y: a model-local function called only
    inside an If branch."""
    from onnx import TensorProto, helper, numpy_helper

    float_x = [1, 4]
    body = [helper.make_node("Tanh", ["X"], ["t"]), helper.make_node("Mul", ["t", "X"], ["Y"])]
    my_act = helper.make_function("local", "MyAct", ["X"], ["Y"], body, [helper.make_opsetid("", 18)])
    then_g = helper.make_graph([helper.make_node("MyAct", ["a"], ["t_out"], domain="local")], "then", [],
                               [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, float_x)])  # fmt: skip
    else_g = helper.make_graph([helper.make_node("Neg", ["a"], ["e_out"])], "else", [],
                               [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, float_x)])  # fmt: skip
    nodes = [
        helper.make_node("Tanh", ["x"], ["a"]),
        helper.make_node("ReduceSum", ["a"], ["s"], keepdims=0),
        helper.make_node("Greater", ["s", "low"], ["cond"]),
        helper.make_node("If", ["cond"], ["b"], then_branch=then_g, else_branch=else_g),
        helper.make_node("Tanh", ["b"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "function_in_if", [helper.make_tensor_value_info("x", TensorProto.FLOAT, float_x)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, float_x)],
                              [numpy_helper.from_array(np.array(-1e9, np.float32), "low")])  # fmt: skip
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid("local", 1)]
    return helper.make_model(graph, opset_imports=opsets, functions=[my_act], ir_version=9)


def test_a_function_called_only_inside_a_subgraph_goes_with_its_slice() -> None:
    """The slice kept the If but not the function its branch calls: ONNX Runtime refused the slice (and the all-local
    plan, which runs the whole-model slice), although the checker passed it."""
    model = _function_in_if_model()
    graph = analyze(model)
    x = {"x": np.linspace(-1, 1, 4, dtype=np.float32).reshape(1, 4)}
    expected = run_onnx(model, x)["y"]
    whole = Slicer(model, graph).slice(0, len(graph.blocks) - 1)
    assert [f.name for f in whole.functions] == ["MyAct"]
    np.testing.assert_allclose(run_onnx(whole, x)["y"], expected, rtol=1e-6)


def test_a_model_whose_outputs_depend_on_input_shapes_only_has_no_blocks() -> None:
    """Shape(x) as the only output analysed to 0 blocks without a word; `run` then failed on "blocks 0..-1"."""
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Shape", ["x"], ["y"])], "only_shape",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.INT64, [2])])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    with pytest.raises(ModelError, match="none of its outputs depends on the values of its inputs"):
        analyze(model, "only_shape")
