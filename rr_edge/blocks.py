"""Atomic blocks of an ONNX graph (pure analysis over an in-memory `onnx.ModelProto`).

Nodes are first classified:

* **static** nodes compute from weights and constants only (Constant, initializer arithmetic) or
  from a tensor's *shape* only (Shape/Size and everything downstream of them). Their outputs are
  known before inference, so they never cross a boundary: every block that needs one carries
  its own copy of the static chain.
* **active** nodes depend on the values of the graph inputs. Active nodes whose outputs reach no
  graph output (dead code) are ignored.

Walking the active nodes in topological order while tracking the set of *live* tensors (produced
so far, still needed later or a graph output), a position where exactly one tensor is live is a
single-tensor cut point: every path from the inputs to the outputs passes through that tensor.
This holds for any topological order, so skip connections, multi-branch modules (inception,
densenet) and attention blocks never get cut in the middle. A block is the run of nodes between
two consecutive cut points. In a QDQ-quantized model a cut point never falls inside a
DequantizeLinear -> op -> QuantizeLinear unit (ONNX Runtime fuses a unit into one int8 kernel only
within one session). Finally, a block made only of cheap element-wise ops that does not grow its
input (`FUSED_OPS`: the Relu after a residual Add, the Clip or SiLU after a Conv, a post-norm
LayerNormalization) is fused into the block before it: a split there would send a
tensor of the same size for no gain.
"""

from __future__ import annotations

import hashlib
import logging
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import onnx
from onnx import NodeProto, TensorProto

from rr_edge.errors import ModelError
from rr_edge.flops import node_flops, trip_counts
from rr_edge.onnx_io import (
    TensorInfo,
    constant_tensors,
    dtype_size,
    light_copy,
    subgraphs,
    tensor_size,
    with_subgraph_nodes,
)
from rr_edge.shapes import run_shapes, tensor_infos_of
from rr_edge.signature import block_signature, model_functions, model_opsets
from rr_proto.operators import STANDARD_DOMAINS

log = logging.getLogger(__name__)
MODEL_DIGEST_CHARS = 16
MAX_MODEL_NAME_CHARS = 200  # the key stays within the server's 256 characters

__all__ = ["FUSED_OPS", "Block", "BlockGraph", "analyze", "node_domains", "node_inputs", "subgraphs"]

# Cheap element-wise / normalisation ops: a block made only of these (and no bigger than its input)
# is fused into the block before it.
FUSED_OPS = frozenset(
    {
        "Relu", "LeakyRelu", "PRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu",
        "Selu", "Celu", "Softplus", "Gelu", "Mish", "Erf", "Exp", "Neg", "Sqrt", "Identity", "Dropout",
        "Add", "Sub", "Mul", "Div", "Pow", "BatchNormalization", "LayerNormalization", "GroupNormalization",
        "InstanceNormalization",
    }
)  # fmt: skip
_SHAPE_OPS = frozenset({"Shape", "Size"})
_SEQUENCE_OPS = frozenset(  # ops whose outputs are sequences or optionals, not tensors
    {"SequenceConstruct", "SequenceEmpty", "SequenceInsert", "SequenceErase", "SplitToSequence", "Optional"}
)
# Element types a tensor between two blocks may have: ONNX Runtime hands them to numpy (not bfloat16, float8, int4...).
EXCHANGED_DTYPES = frozenset(
    {"bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float16", "float32", "float64"}
)


@dataclass(frozen=True)
class Block:
    """One atomic block: a contiguous run of the model's nodes between two cut points."""

    index: int
    ops: tuple[str, ...]
    signature: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    flops: int
    param_bytes: int
    input_bytes: int
    output_bytes: int
    nodes: tuple[int, ...] = field(repr=False)  # indices into model.graph.node, topological, static copies included
    # What the block adds to a slice's ONNX bytes: its nodes and initializers, serialized. More than param_bytes by
    # the graph itself, e.g. the exporter's per-node metadata: a quarter of mobilenet_v2's first 14 blocks.
    slice_bytes: int = 0
    offloadable: bool = True  # only standard ONNX operators (`rr_proto.operators`): a server runs it

    def to_json(self) -> dict[str, object]:
        return {
            "index": self.index,
            "ops": list(self.ops),
            "signature": self.signature,
            "inputs": list(self.inputs),
            "outputs": list(self.outputs),
            "flops": self.flops,
            "param_bytes": self.param_bytes,
            "input_bytes": self.input_bytes,
            "output_bytes": self.output_bytes,
            "slice_bytes": self.slice_bytes,
            "offloadable": self.offloadable,
        }


