"""Reading and writing ONNX files, with clear `ModelError`s, and small tensor-info helpers.

Everything that touches the file system for models goes through here; the analysis modules
(`blocks`, `signature`, `flops`, `slicing`) only see in-memory `onnx.ModelProto`s.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
from google.protobuf.message import EncodeError, Message
from onnx import TensorProto, ValueInfoProto, helper, numpy_helper

from rr_edge.errors import ModelError

log = logging.getLogger(__name__)

__all__ = [
    "TensorInfo",
    "dtype_name",
    "dtype_size",
    "elem_type",
    "light_copy",
    "load_model",
    "public_file_mode",
    "save_model",
    "value_info_to_tensor_info",
]

_MAX_INLINE_BYTES = 2**31 - 1  # protobuf's limit on one message: a larger model is saved with external data
_EXTERNAL_MIN_BYTES = 1024  # with external data, tensors of at least this many bytes go to the data file


@dataclass(frozen=True)
class TensorInfo:
    """Name, static shape and element type of a tensor. Unknown dimensions are -1; an unknown rank is shape None."""

    name: str
    shape: tuple[int, ...] | None
    dtype: str  # numpy-style name: "float32", "int64", ...

    @property
    def static(self) -> bool:
        """Every dimension known."""
        return self.shape is not None and -1 not in self.shape

    @property
    def numel(self) -> int:
        """Elements; 0 when the shape is not static."""
        if not self.static:
            return 0
        n = 1
        for d in self.shape or ():
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * dtype_size(self.dtype)

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "shape": None if self.shape is None else list(self.shape), "dtype": self.dtype}


def dtype_name(elem_type: int) -> str:
    """numpy-style name of an ONNX element type ("float32"; "undefined" for 0 and for no type of this onnx)."""
    if elem_type == TensorProto.UNDEFINED or elem_type not in TensorProto.DataType.values():
        return "undefined"
    if elem_type == TensorProto.BFLOAT16:
        return "bfloat16"
    if elem_type == TensorProto.STRING:
        return "string"
    try:
        return str(helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, ValueError):
        return TensorProto.DataType.Name(elem_type).lower()


_SIZE_BY_NAME = {
    "bool": 1, "int8": 1, "uint8": 1, "int16": 2, "uint16": 2, "float16": 2, "bfloat16": 2,
    "int32": 4, "uint32": 4, "float32": 4, "int64": 8, "uint64": 8, "float64": 8,
    "complex64": 8, "complex128": 16,
}  # fmt: skip


_ELEM_TYPE_BY_NAME = {dtype_name(t): t for t in TensorProto.DataType.values() if t != TensorProto.UNDEFINED}


def elem_type(dtype: str) -> int:
    """The ONNX element type of a `dtype_name` (TensorProto.UNDEFINED for "undefined" or an unknown name)."""
    return _ELEM_TYPE_BY_NAME.get(dtype, TensorProto.UNDEFINED)


def dtype_size(dtype: str | int) -> int:
    """Bytes per element of a dtype name or ONNX element type (0 when unknown or variable, e.g. string)."""
    name = dtype_name(dtype) if isinstance(dtype, int) else dtype
    return _SIZE_BY_NAME.get(name, 1 if name.startswith("float8") else 0)


def tensor_size(t: TensorProto) -> int:
    """`t.ByteSize()` without serializing its raw data, whose length its dims and element type give (ONNX Runtime
    loads no tensor where they disagree): protobuf's upb ByteSize serializes a message to count it, so `slice_size`
    had held each weight twice over (a 411 MB vgg16 weight: 822 MB, review). A tensor of typed data fields, of a
    type under a byte, or of external data is counted as ByteSize counts it."""
    if dtype_size(t.data_type) == 0 or not t.HasField("raw_data"):
        return t.ByteSize()
    stub = TensorProto()  # every field but raw_data: name, dims, type, segment, external data, metadata
    copy_fields(t, stub, skip="raw_data")
    return stub.ByteSize() + 1 + field_size(raw_size(t))  # raw_data: a one-byte tag, its length, its bytes


def raw_size(t: TensorProto) -> int:
    """The bytes `t`'s raw data holds by its dims and element type (0 for a type of no fixed size: strings)."""
    return math.prod(t.dims) * dtype_size(t.data_type)


