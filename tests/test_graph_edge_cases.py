"""Graph analysis and slicing on the less common corners of ONNX (found by review): tensors of unknown rank, weights
returned as outputs, bfloat16 and sequence tensors, nested model-local functions, IR 3 files, sparse weights, an
invalid element type, text and JSON files; FLOPs of recurrent and Einsum nodes; signatures that do not depend on
which defaults an exporter writes or where it keeps a shared constant."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import run_onnx
from onnx import TensorProto, helper, numpy_helper
from test_slicing import check_chained

from rr_edge.blocks import analyze
from rr_edge.errors import ModelError
from rr_edge.flops import node_flops
from rr_edge.offload import max_abs_diff
from rr_edge.onnx_io import TensorInfo, load_model
from rr_edge.profiler import ProfileConfig, TimingPolicy, profile_model
from rr_edge.slicing import Slicer, whole_model_bytes

F = TensorProto.FLOAT


def weight(name: str, shape: tuple[int, ...], seed: int = 0) -> TensorProto:
    return numpy_helper.from_array(np.random.default_rng(seed).standard_normal(shape).astype(np.float32), name)


def make(nodes, inputs, outputs, initializers=(), opset: int = 17, ir: int = 8, **kw) -> onnx.ModelProto:  # type: ignore[no-untyped-def]
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers), **kw.pop("graph", {}))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), *kw.pop("opsets", [])], **kw)
    model.ir_version = ir
    return model


def io(name: str, shape, elem: int = F) -> onnx.ValueInfoProto:  # type: ignore[no-untyped-def]
    return helper.make_tensor_value_info(name, elem, shape)


def loaded(model: onnx.ModelProto, tmp_path: Path) -> onnx.ModelProto:
    """Through the file, as every command reads a model."""
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    return load_model(path)


def fully_checked_slices(model: onnx.ModelProto) -> None:
    """Every single-block slice and every two-piece split passes the full checker (types and shapes too)."""
    graph = analyze(model)
    slicer = Slicer(model, graph)
    n = len(graph.blocks)
    for a, b in [(k, k) for k in range(n)] + [(0, k) for k in range(n)] + [(k, n - 1) for k in range(n)]:
        onnx.checker.check_model(slicer.slice(a, b), full_check=True)


def unknown_rank_model() -> onnx.ModelProto:
    """Squeeze with axes computed from the input's values: shape inference cannot tell the rank of `s`."""
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["a"]),
        helper.make_node("Relu", ["a"], ["b"]),
        helper.make_node("ReduceMax", ["x"], ["m"], keepdims=0),
        helper.make_node("Greater", ["m", "big"], ["flag"]),  # always False: axes = [0]
        helper.make_node("Cast", ["flag"], ["axes0"], to=TensorProto.INT64),
        helper.make_node("Unsqueeze", ["axes0", "zero"], ["axes"]),
        helper.make_node("Squeeze", ["b", "axes"], ["s"]),
        helper.make_node("MatMul", ["s", "w"], ["t"]),
        helper.make_node("Sigmoid", ["t"], ["u"]),
        helper.make_node("Shape", ["s"], ["shape"]),
        helper.make_node("Reshape", ["u", "shape"], ["y"]),
    ]
    constants = [
        numpy_helper.from_array(np.array([0], np.int64), "zero"),
        numpy_helper.from_array(np.float32(1e9), "big"),
    ]
    return make(nodes, [io("x", [1, 4])], [io("y", [4])], [weight("w", (4, 4)), *constants])


@pytest.fixture
def no_shape_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """A model ONNX Runtime cannot run to read the shapes static inference left unknown: they stay unknown."""
    monkeypatch.setattr("rr_edge.blocks.run_shapes", lambda model, names: {})


