"""Block signatures: independent of the file order of nodes however alike they look, and seeing into model-local
functions (signature review 3)."""

from __future__ import annotations

import random

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from rr_edge.blocks import analyze, node_inputs
from rr_edge.signature import model_functions

FP = TensorProto.FLOAT


def resorted(model: onnx.ModelProto, seed: int) -> onnx.ModelProto:
    """The model with its nodes in another valid topological order, drawn at random (as onnxsim or ONNX Runtime's
    offline optimizer may write them)."""
    rng = random.Random(seed)
    nodes = list(model.graph.node)
    producer = {o: k for k, n in enumerate(nodes) for o in n.output if o}
    needs = [{producer[x] for x in node_inputs(n) if x in producer} - {k} for k, n in enumerate(nodes)]
    placed: set[int] = set()
    order: list[int] = []
    while len(order) < len(nodes):
        k = rng.choice([k for k in range(len(nodes)) if k not in placed and needs[k] <= placed])
        placed.add(k)
        order.append(k)
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    del copy.graph.node[:]
    copy.graph.node.extend(nodes[k] for k in order)
    return copy


def signatures(model: onnx.ModelProto) -> list[str]:
    return [b.signature for b in analyze(model).blocks]


def attention_model(layers: int = 3, heads: int = 2, residual_from_q: bool = False) -> onnx.ModelProto:
    """`layers` alike multi-head self-attention layers, each h -> h + Wo(softmax(Q K^T / s) V), then Relu: Q, K and V
    are one op on one input with one weight shape; only where their outputs go tells them apart."""
    rng = np.random.default_rng(0)
    seq, d = 6, 16
    inits: list[TensorProto] = []

    def weight(name: str, *shape: int) -> str:
        inits.append(numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name))
        return name

    def const(name: str, value: list[int] | float) -> str:
        dtype = np.float32 if isinstance(value, float) else np.int64
        inits.append(numpy_helper.from_array(np.array(value, dtype), name))
        return name

    split, merge, scale = const("split", [1, seq, heads, d // heads]), const("merge", [1, seq, d]), const("s", 4.0)
    nodes: list[onnx.NodeProto] = []
    h = "x"
    for j in range(layers):
        projected = {}
        for part, perm in (("q", [0, 2, 1, 3]), ("k", [0, 2, 3, 1]), ("v", [0, 2, 1, 3])):
            w, b = weight(f"w{part}{j}", d, d), weight(f"b{part}{j}", d)
            nodes += [
                helper.make_node("MatMul", [h, w], [f"{part}m{j}"]),
                helper.make_node("Add", [f"{part}m{j}", b], [f"{part}{j}"]),
                helper.make_node("Reshape", [f"{part}{j}", split], [f"{part}r{j}"]),
                helper.make_node("Transpose", [f"{part}r{j}"], [f"{part}h{j}"], perm=perm),
            ]
            projected[part] = f"{part}h{j}"
        nodes += [
            helper.make_node("MatMul", [projected["q"], projected["k"]], [f"s{j}"]),
            helper.make_node("Div", [f"s{j}", scale], [f"sd{j}"]),
            helper.make_node("Softmax", [f"sd{j}"], [f"p{j}"], axis=-1),
            helper.make_node("MatMul", [f"p{j}", projected["v"]], [f"a{j}"]),
            helper.make_node("Transpose", [f"a{j}"], [f"at{j}"], perm=[0, 2, 1, 3]),
            helper.make_node("Reshape", [f"at{j}", merge], [f"ar{j}"]),
            helper.make_node("MatMul", [f"ar{j}", weight(f"wo{j}", d, d)], [f"o{j}"]),
            helper.make_node("Add", [f"q{j}" if residual_from_q else h, f"o{j}"], [f"res{j}"]),
            helper.make_node("Relu", [f"res{j}"], [f"h{j}"]),
        ]
        h = f"h{j}"
    nodes.append(helper.make_node("Identity", [h], ["y"]))
    graph = helper.make_graph(
        nodes, "attention", [helper.make_tensor_value_info("x", FP, [1, seq, d])],
        [helper.make_tensor_value_info("y", FP, [1, seq, d])], inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def attention_blocks(model: onnx.ModelProto) -> list[str]:
    """Signatures of the blocks holding Softmax: one per attention layer."""
    return [b.signature for b in analyze(model).blocks if "Softmax" in b.ops]


def test_random_resorts_of_attention_layers_keep_every_signature() -> None:
    """Q, K and V tied on op, input and weight shape, and the tie went to file order: a valid re-sort gave the three
    alike layers up to three signatures (found by review)."""
    model = attention_model()
    base = attention_blocks(model)
    assert len(base) == 3 and len(set(base)) == 1, "alike layers share one signature"
    for seed in range(8):
        assert attention_blocks(resorted(model, seed)) == base, f"re-sort {seed}"


def test_alike_nodes_that_make_different_outputs_keep_their_order() -> None:
    """Two Sigmoids of one input differ only in which block output each makes: tied, file order picked which one
    came first, and with it the order of the outputs in the record."""
    x = helper.make_tensor_value_info("x", FP, [1, 8])
    outs = [helper.make_tensor_value_info(name, FP, [1, 8]) for name in ("y0", "y1")]
    relu = helper.make_node("Relu", ["x"], ["r"])
    first, second = helper.make_node("Sigmoid", ["r"], ["y0"]), helper.make_node("Sigmoid", ["r"], ["y1"])

    def model(nodes: list[onnx.NodeProto]) -> onnx.ModelProto:
        graph = helper.make_graph(nodes, "two", [x], outs)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)

    assert signatures(model([relu, first, second])) == signatures(model([relu, second, first]))


def test_structurally_different_attention_still_differs() -> None:
    """Ordering by structure must not merge what differs: other heads (a shape), or the residual taken from the Q
    projection instead of the layer's input (the same ops and shapes, other wiring)."""
    base = attention_blocks(attention_model())[0]
    assert attention_blocks(attention_model(heads=4))[0] != base
    assert attention_blocks(attention_model(residual_from_q=True))[0] != base


def test_random_resorts_of_a_torchvision_model_keep_every_signature(zoo) -> None:  # type: ignore[no-untyped-def]
    """GoogLeNet's inception blocks hold alike branches: two of three re-sorts changed one of their signatures."""
    model, graph = zoo("googlenet", 224)
    base = [b.signature for b in graph.blocks]
    for seed in range(4):
        assert signatures(resorted(model, seed)) == base, f"re-sort {seed}"


def function_model(body: list[onnx.NodeProto], extra: tuple[onnx.FunctionProto, ...] = ()) -> onnx.ModelProto:
    """x -> Relu -> local.Block (`body`, from a to b) -> Sigmoid -> MatMul: the call sits in one block."""
    block = helper.make_function("local", "Block", ["a"], ["b"], body, [helper.make_opsetid("", 18),
                                 helper.make_opsetid("local", 1)], attributes=["alpha"])  # fmt: skip
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Block", ["r"], ["f"], domain="local"),
        helper.make_node("Sigmoid", ["f"], ["z"]),
        helper.make_node("MatMul", ["z", "W"], ["y"]),
    ]
    w = numpy_helper.from_array(np.ones((16, 4), np.float32), "W")
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", FP, [2, 16])],
                              [helper.make_tensor_value_info("y", FP, [2, 4])], [w])  # fmt: skip
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid("local", 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=9, functions=[block, *extra])


