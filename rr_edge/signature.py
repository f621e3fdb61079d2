"""Structural signatures of blocks (pure).

A signature hashes what determines a block's cost on a device and nothing else:

* op types, domains and attributes of its nodes, in a canonical topological order (`_canonical_order`: a tool that
  re-sorts parallel branches keeps the signature; an attribute written out at its schema's default value counts as
  left out: exporters differ in which defaults they write);
* the wiring between them, with tensor names replaced by positions (block inputs `i0, i1...`,
  node outputs `n<j>.<k>`, weights `w0, w1...` one per use, other outside tensors `x0...`; a body's own tensors are
  named apart from its block's); an Identity only renames its input (exporters alias shared weights with one), so
  it is left out;
* shapes and dtypes of every tensor it reads or writes, and weight shapes;
* values only of small structural constants (int32/int64/bool tensors such as shapes, axes and indices), never of
  weights: not of float scalars (a PReLU slope, a quantization scale) nor of 8- and 16-bit integers (zero points).

A weight is numbered per use, so whether two uses share one initializer is not hashed: exporters merge initializers
of equal values (zero biases), and that had given repeated mobilenet_v2 blocks different signatures in one export and
one in another (found by review).

So two structurally identical blocks, in one model or in two, share a signature, and any
difference in shape gives a different one.
"""

from __future__ import annotations

import hashlib
import heapq
import json
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache

import onnx
from onnx import AttributeProto, GraphProto, NodeProto, TensorProto, numpy_helper

from rr_edge.onnx_io import TensorInfo, with_subgraph_nodes

__all__ = ["SIGNATURE_LENGTH", "block_signature", "model_opsets"]

SIGNATURE_LENGTH = 16  # hex characters (64 bits)
_VALUE_MAX_INTS = 64  # integer/bool constants up to this many elements are structural: hash their values

# Tensors whose small values are structure (shapes, axes, indices, masks); 8- and 16-bit integers are quantized data
# (zero points), floats are weights or calibrated scales: their values say nothing of a block's cost.
_STRUCTURAL_TYPES = {TensorProto.INT32, TensorProto.INT64, TensorProto.UINT32, TensorProto.UINT64, TensorProto.BOOL}


def _tensor_key(t: TensorProto) -> list[object]:
    dims = [int(d) for d in t.dims]
    numel = 1
    for d in dims:
        numel *= d
    key: list[object] = ["T", dims, int(t.data_type)]
    structural = t.data_type in _STRUCTURAL_TYPES and numel <= _VALUE_MAX_INTS
    if structural and t.data_location != TensorProto.EXTERNAL:
        try:
            key.append(numpy_helper.to_array(t).reshape(-1).tolist())
        except (ValueError, TypeError):
            key.append(None)
    return key


Resolve = Callable[[str], str]  # a tensor name read inside a node -> its canonical name in the block's record
Opsets = Mapping[str, int]  # domain ("" for the default one) -> the model's opset version of it


def _graph_key(g: GraphProto, outer: Resolve, opsets: Opsets, depth: int = 1) -> list[object]:
    """Subgraph (If/Loop/Scan bodies) at nesting `depth`: its input types, ops, attributes, wiring by position and
    weight shapes; a tensor of an enclosing scope is named by `outer`, so what a body reads from outside is hashed like
    a block's own reads (shapes of activations, weight shapes). Its own names carry the depth: a body reading its
    own node j had hashed like one reading the block's node j."""
    own = f"g{depth}."
    names: dict[str, str] = {vi.name: f"{own}i{i}" for i, vi in enumerate(g.input)}
    weights: list[object] = []
    for t in g.initializer:
        names[t.name] = f"{own}w{len(weights)}"
        weights.append(_tensor_key(t))

    def resolve(name: str) -> str:
        return names.get(name) or outer(name)

    nodes: list[object] = []
    for j, n in enumerate(g.node):
        ins = [resolve(x) if x else "" for x in n.input]
        for k, o in enumerate(n.output):
            names[o] = f"{own}n{j}.{k}"
        nodes.append([n.domain, n.op_type, ins, _attrs_key(n, resolve, opsets, depth)])
    types = [str(vi.type).replace("\n", " ") for vi in g.input]
    return ["G", types, nodes, weights, [resolve(o.name) for o in g.output]]


def _attr_value(a: AttributeProto, outer: Resolve, opsets: Opsets, depth: int = 0) -> object:
    t = a.type
    if t == AttributeProto.FLOAT:
        return repr(a.f)
    if t == AttributeProto.INT:
        return int(a.i)
    if t == AttributeProto.STRING:
        return a.s.decode("utf-8", "replace")
    if t == AttributeProto.TENSOR:
        return _tensor_key(a.t)
    if t == AttributeProto.GRAPH:
        return _graph_key(a.g, outer, opsets, depth + 1)
    if t == AttributeProto.FLOATS:
        return [repr(f) for f in a.floats]
    if t == AttributeProto.INTS:
        return [int(i) for i in a.ints]
    if t == AttributeProto.STRINGS:
        return [s.decode("utf-8", "replace") for s in a.strings]
    if t == AttributeProto.TENSORS:
        return [_tensor_key(x) for x in a.tensors]
    if t == AttributeProto.GRAPHS:
        return [_graph_key(x, outer, opsets, depth + 1) for x in a.graphs]
    return a.ref_attr_name or None


def _attrs_key(n: NodeProto, outer: Resolve, opsets: Opsets, depth: int = 0) -> list[object]:
    domain = "" if n.domain == "ai.onnx" else n.domain
    defaults = _defaults(domain, n.op_type, opsets.get(domain, 0))
    key: list[object] = []
    for a in sorted(n.attribute, key=lambda a: a.name):
        value = _attr_value(a, outer, opsets, depth)
        if a.name not in defaults or defaults[a.name] != value:
            key.append([a.name, value])
    return key