@dataclass(frozen=True)
class BlockGraph:
    """A model split into atomic blocks, in execution order."""

    model: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    blocks: tuple[Block, ...]
    tensors: Mapping[str, TensorInfo] = field(repr=False, compare=False)  # every tensor with a known type, static
    # shapes static inference left unknown, as one run on made-up inputs gave them (`shapes.run_shapes`): they count
    # bytes and FLOPs and shape the profiler's inputs, but slices keep those dimensions free (they may depend on the
    # input's values)
    sample_shapes: Mapping[str, TensorInfo] = field(default_factory=dict, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.blocks)

    @property
    def model_key(self) -> str:
        """The model's key on the server (`ModelProfile.model`, `PredictRequest.model`): its name and a digest of its
        blocks' signatures in order. The server keeps a model's whole-model figures by this key, so two models under
        one name (a re-export at another input size, another edge's model.onnx) keep them apart: keyed by the name
        alone, one calibrated the other's blocks (cloud correction 0.006 instead of 0.95; found by review)."""
        digest = hashlib.sha256("\n".join(b.signature for b in self.blocks).encode()).hexdigest()[:MODEL_DIGEST_CHARS]
        return f"{self.model[:MAX_MODEL_NAME_CHARS]}@{digest}"

    def boundary_bytes(self) -> list[int]:
        """Bytes crossing each boundary k = 0..N (N = number of blocks).

        k = 0 is the model input, k = N the model output, and 0 < k < N the tensor(s) leaving
        block k-1 (= entering block k). Length N + 1.
        """
        if not self.blocks:
            return [sum(t.nbytes for t in self.inputs), sum(t.nbytes for t in self.outputs)]
        return [self.blocks[0].input_bytes] + [b.output_bytes for b in self.blocks]

    def check_range(self, a: int, b: int) -> None:
        """Raise ModelError unless 0 <= a <= b < N."""
        n = len(self.blocks)
        if not (0 <= a <= b < n):
            raise ModelError(f"block range {a}:{b} out of bounds: model {self.model!r} has blocks 0..{n - 1}")

    def to_json(self) -> dict[str, object]:
        """The `rr-edge blocks --json` object (SPEC section 3)."""
        return {
            "model": self.model,
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
            "blocks": [b.to_json() for b in self.blocks],
        }


def node_inputs(node: NodeProto) -> list[str]:
    """Explicit inputs of a node plus outer-scope tensors its subgraphs (If/Loop/Scan) read."""
    names = [x for x in node.input if x]
    for g in subgraphs(node):
        names.extend(_outer_refs(g))
    return names


def node_domains(nodes: Iterable[NodeProto]) -> set[str]:
    """The operator domains of the nodes and of the nodes of their subgraphs."""
    return {n.domain for n in with_subgraph_nodes(nodes)}


def _outer_refs(g: onnx.GraphProto) -> list[str]:
    local = {vi.name for vi in g.input} | {t.name for t in g.initializer}
    refs: list[str] = []
    for n in g.node:
        for x in node_inputs(n):
            if x not in local:
                refs.append(x)
        local.update(o for o in n.output if o)
    return refs


