"""Integer division a request could turn into a processor trap, refused at upload.

ONNX Runtime's CPU kernels for `Div` and `Mod` on int32 / int64 divide with the processor's instruction, and the most
negative value divided by -1 overflows it: the processor raises SIGFPE, which ends the whole server process (every
client's requests, the cloud profiler, the store), not the one call. Division by zero is checked by ONNX Runtime, this
is not. So a slice may not divide 32- or 64-bit integers by a value computed from its inputs' values (a request would
choose it), nor by a constant holding -1. Divisors computed from constants and from tensor shapes (Shape, Size) are
taken: that is the shape arithmetic of dynamic-shape exports (swin_t's TorchScript export divides by a product of
shape dimensions). Narrower integers are promoted before they are divided (no trap).

What is left: a slice written to trap can still divide the most negative value by arithmetic on constants or shapes
that makes -1 (a dimension minus 1, on an empty input); uploading takes a node's token where the server requires
them.
Element types come from ONNX shape inference on a weight-free copy of the model (`light_copy`); a divisor whose type
inference cannot tell is let through (onnx.checker and ONNX Runtime decide as before).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from rr_edge.onnx_io import light_copy, subgraphs, with_subgraph_nodes
from rr_server.errors import InvalidArgument

_DIVISIONS = frozenset({"Div", "Mod"})
_TRAPPING = frozenset({TensorProto.INT32, TensorProto.INT64})
_SHAPE_READS = frozenset({"Shape", "Size"})  # their outputs depend on the input's shape, not on its values


def check_integer_division(model: onnx.ModelProto) -> None:
    """Raise InvalidArgument for the first int32 / int64 `Div` or `Mod` whose divisor is not a constant without -1."""
    if not any(node.op_type in _DIVISIONS for node in with_subgraph_nodes(model.graph.node)):
        return
    try:
        typed = onnx.shape_inference.infer_shapes(light_copy(model)).graph
    except Exception:  # noqa: BLE001 - inference failing on a model the checker accepted: types unknown
        typed = model.graph
    types = _element_types(typed)
    constants = _constants(model.graph)
    _check(model.graph, set(), types, constants)


def _check(
    graph: onnx.GraphProto,
    outer: set[str],
    types: dict[str, int],
    constants: dict[str, onnx.TensorProto | onnx.AttributeProto],
) -> None:
    """Check `graph`'s divisions; `outer`: the tensors of enclosing graphs that depend on the inputs' values."""
    initializers = {t.name for t in graph.initializer}
    dependent = outer | {vi.name for vi in graph.input if vi.name not in initializers}  # a body's inputs too
    for node in graph.node:
        if node.op_type in _DIVISIONS and len(node.input) > 1 and types.get(node.input[0]) in _TRAPPING:
            _check_division(graph, node, node.input[1] in dependent, types, constants)
        for sub in subgraphs(node):
            _check(sub, dependent, types, constants)
        if node.op_type not in _SHAPE_READS and (subgraphs(node) or any(x in dependent for x in node.input if x)):
            dependent.update(o for o in node.output if o)


def _check_division(
    graph: onnx.GraphProto,
    node: onnx.NodeProto,
    computed: bool,
    types: dict[str, int],
    constants: dict[str, onnx.TensorProto | onnx.AttributeProto],
) -> None:
    what = (
        f"graph {graph.name!r}: {node.op_type} {node.name or node.output[0]!r} divides "
        f"{_type_name(types[node.input[0]])} by"
    )
    if computed:
        raise InvalidArgument(
            f"{what} {node.input[1]!r}, a value computed from the inputs: refused, since the most negative value "
            "divided by -1 traps the server's processor (divide by constants or shapes)"
        )
    divisor = constants.get(node.input[1])
    if divisor is None:
        return
    try:
        minus_one = bool(np.any(_value(divisor) == -1))
    except Exception:  # noqa: BLE001 - a constant onnx.checker (run after this) would refuse: short data, no type
        raise InvalidArgument(
            f"{what} a constant that cannot be read (its data does not match its type and shape)"
        ) from None
    if minus_one:
        raise InvalidArgument(
            f"{what} a constant holding -1: refused, since the most negative value divided by -1 traps the "
            "server's processor (negate instead)"
        )


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """The graph and, recursively, its nodes' subgraphs (If branches, Loop and Scan bodies)."""
    yield graph
    for node in with_subgraph_nodes(graph.node):
        yield from subgraphs(node)


def _element_types(graph: onnx.GraphProto) -> dict[str, int]:
    """Element type of every tensor the (inferred) graph and its subgraphs declare."""
    types: dict[str, int] = {}
    for g in _graphs(graph):
        for t in g.initializer:
            types[t.name] = t.data_type
        for vi in (*g.input, *g.output, *g.value_info):
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
                types[vi.name] = vi.type.tensor_type.elem_type
    return types


def _constants(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto | onnx.AttributeProto]:
    """The initializers and the dense `Constant` nodes' values, in the graph and its subgraphs, by tensor name (read
    only when they divide: a model's weights are not copied)."""
    out: dict[str, onnx.TensorProto | onnx.AttributeProto] = {}
    for g in _graphs(graph):
        for t in g.initializer:
            out[t.name] = t
        for node in g.node:
            if node.op_type == "Constant" and node.output and node.attribute:
                if node.attribute[0].name in ("value", "value_int", "value_ints"):
                    out[node.output[0]] = node.attribute[0]
    return out


def _value(constant: onnx.TensorProto | onnx.AttributeProto) -> np.ndarray:
    if isinstance(constant, onnx.TensorProto):
        return numpy_helper.to_array(constant)
    if constant.name == "value":
        return numpy_helper.to_array(constant.t)
    return np.asarray(onnx.helper.get_attribute_value(constant))


def _type_name(elem_type: int) -> str:
    return TensorProto.DataType.Name(elem_type).lower()
