"""Cutting a model into standalone sub-models along block boundaries (pure; no file I/O).

`Slicer` indexes the model once (initializers, tensor types, functions), then each
`slice(a, b)` assembles blocks a..b: their nodes in the original order, the initializers those
nodes read, graph inputs = tensors entering block a and outputs = tensors leaving block b, all
names kept. A shape-only read of a tensor outside the slice (a `Shape` node whose input is
computed elsewhere) becomes a Constant holding the statically known shape.

A model (or slice) over protobuf's 2 GiB limit on one message (`MAX_MODEL_BYTES`) has no bytes in memory: such a
model lives in a file with external data; `model_bytes` serializes a model or says so with a ModelError.

`Slicer.serialized` gives a slice's bytes and slice id, and keeps those of the slices cut last (about one split's
worth) for the runner of the plan that asked, until a runner takes them (`Slicer.release`); `Slicer.slice_size`
sizes a slice without copying its weights; `Slicer.local` cuts one for a session on this device, its large weights
handed over as arrays (`rr_edge.local_model`).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping

import onnx
from google.protobuf.message import EncodeError
from onnx import NodeProto, helper, numpy_helper

from rr_edge.blocks import BlockGraph, node_domains, node_inputs
from rr_edge.client_types import slice_id_of
from rr_edge.errors import ModelError
from rr_edge.local_model import LocalModel, handed_over, stand_in, weight_array
from rr_edge.onnx_io import TensorInfo, copy_fields, elem_type, field_size, tensor_size, with_subgraph_nodes
from rr_edge.shapes import shape_value

log = logging.getLogger(__name__)

__all__ = ["MAX_MODEL_BYTES", "SliceBytes", "Slicer", "model_bytes", "slice_model", "whole_model_bytes"]

MAX_MODEL_BYTES = 2**31 - 1  # protobuf's limit on a serialized message: it can neither size nor write a larger one
# A Slicer keeps about one split's slice bytes, those planning asked about, until a runner takes them. Two, to switch
# back to the previous split without cutting it again (2.9 -> 0.7 s on vgg16), kept that split's bytes for the life
# of the run or EdgeNode (553 MB); so did one, kept past its runner (review).
KEEP_SPLITS = 1
KEEP_MARGIN_BYTES = 1 << 20  # per split, beyond its blocks' slice_bytes (value infos, headers) that a Slicer keeps


def model_bytes(model: onnx.ModelProto, what: str) -> bytes:
    """`model`'s ONNX bytes; a ModelError naming `what` when it is over `MAX_MODEL_BYTES` (a 2.2 GB model was
    profiled block by block, then crashed with protobuf's EncodeError on its whole-model run: review)."""
    try:
        data = model.SerializeToString()
    except EncodeError:
        raise _too_large(what) from None
    if len(data) > MAX_MODEL_BYTES:
        raise _too_large(what)
    return data


def _too_large(what: str) -> ModelError:
    return ModelError(f"{what} is over protobuf's 2 GiB limit of one model in memory (it runs from a file only)")