def copy_fields(source: Message, target: Message, skip: str) -> None:
    """Every field `source` has set but `skip` copied into `target`, a message of the same type; `skip`'s value is
    never read (`ListFields` reads every value: a tensor's raw data would be copied)."""
    for f in source.DESCRIPTOR.fields:
        if f.name == skip:
            continue
        if f.is_repeated:
            getattr(target, f.name).extend(getattr(source, f.name))
        elif source.HasField(f.name) and f.message_type is not None:
            getattr(target, f.name).CopyFrom(getattr(source, f.name))
        elif source.HasField(f.name):
            setattr(target, f.name, getattr(source, f.name))


def field_size(size: int) -> int:
    """The bytes of a length-delimited field holding `size` bytes, less its tag: `size` and its varint length."""
    return size + max(1, (size.bit_length() + 6) // 7)


def value_info_to_tensor_info(vi: ValueInfoProto) -> TensorInfo:
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):  # not even the rank is known
        return TensorInfo(vi.name, None, dtype_name(tt.elem_type))
    return TensorInfo(
        vi.name, tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim), dtype_name(tt.elem_type)
    )


def load_model(path: str | os.PathLike[str], *, check: bool = True, fixed_shape: bool = True) -> onnx.ModelProto:
    """Load an ONNX model (and its external data), raising `ModelError` with a one-line reason.

    Catches: missing file, directory, not a protobuf / not ONNX, truncated file, missing or short
    external-data file, and (with `check`) models that fail `onnx.checker`. With `fixed_shape`
    (RoaD-RuNNer plans for one input shape) a symbolic or unknown batch dimension is fixed to 1 and
    any other non-fixed input dimension is a `ModelError`; see `_fix_batch_dim`.
    """
    p = Path(path)
    if not p.exists():
        raise ModelError(f"{p}: no such file")
    if p.is_dir():
        raise ModelError(f"{p}: is a directory, expected an .onnx file")
    if p.stat().st_size == 0:
        raise ModelError(f"{p}: empty file, not an ONNX model")
    try:
        model = onnx.load_model(str(p), load_external_data=False)
    except OSError as exc:
        raise ModelError(f"{p}: cannot read ({exc.strerror or exc})") from None
    except Exception as exc:  # the parser onnx picks by extension: protobuf, JSON (.json), text (.textproto, .onnxtxt)
        raise ModelError(f"{p}: not an ONNX model or truncated file ({_short(exc)})") from None
    _check_structure(model, p)
    _load_external(model, p)
    _densify_sparse_initializers(model)
    if check:
        try:  # the structure is what needs checking; payload sizes are checked below
            onnx.checker.check_model(light_copy(model))
        except (onnx.checker.ValidationError, ValueError) as exc:
            raise ModelError(f"{p}: invalid ONNX model ({_short(exc)})") from None
    _check_initializer_sizes(model, p)
    if fixed_shape:
        _fix_batch_dim(model, str(p))
    return model


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The graphs of a node's attributes (If branches, Loop and Scan bodies)."""
    return [g for attr in node.attribute for g in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs)]


def constant_tensors(nodes: Iterable[onnx.NodeProto]) -> list[tuple[str, onnx.TensorProto]]:
    """(output name, value) of the Constant nodes among `nodes` that hold a tensor (`value`)."""
    return [(n.output[0], a.t) for n in nodes if n.op_type == "Constant" for a in n.attribute if a.name == "value"]


def with_subgraph_nodes(nodes: Iterable[onnx.NodeProto]) -> Iterator[onnx.NodeProto]:
    """The nodes and, recursively, the nodes of their subgraphs (If branches, Loop and Scan bodies)."""
    for n in nodes:
        yield n
        for g in subgraphs(n):
            yield from with_subgraph_nodes(g.node)


def light_copy(model: onnx.ModelProto, keep_bytes: int = 4096) -> onnx.ModelProto:
    """The model's structure without its large weights (replaced by typed graph inputs).

    Small initializers (shapes, axes, scalars: at most `keep_bytes`) keep their values, so shape
    inference and the checker see everything but the weight payloads, at a fraction of the cost. Sized without
    reading their data (`tensor_size`): reading `raw_data` copies it.
    """
    light = onnx.ModelProto()
    for field in ("ir_version", "producer_name", "producer_version", "domain", "model_version"):
        setattr(light, field, getattr(model, field))
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    src, g = model.graph, light.graph
    g.name = src.name
    g.node.extend(src.node)
    g.input.extend(src.input)
    g.output.extend(src.output)
    g.value_info.extend(src.value_info)
    g.sparse_initializer.extend(src.sparse_initializer)
    declared = {vi.name for vi in src.input}
    for t in src.initializer:
        if tensor_size(t) <= keep_bytes and t.data_location != TensorProto.EXTERNAL:
            g.initializer.append(t)
        elif t.name not in declared:
            g.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return light


