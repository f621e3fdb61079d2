"""Static shapes and dtypes of every tensor of an ONNX graph (no file I/O).

Shape inference runs on a light copy of the model whose large initializers are replaced by typed
graph inputs, so a 500 MB model costs about as much as its graph structure. A plain pass comes first;
only what it leaves unknown is asked of a second pass with data propagation, which follows some of
the shape arithmetic of exporters but makes a dimension per element of a 1-D tensor that a Gather
reads (about 18 times the vector's size in memory), so in that pass a long 1-D graph input has a
free length (no shape is that long; the plain pass has its length). What neither pass can tell
(the TorchScript exporter computes many shapes through Shape -> Gather -> Div chains that data
propagation does not follow to the end) a third step works out: it evaluates the shape arithmetic
(`_fold_shape_arithmetic`: Shapes of tensors of known shape, constants, and what computes from those
alone), so that a Reshape's target is a known value and inference goes on past it, round after round.
What is still unknown then `run_shapes` reads from one run of the model in ONNX Runtime: the model
has one fixed input shape, so the shapes of that run are the shapes of every run, unless a shape
depends on the input's values (NonZero, a Tile by computed repeats), where they are those of made-up
inputs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from rr_edge.onnx_io import (
    TensorInfo,
    dtype_name,
    light_copy,
    subgraphs,
    value_info_to_tensor_info,
    with_subgraph_nodes,
)

log = logging.getLogger(__name__)

_LONGEST_SHAPE = 64  # a 1-D tensor with more elements is no shape: data propagation leaves its length free
_RANDOM_OPS = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
                         "Bernoulli"})  # fmt: skip

__all__ = ["initializer_info", "run_shapes", "shape_value", "tensor_infos_of"]


def initializer_info(t: TensorProto) -> TensorInfo:
    return TensorInfo(t.name, tuple(int(d) for d in t.dims), dtype_name(t.data_type))


def tensor_infos_of(model: onnx.ModelProto) -> dict[str, TensorInfo]:
    """TensorInfo for every named tensor: graph inputs/outputs, initializers and node outputs.

    Uses the model's own value_info when it already covers every node output with a static
    shape, otherwise runs ONNX shape inference on a light copy: plain, then with data propagation
    for what the plain pass leaves unknown.
    """
    graph = model.graph
    infos: dict[str, TensorInfo] = {}
    for t in graph.initializer:
        infos[t.name] = initializer_info(t)
    _merge(infos, (*graph.input, *graph.value_info, *graph.output, *_inner_value_infos(graph)))
    if _complete(with_subgraph_nodes(graph.node), infos):  # inside If/Loop/Scan too: their FLOPs count
        return infos
    light = light_copy(model)
    _merge(infos, _inferred_value_infos(light, data_prop=False))
    if not _complete(graph.node, infos):
        _merge(infos, _inferred_value_infos(_free_long_vectors(light), data_prop=True))
    if not _complete(graph.node, infos):
        _fold_shape_arithmetic(light, infos)
    return infos


def _merge(infos: dict[str, TensorInfo], value_infos: Iterable[onnx.ValueInfoProto]) -> None:
    """Add each tensor's info, replacing a known one only where it tells more dimensions."""
    for vi in value_infos:
        known = infos.get(vi.name)
        if vi.type.HasField("tensor_type") and not (known is not None and known.static and known.dtype != "undefined"):
            info = value_info_to_tensor_info(vi)
            if known is None or _known_dims(info) > _known_dims(known):
                infos[vi.name] = info


def _complete(nodes: Iterable[onnx.NodeProto], infos: dict[str, TensorInfo]) -> bool:
    """Whether every tensor the nodes compute has a type and a static shape."""
    for node in nodes:
        for out in node.output:
            if not out:
                continue
            info = infos.get(out)
            if info is None or not info.static or info.dtype == "undefined":
                return False
    return True


def _inner_value_infos(graph: onnx.GraphProto, outer: frozenset[str] = frozenset()) -> list[onnx.ValueInfoProto]:
    """The declared inputs, value_info and outputs of the graph's subgraphs, nested ones included: the tensors of a
    body, whose FLOPs count for the node that runs it (`flops.node_flops`). A name of an enclosing graph is left out
    (ONNX forbids a body to reuse one; a model that does must not have its outer tensor's shape replaced)."""
    outer = outer | {o for n in graph.node for o in n.output} | {vi.name for vi in (*graph.input, *graph.output)}
    found: list[onnx.ValueInfoProto] = []
    for node in graph.node:
        for g in subgraphs(node):
            found.extend(vi for vi in (*g.input, *g.value_info, *g.output) if vi.name not in outer)
            found.extend(_inner_value_infos(g, outer))
    return found


def _known_dims(info: TensorInfo) -> int:
    """How much of the shape is known: -1 for an unknown rank, else the number of fixed dimensions."""
    return -1 if info.shape is None else sum(d >= 0 for d in info.shape)