class _Index:
    """Producer/consumer index of a graph, in topological order."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.nodes = list(graph.node)
        self.initializers = {t.name: t for t in graph.initializer}
        self.graph_inputs = [vi.name for vi in graph.input if vi.name not in self.initializers]
        self.graph_outputs = [vi.name for vi in graph.output]
        self.inputs = [node_inputs(n) for n in self.nodes]
        self.producer: dict[str, int] = {}
        for i, n in enumerate(self.nodes):
            for o in n.output:
                if o:
                    self.producer[o] = i
        self.sorted = True  # whether graph.node already is in topological order
        self.order = self._topological_order()

    def _topological_order(self) -> list[int]:
        known = set(self.initializers) | set(self.graph_inputs)
        ok = True
        for i, ins in enumerate(self.inputs):
            if any(x not in known and self.producer.get(x, -1) >= i for x in ins):
                ok = False
                break
            known.update(o for o in self.nodes[i].output if o)
        self.sorted = ok
        if ok:
            return list(range(len(self.nodes)))
        log.info("graph nodes are not in topological order; sorting")
        indeg = [0] * len(self.nodes)
        users: dict[int, list[int]] = {}
        for i, ins in enumerate(self.inputs):
            for src in {self.producer[x] for x in ins if x in self.producer}:
                indeg[i] += 1
                users.setdefault(src, []).append(i)
        ready = deque(i for i, d in enumerate(indeg) if d == 0)
        order: list[int] = []
        while ready:
            i = ready.popleft()
            order.append(i)
            for u in users.get(i, []):
                indeg[u] -= 1
                if indeg[u] == 0:
                    ready.append(u)
        if len(order) != len(self.nodes):
            raise ModelError("graph has a cycle")
        return order


def _reordered(model: onnx.ModelProto, order: Sequence[int]) -> onnx.ModelProto:
    """A weight-free copy with nodes in topological order (shape inference needs that order)."""
    light = light_copy(model)
    nodes = list(light.graph.node)
    del light.graph.node[:]
    light.graph.node.extend(nodes[i] for i in order)
    return light


def _classify(ix: _Index, infos: Mapping[str, TensorInfo]) -> tuple[set[int], set[str]]:
    """Active node indices and active tensor names (those depending on input values)."""
    active_tensors = set(ix.graph_inputs)
    active: set[int] = set()
    for i in ix.order:
        node = ix.nodes[i]
        if _reads_a_known_shape(node, infos):
            continue  # static: only the (known) shape is read
        if any(x in active_tensors for x in ix.inputs[i]):
            active.add(i)
            active_tensors.update(o for o in node.output if o)
    # drop dead code: active nodes none of whose outputs reach a graph output
    needed = set(ix.graph_outputs)
    live: set[int] = set()
    for i in reversed(ix.order):
        if i in active and any(o in needed for o in ix.nodes[i].output):
            live.add(i)
            needed.update(x for x in ix.inputs[i] if x in active_tensors)
    return live, active_tensors & (needed | set(ix.graph_outputs))


def _cut_runs(
    ix: _Index, active: set[int], active_tensors: set[str], infos: Mapping[str, TensorInfo]
) -> list[tuple[list[int], str | None]]:
    """Runs of active nodes between single-tensor cut points; each with its cut tensor (None: the end). A cut
    point's tensor must be one a slice can declare as its input or output and the edge can hand over: a tensor (not
    a sequence or an optional) of known rank and of a type numpy holds (`EXCHANGED_DTYPES`)."""
    remaining: dict[str, int] = {}
    seq = [i for i in ix.order if i in active]
    for i in seq:
        for x in set(ix.inputs[i]):
            if x in active_tensors:
                remaining[x] = remaining.get(x, 0) + 1
    for o in ix.graph_outputs:
        remaining[o] = remaining.get(o, 0) + 1  # consumed by the sink
    live = {x for x in ix.graph_inputs if remaining.get(x, 0) > 0}
    uncut = _inside_qdq_units(ix, seq)
    runs: list[tuple[list[int], str | None]] = []
    current: list[int] = []
    for pos, i in enumerate(seq):
        current.append(i)
        for x in set(ix.inputs[i]):
            if x in remaining:
                remaining[x] -= 1
                if remaining[x] == 0:
                    live.discard(x)
        for o in ix.nodes[i].output:
            if o and remaining.get(o, 0) > 0:
                live.add(o)
        if len(live) == 1 and pos < len(seq) - 1:
            (cut,) = live
            info = infos.get(cut)
            if (
                cut not in ix.graph_outputs
                and cut not in uncut
                and info is not None
                and info.shape is not None
                and info.dtype in EXCHANGED_DTYPES
            ):
                runs.append((current, cut))
                current = []
    if current:
        runs.append((current, None))
    return runs


def _inside_qdq_units(ix: _Index, seq: Sequence[int]) -> set[str]:
    """Tensors inside a quantized model's QDQ node units, which a block boundary must not split: the output of a
    DequantizeLinear, and a tensor only QuantizeLinear nodes read. ONNX Runtime fuses DequantizeLinear -> op ->
    QuantizeLinear into one quantized kernel (QLinearConv, QLinearAdd, ...) only inside one session; cut between
    them, the op runs in float and the tensor crosses at 4 bytes an element instead of 1. The boundaries left are the
    quantized tensors between units."""
    readers: dict[str, set[str]] = {}
    for i in seq:
        for x in ix.inputs[i]:
            readers.setdefault(x, set()).add(ix.nodes[i].op_type)
    inside = set()
    for i in seq:
        for o in ix.nodes[i].output:
            if ix.nodes[i].op_type == "DequantizeLinear" or readers.get(o) == {"QuantizeLinear"}:
                inside.add(o)
    return inside


def _fuse_cheap(
    ix: _Index, runs: list[tuple[list[int], str | None]], infos: Mapping[str, TensorInfo]
) -> list[tuple[list[int], str | None]]:
    fused: list[tuple[list[int], str | None]] = []
    for nodes, cut in runs:
        prev_cut = fused[-1][1] if fused else None
        if (
            prev_cut is not None
            and all(ix.nodes[i].op_type in FUSED_OPS for i in nodes)
            and _bytes([cut] if cut else ix.graph_outputs, infos) <= _bytes([prev_cut], infos)
        ):
            prev_nodes, _ = fused[-1]
            fused[-1] = (prev_nodes + nodes, cut)
        else:
            fused.append((nodes, cut))
    return fused


def _members(
    ix: _Index, run: Sequence[int], active: set[int], outputs: Iterable[str], infos: Mapping[str, TensorInfo]
) -> list[int]:
    """A block's nodes: its run of active nodes, each preceded by the static nodes it needs and no earlier node of
    the block has brought (depth first, in input order), then those the block's `outputs` need. The order depends
    on the block's own structure only, not on where the model keeps a static node that several blocks share (an
    exporter may keep one Constant for every layer), so equal blocks hash equal."""
    order: list[int] = []
    seen: set[int] = set()

    def bring(tensors: Iterable[str]) -> None:
        stack: list[tuple[int, bool]] = [(p, False) for p in _static_producers(ix, tensors, active)][::-1]
        while stack:
            p, ready = stack.pop()
            if ready:
                order.append(p)
            elif p not in seen:
                seen.add(p)
                stack.append((p, True))
                if not _reads_a_known_shape(ix.nodes[p], infos):  # a Shape of a static shape reads no value
                    stack.extend((q, False) for q in _static_producers(ix, ix.inputs[p], active)[::-1])

    for i in run:
        bring(ix.inputs[i])
        order.append(i)
    bring(outputs)
    return order


def _reads_a_known_shape(node: NodeProto, infos: Mapping[str, TensorInfo]) -> bool:
    """A Shape or Size of a tensor whose shape is static: computed without its input (a slice makes it a Constant)."""
    is_shape = node.op_type in _SHAPE_OPS and node.domain in ("", "ai.onnx") and bool(node.input)
    info = infos.get(node.input[0]) if is_shape else None
    return info is not None and info.static


def _static_producers(ix: _Index, tensors: Iterable[str], active: set[int]) -> list[int]:
    return [p for p in (ix.producer.get(x) for x in tensors) if p is not None and p not in active]


def _bytes(names: Iterable[str], infos: Mapping[str, TensorInfo]) -> int:
    return sum(infos[n].nbytes for n in names if n in infos)


def _param_bytes(nodes: Sequence[NodeProto], initializers: Mapping[str, TensorProto]) -> int:
    """Bytes of the weights the nodes read: initializers of the graph (once each) and of their subgraphs, and the
    values of their Constant nodes (some exporters hold weights in them: they counted 0)."""
    used = {x for n in nodes for x in node_inputs(n) if x in initializers}
    inner = [t for n in nodes for t in _subgraph_initializers(n)]
    constants = [t for _, t in constant_tensors(nodes)]
    return sum(_tensor_bytes(t) for t in [*(initializers[x] for x in sorted(used)), *inner, *constants])


def _subgraph_initializers(node: NodeProto) -> list[TensorProto]:
    """Initializers of the node's subgraphs (If/Loop/Scan bodies), nested ones included."""
    found: list[TensorProto] = []
    for g in subgraphs(node):
        found.extend(g.initializer)
        for n in g.node:
            found.extend(_subgraph_initializers(n))
    return found


