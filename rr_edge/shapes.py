"""Static shapes and dtypes of every tensor of an ONNX graph (pure; no file I/O).

Shape inference runs on a light copy of the model whose large initializers are replaced by typed
graph inputs, so a 500 MB model costs about as much as its graph structure.
"""

from __future__ import annotations

import logging

import onnx
from onnx import TensorProto

from rr_edge.onnx_io import TensorInfo, dtype_name, light_copy, value_info_to_tensor_info

log = logging.getLogger(__name__)

__all__ = ["initializer_info", "tensor_infos_of"]


def initializer_info(t: TensorProto) -> TensorInfo:
    return TensorInfo(t.name, tuple(int(d) for d in t.dims), dtype_name(t.data_type))


def tensor_infos_of(model: onnx.ModelProto) -> dict[str, TensorInfo]:
    """TensorInfo for every named tensor: graph inputs/outputs, initializers and node outputs.

    Uses the model's own value_info when it already covers every node output with a static
    shape, otherwise runs ONNX shape inference (with data propagation) on a light copy.
    """
    graph = model.graph
    infos: dict[str, TensorInfo] = {}
    for t in graph.initializer:
        infos[t.name] = initializer_info(t)
    for vi in (*graph.input, *graph.value_info, *graph.output):
        if vi.type.HasField("tensor_type"):
            infos[vi.name] = value_info_to_tensor_info(vi)
    if not _complete(graph, infos):
        for vi in _inferred_value_infos(model):
            if vi.type.HasField("tensor_type"):
                info = value_info_to_tensor_info(vi)
                known = infos.get(vi.name)
                if known is None or _known_dims(info) > _known_dims(known):
                    infos[vi.name] = info
    return infos


def _complete(graph: onnx.GraphProto, infos: dict[str, TensorInfo]) -> bool:
    for node in graph.node:
        for out in node.output:
            if not out:
                continue
            info = infos.get(out)
            if info is None or not info.static or info.dtype == "undefined":
                return False
    return True


def _known_dims(info: TensorInfo) -> int:
    """How much of the shape is known: -1 for an unknown rank, else the number of fixed dimensions."""
    return -1 if info.shape is None else sum(d >= 0 for d in info.shape)


def _inferred_value_infos(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    try:
        inferred = onnx.shape_inference.infer_shapes(light_copy(model), strict_mode=False, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, RuntimeError) as exc:
        log.warning("shape inference failed, some block features will be unknown: %s", exc)
        return []
    return [*inferred.graph.value_info, *inferred.graph.output]