def _free_long_vectors(light: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `light` whose 1-D graph inputs longer than any shape have a free length."""
    free = onnx.ModelProto()
    free.CopyFrom(light)
    for vi in free.graph.input:
        dims = vi.type.tensor_type.shape.dim
        if vi.type.HasField("tensor_type") and len(dims) == 1 and dims[0].dim_value > _LONGEST_SHAPE:
            dims[0].dim_param = f"{vi.name}_length"  # in the oneof of dim_value, which it clears
    return free


def _inferred_value_infos(light: onnx.ModelProto, data_prop: bool) -> list[onnx.ValueInfoProto]:
    try:
        inferred = onnx.shape_inference.infer_shapes(light, strict_mode=False, data_prop=data_prop)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, RuntimeError) as exc:
        log.warning("shape inference failed, some block features will be unknown: %s", exc)
        return []
    return [*inferred.graph.value_info, *inferred.graph.output, *_inner_value_infos(inferred.graph)]


def _fold_shape_arithmetic(light: onnx.ModelProto, infos: dict[str, TensorInfo]) -> None:
    """Complete `infos` by evaluating the graph's shape arithmetic and inferring shapes again, until nothing changes.

    A round evaluates (ONNX's reference implementation, node by node) every node whose inputs all have known values:
    constants, small initializers, the Shape or Size of a tensor of known static shape, and such results (at most
    `_LONGEST_SHAPE` elements each). The nodes evaluated become initializers, so inference sees a Reshape's target as
    a value and knows the shapes after it, whose Shapes the next round evaluates. Nothing that depends on the inputs'
    values is evaluated, so what this finds holds for every run."""
    opsets = {o.domain or "": o.version for o in light.opset_import}
    values = {t.name: numpy_helper.to_array(t) for t in light.graph.initializer}
    work = onnx.ModelProto()
    work.CopyFrom(light)
    given_up: set[tuple[str, ...]] = set()  # (outputs of) nodes not evaluated, or with a large result
    for _ in range(len(light.graph.node)):
        new: dict[str, np.ndarray] = {}
        for node in work.graph.node:
            key = tuple(node.output)
            if key in given_up or not _foldable(node, values, infos):
                continue
            arrays = _evaluate(node, values, infos, opsets)
            if arrays is None or any(v.size > _LONGEST_SHAPE for v in arrays):
                given_up.add(key)
                continue
            found = {o: v for o, v in zip(node.output, arrays, strict=True) if o}
            new.update(found)
            values.update(found)
        if not new:
            return
        _hold_values(work, new)
        _merge(infos, _inferred_value_infos(work, data_prop=False))
        _merge(infos, (helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
                       for n, v in new.items()))  # fmt: skip
        if _complete(light.graph.node, infos):
            return


def _evaluate(
    node: onnx.NodeProto, values: dict[str, np.ndarray], infos: dict[str, TensorInfo], opsets: dict[str, int]
) -> list[np.ndarray] | None:
    """The node's outputs from known values (None where the reference implementation cannot compute them)."""
    from onnx.reference import ReferenceEvaluator

    if node.op_type in ("Shape", "Size"):
        return [shape_value(node, infos[node.input[0]])]
    try:
        outs = ReferenceEvaluator(node, opsets=opsets).run(None, {x: values[x] for x in node.input if x})
    except Exception as exc:  # noqa: BLE001 - an op the reference cannot evaluate stays unknown
        log.debug("could not evaluate %s %r: %s", node.op_type, node.name, exc)
        return None
    if len(outs) != len(node.output) or not all(isinstance(v, (np.ndarray, np.generic)) for v in outs):
        return None  # a sequence, say
    return [np.asarray(v) for v in outs]


def _foldable(node: onnx.NodeProto, values: dict[str, np.ndarray], infos: dict[str, TensorInfo]) -> bool:
    if node.domain not in ("", "ai.onnx") or node.op_type in _RANDOM_OPS:
        return False
    if subgraphs(node):
        return False
    if node.op_type in ("Shape", "Size"):
        info = infos.get(node.input[0]) if node.input else None
        return info is not None and info.static
    return all(x in values for x in node.input if x)


def shape_value(node: onnx.NodeProto, info: TensorInfo) -> np.ndarray:
    """What a Shape (with its start and end) or Size node computes from a tensor of static shape `info`."""
    shape = info.shape or ()
    if node.op_type == "Size":
        return np.array(info.numel, dtype=np.int64)
    attrs = {a.name: a.i for a in node.attribute}
    return np.array(shape[attrs.get("start", 0) : attrs.get("end", len(shape))], dtype=np.int64)


def _hold_values(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> None:
    """Drop the nodes that compute `values` from `model`, which holds them as initializers instead."""
    nodes = [n for n in model.graph.node if not any(o in values for o in n.output)]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(numpy_helper.from_array(v, name) for name, v in values.items())


def run_shapes(model: onnx.ModelProto, names: list[str]) -> dict[str, TensorInfo]:
    """TensorInfo of each of `names` (node outputs of the main graph) as one run of `model` in ONNX Runtime produces
    them, on made-up inputs of the model's fixed input shapes (standard-normal floats, zeros otherwise). Empty, with
    a warning, when the model does not run so (the static figures then stay as they are).

    The session holds the model's structure only (`light_copy`); its large weights are fed as inputs, read in place
    where numpy can, so a model costs about its own size once more, whatever its size (no 2 GB message)."""
    import numpy as np
    import onnxruntime as ort
    from onnx import numpy_helper

    from rr_edge.session import random_feeds

    probe = light_copy(model)
    declared = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names if n not in declared)
    kept = {t.name for t in probe.graph.initializer}
    weights = {t.name: t for t in model.graph.initializer if t.name not in kept}  # inputs of the probe now
    try:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # every tensor as written
        session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
        given = {name: numpy_helper.to_array(t) for name, t in weights.items()}
        values = session.run(names, random_feeds(session, given=given))
    except Exception as exc:  # noqa: BLE001 - any refusal: keep what static inference knows
        log.warning("could not run the model to read the shapes static inference left unknown: %s", exc)
        return {}
    log.info("%d tensor shapes that static inference left unknown were read from one run of the model", len(names))
    arrays = {n: v for n, v in zip(names, values, strict=True) if isinstance(v, np.ndarray)}  # not sequences
    return {n: TensorInfo(n, tuple(int(d) for d in a.shape), str(a.dtype)) for n, a in arrays.items()}