def test_a_tensor_of_unknown_rank_is_read_as_such(tmp_path: Path, no_shape_run: None) -> None:
    """It was taken for a scalar: its slices declared it so (ORT: wrong rank), and the Shape of it became a constant
    empty shape. Now it is no cut point and its Shape is computed."""
    model = loaded(unknown_rank_model(), tmp_path)
    graph = analyze(model)
    assert graph.tensors["s"].shape is None and not graph.tensors["s"].static
    assert all("s" not in b.inputs and "s" not in b.outputs for b in graph.blocks)
    assert "Shape" in graph.blocks[-1].ops
    check_chained(model, graph)
    fully_checked_slices(model)


def test_a_graph_output_that_is_a_weight(tmp_path: Path) -> None:
    """Slices with the last block said they did not compute their output 'w2'."""
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["a"]),
        helper.make_node("Relu", ["a"], ["b"]),
        helper.make_node("MatMul", ["b", "w2"], ["y"]),
    ]
    model = loaded(
        make(
            nodes,
            [io("x", [1, 4])],
            [io("y", [1, 4]), io("w2", [4, 4])],
            [weight("w1", (4, 4)), weight("w2", (4, 4), 1)],
        ),
        tmp_path,
    )
    graph = analyze(model)
    assert len(graph.blocks) >= 2
    check_chained(model, graph)
    fully_checked_slices(model)


def test_bfloat16_and_sequence_tensors_are_no_cut_points_and_are_typed_inside_a_slice(tmp_path: Path) -> None:
    """A bfloat16 tensor between blocks became an untyped slice input (ORT: no type information), and ORT cannot
    hand one to numpy anyway; a sequence was a cut point no slice can declare. Inside a slice a bfloat16 tensor
    keeps its type."""
    w = weight("w", (4, 4))
    bf16 = [
        helper.make_node("MatMul", ["x", "w"], ["a"]),
        helper.make_node("Cast", ["a"], ["ab"], to=TensorProto.BFLOAT16),
        helper.make_node("Cast", ["ab"], ["af"], to=F),
        helper.make_node("MatMul", ["af", "w"], ["y"]),
    ]
    model = loaded(make(bf16, [io("x", [1, 4])], [io("y", [1, 4])], [w]), tmp_path)
    graph = analyze(model)
    assert all("ab" not in b.inputs for b in graph.blocks)
    whole = Slicer(model, graph).slice(0, len(graph.blocks) - 1)
    assert {v.name: v.type.tensor_type.elem_type for v in whole.graph.value_info}["ab"] == TensorProto.BFLOAT16
    check_chained(model, graph)
    fully_checked_slices(model)

    sequence = [
        helper.make_node("MatMul", ["x", "w"], ["a"]),
        helper.make_node("SplitToSequence", ["a"], ["seq"], axis=1),
        helper.make_node("ConcatFromSequence", ["seq"], ["b"], axis=1),
        helper.make_node("MatMul", ["b", "w"], ["y"]),
    ]
    model = loaded(make(sequence, [io("x", [1, 4])], [io("y", [1, 4])], [w]), tmp_path)
    graph = analyze(model)
    assert all("seq" not in b.inputs for b in graph.blocks)
    check_chained(model, graph)


def test_a_function_that_calls_another_keeps_both(tmp_path: Path) -> None:
    """The slice kept only the function its nodes call: 'my:Inner is not a registered function/op'."""
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("my", 1)]
    inner = helper.make_function("my", "Inner", ["u"], ["v"], [helper.make_node("Relu", ["u"], ["v"])], opsets[:1])
    outer_nodes = [helper.make_node("Inner", ["p"], ["t"], domain="my"), helper.make_node("Neg", ["t"], ["q"])]
    outer = helper.make_function("my", "Outer", ["p"], ["q"], outer_nodes, opsets)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["a"]),
        helper.make_node("Outer", ["a"], ["b"], domain="my"),
        helper.make_node("MatMul", ["b", "w"], ["y"]),
    ]
    model = make(
        nodes, [io("x", [1, 4])], [io("y", [1, 4])], [weight("w", (4, 4))], opsets=opsets[1:], functions=[outer, inner]
    )
    model = loaded(model, tmp_path)
    graph = analyze(model)
    whole = Slicer(model, graph).slice(0, len(graph.blocks) - 1)
    assert sorted(f.name for f in whole.functions) == ["Inner", "Outer"]
    check_chained(model, graph)


