"""Atomic blocks, signatures and features (SPEC section 3, issue 2 'Must hold')."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import random_inputs, run_onnx
from onnx import TensorProto, helper, numpy_helper
from test_slicing import check_chained

from rr_edge.blocks import analyze
from rr_edge.cli import main
from rr_edge.export import export_model
from rr_edge.onnx_io import load_model
from rr_edge.slicing import slice_model

# Published multiply-accumulate counts at 224 x 224 (GMACs); FLOPs = 2 x MACs.
PUBLISHED_GMACS = {"resnet50": 4.1, "vgg16": 15.5, "mobilenet_v2": 0.30, "alexnet": 0.71}
RESNET50_STAGES = (3, 4, 6, 3)


def add_blocks(graph):  # type: ignore[no-untyped-def]
    return [b for b in graph.blocks if "Add" in b.ops]


def test_resnet50_every_bottleneck_is_one_block(zoo) -> None:
    _, graph = zoo("resnet50", 224)
    adds = add_blocks(graph)
    assert len(adds) == 16
    for b in adds:
        assert b.ops.count("Add") == 1
        assert b.ops[0] == "Conv" and b.ops[-1] == "Relu"
        assert b.ops.count("Conv") in (3, 4)  # three convs, plus the downsample projection in a stage's first
    assert sum(b.ops.count("Conv") for b in graph.blocks) == 53
    assert [a.index for a in adds] == list(range(adds[0].index, adds[0].index + 16)), "bottlenecks are consecutive"


def stage_blocks(graph, stages=RESNET50_STAGES):  # type: ignore[no-untyped-def]
    adds = add_blocks(graph)
    out, start = [], 0
    for n in stages:
        out.append(adds[start : start + n])
        start += n
    return out


def test_resnet50_repeated_bottlenecks_share_signatures(zoo) -> None:
    _, graph = zoo("resnet50", 224)
    sigs = []
    for stage in stage_blocks(graph):
        assert stage[0].ops.count("Conv") == 4
        assert len({b.signature for b in stage[1:]}) == 1
        assert stage[0].signature != stage[1].signature
        sigs.extend([stage[0].signature, stage[1].signature])
    assert len(set(sigs)) == 8


@pytest.mark.parametrize("name,stages", [("resnet101", (3, 4, 23, 3)), ("resnet152", (3, 8, 36, 3))])
def test_deeper_resnets_share_resnet50_stage_signatures(zoo, name: str, stages) -> None:  # type: ignore[no-untyped-def]
    _, r50 = zoo("resnet50", 224)
    _, deep = zoo(name, 224)
    for s50, sdeep in zip(stage_blocks(r50), stage_blocks(deep, stages), strict=True):
        assert [b.signature for b in s50[:2]] == [b.signature for b in sdeep[:2]]
        assert {b.signature for b in sdeep[1:]} == {s50[1].signature}
    assert r50.blocks[0].signature == deep.blocks[0].signature  # the stem too


def test_signatures_differ_with_input_size(zoo) -> None:
    _, g224 = zoo("resnet50", 224)
    _, g512 = zoo("resnet50", 512)
    assert [b.ops for b in g224.blocks] == [b.ops for b in g512.blocks]
    for b224, b512 in zip(g224.blocks, g512.blocks, strict=True):
        if b224.ops != ("Reshape",) and b224.ops != ("Gemm",):  # after the global pool the shapes agree
            assert b224.signature != b512.signature, b224.index
    assert g224.blocks[-1].signature == g512.blocks[-1].signature  # classifier head: same shapes, same signature


@pytest.mark.parametrize("name", sorted(PUBLISHED_GMACS))
def test_flops_match_published(zoo, name: str) -> None:
    _, graph = zoo(name, 224)
    total = sum(b.flops for b in graph.blocks)
    assert total == pytest.approx(2e9 * PUBLISHED_GMACS[name], rel=0.03)


def test_json_format_and_features(zoo) -> None:
    model, graph = zoo("resnet18", 224)
    doc = json.loads(json.dumps(graph.to_json()))
    assert set(doc) == {"model", "inputs", "outputs", "blocks"}
    assert doc["inputs"] == [{"name": "input", "shape": [1, 3, 224, 224], "dtype": "float32"}]
    assert doc["outputs"] == [{"name": "output", "shape": [1, 1000], "dtype": "float32"}]
    keys = {"index", "ops", "signature", "inputs", "outputs", "flops", "param_bytes", "input_bytes", "output_bytes",
            "slice_bytes", "offloadable"}  # fmt: skip
    for i, b in enumerate(doc["blocks"]):
        assert set(b) == keys and b["index"] == i
        assert isinstance(b["signature"], str) and len(b["signature"]) >= 16
    assert doc["blocks"][0]["inputs"] == ["input"] and doc["blocks"][-1]["outputs"] == ["output"]
    for prev, nxt in zip(doc["blocks"], doc["blocks"][1:], strict=False):
        assert prev["outputs"] == nxt["inputs"] and prev["output_bytes"] == nxt["input_bytes"]
    weights = sum(t.ByteSize() for t in model.graph.initializer)
    assert sum(b["param_bytes"] for b in doc["blocks"]) == pytest.approx(weights, rel=0.01)
    assert doc["blocks"][0]["input_bytes"] == 3 * 224 * 224 * 4


def test_boundary_bytes(zoo) -> None:
    _, graph = zoo("resnet18", 224)
    bb = graph.boundary_bytes()
    assert len(bb) == len(graph) + 1
    assert bb[0] == 3 * 224 * 224 * 4 and bb[-1] == 1000 * 4
    assert bb[1] == 64 * 112 * 112 * 4  # after conv1 + relu


def test_signature_is_stable_across_analyses(zoo, zoo_path) -> None:
    _, graph = zoo("mobilenet_v2", 224)
    again = analyze(load_model(zoo_path("mobilenet_v2", 224)), "other name")
    assert [b.signature for b in again.blocks] == [b.signature for b in graph.blocks]


def test_signature_ignores_weight_values() -> None:
    a, b = branchy_model(seed=1), branchy_model(seed=2)
    assert [x.signature for x in analyze(a).blocks] == [x.signature for x in analyze(b).blocks]


def _signatures(nodes, inputs, outputs, inits, opset: int = 17) -> list[str]:  # type: ignore[no-untyped-def]
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9)
    return [block.signature for block in analyze(model).blocks]


def test_signature_ignores_whether_equal_weights_share_an_initializer() -> None:
    """Exporters merge initializers of equal values (zero biases): numbered by first use, the shared one wired its
    second use to the first, and repeated mobilenet_v2 blocks got two signatures in one export and one in another
    (found by review). Each use is numbered apart, also through an Identity alias."""
    rng = np.random.default_rng(0)
    fp = TensorProto.FLOAT
    x = helper.make_tensor_value_info("x", fp, [1, 8, 8, 8])
    out = helper.make_tensor_value_info("out", fp, [1, 8, 8, 8])

    def block(second_bias: str, alias: bool = False) -> list[str]:
        inits = [numpy_helper.from_array(rng.standard_normal((8, 8, 3, 3)).astype(np.float32), n) for n in "UV"]
        inits += [numpy_helper.from_array(np.zeros(8, np.float32), n) for n in ("b1", "b2")]
        head = [helper.make_node("Identity", ["b1"], ["b1_alias"])] if alias else []
        return _signatures(
            [*head,
             helper.make_node("Conv", ["x", "U", "b1"], ["c"], pads=[1] * 4),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Conv", ["r", "V", second_bias], ["c2"], pads=[1] * 4),
             helper.make_node("Add", ["c2", "x"], ["out"])],
            [x], [out], inits,
        )  # fmt: skip

    assert block("b1") == block("b2") == block("b1_alias", alias=True)


def test_signature_ignores_learned_scalars_and_quantization_parameters() -> None:
    """A one-element float weight (a PReLU slope, a one-output bias) and a quantization scale or zero point are
    values, not structure: hashed, they gave every calibration of a quantized model its own signatures, 0 of 15 shared
    (found by review). Integer shapes and axes still count."""
    fp = TensorProto.FLOAT
    x = helper.make_tensor_value_info("x", fp, [1, 4, 6, 6])

    def prelu(slope: float) -> list[str]:
        y = helper.make_tensor_value_info("y", fp, [1, 4, 6, 6])
        inits = [numpy_helper.from_array(np.array([slope], np.float32), "slope")]
        return _signatures([helper.make_node("PRelu", ["x", "slope"], ["y"])], [x], [y], inits)

    def qdq(scale: float, zero_point: int) -> list[str]:
        y = helper.make_tensor_value_info("y", fp, [1, 4, 6, 6])
        inits = [numpy_helper.from_array(np.array(scale, np.float32), "s"),
                 numpy_helper.from_array(np.array(zero_point, np.uint8), "z")]  # fmt: skip
        nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
                 helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]  # fmt: skip
        return _signatures(nodes, [x], [y], inits)

    def reshape(shape: list[int]) -> list[str]:
        y = helper.make_tensor_value_info("y", fp, shape)
        inits = [numpy_helper.from_array(np.array(shape, np.int64), "shape")]
        return _signatures([helper.make_node("Reshape", ["x", "shape"], ["y"])], [x], [y], inits)

    assert prelu(0.25) == prelu(0.3)
    assert qdq(0.02, 128) == qdq(0.5, 3)
    assert reshape([1, 144]) != reshape([4, 36])


def test_signature_does_not_depend_on_the_file_order_of_parallel_branches() -> None:
    """Tools re-sort nodes (onnxsim, ONNX Runtime's offline optimizer): Relu -> {Conv 3x3, Conv 1x1} -> Add gave
    two signatures by which Conv came first in the file (found by review). A real difference still shows."""
    rng = np.random.default_rng(0)
    fp = TensorProto.FLOAT
    x = helper.make_tensor_value_info("x", fp, [1, 4, 8, 8])
    y = helper.make_tensor_value_info("y", fp, [1, 4, 8, 8])
    inits = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
             for name, shape in (("w3", (4, 4, 3, 3)), ("w1", (4, 4, 1, 1)))]  # fmt: skip
    relu = helper.make_node("Relu", ["x"], ["r"])
    conv3 = helper.make_node("Conv", ["r", "w3"], ["a"], pads=[1] * 4)
    conv1 = helper.make_node("Conv", ["r", "w1"], ["b"])
    add, tail = helper.make_node("Add", ["a", "b"], ["s"]), helper.make_node("Sigmoid", ["s"], ["y"])
    one = _signatures([relu, conv3, conv1, add, tail], [x], [y], inits)
    assert _signatures([relu, conv1, conv3, add, tail], [x], [y], inits) == one
    sub = helper.make_node("Sub", ["a", "b"], ["s"])  # not commutative: which branch comes first is structure
    assert _signatures([relu, conv3, conv1, sub, tail], [x], [y], inits) != _signatures(
        [relu, conv3, conv1, helper.make_node("Sub", ["b", "a"], ["s"]), tail], [x], [y], inits
    )


@pytest.mark.parametrize(("trip", "runs"), [(3, 3), (np.iinfo(np.int64).max, 1)])
def test_a_loop_without_scan_outputs_counts_its_constant_trip_count(trip: int, runs: int) -> None:
    """A Loop whose trip count is a constant and that has no scan output counted its body once (found by review);
    INT64_MAX, the exporters' "until the condition", still counts once."""
    fp = TensorProto.FLOAT
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "W")
    body = helper.make_graph(
        [helper.make_node("Identity", ["c_in"], ["c_out"]), helper.make_node("MatMul", ["v", "W"], ["v_out"])],
        "body",
        [helper.make_tensor_value_info("it", TensorProto.INT64, []),
         helper.make_tensor_value_info("c_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v", fp, [1, 4])],
        [helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", fp, [1, 4])],
    )  # fmt: skip
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Loop", ["trip", "", "r"], ["y"], body=body)]
    inits = [w, numpy_helper.from_array(np.array(trip, np.int64), "trip")]
    graph = helper.make_graph(nodes, "loop", [helper.make_tensor_value_info("x", fp, [1, 4])],
                              [helper.make_tensor_value_info("y", fp, [1, 4])], inits)  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    assert sum(b.flops for b in analyze(model).blocks) == 4 + runs * 2 * 16  # Relu, then MatMul [1,4]x[4,4] per run


def test_weights_held_in_a_constant_node_count_in_param_bytes() -> None:
    """Some exporters hold weights in Constant nodes; they counted 0 bytes (found by review), and param_bytes is a
    feature of the cold-start prior and of Neurosurgeon's regression."""
    fp = TensorProto.FLOAT
    weight = numpy_helper.from_array(np.ones((16, 16), np.float32), "w")
    nodes = [helper.make_node("Constant", [], ["w"], value=weight), helper.make_node("MatMul", ["x", "w"], ["y"])]
    graph = helper.make_graph(nodes, "const", [helper.make_tensor_value_info("x", fp, [1, 16])],
                              [helper.make_tensor_value_info("y", fp, [1, 16])])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    assert [b.param_bytes for b in analyze(model).blocks] == [16 * 16 * 4]


def test_a_body_reading_its_own_node_differs_from_one_reading_the_blocks() -> None:
    """An If branch's own node outputs were named like the block's (n<j>.<k>): Add(Sigmoid(p), Sigmoid(p)) in a body
    hashed like Add(Sigmoid(p), p), where p is the block's node 0 (found by review)."""
    fp = TensorProto.FLOAT
    x = helper.make_tensor_value_info("x", fp, [1, 4])
    c = helper.make_tensor_value_info("c", TensorProto.BOOL, [])
    y = helper.make_tensor_value_info("y", fp, [1, 4])

    def block(second: str) -> list[str]:
        body = [helper.make_node("Sigmoid", ["p"], ["s"]), helper.make_node("Add", ["s", second], ["t"])]
        then = helper.make_graph(body, "then", [], [helper.make_tensor_value_info("t", fp, [1, 4])])
        other = helper.make_graph([helper.make_node("Identity", ["p"], ["e"])], "else", [],
                                  [helper.make_tensor_value_info("e", fp, [1, 4])])  # fmt: skip
        nodes = [helper.make_node("Relu", ["x"], ["p"]),
                 helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)]  # fmt: skip
        return _signatures(nodes, [x, c], [y], [])

    assert block("s") != block("p")