def _tensor_bytes(t: TensorProto) -> int:
    numel = 1
    for d in t.dims:
        numel *= d
    return numel * dtype_size(t.data_type)


def _serialized_bytes(nodes: Sequence[NodeProto], initializers: Mapping[str, TensorProto]) -> int:
    used = {x for n in nodes for x in node_inputs(n) if x in initializers}
    return sum(n.ByteSize() for n in nodes) + sum(tensor_size(initializers[x]) for x in used)


def _sampled_shapes(model: onnx.ModelProto, ix: _Index, infos: Mapping[str, TensorInfo]) -> dict[str, TensorInfo]:
    """The shapes static inference could not tell, from one run (`run_shapes`): of tensors of a numpy type, and of
    untyped outputs (of contrib ops inference skips, and of what reads them), unless one of those is no tensor numpy
    holds. No run when only the sequences of sequence ops lack a tensor type."""
    outputs = [o for n in ix.nodes for o in n.output if o]
    unknown = [o for o in outputs if o in infos and not infos[o].static and infos[o].dtype in EXCHANGED_DTYPES]
    untyped = [o for n in ix.nodes if n.op_type not in _SEQUENCE_OPS for o in n.output if o and o not in infos]
    if not unknown and not untyped:
        return {}
    sampled = run_shapes(model, unknown + untyped)
    if not sampled and unknown and untyped:  # ONNX Runtime would not hand over one of the untyped: without them
        sampled = run_shapes(model, unknown)
    return sampled


