"""Static shapes and dtypes of every tensor of an ONNX graph (no file I/O).

Shape inference runs on a light copy of the model whose large initializers are replaced by typed
graph inputs, so a 500 MB model costs about as much as its graph structure. What it cannot tell
(the TorchScript exporter computes many shapes through Shape -> Gather -> Div chains that it does
not follow) `run_shapes` reads from one run of the model in ONNX Runtime: the model has one fixed
input shape, so the shapes of that run are the shapes of every run, unless a shape depends on the
input's values (NonZero, a Tile by computed repeats), where they are those of made-up inputs.
"""

from __future__ import annotations

import logging

import onnx
from onnx import TensorProto

from rr_edge.onnx_io import TensorInfo, dtype_name, light_copy, value_info_to_tensor_info

log = logging.getLogger(__name__)

__all__ = ["initializer_info", "run_shapes", "tensor_infos_of"]


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
