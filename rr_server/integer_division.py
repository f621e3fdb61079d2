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

from typing import TypeVar

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from rr_edge.onnx_io import light_copy, subgraphs, with_subgraph_nodes
from rr_server.errors import InvalidArgument

_DIVISIONS = frozenset({"Div", "Mod"})
_TRAPPING = frozenset({TensorProto.INT32, TensorProto.INT64})
_SHAPE_READS = frozenset({"Shape", "Size"})  # their outputs depend on the input's shape, not on its values

_Constant = onnx.TensorProto | onnx.SparseTensorProto | onnx.AttributeProto  # an initializer or a Constant's attribute
_V = TypeVar("_V")


def check_integer_division(model: onnx.ModelProto) -> None:
    """Raise InvalidArgument for the first int32 / int64 `Div` or `Mod` whose divisor is not a constant without -1."""
    if not any(node.op_type in _DIVISIONS for node in with_subgraph_nodes(model.graph.node)):
        return
    try:
        typed = onnx.shape_inference.infer_shapes(light_copy(model)).graph
    except Exception:  # noqa: BLE001 - inference failing on a model the checker accepted: types unknown
        typed = model.graph
    _check(model.graph, typed, {}, {}, set())


def _check(
    graph: onnx.GraphProto,
    typed: onnx.GraphProto,
    outer_types: dict[str, int],
    outer_constants: dict[str, _Constant],
    outer_dependent: set[str],
) -> None:
    """Check `graph`'s divisions (`typed`: the same graph after shape inference). The `outer_*` tables describe the
    tensors of the enclosing graphs by name: their element types, constants, and those that depend on the inputs'
    values. A name this graph defines hides the enclosing graphs' tensor of that name here, as in ONNX Runtime, so
    the tables are rebuilt per graph: one flat table let a branch's float initializer "x" pass an int64 x / y of the
    main graph, which then trapped (found by review)."""
    defined = _defined(graph)
    types = {**_hide(outer_types, defined), **_element_types(typed)}
    constants = {**_hide(outer_constants, defined), **_constants(graph)}
    initializers = {t.name for t in graph.initializer} | {t.values.name for t in graph.sparse_initializer}
    dependent = (outer_dependent - defined) | {vi.name for vi in graph.input if vi.name not in initializers}
    for node, typed_node in zip(graph.node, typed.node, strict=True):  # inference adds types, never nodes
        if node.op_type in _DIVISIONS and len(node.input) > 1 and types.get(node.input[0]) in _TRAPPING:
            _check_division(graph, node, node.input[1] in dependent, types, constants)
        for sub, typed_sub in zip(subgraphs(node), subgraphs(typed_node), strict=True):
            _check(sub, typed_sub, types, constants, dependent)
        if node.op_type not in _SHAPE_READS and (subgraphs(node) or any(x in dependent for x in node.input if x)):
            dependent.update(o for o in node.output if o)


def _check_division(
    graph: onnx.GraphProto,
    node: onnx.NodeProto,
    computed: bool,
    types: dict[str, int],
    constants: dict[str, _Constant],
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


def _defined(graph: onnx.GraphProto) -> set[str]:
    """The tensors `graph` itself defines: its inputs, initializers and node outputs."""
    return (
        {vi.name for vi in graph.input}
        | {t.name for t in graph.initializer}
        | {t.values.name for t in graph.sparse_initializer}
        | {o for node in graph.node for o in node.output if o}
    )


def _hide(table: dict[str, _V], names: set[str]) -> dict[str, _V]:
    return {name: value for name, value in table.items() if name not in names}


def _element_types(graph: onnx.GraphProto) -> dict[str, int]:
    """Element type of the tensors the (inferred) graph defines, its subgraphs' aside. A declaration (output,
    value_info) of a tensor the graph does not define is not read: it would speak for an enclosing graph's tensor."""
    defined = _defined(graph)
    types: dict[str, int] = {}
    for vi in (*graph.value_info, *graph.output, *graph.input):  # an input's own declaration last: it is the tensor's
        if vi.name in defined and vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    types.update((t.values.name, t.values.data_type) for t in graph.sparse_initializer)
    types.update((t.name, t.data_type) for t in graph.initializer)
    return types


def _constants(graph: onnx.GraphProto) -> dict[str, _Constant]:
    """The graph's initializers (dense and sparse) and its `Constant` nodes' integer values, its subgraphs' aside, by
    tensor name (read only when they divide: a model's weights are not copied)."""
    out: dict[str, _Constant] = {t.name: t for t in graph.initializer}
    out.update((t.values.name, t) for t in graph.sparse_initializer)
    for node in graph.node:
        if node.op_type == "Constant" and node.output and node.attribute:
            if node.attribute[0].name in ("value", "sparse_value", "value_int", "value_ints"):
                out[node.output[0]] = node.attribute[0]
    return out


def _value(constant: _Constant) -> np.ndarray:
    """The constant's values; a sparse one's stored values only (the others are zeros)."""
    if isinstance(constant, onnx.TensorProto):
        return numpy_helper.to_array(constant)
    if isinstance(constant, onnx.SparseTensorProto):
        return numpy_helper.to_array(constant.values)
    if constant.name == "value":
        return numpy_helper.to_array(constant.t)
    if constant.name == "sparse_value":
        return numpy_helper.to_array(constant.sparse_tensor.values)
    return np.asarray(onnx.helper.get_attribute_value(constant))


def _type_name(elem_type: int) -> str:
    return TensorProto.DataType.Name(elem_type).lower()
