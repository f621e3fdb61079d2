"""Floating-point operation counts per ONNX node (pure; a multiply-add counts as 2).

Dense ops (Conv, ConvTranspose, Gemm, MatMul, Einsum, the recurrent LSTM, GRU and RNN, and the
quantized ConvInteger, QLinearConv, MatMulInteger and QLinearMatMul) dominate
and are counted from shapes: 2 per MAC, plus one add per output element for a bias (a recurrent
op counts its input and hidden-state products, not its gates' element-wise work).
Element-wise ops (arithmetic, activations, comparisons, logical and bitwise ops, quantization), pooling and
normalisations are counted per output element, reductions (arg-max, top-k and global pools included) per input
element, with small per-element costs. Anything else counts 0: shape and data-movement ops, casts, random
generators, sequence and string ops, but also interpolation (Resize, GridSample, RoiAlign) and the dense ops not
named above (Attention, DeformConv, DFT, STFT, Det). Unknown shapes count 0. If, Loop and
Scan count the nodes of the graphs they run (`_body_flops`); a Loop runs its body as many times as its scan
outputs are long, else its trip count where that is a constant (`trip_counts`), else once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from onnx import NodeProto, TensorProto, numpy_helper

from rr_edge.onnx_io import TensorInfo, constant_tensors, subgraphs

__all__ = ["node_flops", "trip_counts"]

MAX_TRIP_COUNT = 1 << 20  # a larger constant trip count stands for "until the condition turns false"

# Cost per output element of cheap ops (the ONNX default domain's element-wise ops, gone over one by one).
_ELEMENTWISE = {
    "Add": 1, "Sub": 1, "Mul": 1, "Div": 1, "Pow": 1, "Mod": 1, "Neg": 1, "Abs": 1, "Sqrt": 1, "Reciprocal": 1,
    "Max": 1, "Min": 1, "Sum": 1, "Mean": 1, "Sign": 1, "Ceil": 1, "Floor": 1, "Round": 1, "CumSum": 1, "CumProd": 1,
    "Exp": 1, "Log": 1, "Erf": 1, "Sin": 1, "Cos": 1, "Tan": 1, "Asin": 1, "Acos": 1, "Atan": 1,
    "Sinh": 1, "Cosh": 1, "Asinh": 1, "Acosh": 1, "Atanh": 1,
    "Relu": 1, "LeakyRelu": 1, "PRelu": 1, "Clip": 1, "Sigmoid": 1, "HardSigmoid": 1, "HardSwish": 1, "Tanh": 1,
    "Elu": 1, "Selu": 1, "Celu": 1, "Softplus": 1, "Softsign": 1, "ThresholdedRelu": 1, "Shrink": 1, "Gelu": 1,
    "Mish": 1, "Swish": 1, "SwiGLU": 1, "Hardmax": 1,
    "Equal": 1, "Greater": 1, "GreaterOrEqual": 1, "Less": 1, "LessOrEqual": 1, "IsInf": 1, "IsNaN": 1, "Where": 1,
    "And": 1, "Or": 1, "Xor": 1, "Not": 1,
    "BitShift": 1, "BitwiseAnd": 1, "BitwiseOr": 1, "BitwiseXor": 1, "BitwiseNot": 1,
    "QuantizeLinear": 2, "DequantizeLinear": 2, "DynamicQuantizeLinear": 4,  # the dynamic one finds its range too
    "RotaryEmbedding": 3,
    "BatchNormalization": 2, "InstanceNormalization": 5, "LayerNormalization": 5, "GroupNormalization": 5,
    "MeanVarianceNormalization": 5, "RMSNormalization": 4, "LpNormalization": 3,
    "Softmax": 3, "LogSoftmax": 3, "LRN": 3,
}  # fmt: skip
_POOLS = {"MaxPool", "AveragePool", "LpPool"}
_CONVS = {"Conv": (1, 2), "ConvInteger": (1, 99), "QLinearConv": (3, 8)}  # op -> (weight input, bias input)
# Cost per input element of the reductions: a square or an exponential before the sum costs one more.
_REDUCTIONS = {
    "GlobalAveragePool": 1, "GlobalMaxPool": 1, "ReduceMean": 1, "ReduceSum": 1, "ReduceMax": 1, "ReduceMin": 1,
    "ReduceProd": 1, "ReduceLogSum": 1, "ArgMax": 1, "ArgMin": 1, "TopK": 1,
    "ReduceL1": 2, "ReduceL2": 2, "ReduceSumSquare": 2, "ReduceLogSumExp": 2, "GlobalLpPool": 2,
}  # fmt: skip


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        if d < 0:
            return 0
        n *= d
    return n


def _ints(node: NodeProto, name: str) -> list[int]:
    for a in node.attribute:
        if a.name == name:
            return list(a.ints)
    return []


def _int(node: NodeProto, name: str, default: int) -> int:
    for a in node.attribute:
        if a.name == name:
            return int(a.i)
    return default


def _einsum_flops(node: NodeProto, shapes: list[tuple[int, ...] | None]) -> int:
    """2 x the product of the sizes of every index of the equation (each combination is one multiply-add); 0 with
    an ellipsis or an unknown size."""
    equation = next((a.s.decode() for a in node.attribute if a.name == "equation"), "").replace(" ", "")
    terms = equation.split("->")[0].split(",")
    if "." in equation or len(terms) != len(shapes):
        return 0
    sizes: dict[str, int] = {}
    for term, dims in zip(terms, shapes, strict=True):
        if dims is None or len(term) != len(dims):
            return 0
        sizes.update(zip(term, dims, strict=True))
    return 2 * _numel(tuple(sizes.values()))


def node_flops(node: NodeProto, infos: Mapping[str, TensorInfo], trips: Mapping[str, int] | None = None) -> int:
    """FLOPs of one node given the static shapes of its tensors (`infos` by tensor name, those of its subgraphs'
    tensors included), the work of the graphs it runs (If, Loop, Scan) included; `trips`: constant trip counts
    (`trip_counts`)."""
    return _own_flops(node, infos) + _body_flops(node, infos, trips or {})


def trip_counts(initializers: Mapping[str, TensorProto], nodes: Iterable[NodeProto]) -> dict[str, int]:
    """The tensors that can be a Loop's constant trip count: one-element int64 initializers and Constant outputs."""
    tensors = [*initializers.items(), *constant_tensors(nodes)]
    return {
        name: int(numpy_helper.to_array(t).reshape(-1)[0])
        for name, t in tensors
        if t.data_type == TensorProto.INT64 and t.data_location != TensorProto.EXTERNAL and list(t.dims) in ([], [1])
    }