@lru_cache(maxsize=1024)
def _defaults(domain: str, op_type: str, version: int) -> dict[str, object]:
    """The keys of the attributes with a default value in the op's schema at that opset version (none when onnx does
    not know the op: a custom domain, a function)."""
    try:
        schema = onnx.defs.get_schema(op_type, version, domain)
    except onnx.defs.SchemaError:
        return {}
    return {
        name: _attr_value(attr.default_value, str, {})
        for name, attr in schema.attributes.items()
        if attr.default_value.type != AttributeProto.UNDEFINED
    }


def block_signature(
    nodes: Sequence[NodeProto],
    inputs: Sequence[str],
    outputs: Sequence[str],
    infos: Mapping[str, TensorInfo],
    initializers: Mapping[str, TensorProto],
    opsets: Opsets | None = None,
) -> str:
    """Hex signature of the sub-graph `nodes` (topological order) with the given boundary tensors; `opsets`: the
    model's opset versions (`model_opsets`), which say the attributes' default values."""
    opsets = opsets or {}
    names: dict[str, str] = {name: f"i{i}" for i, name in enumerate(inputs)}
    weights: list[object] = []
    externals: list[object] = []

    def info_key(name: str) -> list[object]:
        info = infos.get(name)
        return [info.shape and list(info.shape), info.dtype] if info is not None else ["?"]

    # an exporter's Identity of a shared weight names its input anew: resolved where the name is read, not hashed
    aliases = {n.output[0]: n.input[0] for n in nodes if _is_alias(n)}

    def ref(name: str) -> str:
        if not name:
            return ""
        while name in aliases:
            name = aliases[name]
        if name in initializers and name not in names:  # a weight, numbered per use
            weights.append(_tensor_key(initializers[name]))
            return f"w{len(weights) - 1}"
        canon = names.get(name)
        if canon is None:
            canon = names[name] = f"x{len(externals)}"
            externals.append(info_key(name))
        return canon

    record: list[object] = [[info_key(n) for n in inputs]]
    for j, node in enumerate(_canonical_order([n for n in nodes if not _is_alias(n)], aliases, inputs, initializers,
                                              info_key, opsets)):  # fmt: skip
        ins = [ref(x) for x in node.input]
        for k, o in enumerate(node.output):
            if o:
                names[o] = f"n{j}.{k}"
        outs = [info_key(o) if o else None for o in node.output]
        record.append([node.domain, node.op_type, ins, outs, _attrs_key(node, ref, opsets)])
    record.append([ref(o) for o in outputs])
    record.append(weights)
    record.append(externals)
    blob = json.dumps(record, separators=(",", ":"), sort_keys=False).encode()
    return hashlib.sha256(blob).hexdigest()[:SIGNATURE_LENGTH]


def _canonical_order(
    nodes: Sequence[NodeProto],
    aliases: Mapping[str, str],
    inputs: Sequence[str],
    initializers: Mapping[str, TensorProto],
    info_key: Callable[[str], list[object]],
    opsets: Opsets,
) -> list[NodeProto]:
    """`nodes` (topological, no aliases) in an order set by their structure alone: each step takes, of the nodes
    whose producers are placed, the one with the least key (op, attributes, and inputs named by what made them: a
    block input's position, an earlier node's place, a weight's shape, an outside tensor's shape). Tools that re-sort
    parallel branches (onnxsim, ONNX Runtime's offline optimizer) had changed the signature (found by review)."""
    names: dict[str, str] = {name: f"i{i}" for i, name in enumerate(inputs)}

    def real(name: str) -> str:
        while name in aliases:
            name = aliases[name]
        return name

    def label(name: str) -> str:
        name = real(name)
        if name in names:
            return names[name]
        if name in initializers:
            return json.dumps(_tensor_key(initializers[name]))
        return json.dumps(info_key(name))

    def key(k: int) -> str:
        n = nodes[k]
        return json.dumps([n.domain, n.op_type, [label(x) if x else "" for x in n.input], _attrs_key(n, label, opsets)])

    producer = {o: k for k, n in enumerate(nodes) for o in n.output if o}
    needs = [
        {producer[real(x)] for m in with_subgraph_nodes([n]) for x in m.input if x and real(x) in producer} - {k}
        for k, n in enumerate(nodes)
    ]  # with what its bodies read from the block
    users: dict[int, list[int]] = {}
    for k, before in enumerate(needs):
        for p in before:
            users.setdefault(p, []).append(k)
    ready = [(key(k), k) for k, before in enumerate(needs) if not before]
    heapq.heapify(ready)
    order: list[NodeProto] = []
    while ready:
        _, k = heapq.heappop(ready)
        for o_index, o in enumerate(nodes[k].output):
            if o:
                names[o] = f"n{len(order)}.{o_index}"
        order.append(nodes[k])
        for u in users.get(k, ()):
            needs[u].discard(k)
            if not needs[u]:
                heapq.heappush(ready, (key(u), u))
    return order if len(order) == len(nodes) else list(nodes)  # a cycle (not a valid graph): as given


def _is_alias(node: NodeProto) -> bool:
    is_identity = node.op_type == "Identity" and node.domain in ("", "ai.onnx")
    return is_identity and len(node.input) == 1 and node.input[0] != "" and len(node.output) == 1


def model_opsets(model: onnx.ModelProto) -> dict[str, int]:
    """Domain ("" for the default one) -> the model's opset version of it."""
    return {("" if o.domain == "ai.onnx" else o.domain): int(o.version) for o in model.opset_import}