def test_slices_of_an_ir3_model_list_their_weights_as_inputs(tmp_path: Path) -> None:
    """Before IR 4 every initializer must be a graph input too: the slices failed the checker."""
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["a"]),
        helper.make_node("Relu", ["a"], ["b"]),
        helper.make_node("MatMul", ["b", "w2"], ["y"]),
    ]
    inputs = [io("x", [1, 4]), io("w1", [4, 4]), io("w2", [4, 4])]
    model = loaded(
        make(nodes, inputs, [io("y", [1, 4])], [weight("w1", (4, 4)), weight("w2", (4, 4), 1)], opset=8, ir=3), tmp_path
    )
    graph = analyze(model)
    assert [t.name for t in graph.inputs] == ["x"] and len(graph.blocks) == 2
    fully_checked_slices(model)
    feeds = {"x": np.ones((1, 4), np.float32)}
    slicer = Slicer(model, graph)
    got = run_onnx(slicer.slice(1, 1), run_onnx(slicer.slice(0, 0), feeds))
    np.testing.assert_allclose(got["y"], run_onnx(model, feeds)["y"], rtol=1e-6)


def test_sparse_weights_are_read_as_dense_ones(tmp_path: Path) -> None:
    """A sparse initializer was not seen: its MatMul had no weights and no FLOPs, and slicing failed."""
    sparse = helper.make_sparse_tensor(
        numpy_helper.from_array(np.array([1.0, 2.0], np.float32), "w2"),
        numpy_helper.from_array(np.array([0, 5], np.int64), ""),
        [4, 4],
    )
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["a"]),
        helper.make_node("Relu", ["a"], ["b"]),
        helper.make_node("MatMul", ["b", "w2"], ["c"]),
        helper.make_node("Tanh", ["c"], ["y"]),
    ]
    original = make(
        nodes, [io("x", [1, 4])], [io("y", [1, 4])], [weight("w1", (4, 4))], graph={"sparse_initializer": [sparse]}
    )
    feeds = {"x": np.ones((1, 4), np.float32)}
    model = loaded(original, tmp_path)
    dense = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "w2"))
    assert dense.reshape(-1)[[0, 5]].tolist() == [1.0, 2.0] and np.count_nonzero(dense) == 2
    graph = analyze(model)
    assert sum(b.param_bytes for b in graph.blocks) == 2 * 4 * 4 * 4
    np.testing.assert_allclose(run_onnx(model, feeds)["y"], run_onnx(original, feeds)["y"], rtol=1e-6)
    check_chained(model, graph)


def test_an_unknown_element_type_is_undefined_not_a_traceback(tmp_path: Path) -> None:
    nodes = [helper.make_node("Relu", ["x"], ["y"])]
    model = make(nodes, [io("x", [1, 4])], [io("y", [1, 4])])
    model.graph.output[0].type.tensor_type.elem_type = 75  # no ONNX type
    graph = analyze(loaded(model, tmp_path))
    assert graph.outputs[0].dtype == "undefined"


@pytest.mark.parametrize("suffix", [".json", ".textproto", ".onnxtxt"])
def test_a_model_file_with_a_text_suffix_that_does_not_parse_is_a_model_error(tmp_path: Path, suffix: str) -> None:
    """onnx picks a JSON or text parser by the suffix; their errors went through as tracebacks."""
    path = tmp_path / f"m{suffix}"
    path.write_text("{ not a model")
    with pytest.raises(ModelError, match="not an ONNX model"):
        load_model(path)