def save_model(model: onnx.ModelProto, path: str | os.PathLike[str], *, external: bool = False) -> Path:
    """Write `model` to `path` atomically: to temporary files in the same folder, then renamed into place.

    With `external`, or when it is over protobuf's 2 GiB limit on one message (`rr-edge slice` of a large model
    crashed with protobuf's EncodeError: review), its tensors of `_EXTERNAL_MIN_BYTES` or more go to `<name>.data`
    next to it (ONNX external data), renamed into place just before the model that names it; an existing data file
    is replaced, not appended to. The model's moved tensors are left pointing at that file, as onnx.save_model
    leaves them: putting gigabytes back would take as much memory again. A model that cannot be written still is a
    ModelError."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    temporaries: list[str] = []
    data = b""
    if not external and sum(len(t.raw_data) for t in model.graph.initializer) <= _MAX_INLINE_BYTES:
        try:  # not sized first: ByteSize takes as long as this
            data = model.SerializeToString()
        except (EncodeError, ValueError):  # over protobuf's limit all the same (weights in nodes, many nodes)
            external = True
    else:
        external = True
    try:
        if external:
            data_name = p.name + ".data"
            data_tmp = _temporary(p.parent / data_name, temporaries)
            with open(data_tmp, "wb") as fh:
                _move_tensors(model, fh, data_name)
            model_tmp = _temporary(p, temporaries)
            Path(model_tmp).write_bytes(model.SerializeToString())
            os.replace(data_tmp, p.parent / data_name)
        else:
            model_tmp = _temporary(p, temporaries)
            Path(model_tmp).write_bytes(data)
        os.replace(model_tmp, p)
    except (EncodeError, ValueError) as exc:  # still over the limit: big tensors held outside raw_data, or nodes
        raise ModelError(f"{p}: cannot write the ONNX model ({_short(exc)})") from None
    finally:
        for tmp in temporaries:
            Path(tmp).unlink(missing_ok=True)  # gone already where it was renamed into place
    return p


def _temporary(target: Path, made: list[str]) -> str:
    """A new empty file next to `target`, with the usual mode for new files; its name is added to `made`."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    made.append(tmp)
    public_file_mode(tmp)
    return tmp


def _move_tensors(model: onnx.ModelProto, fh: BinaryIO, location: str) -> None:
    """Write each tensor of the model (initializers and attributes, in subgraphs too) of `_EXTERNAL_MIN_BYTES` or
    more to `fh`, and make it an external-data reference to `location` there, in place."""
    from onnx.external_data_helper import _get_all_tensors

    for t in _get_all_tensors(model):
        if not t.HasField("raw_data"):
            continue
        raw = t.raw_data
        if len(raw) < _EXTERNAL_MIN_BYTES:
            continue
        offset = fh.tell()
        fh.write(raw)
        del raw  # one tensor's copy at a time
        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
        del t.external_data[:]
        for key, value in (("location", location), ("offset", str(offset)), ("length", str(fh.tell() - offset))):
            entry = t.external_data.add()
            entry.key, entry.value = key, value


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def public_file_mode(path: str | os.PathLike[str]) -> None:
    """Give a file made by `tempfile.mkstemp` (mode 0600) the usual mode for new files (0666 & ~umask)."""
    os.chmod(path, 0o666 & ~_umask())


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _check_structure(model: onnx.ModelProto, p: Path) -> None:
    if not model.HasField("graph") or not model.graph.node:
        raise ModelError(f"{p}: not an ONNX model or truncated file (no graph nodes)")
    if not model.graph.output:
        raise ModelError(f"{p}: truncated or invalid ONNX model (graph has no outputs)")
    if not model.opset_import:
        raise ModelError(f"{p}: truncated or invalid ONNX model (no opset_import)")


def _external_location(t: TensorProto) -> str | None:
    if t.data_location != TensorProto.EXTERNAL:
        return None
    for entry in t.external_data:
        if entry.key == "location":
            return entry.value
    return ""


def _load_external(model: onnx.ModelProto, p: Path) -> None:
    from onnx.external_data_helper import _get_all_tensors, load_external_data_for_model

    missing: list[str] = []
    has_external = False
    for t in _get_all_tensors(model):
        loc = _external_location(t)
        if loc is None:
            continue
        has_external = True
        if not loc or not (p.parent / loc).is_file():
            missing.append(loc or f"<no location for {t.name}>")
    if missing:
        names = ", ".join(sorted(set(missing))[:3])
        raise ModelError(f"{p}: missing external-data file {names}")
    if has_external:
        try:
            load_external_data_for_model(model, str(p.parent))
        except (OSError, ValueError, onnx.checker.ValidationError) as exc:
            raise ModelError(f"{p}: cannot read external data ({_short(exc)})") from None


