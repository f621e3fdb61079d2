"""Models as users bring them from the wild: exporters' conventions and graph constructs the torchvision zoo does not
have (a free dimension written as -1, unsigned-integer inputs, the bodies of If / Loop / Scan)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from rr_edge.blocks import analyze
from rr_edge.errors import ModelError
from rr_edge.flops import node_flops
from rr_edge.onnx_io import load_model
from rr_edge.profiler import ProfileConfig, TimingPolicy, profile_model
from rr_edge.session import OrtSettings
from rr_edge.slicing import Slicer

F = TensorProto.FLOAT
RNG = np.random.default_rng(0)


def _weight(name: str, *shape: int) -> onnx.TensorProto:
    return numpy_helper.from_array(RNG.standard_normal(shape).astype(np.float32), name)


def _model(nodes: list[onnx.NodeProto], inputs: list, outputs: list, weights: list, opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "variety", inputs, outputs, weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    onnx.checker.check_model(model)
    return model


def _mlp(x_type: int, x_shape: list, first: list[onnx.NodeProto] | None = None) -> onnx.ModelProto:
    """x -> [first nodes, making "x0"] -> MatMul, Relu -> MatMul, Relu -> MatMul -> y: three blocks."""
    first = first if first is not None else [helper.make_node("Identity", ["x"], ["x0"])]
    nodes = [
        *first,
        helper.make_node("MatMul", ["x0", "w1"], ["a"]),
        helper.make_node("Relu", ["a"], ["b"]),
        helper.make_node("MatMul", ["b", "w2"], ["c"]),
        helper.make_node("Relu", ["c"], ["d"]),
        helper.make_node("MatMul", ["d", "w3"], ["y"]),
    ]
    x = helper.make_tensor_value_info("x", x_type, x_shape)
    y = helper.make_tensor_value_info("y", F, [x_shape[0], 4])
    return _model(nodes, [x], [y], [_weight("w1", 4, 4), _weight("w2", 4, 4), _weight("w3", 4, 4)])


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {i.name: feeds[i.name] for i in session.get_inputs()}), strict=True))


def _chain(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every single-block slice run one after the other."""
    graph = analyze(model)
    slicer = Slicer(model, graph)
    values = dict(feeds)
    for k in range(len(graph)):
        values.update(_run(slicer.slice(k, k), values))
    return values


def test_a_batch_written_as_minus_one_is_fixed_like_a_symbolic_one(tmp_path: Path) -> None:
    """paddle2onnx and hand-edited models write a free dimension as dim_value -1 (ONNX Runtime reads it as free): it
    stayed -1, so the first block's input counted 0 bytes and the declared output a shape of -1."""
    path = tmp_path / "minus_one.onnx"
    onnx.save(_mlp(F, [-1, 4]), path)
    model = load_model(path)
    graph = analyze(model)
    assert graph.inputs[0].shape == (1, 4)
    assert graph.outputs[0].shape == (1, 4)
    assert graph.blocks[0].input_bytes == 16
    assert all(b.input_bytes == 16 and b.output_bytes == 16 for b in graph.blocks)
    x = RNG.standard_normal((1, 4)).astype(np.float32)
    np.testing.assert_allclose(_chain(model, {"x": x})["y"], _run(model, {"x": x})["y"], rtol=1e-5)


def test_a_non_batch_dimension_written_as_minus_one_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "minus_one_width.onnx"
    onnx.save(_mlp(F, [1, -1]), path)
    with pytest.raises(ModelError, match=r"input 'x' has a non-fixed shape \[1, \?\]"):
        load_model(path)


def test_blocks_after_a_uint16_input_are_profiled() -> None:
    """A depth camera's frames are uint16: making up the first block's input failed ("no made-up input can be
    generated"), so `rr-edge profile` of such a model stopped there."""
    model = _mlp(TensorProto.UINT16, [1, 4], first=[helper.make_node("Cast", ["x"], ["x0"], to=F)])
    graph = analyze(model)
    assert graph.blocks[0].inputs == ("x",)
    fast = TimingPolicy(warmup_runs=1, min_runs=2, min_time_s=0.0)
    config = ProfileConfig(sample=1.0, seed=0, timing=fast, e2e_timing=fast)
    result = profile_model(model, graph, settings=OrtSettings(intra_op_threads=1), config=config)
    assert {m.signature for m in result.layers} == {b.signature for b in graph.blocks}  # block 0's too
    assert result.model_run is not None and result.model_run.latency.median_ms > 0