def analyze(model: onnx.ModelProto, name: str = "model", *, fuse: bool = True) -> BlockGraph:
    """Split `model` into atomic blocks (see the module docstring)."""
    ix = _Index(model.graph)
    infos = tensor_infos_of(model if ix.sorted else _reordered(model, ix.order))
    sampled = _sampled_shapes(model, ix, infos)
    sizes = {**infos, **sampled}  # what counts bytes, FLOPs and signatures
    if not ix.graph_inputs:
        raise ModelError(f"model {name!r} has no graph inputs")
    active, active_tensors = _classify(ix, infos)
    runs = _cut_runs(ix, active, active_tensors, infos)
    if fuse:
        runs = _fuse_cheap(ix, runs, sizes)
    opsets, functions = model_opsets(model), model_functions(model)
    trips = trip_counts(ix.initializers, ix.nodes)
    blocks: list[Block] = []
    prev_cut: list[str] = [x for x in ix.graph_inputs if x in active_tensors]
    for k, (run, cut) in enumerate(runs):
        outputs = [cut] if cut is not None else list(ix.graph_outputs)
        members = _members(ix, run, active, outputs if cut is None else [], infos)
        nodes = [ix.nodes[i] for i in members]
        blocks.append(
            Block(
                index=k,
                ops=tuple(n.op_type for n in nodes),
                signature=block_signature(nodes, prev_cut, outputs, sizes, ix.initializers, opsets, functions),
                inputs=tuple(prev_cut),
                outputs=tuple(outputs),
                flops=sum(node_flops(n, sizes, trips) for n in nodes),
                param_bytes=_param_bytes(nodes, ix.initializers),
                input_bytes=_bytes(prev_cut, sizes),
                output_bytes=_bytes(outputs, sizes),
                nodes=tuple(members),
                slice_bytes=_serialized_bytes(nodes, ix.initializers),
                offloadable=node_domains(nodes) <= STANDARD_DOMAINS,
            )
        )
        prev_cut = outputs
    if not blocks:  # every node is static (the outputs depend on the inputs' shapes only): nothing to split or run
        raise ModelError(
            f"model {name!r} has no blocks: none of its outputs depends on the values of its inputs (only on their "
            "shapes), so there is nothing to split between edge and server"
        )
    log.debug("%s: %d nodes -> %d blocks", name, len(ix.nodes), len(blocks))

    def info(n: str) -> TensorInfo:
        return infos.get(n) or TensorInfo(n, (), "undefined")

    return BlockGraph(
        model=name,
        inputs=tuple(info(n) for n in ix.graph_inputs),
        outputs=tuple(info(n) for n in ix.graph_outputs),
        blocks=tuple(blocks),
        tensors=infos,
        sample_shapes=sampled,
    )
