"""A model for a session on this device with its large weights handed over as arrays, not in its bytes (pure).

A split's head and tail run here only, and so does the whole model when nothing is offloaded. Cut with their
weights, each part was copied, serialized, and parsed again by ONNX Runtime as it opened, all but the parse holding
Python's lock: a switch to another split mid-run took seconds for vgg16 and froze every other Python thread of the
process for most of them. A `LocalModel` holds the part's ONNX bytes with each weight of at least `MIN_BYTES`
replaced by an external-data entry that names no file (`stand_in`), and those weights as arrays (`weight_array`, one
copy of each); ONNX Runtime copies them in before it optimises the graph (`SessionOptions.add_external_initializers`,
`rr_edge.session.OrtSettings.create_session`). `tools/bench_switch.py` measures both (docs/performance.md,
"Switching split"). Small weights stay in the bytes: shape inference reads a Reshape's shape or a Slice's bounds
from them, and cannot from external data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from onnx import TensorProto, helper

from rr_edge.errors import ModelError
from rr_edge.onnx_io import raw_size

MIN_BYTES = 1 << 16  # a weight this large goes to the session as an array (a shape tensor is far smaller)
LOCATION = "in-memory"  # the file an external-data entry of a stand-in names: none is ever read
# element types whose raw data numpy reads as is (the others: bfloat16, float8, 4-bit, strings stay in the bytes)
_ARRAY_TYPES: dict[int, np.dtype] = {
    t: np.dtype(helper.tensor_dtype_to_np_dtype(t))
    for t in (
        TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BOOL,
        TensorProto.INT8, TensorProto.INT16, TensorProto.INT32, TensorProto.INT64,
        TensorProto.UINT8, TensorProto.UINT16, TensorProto.UINT32, TensorProto.UINT64,
    )
}  # fmt: skip


@dataclass(frozen=True, eq=False)
class LocalModel:
    """ONNX bytes whose external-data weights are the arrays of `weights`, by name (equal only to itself)."""

    onnx: bytes
    weights: Mapping[str, np.ndarray]


def handed_over(t: TensorProto) -> bool:
    """Whether weight `t` goes to a local session as an array: raw data of at least `MIN_BYTES` of a type numpy
    reads as is (sized from its dims: reading `raw_data` copies it)."""
    return t.data_type in _ARRAY_TYPES and t.HasField("raw_data") and raw_size(t) >= MIN_BYTES


def stand_in(t: TensorProto) -> TensorProto:
    """`t`'s name, type and dims with its data external: what a `LocalModel`'s bytes hold in its place."""
    s = TensorProto(name=t.name, data_type=t.data_type, dims=t.dims, data_location=TensorProto.EXTERNAL)
    for key, value in (("location", LOCATION), ("offset", "0"), ("length", str(raw_size(t)))):
        s.external_data.add(key=key, value=value)
    return s


def weight_array(t: TensorProto) -> np.ndarray:
    """The array of weight `t` (one copy of its raw data, read-only; ONNX stores it little-endian); a ModelError when
    its raw data is not the size its dims and type give (a model built in memory: `load_model` refuses such files)."""
    data = t.raw_data
    if len(data) != raw_size(t):
        raise ModelError(
            f"weight {t.name!r} holds {len(data)} bytes, expected {raw_size(t)} for its dims {list(t.dims)}"
        )
    return np.frombuffer(data, dtype=_ARRAY_TYPES[t.data_type].newbyteorder("<")).reshape(tuple(t.dims))