def _densify_sparse_initializers(model: onnx.ModelProto) -> None:
    """Replace the graph's sparse initializers by dense ones of the same name, in place: the analysis and the slices
    then handle one kind of weight (sparse ones are rare; a slice of them is as big as their dense values)."""
    g = model.graph
    for sparse in g.sparse_initializer:
        values, indices = numpy_helper.to_array(sparse.values), numpy_helper.to_array(sparse.indices)
        dims = [int(d) for d in sparse.dims]
        dense = np.zeros(dims, dtype=values.dtype).reshape(-1)
        # indices: linear positions (NNZ), or coordinates (NNZ x rank)
        at = indices if indices.ndim == 1 else np.ravel_multi_index(tuple(indices.T), dims)
        dense[at] = values
        g.initializer.append(numpy_helper.from_array(dense.reshape(dims), sparse.values.name))
    del g.sparse_initializer[:]


def _check_initializer_sizes(model: onnx.ModelProto, p: Path) -> None:
    """Raw initializer payloads must match their declared shape (catches short external data)."""
    for t in model.graph.initializer:
        if not t.HasField("raw_data"):
            continue
        if dtype_size(t.data_type) == 0:
            continue
        if len(t.raw_data) != raw_size(t):
            raise ModelError(
                f"{p}: initializer {t.name!r} holds {len(t.raw_data)} bytes, expected {raw_size(t)} "
                "(truncated file or external data?)"
            )


def _free_negative_dims(graph: onnx.GraphProto) -> None:
    """Make each negative `dim_value` of the graph's inputs, outputs and value_info an unknown dimension, in place:
    some exporters (paddle2onnx) and hand-edited models write -1 for a free dimension, and ONNX Runtime reads it so,
    but to onnx it is a size, which nothing fixes and every byte count takes for 0."""
    for vi in (*graph.input, *graph.output, *graph.value_info):
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_value") and d.dim_value < 0:
                d.ClearField("dim_value")


def _fix_batch_dim(model: onnx.ModelProto, label: str = "model") -> None:
    """Give the model one fixed input shape, in place: batch 1 for a symbolic or unknown batch.

    A graph input whose first dimension is a `dim_param`, unknown or negative gets 1 there, and each such
    symbol becomes 1 wherever else it appears in the graph's inputs, outputs and value_info. Any
    input dimension still not fixed (height, width, sequence length...) is a `ModelError`.
    Initializers listed as inputs (old IR) are not model inputs and are left alone; a model that
    is already static is not touched at all.
    """
    g = model.graph
    _free_negative_dims(g)
    weights = {t.name for t in g.initializer}
    inputs = [vi for vi in g.input if vi.name not in weights and vi.type.HasField("tensor_type")]
    symbols: set[str] = set()
    fixed: list[str] = []
    for vi in inputs:
        dims = vi.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            if dims[0].HasField("dim_param"):
                symbols.add(dims[0].dim_param)
            dims[0].dim_value = 1  # clears dim_param (a oneof)
            fixed.append(vi.name)
    if symbols:
        for vi in (*g.input, *g.output, *g.value_info):
            for d in vi.type.tensor_type.shape.dim:
                if d.HasField("dim_param") and d.dim_param in symbols:
                    d.dim_value = 1
    if fixed:
        named = ", ".join(repr(s) for s in sorted(symbols)) or "unknown"
        log.info("%s: fixed the batch dimension (%s) of input(s) %s to 1", label, named, ", ".join(fixed))
    for vi in inputs:
        tt = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim]
        if not tt.HasField("shape") or any(isinstance(d, str) for d in dims):
            shown = "[" + ", ".join(map(str, dims)) + "]" if tt.HasField("shape") else "unknown"
            example = ",".join(map(str, dims)) or "1,3,224,224"
            unknown = ", ".join(str(d) for d in dims if isinstance(d, str)) or "each dimension"
            raise ModelError(
                f"{label}: input {vi.name!r} has a non-fixed shape {shown}; RoaD-RuNNer plans for one input "
                "shape: re-export it with a fixed one (e.g. `rr-edge export ... --input-size N`) or run "
                f"`python -m onnxruntime.tools.make_dynamic_shape_fixed --input_name {vi.name} "
                f"--input_shape {example} IN.onnx OUT.onnx` with numbers for {unknown}"
            )