def _body_flops(node: NodeProto, infos: Mapping[str, TensorInfo], trips: Mapping[str, int]) -> int:
    """FLOPs of the graphs a node runs: the costlier branch of an If, a Scan's body once per element of its first scan
    input, a Loop's body once per iteration: as many as its first scan output is long, else its trip count where it
    is a constant (a Loop without scan outputs had counted once, 3x low for 3 trips), else once."""
    graphs = subgraphs(node)
    if not graphs:
        return 0
    per_run = [sum(node_flops(n, infos, trips) for n in g.node) for g in graphs]
    if node.op_type == "Loop":
        carried = max(len(node.input) - 2, 0)  # inputs: trip count, condition, loop-carried values
        scanned = infos.get(node.output[carried]) if len(node.output) > carried else None
        if scanned and scanned.shape and scanned.shape[0] > 0:
            return per_run[0] * scanned.shape[0]
        trip = trips.get(node.input[0], 1) if node.input and node.input[0] else 1
        return per_run[0] * (trip if 1 <= trip <= MAX_TRIP_COUNT else 1)  # INT64_MAX: "until the condition", unknown
    if node.op_type == "Scan":
        first = node.input[len(node.input) - _int(node, "num_scan_inputs", 1)]
        info = infos.get(first)
        axes = _ints(node, "scan_input_axes") or [0]
        if info is None or not info.shape or not -len(info.shape) <= axes[0] < len(info.shape):
            return per_run[0]
        return per_run[0] * max(info.shape[axes[0]], 1)
    return max(per_run)


def _own_flops(node: NodeProto, infos: Mapping[str, TensorInfo]) -> int:

    def shape(i: int, outputs: bool = False) -> tuple[int, ...] | None:
        names = node.output if outputs else node.input
        if i >= len(names) or not names[i] or names[i] not in infos:
            return None
        return infos[names[i]].shape

    out = shape(0, outputs=True)
    out_n = _numel(out) if out is not None else 0
    op = node.op_type
    if op in _CONVS:  # the quantized ones take their weight at another input
        weight, bias = _CONVS[op]
        w = shape(weight)
        if w is None or out is None:
            return 0
        macs = out_n * _numel(w[1:])
        return 2 * macs + (out_n if len(node.input) > bias and node.input[bias] else 0)
    if op == "ConvTranspose":
        x, w = shape(0), shape(1)
        if x is None or w is None:
            return 0
        macs = _numel(x) * _numel(w[1:])
        return 2 * macs + (out_n if len(node.input) > 2 and node.input[2] else 0)
    if op == "Gemm":
        a = shape(0)
        if a is None or out is None or len(a) != 2:
            return 0
        k = a[0] if _int(node, "transA", 0) else a[1]
        return 2 * out_n * max(k, 0) + (out_n if len(node.input) > 2 and node.input[2] else 0)
    if op in ("MatMul", "MatMulInteger", "QLinearMatMul"):
        a = shape(0)
        if a is None or out is None or not a:
            return 0
        return 2 * out_n * max(a[-1], 0)
    if op in ("LSTM", "GRU", "RNN"):
        x, w, r = shape(0), shape(1), shape(2)
        if x is None or w is None or r is None or len(w) != 3 or w[2] <= 0:
            return 0
        steps = _numel(x) // w[2]  # sequence x batch, in either layout
        return 2 * steps * (_numel(w) + _numel(r))
    if op == "Einsum":
        return _einsum_flops(node, [shape(i) for i in range(len(node.input))])
    if op in _ELEMENTWISE:
        return _ELEMENTWISE[op] * out_n
    if op in _POOLS:
        return out_n * _numel(tuple(_ints(node, "kernel_shape")))
    if op in _REDUCTIONS:
        x = shape(0)
        return _REDUCTIONS[op] * _numel(x) if x is not None else 0
    return 0