def test_flops_of_recurrent_and_einsum_nodes_and_an_unknown_reduced_dimension(tmp_path: Path) -> None:
    seq, batch, size, hidden = 5, 2, 3, 4
    for op, gates in (("LSTM", 4), ("GRU", 3), ("RNN", 1)):
        w, r = weight("W", (1, gates * hidden, size)), weight("R", (1, gates * hidden, hidden), 1)
        nodes = [helper.make_node(op, ["x", "W", "R"], ["y"], hidden_size=hidden)]
        model = make(nodes, [io("x", [seq, batch, size])], [io("y", [seq, 1, batch, hidden])], [w, r])
        (block,) = analyze(loaded(model, tmp_path)).blocks
        assert block.flops == 2 * seq * batch * gates * hidden * (size + hidden), op
    nodes = [helper.make_node("Einsum", ["x", "w"], ["y"], equation="bij,jk->bik")]
    model = make(nodes, [io("x", [2, 3, 5])], [io("y", [2, 3, 7])], [weight("w", (5, 7))])
    assert analyze(loaded(model, tmp_path)).blocks[0].flops == 2 * 2 * 3 * 5 * 7
    # a MatMul whose reduced dimension is unknown: 0, never negative
    model = loaded(unknown_rank_model(), tmp_path)
    assert all(b.flops >= 0 for b in analyze(model).blocks)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
    model = make(nodes, [io("x", [1, 4])], [io("y", [1, 4])], [weight("w", (4, 4))])
    infos = {**analyze(model).tensors, "x": TensorInfo("x", (1, -1), "float32")}
    assert node_flops(model.graph.node[0], infos) == 0


def conv_relu(**conv_attributes) -> onnx.ModelProto:  # type: ignore[no-untyped-def]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], **conv_attributes),
        helper.make_node("Relu", ["c"], ["y"]),
    ]
    return make(nodes, [io("x", [1, 3, 8, 8])], [io("y", [1, 4, 6, 6])], [weight("w", (4, 3, 3, 3))])


def test_an_attribute_written_at_its_default_does_not_change_the_signature() -> None:
    """The dynamo exporter writes auto_pad='NOTSET' and group=1, the TorchScript one leaves them out: the same
    Conv got two signatures. A value other than the default still counts."""
    plain = analyze(conv_relu(strides=[1, 1])).blocks[0].signature
    assert analyze(conv_relu(strides=[1, 1], auto_pad="NOTSET", group=1)).blocks[0].signature == plain
    assert analyze(conv_relu(strides=[1, 1], auto_pad="VALID")).blocks[0].signature != plain


def test_blocks_sharing_a_constant_node_share_their_signature() -> None:
    """An exporter may keep one Constant node for every layer, where the first layer uses it: that layer's block
    listed it after its first node, the others before theirs, and the signatures differed."""
    k = helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.full((1, 4), 0.5, np.float32)))
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["a0"]), k]
    for layer in range(3):
        last = "y" if layer == 2 else f"c{layer}"
        if layer:
            nodes.append(helper.make_node("MatMul", [f"c{layer - 1}", f"w{layer}"], [f"a{layer}"]))
        nodes += [
            helper.make_node("Mul", [f"a{layer}", "k"], [f"b{layer}"]),
            helper.make_node("Softmax", [f"b{layer}"], [last]),
        ]
    model = make(nodes, [io("x", [1, 4])], [io("y", [1, 4])], [weight(f"w{i}", (4, 4), i) for i in range(3)])
    graph = analyze(model)
    layers = [b for b in graph.blocks if "MatMul" in b.ops]
    assert len(layers) == 3 and len({b.signature for b in layers}) == 1
    check_chained(model, graph)