class SliceBytes:
    """One slice's ONNX bytes, and their slice id once asked for (hashing a 537 MB slice takes 0.3 s)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self._id = ""

    @property
    def id(self) -> str:
        """The id the server stores these bytes under (`rr_edge.client_types.slice_id_of`)."""
        if not self._id:
            self._id = slice_id_of(self.data)
        return self._id


class Slicer:
    """Reusable slicer: graph indexing happens once, each `slice` call is proportional to its size."""

    def __init__(self, model: onnx.ModelProto, graph: BlockGraph, *, sampled_shapes: bool = False) -> None:
        """With `sampled_shapes`, slices declare the shapes one run gave where static inference has none
        (`BlockGraph.sample_shapes`): slices to time, on made-up inputs of those shapes, here and on the server.
        Without, those dimensions stay free, as slices that run requests need (a shape may depend on the input)."""
        self._model = model
        self._graph = graph
        self._sampled = graph.sample_shapes if sampled_shapes else {}
        self._nodes = list(model.graph.node)
        self._initializers = {t.name: t for t in model.graph.initializer}
        self._elem_type = {name: elem_type(info.dtype) for name, info in graph.tensors.items() if elem_type(info.dtype)}
        self._declared = {vi.name: vi for vi in (*model.graph.input, *model.graph.value_info, *model.graph.output)}
        self._weights_as_inputs = any(vi.name in self._initializers for vi in model.graph.input)
        self._kept: OrderedDict[tuple[int, int], SliceBytes] = OrderedDict()  # `serialized`, oldest first
        self._keep_bytes = KEEP_SPLITS * (sum(b.slice_bytes for b in graph.blocks) + KEEP_MARGIN_BYTES)
        self._kept_lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._graph.blocks)

    def slice(self, a: int, b: int) -> onnx.ModelProto:
        """Blocks a..b (inclusive, 0-based) as a standalone ModelProto."""
        return self._cut(a, b, self._initializers)

    def serialized(self, a: int, b: int, what: str) -> SliceBytes:
        """Blocks a..b as ONNX bytes (`model_bytes`: a ModelError naming `what` over protobuf's limit), with their
        slice id. The slices cut last are kept, up to `KEEP_SPLITS` splits' worth of bytes (a split's head, middle
        and tail hold the model's blocks once), the oldest dropped first: planning asks the server about a middle
        slice by its id, then the runner opens and uploads it; each had cut, serialized and hashed it anew (vgg16's
        middle, 537 MB: 1.2 s each time, review). They are kept until a runner takes its slices (`release`). All the
        blocks are the model itself (`whole`), as the profiler uploads it to time it: cut out anew, their bytes and id
        differed, and a run offloading every block uploaded the model a second time (a new user's walkthrough)."""
        key = (a, b)
        with self._kept_lock:
            kept = self._kept.get(key)
            if kept is not None:
                self._kept.move_to_end(key)
                return kept
        # sampled slices declare shapes the model lacks; weights listed as graph inputs (old exporters) would be
        # inputs ONNX Runtime lets a caller override, and it folds no constants from them: a cut slice drops them
        whole = (a, b) == (0, len(self) - 1) and not self._sampled and not self._weights_as_inputs
        kept = SliceBytes(self.whole(what) if whole else model_bytes(self.slice(a, b), what))
        with self._kept_lock:
            self._kept[key] = kept
            self._kept.move_to_end(key)
            total = sum(len(k.data) for k in self._kept.values())
            while total > self._keep_bytes and len(self._kept) > 1:
                total -= len(self._kept.popitem(last=False)[1].data)
        return kept

    def whole(self, what: str) -> bytes:
        """The model's own bytes (`whole_model_bytes`): what the slice of all its blocks is sent as."""
        return whole_model_bytes(self._model, what)

    def local(self, a: int, b: int, what: str) -> LocalModel:
        """Blocks a..b for a session on this device, their large weights handed over as arrays
        (`rr_edge.local_model`); a ModelError naming `what` over protobuf's limit. A model that lists its weights as
        graph inputs (old exporters) keeps them in its bytes: ONNX Runtime takes those for inputs."""
        if self._weights_as_inputs:
            return LocalModel(model_bytes(self.slice(a, b), what), {})
        whole = (a, b) == (0, len(self) - 1) and not self._sampled
        m = self._model_with_stand_ins() if whole else self._cut(a, b, self._local_stand_ins)
        arrays = {
            t.name: weight_array(self._initializers[t.name]) for t in m.graph.initializer if t.name in self._handed
        }
        return LocalModel(model_bytes(m, what), arrays)

    def _model_with_stand_ins(self) -> onnx.ModelProto:
        """The model itself, its large weights swapped for stand-ins: all its blocks as the local plan runs them, not
        cut (a cut of all the blocks had run where the model's own bytes ran before: one holding a sparse
        initializer, which the cut does not know, failed; review)."""
        m = onnx.ModelProto()
        g = m.graph  # filled in place
        copy_fields(self._model, m, skip="graph")
        copy_fields(self._model.graph, g, skip="initializer")
        g.initializer.extend(self._local_stand_ins[t.name] for t in self._model.graph.initializer)
        return m

    @functools.cached_property
    def _handed(self) -> frozenset[str]:
        return frozenset(name for name, t in self._initializers.items() if handed_over(t))

    @functools.cached_property
    def _local_stand_ins(self) -> dict[str, onnx.TensorProto]:
        return {name: stand_in(t) if name in self._handed else t for name, t in self._initializers.items()}

    def release(self) -> None:
        """Keep no bytes: a runner took its slices (`rr_edge.offload.plan_slices`). Kept on, they outlived their runner
        for the rest of the run, or of an EdgeNode (its Slicer is kept per model file): about the model's bytes again,
        553 MB for vgg16 (review). A switch back to a split run before cuts it anew, as it did with one split kept;
        a plan made meanwhile in another thread (EdgeNode) has its slices cut again by its runner: slower, the same."""
        with self._kept_lock:
            self._kept.clear()

    def slice_size(self, a: int, b: int) -> int:
        """`slice(a, b).ByteSize()`, exactly, without copying a weight: the slice is cut with a name-only stand-in
        for each initializer, then each stand-in's serialized size is swapped for its weight's (`tensor_size`;
        sizing every block by cutting it out copied the whole model: 276 ms of vgg16's plan, now 2: review)."""
        m = self._cut(a, b, self._stand_ins)
        stub = m.graph.ByteSize()
        full = stub + sum(
            field_size(tensor_size(self._initializers[t.name])) - field_size(t.ByteSize()) for t in m.graph.initializer
        )
        return m.ByteSize() - field_size(stub) + field_size(full)

    @functools.cached_property
    def _stand_ins(self) -> dict[str, onnx.TensorProto]:
        return {name: onnx.TensorProto(name=name) for name in self._initializers}

    def _cut(self, a: int, b: int, initializers: Mapping[str, onnx.TensorProto]) -> onnx.ModelProto:
        graph = self._graph
        graph.check_range(a, b)
        # blocks list their nodes in topological order, so first occurrences in block order are too
        members = list(dict.fromkeys(i for blk in graph.blocks[a : b + 1] for i in blk.nodes))
        inputs = list(graph.blocks[a].inputs)
        outputs = list(graph.blocks[b].outputs)
        available = set(inputs)
        nodes: list[NodeProto] = []
        used_init: dict[str, None] = {}
        for i in members:
            node = self._nodes[i]
            missing = [x for x in node_inputs(node) if x not in available and x not in self._initializers]
            if missing and node.op_type in ("Shape", "Size"):
                node = self._constant_shape(node)
            elif missing:
                raise ModelError(f"slice {a}:{b} needs tensor {missing[0]!r} computed outside it")
            else:
                for x in node_inputs(node):
                    if x in self._initializers:
                        used_init[x] = None
            nodes.append(node)
            available.update(o for o in node.output if o)
        for o in outputs:
            if o in self._initializers:  # a weight the model also returns
                used_init[o] = None
            elif o not in available:
                raise ModelError(f"slice {a}:{b} does not compute its output {o!r}")
        internal = available - set(inputs) - set(outputs)
        m = onnx.ModelProto()
        m.ir_version = self._model.ir_version
        functions = self._functions_called(nodes)
        m.opset_import.extend(_opsets_used(self._model, nodes, functions))
        m.producer_name = "roadrunner"
        g = m.graph  # filled in place: each initializer is copied exactly once
        g.name = f"{graph.model}_blocks_{a}_{b}"
        g.node.extend(nodes)
        g.input.extend(self._value_info(n) for n in inputs)
        g.output.extend(self._value_info(n) for n in outputs)
        for n in used_init:  # 2.7-5x faster than extend() for large tensors, the same bytes (review)
            g.initializer.add().CopyFrom(initializers[n])
        if m.ir_version < 4:  # before IR 4 every initializer is also a graph input
            g.input.extend(self._value_info(n) for n in used_init if n not in inputs)
        g.value_info.extend(self._value_info(n) for n in sorted(internal) if n in self._elem_type)
        m.functions.extend(functions)
        return m

    def _functions_called(self, nodes: list[NodeProto]) -> list[onnx.FunctionProto]:
        """The model-local functions the nodes call (in their subgraphs too: a function called only inside an If
        branch was left out, and ONNX Runtime could not load the slice), and those that these call, in the model's
        order."""
        by_key = {(f.domain, f.name): f for f in self._model.functions}
        called: set[tuple[str, str]] = set()
        stack = [(n.domain, n.op_type) for n in with_subgraph_nodes(nodes)]
        while stack:
            key = stack.pop()
            if key in by_key and key not in called:
                called.add(key)
                stack.extend((n.domain, n.op_type) for n in with_subgraph_nodes(by_key[key].node))
        return [f for f in self._model.functions if (f.domain, f.name) in called]

    def _value_info(self, name: str) -> onnx.ValueInfoProto:
        info = self._sampled.get(name) or self._graph.tensors.get(name)
        if info is None or name not in self._elem_type:
            declared = self._declared.get(name)
            if declared is not None:
                return declared
            return helper.make_empty_tensor_value_info(name)
        return helper.make_tensor_value_info(name, self._elem_type[name], _dims(info))

    def _constant_shape(self, node: NodeProto) -> NodeProto:
        info = self._graph.tensors.get(node.input[0])
        if info is None or info.shape is None or not info.static:
            raise ModelError(f"slice reads the shape of {node.input[0]!r}, which is not static")
        value = numpy_helper.from_array(shape_value(node, info))
        return helper.make_node("Constant", [], list(node.output), name=f"{node.name}_static", value=value)


def whole_model_bytes(model: onnx.ModelProto, what: str = "the model") -> bytes:
    """The model's ONNX bytes, without the opset imports of domains no node uses (copied only when it has some); a
    ModelError naming `what` when it is over protobuf's 2 GiB limit (`model_bytes`)."""
    used = list(_opsets_used(model, model.graph.node, model.functions))
    if len(used) == len(model.opset_import):
        return model_bytes(model, what)
    trimmed = onnx.ModelProto()
    try:
        trimmed.CopyFrom(model)  # through its bytes: protobuf cannot copy a model over its limit either
    except EncodeError:
        raise _too_large(what) from None
    del trimmed.opset_import[:]
    trimmed.opset_import.extend(used)
    return model_bytes(trimmed, what)


def _opsets_used(
    model: onnx.ModelProto, nodes: Iterable[NodeProto], functions: Iterable[onnx.FunctionProto]
) -> list[onnx.OperatorSetIdProto]:
    """The model's opset imports of the domains the nodes and functions use (and the default one): a server refuses
    a model that imports a custom domain, even one it never uses (onnxruntime's quantization preprocessing leaves
    several)."""
    used = node_domains(nodes) | {d for f in functions for d in node_domains(f.node)} | {"", "ai.onnx"}
    return [o for o in model.opset_import if o.domain in used]


def _dims(info: TensorInfo) -> list[int | str] | None:
    """The shape for a value info: unknown dimensions get a name of their own, an unknown rank stays unknown."""
    if info.shape is None:
        return None
    return [d if d >= 0 else f"{info.name}_d{i}" for i, d in enumerate(info.shape)]


def slice_model(model: onnx.ModelProto, graph: BlockGraph, a: int, b: int) -> onnx.ModelProto:
    """Blocks a..b of `model` (analysed as `graph`) as a standalone model. For many slices use `Slicer`."""
    return Slicer(model, graph).slice(a, b)