def if_model(k: int, weights_inside: bool, seed: int = 0) -> onnx.ModelProto:
    """x -> MatMul -> Relu -> If(c: MatMul(w_a[64, k]) -> MatMul(w_b[k, 64]) ; Relu) -> MatMul: the then-branch's
    weights are outer-scope initializers, or the branch's own."""
    rng = np.random.default_rng(seed)

    def w(name: str, *shape: int) -> TensorProto:
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    def vi(name: str, shape: list[int], dtype: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, dtype, shape)

    branch_weights = [w("wa", 64, k), w("wb", k, 64)]
    then_nodes = [helper.make_node("MatMul", ["r", "wa"], ["t1"]), helper.make_node("MatMul", ["t1", "wb"], ["t"])]
    then = helper.make_graph(then_nodes, "then", [], [vi("t", [1, 64])], branch_weights if weights_inside else [])
    other = helper.make_graph([helper.make_node("Relu", ["r"], ["e"])], "else", [], [vi("e", [1, 64])])
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["a"]),
        helper.make_node("Relu", ["a"], ["r"]),
        helper.make_node("If", ["c"], ["o"], then_branch=then, else_branch=other),
        helper.make_node("MatMul", ["o", "w3"], ["y"]),
    ]
    inits = [w("w1", 64, 64), w("w3", 64, 64), *([] if weights_inside else branch_weights)]
    graph = helper.make_graph(nodes, "if", [vi("x", [1, 64]), vi("c", [], TensorProto.BOOL)], [vi("y", [1, 64])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("weights_inside", [False, True])
def test_signature_and_weight_bytes_see_into_subgraphs(weights_inside: bool) -> None:
    """What an If branch computes sets the block's cost: its weight shapes change the signature (a 48x slower
    branch used to share the signature), its weights count in param_bytes; weight values still do not matter."""
    small, big = (analyze(if_model(k, weights_inside)).blocks[0] for k in (4, 16384))
    assert small.signature != big.signature
    assert small.param_bytes == 4 * (64 * 64 + 2 * 64 * 4) and big.param_bytes == 4 * (64 * 64 + 2 * 64 * 16384)
    assert analyze(if_model(4, weights_inside, seed=1)).blocks[0].signature == small.signature


def flatten_constants() -> list[TensorProto]:
    """zero, axes0, minus1: what a Shape -> Gather -> Unsqueeze -> Concat side chain reads to build [N, -1]."""
    return [
        numpy_helper.from_array(np.array(0, np.int64), "zero"),
        numpy_helper.from_array(np.array([0], np.int64), "axes0"),
        numpy_helper.from_array(np.array([-1], np.int64), "minus1"),
    ]


def branchy_model(seed: int = 0, channels: int = 4) -> onnx.ModelProto:
    """x -> Conv -> {Relu ; Sigmoid -> Mul(const)} -> Concat -> Conv -> Add(skip from first conv) -> Relu
    -> Reshape(shape from a Shape side chain) -> Gemm."""
    rng = np.random.default_rng(seed)
    c = channels

    def w(name: str, *shape: int) -> TensorProto:
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["c0"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c0"], ["r0"]),
        helper.make_node("Sigmoid", ["c0"], ["s0"]),
        helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.array(0.5, np.float32))),
        helper.make_node("Mul", ["s0", "k"], ["m0"]),
        helper.make_node("Concat", ["r0", "m0"], ["cat"], axis=1),
        helper.make_node("Conv", ["cat", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c1", "c0"], ["a1"]),
        helper.make_node("Relu", ["a1"], ["r1"]),
        helper.make_node("Shape", ["r1"], ["shp"]),
        helper.make_node("Gather", ["shp", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axes0"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus1"], ["newshape"], axis=0),
        helper.make_node("Reshape", ["r1", "newshape"], ["flat"]),
        helper.make_node("Gemm", ["flat", "w2", "b2"], ["y"], transB=1),
        helper.make_node("Relu", ["c1"], ["dead"]),  # dead code: reaches no output
    ]
    inits = [
        w("w0", c, 3, 3, 3), w("w1", c, 2 * c, 3, 3), w("w2", 10, c * 8 * 8), w("b2", 10),
        *flatten_constants(),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "branchy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 10])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    return model


def test_branches_skip_and_shape_chain_stay_inside_blocks() -> None:
    model = branchy_model()
    graph = analyze(model, "branchy")
    assert [b.outputs for b in graph.blocks] == [("c0",), ("r1",), ("flat",), ("y",)]
    two = graph.blocks[1]
    assert {"Relu", "Sigmoid", "Mul", "Concat", "Conv", "Add"} <= set(two.ops)
    assert two.inputs == ("c0",)
    assert "Shape" not in graph.blocks[1].ops and "Shape" in graph.blocks[2].ops  # side chain goes with Reshape
    assert all(len(b.inputs) == 1 for b in graph.blocks)
    assert graph.blocks[3].flops == 2 * 2 * 10 * 256 + 2 * 10
    check_chained(model, graph)


def test_multi_input_and_output_model() -> None:
    x = helper.make_tensor_value_info("a", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("b", TensorProto.FLOAT, [4])
    nodes = [
        helper.make_node("Add", ["a", "b"], ["s"]),
        helper.make_node("Relu", ["s"], ["r"]),
        helper.make_node("Neg", ["r"], ["o1"]),
        helper.make_node("Exp", ["r"], ["o2"]),
    ]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [4]) for n in ("o1", "o2")]
    model = helper.make_model(
        helper.make_graph(nodes, "mimo", [x, y], outs), opset_imports=[helper.make_opsetid("", 18)]
    )
    model.ir_version = 9
    graph = analyze(model)
    assert [b.inputs for b in graph.blocks] == [("a", "b"), ("r",)]
    assert graph.blocks[-1].outputs == ("o1", "o2")
    assert graph.boundary_bytes() == [32, 16, 32]
    check_chained(model, graph)


ATTENTION_MODULE = textwrap.dedent(
    """
    import torch
    from torch import nn

    class TinyViT(nn.Module):
        def __init__(self, dim=32, depth=2, heads=4):
            super().__init__()
            self.patch = nn.Conv2d(3, dim, 8, stride=8)
            self.layers = nn.ModuleList(
                nn.TransformerEncoderLayer(dim, heads, 64, dropout=0.0, batch_first=True) for _ in range(depth)
            )
            self.head = nn.Linear(dim, 10)

        def forward(self, x):
            t = self.patch(x).flatten(2).transpose(1, 2)
            for layer in self.layers:
                t = layer(t)
            return self.head(t.mean(dim=1))

    def make():
        return TinyViT()
    """
)


def test_attention_module_via_from(tmp_path: Path) -> None:
    src = tmp_path / "tiny_vit.py"
    src.write_text(ATTENTION_MODULE)
    path = export_model(None, tmp_path / "tiny_vit.onnx", input_size=32, from_callable=f"{src}:make")
    model = load_model(path)
    graph = analyze(model, "tiny_vit")
    encoder = [b for b in graph.blocks if "Softmax" in b.ops]
    assert len(encoder) == 2, [b.ops for b in graph.blocks]
    assert encoder[0].signature == encoder[1].signature
    for b in encoder:  # post-norm layer: attention + residual Add + LayerNorm, then MLP + Add + LayerNorm
        assert b.ops[-2:] == ("Add", "LayerNormalization")
        mlp = graph.blocks[b.index + 1]
        assert mlp.ops.count("MatMul") == 2 and mlp.ops[-2:] == ("Add", "LayerNormalization")
    check_chained(model, graph)
    feeds = random_inputs(graph)
    assert run_onnx(model, feeds)["output"].shape == (1, 10)


def test_nodes_out_of_topological_order() -> None:
    model = branchy_model()
    reference = analyze(model, "ordered")
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(reversed(nodes))
    graph = analyze(model, "reversed")
    assert [b.outputs for b in graph.blocks] == [b.outputs for b in reference.blocks]
    assert [b.flops for b in graph.blocks] == [b.flops for b in reference.blocks]
    check_chained(model, graph)


def test_cli_blocks_json_and_table(zoo_path, capsys) -> None:  # type: ignore[no-untyped-def]
    path = zoo_path("resnet18", 224)
    assert main(["blocks", str(path), "--json", "--name", "resnet18"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    doc = json.loads(out)
    assert doc == analyze(load_model(path), "resnet18").to_json()
    assert main(["blocks", str(path)]) == 0
    table = capsys.readouterr().out
    assert f"{path.stem}: {len(doc['blocks'])} blocks" in table
    assert "slice" in table  # the column of what each block adds to an uploaded slice
    assert doc["blocks"][-1]["signature"] in table


def test_shape_read_of_an_earlier_block_becomes_a_constant() -> None:
    """Reshape in a later block takes its target shape from `a`, computed in block 0: the shape is
    static, so `a` does not widen the boundary and the slice holds the shape as a Constant."""
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["a"]),
        helper.make_node("MaxPool", ["a"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Shape", ["a"], ["shp"], start=0, end=2),
        helper.make_node("Concat", ["shp", "minus1"], ["newshape"], axis=0),
        helper.make_node("Reshape", ["p", "newshape"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "shape_read",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16])],
        initializer=[
            numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w"),
            numpy_helper.from_array(np.array([-1], np.int64), "minus1"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    blocks = analyze(model, "shape_read")
    assert [b.inputs for b in blocks.blocks] == [("x",), ("a",), ("p",)]
    last = slice_model(model, blocks, 2, 2)
    assert "Shape" not in [n.op_type for n in last.graph.node]
    assert "Constant" in [n.op_type for n in last.graph.node]
    check_chained(model, blocks)


def test_the_models_key_on_the_server_follows_its_blocks_not_only_its_name() -> None:
    """The server keeps whole-model figures by this key: two models saved as one file name (a re-export at another
    width, another edge's model.onnx) had shared them, and one calibrated the other's blocks (found by review)."""
    narrow, wide = analyze(branchy_model(channels=4), "net"), analyze(branchy_model(channels=8), "net")
    assert narrow.model_key.startswith("net@") and narrow.model_key != wide.model_key
    same = analyze(branchy_model(seed=1, channels=4), "net")  # other weights: the same blocks, the same timings
    assert same.model_key == narrow.model_key
    assert analyze(branchy_model(channels=4), "other").model_key != narrow.model_key
    assert len(analyze(branchy_model(), "x" * 300).model_key) <= 256  # the server's limit on an id