def test_an_identity_that_renames_a_shared_weight_does_not_change_the_signature() -> None:
    """The TorchScript exporter reads a weight shared by layers through an Identity in every layer but the first:
    the first layer of a transformer stack got a signature of its own."""
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["a0"]),
        helper.make_node("Softmax", ["a0"], ["c0"]),
        helper.make_node("Identity", ["w"], ["w_again"]),
        helper.make_node("MatMul", ["c0", "w_again"], ["a1"]),
        helper.make_node("Softmax", ["a1"], ["y"]),
    ]
    model = make(nodes, [io("x", [1, 4])], [io("y", [1, 4])], [weight("w", (4, 4))])
    graph = analyze(model)
    layers = [b for b in graph.blocks if "MatMul" in b.ops]
    assert len(layers) == 2 and "Identity" in layers[1].ops
    assert layers[0].signature == layers[1].signature
    check_chained(model, graph)


def test_a_shape_of_a_static_tensor_of_unknown_shape_comes_after_its_producer(no_shape_run: None) -> None:
    """A Shape of NonZero(weight) (static, shape [1, ?]) read by the block's first node was listed before the
    NonZero that another node of the block reads: the slicer took the Shape for one of an outside tensor and
    refused it as not static (found by review)."""
    nodes = [
        helper.make_node("NonZero", ["w"], ["nz"]),
        helper.make_node("Shape", ["nz"], ["s"]),
        helper.make_node("Cast", ["s"], ["sf"], to=F),
        helper.make_node("Cast", ["nz"], ["nzf"], to=F),
        helper.make_node("ReduceSum", ["nzf"], ["rs"], keepdims=0),
        helper.make_node("Mul", ["x", "sf"], ["a"]),
        helper.make_node("Add", ["a", "rs"], ["y"]),
    ]
    w = numpy_helper.from_array(np.tile(np.array([1, 0, 2, 0, 3], np.float32), 40), "w")  # 120 found: too many
    model = make(nodes, [io("x", [2])], [io("y", [2])], [w])  # for the shape arithmetic to work out (shapes.py)
    graph = analyze(model)
    assert graph.tensors["nz"].shape == (1, -1)
    order = [model.graph.node[i].op_type for i in graph.blocks[0].nodes]
    assert order.index("NonZero") < order.index("Shape")
    check_chained(model, graph)