def call_block(model: onnx.ModelProto) -> str:
    (block,) = (b for b in analyze(model).blocks if "Block" in b.ops)
    return block.signature


def matmuls(count: int, value: float = 1.0) -> list[onnx.NodeProto]:
    w = numpy_helper.from_array(np.full((16, 16), value, np.float32))
    nodes, prev = [helper.make_node("Constant", [], ["w"], value=w)], "a"
    for i in range(count):
        nodes.append(helper.make_node("MatMul", [prev, "w"], [f"m{i}"]))
        prev = f"m{i}"
    return [*nodes, helper.make_node("Identity", [prev], ["b"])]


def test_a_call_of_a_local_function_hashes_its_body() -> None:
    """Only the call's domain, name, wiring and shapes were hashed: a Relu and eight MatMuls under one function name
    shared a signature (found by review). Weight values inside still do not count."""
    light = call_block(function_model([helper.make_node("Relu", ["a"], ["b"])]))
    heavy = call_block(function_model(matmuls(8)))
    assert light != heavy
    assert call_block(function_model(matmuls(8, value=2.0))) == heavy
    assert call_block(function_model(matmuls(7))) != heavy


def test_a_function_body_reading_the_calls_attribute_differs_from_a_fixed_one() -> None:
    referenced = helper.make_node("LeakyRelu", ["a"], ["b"])
    referenced.attribute.append(helper.make_attribute_ref("alpha", onnx.AttributeProto.FLOAT))
    fixed = helper.make_node("LeakyRelu", ["a"], ["b"], alpha=0.0)
    assert call_block(function_model([referenced])) != call_block(function_model([fixed]))


def test_a_nested_function_call_hashes_the_inner_body() -> None:
    def with_inner(body: list[onnx.NodeProto]) -> onnx.ModelProto:
        inner = helper.make_function("local", "Inner", ["a"], ["b"], body, [helper.make_opsetid("", 18)])
        call = [helper.make_node("Inner", ["a"], ["b"], domain="local")]
        return function_model(call, (inner,))

    assert call_block(with_inner([helper.make_node("Relu", ["a"], ["b"])])) != call_block(with_inner(matmuls(8)))


def test_a_function_calling_itself_is_hashed_once() -> None:
    """Recursion is invalid ONNX, but a file may hold it: hashing stops at the call back."""
    loop = helper.make_function("local", "F", ["a"], ["b"], [helper.make_node("F", ["a"], ["b"], domain="local")],
                                [helper.make_opsetid("local", 1)])  # fmt: skip
    graph = helper.make_graph([helper.make_node("F", ["x"], ["y"], domain="local")], "g", [], [])
    model = helper.make_model(graph, functions=[loop])
    assert set(model_functions(model)) == {("local", "F", "")}


@pytest.mark.parametrize("seed", [0, 1])
def test_random_resorts_keep_a_calls_signature(seed: int) -> None:
    model = function_model(matmuls(3))
    assert signatures(resorted(model, seed)) == signatures(model)
