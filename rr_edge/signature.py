"""Structural signatures of blocks (pure).

A signature hashes what determines a block's cost on a device and nothing else:

* op types, domains and attributes of its nodes, in a canonical topological order (`_canonical_order`: a tool that
  re-sorts parallel branches keeps the signature, ties broken by structure, not by file position; an attribute
  written out at its schema's default value counts as left out: exporters differ in which defaults they write);
* for a call of a model-local function, the function's body (`model_functions`);
* the wiring between them, with tensor names replaced by positions (block inputs `i0, i1...`,
  node outputs `n<j>.<k>`, weights `w0, w1...` and other outside tensors `x0...` one per use; a body's own tensors
  are named apart from its block's); an Identity only renames its input (exporters alias shared weights with one), so
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
from onnx import AttributeProto, FunctionProto, GraphProto, NodeProto, TensorProto, numpy_helper

from rr_edge.onnx_io import TensorInfo, subgraphs, with_subgraph_nodes

__all__ = ["SIGNATURE_LENGTH", "block_signature", "model_functions", "model_opsets"]

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
FunctionId = tuple[str, str, str]  # domain, name, overload of a model-local function (what a node calling it names)
Functions = Mapping[FunctionId, str]  # a model-local function -> the hash of its body (`model_functions`)
_NO_FUNCTIONS: Functions = {}


def _graph_key(g: GraphProto, outer: Resolve, opsets: Opsets, functions: Functions, depth: int = 1) -> list[object]:
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
        nodes.append([n.domain, n.op_type, ins, _attrs_key(n, resolve, opsets, functions, depth)])
    types = [str(vi.type).replace("\n", " ") for vi in g.input]
    return ["G", types, nodes, weights, [resolve(o.name) for o in g.output]]


def _attr_value(a: AttributeProto, outer: Resolve, opsets: Opsets, functions: Functions, depth: int = 0) -> object:
    if a.ref_attr_name:  # in a function's body: the value of the call's attribute of that name
        return ["@", a.ref_attr_name]
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
        return _graph_key(a.g, outer, opsets, functions, depth + 1)
    if t == AttributeProto.FLOATS:
        return [repr(f) for f in a.floats]
    if t == AttributeProto.INTS:
        return [int(i) for i in a.ints]
    if t == AttributeProto.STRINGS:
        return [s.decode("utf-8", "replace") for s in a.strings]
    if t == AttributeProto.TENSORS:
        return [_tensor_key(x) for x in a.tensors]
    if t == AttributeProto.GRAPHS:
        return [_graph_key(x, outer, opsets, functions, depth + 1) for x in a.graphs]
    return None


def _attrs_key(n: NodeProto, outer: Resolve, opsets: Opsets, functions: Functions, depth: int = 0) -> list[object]:
    """The node's attributes (those not at their default) and, for a call of a model-local function, the hash of its
    body: two functions of one name had shared a signature, a Relu with eight 256x256 MatMuls (found by review)."""
    domain = "" if n.domain == "ai.onnx" else n.domain
    defaults = _defaults(domain, n.op_type, opsets.get(domain, 0))
    key: list[object] = []
    for a in sorted(n.attribute, key=lambda a: a.name):
        value = _attr_value(a, outer, opsets, functions, depth)
        if a.name not in defaults or defaults[a.name] != value:
            key.append([a.name, value])
    body = functions.get((n.domain, n.op_type, n.overload))
    if body is not None:
        key.append(["function", body])
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
        name: _attr_value(attr.default_value, str, {}, _NO_FUNCTIONS)
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
    functions: Functions | None = None,
) -> str:
    """Hex signature of the sub-graph `nodes` (topological order) with the given boundary tensors; `opsets`: the
    model's opset versions (`model_opsets`), which say the attributes' default values; `functions`: its model-local
    functions (`model_functions`), whose bodies a call of one hashes."""
    opsets = opsets or {}
    functions = functions or _NO_FUNCTIONS
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
        if name in names:
            return names[name]
        externals.append(info_key(name))  # numbered per use too: which of two alike comes first is no structure
        return f"x{len(externals) - 1}"

    record: list[object] = [[info_key(n) for n in inputs]]
    kept = [n for n in nodes if not _is_alias(n)]
    order = _canonical_order(kept, aliases, inputs, outputs, initializers, info_key, opsets, functions)
    for j, node in enumerate(order):
        ins = [ref(x) for x in node.input]
        for k, o in enumerate(node.output):
            if o:
                names[o] = f"n{j}.{k}"
        outs = [info_key(o) if o else None for o in node.output]
        record.append([node.domain, node.op_type, ins, outs, _attrs_key(node, ref, opsets, functions)])
    record.append([ref(o) for o in outputs])
    record.append(weights)
    record.append(externals)
    blob = json.dumps(record, separators=(",", ":"), sort_keys=False).encode()
    return hashlib.sha256(blob).hexdigest()[:SIGNATURE_LENGTH]


def _canonical_order(
    nodes: Sequence[NodeProto],
    aliases: Mapping[str, str],
    inputs: Sequence[str],
    outputs: Sequence[str],
    initializers: Mapping[str, TensorProto],
    info_key: Callable[[str], list[object]],
    opsets: Opsets,
    functions: Functions,
) -> list[NodeProto]:
    """`nodes` (topological, no aliases) in an order set by their structure alone: each step takes, of the nodes
    whose producers are placed, the one of least structural class (`_classes`). Tools that re-sort parallel branches
    (onnxsim, ONNX Runtime's offline optimizer) had changed the signature (found by review), and with ties broken by
    file position, so had an attention block's Q, K and V projections (one op, one input, one weight shape), which
    only where their outputs go tells apart (found by review).

    A node's class sums up every path from it to the block's outputs, input slot by input slot, and a path from an
    output back through input slots leads to one node: so each node that an output depends on has a class of its
    own, and the order is the structure's whatever the file's. Only nodes no output needs, or that a body reads
    alike (an If branch reading two of them), can tie, and then file order decides."""

    def real(name: str) -> str:
        while name in aliases:
            name = aliases[name]
        return name

    producer = {o: (k, j) for k, n in enumerate(nodes) for j, o in enumerate(n.output) if o}
    position = {name: f"i{i}" for i, name in enumerate(inputs)}
    ends: dict[str, list[int]] = {}
    for q, o in enumerate(outputs):
        ends.setdefault(real(o), []).append(q)

    def label(name: str) -> str:
        name = real(name)
        if name in position:
            return position[name]
        if name in producer:  # the wiring says which node made it
            return "n"
        if name in initializers:
            return json.dumps(_tensor_key(initializers[name]))
        return json.dumps(info_key(name))

    def key(n: NodeProto) -> str:
        ins = [label(x) if x else "" for x in n.input]
        outs = [[info_key(o), ends.get(o, [])] if o else None for o in n.output]
        return json.dumps([n.domain, n.op_type, ins, outs, _attrs_key(n, label, opsets, functions)])

    # wiring: (slot, producer, its output) per input made in the block; slot -1: read by a body (If, Loop, Scan)
    wires = [
        [(s, *producer[real(x)]) for s, x in enumerate(n.input) if x and real(x) in producer]
        + sorted(
            {
                (-1, *producer[real(x)])
                for g in subgraphs(n)
                for m in with_subgraph_nodes(g.node)
                for x in m.input
                if x and real(x) in producer
            }
        )
        for n in nodes
    ]
    needs = [{p for _, p, _ in w} - {k} for k, w in enumerate(wires)]
    users: list[list[int]] = [[] for _ in nodes]
    for k, before in enumerate(needs):
        for p in before:
            users[p].append(k)
    topo = _topological(needs, users)
    if topo is None:  # a cycle (not a valid graph): as given
        return list(nodes)
    classes = _classes([key(n) for n in nodes], wires, topo)
    ready = [(classes[k], k) for k, before in enumerate(needs) if not before]
    heapq.heapify(ready)
    order: list[NodeProto] = []
    while ready:
        _, k = heapq.heappop(ready)
        order.append(nodes[k])
        for u in users[k]:
            needs[u].discard(k)
            if not needs[u]:
                heapq.heappush(ready, (classes[u], u))
    return order


def _topological(needs: Sequence[set[int]], users: Sequence[Sequence[int]]) -> list[int] | None:
    """An order of the nodes in which each comes after those it `needs`; None when they form a cycle."""
    waiting = [len(before) for before in needs]
    order = [k for k, n in enumerate(waiting) if n == 0]
    for k in order:  # grows while it is walked
        for u in users[k]:
            waiting[u] -= 1
            if waiting[u] == 0:
                order.append(u)
    return order if len(order) == len(needs) else None


def _classes(keys: Sequence[str], wires: Sequence[Sequence[tuple[int, int, int]]], topo: Sequence[int]) -> list[str]:
    """Each node's structural class: digests of all that leads to it (its key, its producers' digests by input
    slot and output) and of all that follows from it (its key, its consumers' digests with the slot each reads it
    in), in one sweep each way (Weisfeiler-Lehman hashing, unrolled along the topological order: linear in the
    block's wiring)."""
    users: list[list[tuple[int, int, int]]] = [[] for _ in keys]  # (its output, consumer, consumer's slot)
    for k, wired in enumerate(wires):
        for slot, p, out in wired:
            users[p].append((out, k, slot))
    own = [_digest(key) for key in keys]
    before, after = [""] * len(keys), [""] * len(keys)
    for k in topo:
        before[k] = _digest(own[k] + repr(sorted((slot, before[p], out) for slot, p, out in wires[k])))
    for k in reversed(topo):
        after[k] = _digest(own[k] + repr(sorted((out, after[u], slot) for out, u, slot in users[k])))
    return [a + b for a, b in zip(after, before, strict=True)]


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def _is_alias(node: NodeProto) -> bool:
    is_identity = node.op_type == "Identity" and node.domain in ("", "ai.onnx")
    return is_identity and len(node.input) == 1 and node.input[0] != "" and len(node.output) == 1


def model_opsets(model: onnx.ModelProto | FunctionProto) -> dict[str, int]:
    """Domain ("" for the default one) -> the model's (or function's) opset version of it."""
    return {("" if o.domain == "ai.onnx" else o.domain): int(o.version) for o in model.opset_import}


def model_functions(model: onnx.ModelProto) -> dict[FunctionId, str]:
    """Each model-local function -> a hash of its body: its nodes in file order, their attributes (references to the
    call's attributes by name), the wiring by position, the attributes it takes and their defaults, the functions it
    calls (by their hashes; a call back into one being hashed by its name only)."""
    bodies = {(f.domain, f.name, f.overload): f for f in model.functions}
    opsets = model_opsets(model)
    hashes: dict[FunctionId, str] = {}
    pending: set[FunctionId] = set()

    def hash_of(fid: FunctionId) -> str:
        if fid in hashes:
            return hashes[fid]
        if fid in pending:  # recursion (invalid ONNX, but a file may hold it)
            return json.dumps(["recursive", *fid])
        pending.add(fid)
        f = bodies[fid]
        calls = {
            c: hash_of(c) for n in with_subgraph_nodes(f.node) if (c := (n.domain, n.op_type, n.overload)) in bodies
        }
        pending.discard(fid)
        hashes[fid] = _function_hash(f, {**opsets, **model_opsets(f)}, calls)
        return hashes[fid]

    for fid in bodies:
        hash_of(fid)
    return hashes


def _function_hash(f: FunctionProto, opsets: Opsets, functions: Functions) -> str:
    names: dict[str, str] = {x: f"a{i}" for i, x in enumerate(f.input)}

    def resolve(name: str) -> str:
        return names.get(name, "?") if name else ""

    nodes: list[object] = []
    for j, n in enumerate(f.node):
        ins = [resolve(x) for x in n.input]
        nodes.append([n.domain, n.op_type, ins, _attrs_key(n, resolve, opsets, functions)])
        for k, o in enumerate(n.output):
            names[o] = f"n{j}.{k}"
    defaults = [
        [a.name, _attr_value(a, str, opsets, functions)] for a in sorted(f.attribute_proto, key=lambda a: a.name)
    ]
    record = [sorted(f.attribute), defaults, nodes, [resolve(o) for o in f.output]]
    return hashlib.sha256(json.dumps(record, separators=(",", ":")).encode()).hexdigest()