def computed_repeats_model() -> onnx.ModelProto:
    """A Tile by repeats computed from the input's values: [1, 1, 2, 2] when its largest value is over 0.5 (made-up
    standard-normal inputs), else [1, 1, 1, 1]. Static inference knows neither the Tile's shape nor any after it."""
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["c0"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c0"], ["a"]),
        helper.make_node("ReduceMax", ["x"], ["m"], keepdims=0),
        helper.make_node("Greater", ["m", "half"], ["g"]),
        helper.make_node("Cast", ["g"], ["gi"], to=TensorProto.INT64),
        helper.make_node("Mul", ["gi", "spatial"], ["extra"]),
        helper.make_node("Add", ["extra", "ones"], ["repeats"]),
        helper.make_node("Tile", ["a", "repeats"], ["t"]),
        helper.make_node("Conv", ["t", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["b"]),
        helper.make_node("ReduceMean", ["b"], ["y"], axes=[2, 3], keepdims=0),
    ]
    constants = [
        numpy_helper.from_array(np.float32(0.5), "half"),
        numpy_helper.from_array(np.array([0, 0, 1, 1], np.int64), "spatial"),
        numpy_helper.from_array(np.array([1, 1, 1, 1], np.int64), "ones"),
    ]
    weights = [weight("w0", (8, 3, 3, 3)), weight("w1", (8, 8, 3, 3), 1), *constants]
    return make(nodes, [io("x", [1, 3, 8, 8])], [io("y", [1, 8])], weights)


def test_shapes_static_inference_cannot_tell_are_read_from_a_run(tmp_path: Path) -> None:
    """Such tensors (every shape the TorchScript exporter computes through Shape -> Gather -> Div chains) counted
    0 bytes and their nodes 0 FLOPs, so the planner took those transfers for free and the blocks for instant, and
    the profiler fed their blocks inputs with every unknown dimension 1: ONNX Runtime refused them (found by an
    end-to-end sweep). The run's shapes count and shape the profiler's inputs, but slices keep those dimensions
    free: an input whose values make other shapes still runs split (found by review)."""
    model = loaded(computed_repeats_model(), tmp_path)
    graph = analyze(model)
    assert graph.sample_shapes["t"].shape == (1, 8, 16, 16) and not graph.tensors["t"].static
    assert all(b.output_bytes > 0 for b in graph.blocks)
    assert sum(b.flops for b in graph.blocks) >= 2 * (8 * 16 * 16) * (8 * 3 * 3)  # the second Conv, at its real size
    config = ProfileConfig(sample=1.0, seed=0, timing=TimingPolicy(warmup_runs=0, min_runs=1, min_time_s=0.0),
                           whole_model=False)  # fmt: skip
    result = profile_model(model, graph, config=config)
    assert len(result.layers) == len({b.signature for b in graph.blocks})
    # the slices it profiled (and uploads for the server to time on made-up inputs) declare the sampled shapes:
    # with free dimensions the server timed a (1, 28, 28, 192) block of swin_t on (1, 1, 1, 192), 7x too fast
    declared = {
        vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
        for data in result.slices.values()
        for vi in onnx.load_from_string(data).graph.input
    }
    assert declared["t"] == [1, 8, 16, 16]
    slicer = Slicer(model, graph)
    for x in (np.random.default_rng(0).standard_normal((1, 3, 8, 8)), np.full((1, 3, 8, 8), 0.25)):
        feeds = {"x": x.astype(np.float32)}  # the second leaves the Tile's input as it is: other shapes after it
        values = dict(feeds)
        for k, block in enumerate(graph.blocks):
            values.update(run_onnx(slicer.slice(k, k), {n: values[n] for n in block.inputs}))
        np.testing.assert_allclose(values["y"], run_onnx(model, feeds)["y"], rtol=1e-5, atol=1e-6)


def test_a_slice_imports_only_the_domains_its_nodes_use() -> None:
    """A model importing com.microsoft without using it (onnxruntime's quantization preprocessing writes 8 such
    domains) gave slices that every server refused: none of that model could be offloaded (found by an end-to-end
    sweep)."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"]), helper.make_node("Relu", ["a"], ["y"])]
    unused = [helper.make_opsetid("com.microsoft", 1), helper.make_opsetid("ai.onnx.ml", 3)]
    model = make(nodes, [io("x", [1, 4])], [io("y", [1, 4])], [weight("w", (4, 4))], opsets=unused)
    graph = analyze(model)
    whole = Slicer(model, graph).slice(0, len(graph.blocks) - 1)
    assert [o.domain for o in whole.opset_import] == [""]
    check_chained(model, graph)
    # and the whole model, as the profiler uploads it for the server to time
    assert [o.domain for o in onnx.load_from_string(whole_model_bytes(model)).opset_import] == [""]
    plain = make(nodes, [io("x", [1, 4])], [io("y", [1, 4])], [weight("w", (4, 4))])
    assert whole_model_bytes(plain) == plain.SerializeToString()


def test_an_empty_tensor_between_blocks_is_profiled_and_compared(tmp_path: Path) -> None:
    """A NonZero that finds nothing gives 0-element tensors: the profiler made its inputs with every dimension of 0
    a 1 (ONNX Runtime refused them), and comparing the outputs took the largest of no differences (found by an
    end-to-end sweep)."""
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Neg", ["r"], ["n"]),  # <= 0 everywhere
        helper.make_node("Relu", ["n"], ["z"]),  # all zeros
        helper.make_node("NonZero", ["z"], ["nz"]),  # [2, 0]
        helper.make_node("Transpose", ["nz"], ["at"]),
        helper.make_node("Cast", ["at"], ["y"], to=F),
    ]
    model = loaded(make(nodes, [io("x", [3, 4])], [io("y", [0, 2])]), tmp_path)
    graph = analyze(model)
    config = ProfileConfig(sample=1.0, seed=0, timing=TimingPolicy(warmup_runs=0, min_runs=1, min_time_s=0.0),
                           whole_model=False)  # fmt: skip
    assert profile_model(model, graph, config=config).layers
    empty = {"y": np.zeros((0, 2), np.float32)}
    assert max_abs_diff(empty, empty) == 0.0


def test_a_block_of_a_custom_domain_is_not_offloadable() -> None:
    """The server runs standard ONNX operators only: a block with an ONNX Runtime contrib op is marked so, and the
    plan inputs keep it local."""
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["a"]),
        helper.make_node("Gelu", ["a"], ["b"], domain="com.microsoft"),
        helper.make_node("MatMul", ["b", "w"], ["y"]),
    ]
    model = make(nodes, [io("x", [1, 4])], [io("y", [1, 4])], [weight("w", (4, 4))],
                 opsets=[helper.make_opsetid("com.microsoft", 1)])  # fmt: skip
    graph = analyze(model)
    assert [b.offloadable for b in graph.blocks] == ["Gelu" not in b.ops for b in graph.blocks]
    assert [b["offloadable"] for b in graph.to_json()["blocks"]] == [True, False]


def test_quantized_convolutions_and_tensors_after_a_contrib_op_are_counted(tmp_path: Path) -> None:
    """A quantized model in ONNX Runtime's QOperator format counted 2 of its 10 MFLOPs: QLinearConv had no rule,
    and shape inference gives the outputs of contrib ops (com.microsoft) no type, so nothing after them had a
    shape (found by an end-to-end sweep)."""
    nodes = [
        helper.make_node("Gelu", ["x"], ["g"], domain="com.microsoft"),  # untyped for ONNX inference
        helper.make_node("Conv", ["g", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["y"]),
    ]
    model = make(nodes, [io("x", [1, 4, 8, 8])], [io("y", [1, 4, 8, 8])], [weight("w", (4, 4, 3, 3))],
                 opsets=[helper.make_opsetid("com.microsoft", 1)])  # fmt: skip
    graph = analyze(loaded(model, tmp_path))
    assert sum(b.flops for b in graph.blocks) >= 2 * (4 * 8 * 8) * (4 * 3 * 3)
    scale, zero = numpy_helper.from_array(np.float32(0.1), "s"), numpy_helper.from_array(np.uint8(128), "z")
    w8 = numpy_helper.from_array(np.ones((4, 4, 3, 3), np.uint8), "w8")
    conv = helper.make_node("QLinearConv", ["xq", "s", "z", "w8", "s", "z", "s", "z"], ["yq"], pads=[1, 1, 1, 1])
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]), conv,
             helper.make_node("DequantizeLinear", ["yq", "s", "z"], ["y"])]  # fmt: skip
    graph = analyze(loaded(make(nodes, [io("x", [1, 4, 8, 8])], [io("y", [1, 4, 8, 8])], [scale, zero, w8]), tmp_path))
    assert sum(b.flops for b in graph.blocks) >= 2 * (4 * 8 * 8) * (4 * 3 * 3)


def test_a_model_whose_tensor_shapes_are_all_known_is_not_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """A sequence has no tensor type, so a model with one was run in ONNX Runtime for nothing on every analysis,
    its weights copied (found by review)."""
    calls: list[list[str]] = []
    monkeypatch.setattr("rr_edge.blocks.run_shapes", lambda model, names: calls.append(names) or {})
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["a"]),
        helper.make_node("SequenceConstruct", ["a", "a"], ["seq"]),
        helper.make_node("SequenceLength", ["seq"], ["n"]),
        helper.make_node("Relu", ["a"], ["y"]),
    ]
    model = make(nodes, [io("x", [1, 4])], [io("y", [1, 4]), io("n", [], TensorProto.INT64)], [weight("w", (4, 4))])
    analyze(model)
    assert calls == []


_LONG_VECTOR_ANALYSIS = """
import json, resource
import numpy as np
from onnx import TensorProto, helper, numpy_helper
from rr_edge.shapes import tensor_infos_of

F = TensorProto.FLOAT
nodes = [
    helper.make_node("Gather", ["table", "idx"], ["picked"]),
    helper.make_node("Shape", ["x"], ["s"]),
    helper.make_node("Reshape", ["x", "s"], ["y"]),
]
table = numpy_helper.from_array(np.zeros(10_000_000, np.float32), "table")
inputs = [helper.make_tensor_value_info("x", F, [2, 6]), helper.make_tensor_value_info("idx", TensorProto.INT64, [4])]
outputs = [helper.make_tensor_value_info("y", F, None), helper.make_tensor_value_info("picked", F, None)]
graph = helper.make_graph(nodes, "g", inputs, outputs, [table])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
infos = tensor_infos_of(model)
grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(json.dumps({"y": infos["y"].shape, "picked": infos["picked"].shape, "grown_mib": grown_mib}))
"""


def test_a_long_vector_of_weights_read_by_a_gather_costs_no_memory_to_analyse() -> None:
    """ONNX data propagation made a dimension per element of a 1-D tensor a Gather reads: 700 MiB for a 40 MB
    vector, 10 GiB and 28 s for a 0.5 GiB one (found by review). The shapes only data propagation tells (a Reshape
    by a Shape) are still known."""
    out = subprocess.run([sys.executable, "-c", _LONG_VECTOR_ANALYSIS], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    assert (result["y"], result["picked"]) == ([2, 6], [4])
    assert result["grown_mib"] < 200, result  # in a fresh process; the per-element structure took 700


def test_a_qdq_model_is_cut_only_between_its_quantized_units(tmp_path: Path) -> None:
    """A model quantized in the QDQ format was cut at every QuantizeLinear and DequantizeLinear, though ONNX Runtime
    fuses DequantizeLinear -> Conv -> QuantizeLinear into one int8 kernel only inside one session: resnet18's QDQ
    export at 96 had 39 blocks whose standalone times summed to 2.5x the whole model's (found by review)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    relu = [helper.make_node("Relu", [f"c{k}"], [f"{k}"]) for k in range(2)]
    convs = [helper.make_node("Conv", [x, f"w{k}"], [f"c{k}"], pads=[1, 1, 1, 1]) for k, x in enumerate("x01")]
    nodes = [convs[0], relu[0], convs[1], relu[1], convs[2]]
    weights = [weight(f"w{k}", (4, 4, 3, 3), seed=k) for k in range(3)]
    onnx.save(make(nodes, [io("x", [1, 4, 8, 8])], [io("c2", [1, 4, 8, 8])], weights, opset=13), tmp_path / "f.onnx")

    class Calibration(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(0)
            self.feeds = iter([{"x": rng.standard_normal((1, 4, 8, 8)).astype(np.float32)} for _ in range(4)])

        def get_next(self):  # type: ignore[no-untyped-def]
            return next(self.feeds, None)

    quantize_static(tmp_path / "f.onnx", tmp_path / "q.onnx", Calibration(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)  # fmt: skip
    model = load_model(tmp_path / "q.onnx")
    graph = analyze(model)
    infos = {vi.name: vi.type.tensor_type.elem_type for vi in onnx.shape_inference.infer_shapes(model).graph.value_info}
    assert [b.ops.count("Conv") for b in graph.blocks] == [0, 1, 1, 1, 0]  # quantize x, three units, dequantize y
    assert {infos[b.outputs[0]] for b in graph.blocks[:-1]} == {TensorProto.UINT8}  # only quantized tensors cross
    check_chained(model, graph)