def _if_model() -> onnx.ModelProto:
    """h = Relu(x W); If sum(h) > 0 then Relu(h Wb) else 2 h; then a MatMul. The main graph's shapes are declared
    (as exporters write them), the then-branch's MatMul output is not."""
    then_out = helper.make_tensor_value_info("t_out", F, [1, 8])
    then_branch = helper.make_graph(
        [helper.make_node("MatMul", ["h", "wb"], ["t_mm"]), helper.make_node("Relu", ["t_mm"], ["t_out"])],
        "then",
        [],
        [then_out],
    )
    else_branch = helper.make_graph(
        [helper.make_node("Mul", ["h", "two"], ["e_out"])],
        "else",
        [],
        [helper.make_tensor_value_info("e_out", F, [1, 8])],
    )
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["a"]),
        helper.make_node("Relu", ["a"], ["h"]),
        helper.make_node("ReduceSum", ["h"], ["s"], keepdims=0),
        helper.make_node("Greater", ["s", "zero"], ["cond"]),
        helper.make_node("If", ["cond"], ["z"], then_branch=then_branch, else_branch=else_branch),
        helper.make_node("MatMul", ["z", "w2"], ["y"]),
    ]
    weights = [_weight("w", 8, 8), _weight("wb", 8, 8), _weight("w2", 8, 3)]
    weights += [
        numpy_helper.from_array(np.array(2.0, np.float32), "two"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
    ]
    x = helper.make_tensor_value_info("x", F, [1, 8])
    model = _model(nodes, [x], [helper.make_tensor_value_info("y", F, [1, 3])], weights)
    model.graph.value_info.extend(
        helper.make_tensor_value_info(n, t, s)
        for n, t, s in [("a", F, [1, 8]), ("h", F, [1, 8]), ("s", F, []), ("cond", TensorProto.BOOL, []),
                        ("z", F, [1, 8])]
    )  # fmt: skip
    return model


def _scan_model() -> onnx.ModelProto:
    """a = x W (3 x 4); a Scan sums its rows (one Add of 4 per row); then a MatMul."""
    vi = helper.make_tensor_value_info
    body = helper.make_graph(
        [helper.make_node("Add", ["acc", "row"], ["acc2"]), helper.make_node("Identity", ["acc2"], ["out_row"])],
        "body",
        [vi("acc", F, [4]), vi("row", F, [4])],
        [vi("acc2", F, [4]), vi("out_row", F, [4])],
    )
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["a"]),
        helper.make_node("Scan", ["init", "a"], ["total", "rows"], body=body, num_scan_inputs=1),
        helper.make_node("MatMul", ["rows", "w2"], ["y"]),
    ]
    weights = [_weight("w", 4, 4), _weight("w2", 4, 4), numpy_helper.from_array(np.zeros(4, np.float32), "init")]
    return _model(nodes, [vi("x", F, [3, 4])], [vi("y", F, [3, 4])], weights)


def _loop_model() -> onnx.ModelProto:
    """a = x W (2 x 4); a Loop of 3 iterations, each st = Relu(st Wl), also scanned out; then a MatMul of the last."""
    vi = helper.make_tensor_value_info
    body = helper.make_graph(
        [
            helper.make_node("MatMul", ["st", "wl"], ["m"]),
            helper.make_node("Relu", ["m"], ["st2"]),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Identity", ["st2"], ["scanned"]),
        ],
        "body",
        [vi("i", TensorProto.INT64, []), vi("cond_in", TensorProto.BOOL, []), vi("st", F, [2, 4])],
        [vi("cond_out", TensorProto.BOOL, []), vi("st2", F, [2, 4]), vi("scanned", F, [2, 4])],
    )
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["a"]),
        helper.make_node("Loop", ["trips", "", "a"], ["last", "all"], body=body),
        helper.make_node("ReduceSum", ["all", "axis0"], ["summed"], keepdims=0),
        helper.make_node("Add", ["last", "summed"], ["b"]),
        helper.make_node("MatMul", ["b", "w2"], ["y"]),
    ]
    weights = [_weight("w", 4, 4), _weight("wl", 4, 4), _weight("w2", 4, 4)]
    weights += [numpy_helper.from_array(np.array(3, np.int64), "trips"),
                numpy_helper.from_array(np.array([0], np.int64), "axis0")]  # fmt: skip
    return _model(nodes, [vi("x", F, [2, 4])], [vi("y", F, [2, 4])], weights)


@pytest.mark.parametrize(
    ("build", "op", "body_flops"),
    [
        (_if_model, "If", 2 * 8 * 8 + 8),  # the costlier branch: MatMul 1x8 by 8x8, then Relu of 8
        (_scan_model, "Scan", 3 * 4),  # 3 rows, an Add of 4 each
        (_loop_model, "Loop", 3 * (2 * 2 * 4 * 4 + 8)),  # 3 iterations of MatMul 2x4 by 4x4, then Relu of 8
    ],
)
def test_flops_count_the_graphs_an_if_a_loop_and_a_scan_run(build, op: str, body_flops: int) -> None:  # type: ignore[no-untyped-def]
    """A block holding an If, a Loop or a Scan (torch.cond, scripted loops, tf2onnx's recurrent layers) counted none
    of the work of its branches or body: the If block of a torch.cond export counted 16 FLOPs for a Gemm of 136."""
    model = build()
    graph = analyze(model)
    (block,) = [b for b in graph.blocks if op in b.ops]
    sizes = {**graph.tensors, **graph.sample_shapes}
    others = sum(node_flops(model.graph.node[i], sizes) for i in block.nodes if model.graph.node[i].op_type != op)
    assert block.flops - others == body_flops
    x = {i.name: RNG.standard_normal(i.shape).astype(np.float32) for i in graph.inputs if i.shape is not None}
    np.testing.assert_allclose(_chain(model, x)["y"], _run(model, x)["y"], rtol=1e-5)
