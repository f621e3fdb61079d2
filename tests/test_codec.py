"""numpy <-> KServe tensor codec: round trips for every datatype and clear errors on mismatches."""

from __future__ import annotations

import re

import numpy as np
import pytest

from rr_proto import codec
from rr_proto.inference import grpc_service_pb2 as pb

NUMERIC = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64"]


def sample(datatype: str, shape=(2, 3, 4), seed: int = 0) -> np.ndarray:
    """A random array of a KServe datatype covering its whole range (shared with test_framing)."""
    rng = np.random.default_rng(seed)
    dtype = codec.dtype_of(datatype)
    if datatype == "BOOL":
        return rng.random(shape) > 0.5
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    return rng.standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("datatype", NUMERIC)
def test_raw_round_trip_every_numeric_datatype(datatype):
    array = sample(datatype)
    assert codec.datatype_of(array.dtype) == datatype
    back = codec.from_raw(codec.to_raw(array), datatype, array.shape)
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_raw_is_c_order_even_for_fortran_and_strided_arrays():
    array = np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4))
    assert codec.to_raw(array) == np.arange(12, dtype="<f4").tobytes()
    view = np.arange(24, dtype=np.int32).reshape(4, 6)[:, ::2]
    np.testing.assert_array_equal(codec.from_raw(codec.to_raw(view), "INT32", view.shape), view)


def test_big_endian_input_is_sent_little_endian():
    array = np.arange(5, dtype=">i4")
    assert codec.to_raw(array) == np.arange(5, dtype="<i4").tobytes()


def test_bytes_tensor_round_trip_with_length_prefixes():
    array = np.array([[b"", b"a"], ["\u00e9t\u00e9", b"\x00\x01"]], dtype=object)
    raw = codec.to_raw(array)
    assert raw[:4] == b"\x00\x00\x00\x00"
    back = codec.from_raw(raw, "BYTES", (2, 2))
    assert back.tolist() == [["", "a"], ["\u00e9t\u00e9", "\x00\x01"]]  # str, as ONNX Runtime holds strings


def test_raw_size_counts_the_bytes_to_raw_makes():
    """The server checks a result against the message limit by this count: a string's characters undercounted it
    (found by review)."""
    strings = np.array([["", "a"], ["\u20ac\u00e9", b"\x00\x01\x02"]], dtype=object)
    for array in (strings, np.array(["abc", "\u00e9"]), np.arange(6, dtype=">i4").reshape(2, 3), np.zeros(0, bool)):
        assert codec.raw_size(array) == len(codec.to_raw(array))
    assert codec.raw_size(strings) == 4 * 4 + 0 + 1 + 5 + 3


def test_raw_bool_bytes_must_be_0_or_1():
    """numpy takes any non-zero byte for True, ONNX Runtime does not: Not(2) was True (found by review)."""
    assert codec.from_raw(bytes([0, 1, 1]), "BOOL", (3,)).tolist() == [False, True, True]
    assert codec.from_raw(b"", "BOOL", (0, 2)).shape == (0, 2)
    for raw in (bytes([1, 2, 0]), bytes([0, 0, 255])):
        with pytest.raises(codec.CodecError, match="tensor 'x': raw BOOL contents hold a byte other than 0 or 1"):
            codec.from_raw(raw, "BOOL", (3,), name="x")


def test_bytes_elements_decode_to_text_or_are_refused():
    """A BYTES element reached ONNX Runtime as a memoryview or bytes, which it stored as their repr: an Identity
    slice answered b'<memory at 0x7f...>' (found by review)."""
    contents = codec.pb.InferTensorContents(bytes_contents=[b"hello", "\u00e9".encode()])
    assert codec.from_contents(contents, "BYTES", (2,)).tolist() == ["hello", "\u00e9"]
    with pytest.raises(codec.CodecError, match="tensor 's': BYTES element 1 is not UTF-8 text"):
        codec.from_raw(codec.to_raw(np.array([b"ok", b"\xff"], dtype=object)), "BYTES", (2,), name="s")


@pytest.mark.parametrize(
    ("raw", "datatype", "shape", "message"),
    [
        (b"\x00" * 7, "FP32", (2,), "7 bytes of raw contents, but FP32 [2] needs 8"),
        (b"\x00" * 8, "FP32", (-1, 2), "negative dimension"),
        (b"\x00" * 8, "BF16", (4,), "unknown datatype 'BF16'"),
        (b"\x05\x00\x00\x00ab", "BYTES", (1,), "past the end"),
        (b"\x01\x00\x00\x00ab", "BYTES", (1,), "trailing bytes"),
        (b"\x02\x00\x00\x00ab\x00\x00", "BYTES", (2,), "end after 1 of 2"),
    ],
)
def test_mismatches_raise_clear_errors(raw, datatype, shape, message):
    with pytest.raises(codec.CodecError, match=re.escape(message)):
        codec.from_raw(raw, datatype, shape, name="x")


def test_raw_bytes_count_is_checked_before_allocating():
    # 4 bytes cannot hold 2e8 elements: refused at once (before, 1.6 GB were allocated first)
    with pytest.raises(codec.CodecError, match="4 bytes of raw contents cannot hold 200000000 BYTES elements"):
        codec.from_raw(b"\x00" * 4, "BYTES", (200_000_000,), name="x")


def test_shape_numpy_cannot_represent_is_a_codec_error():
    with pytest.raises(codec.CodecError, match=re.escape("shape [0, 4611686018427387904] cannot be represented")):
        codec.from_raw(b"", "FP32", (0, 2**62), name="x")
    with pytest.raises(codec.CodecError, match="cannot be represented"):
        codec.from_contents(pb.InferTensorContents(), "FP32", (0, 2**62), name="x")


@pytest.mark.parametrize(
    ("datatype", "field", "values"),
    [("UINT8", "uint_contents", [300, 1]), ("INT8", "int_contents", [-129]), ("UINT16", "uint_contents", [65536])],
)
def test_typed_values_outside_the_datatype_are_refused(datatype, field, values):
    # the 32-bit contents fields carry the 8- and 16-bit datatypes: 300 as UINT8 used to wrap to 44
    contents = pb.InferTensorContents(**{field: values})
    with pytest.raises(codec.CodecError, match=f"values outside {datatype}'s"):
        codec.from_contents(contents, datatype, (len(values),), name="x")


def test_typed_values_at_the_ends_of_the_range_decode_exactly():
    for datatype, field in (("UINT8", "uint_contents"), ("INT16", "int_contents"), ("UINT64", "uint64_contents"),
                            ("INT64", "int64_contents")):  # fmt: skip
        info = np.iinfo(codec.dtype_of(datatype))
        contents = pb.InferTensorContents(**{field: [int(info.min), int(info.max)]})
        array = codec.from_contents(contents, datatype, (2,), name="x")
        assert array.dtype == codec.dtype_of(datatype) and array.tolist() == [info.min, info.max]


def test_unsupported_numpy_dtype():
    with pytest.raises(codec.CodecError, match="no KServe datatype"):
        codec.datatype_of(np.complex64)


def test_request_round_trip_raw_and_typed():
    inputs = {"a": sample("FP32"), "b": sample("INT64", (3,))}
    request = codec.encode_infer_request("slice", inputs, outputs=["y"], request_id="7")
    assert request.model_name == "slice" and request.id == "7" and [o.name for o in request.outputs] == ["y"]
    decoded = codec.decode_infer_request(request)
    assert set(decoded) == {"a", "b"}
    for name in inputs:
        np.testing.assert_array_equal(decoded[name], inputs[name])

    typed = pb.ModelInferRequest(model_name="slice")
    tensor = typed.inputs.add(name="a", datatype="FP32", shape=[2, 2])
    tensor.contents.fp32_contents.extend([1.0, 2.0, 3.0, 4.0])
    np.testing.assert_array_equal(codec.decode_infer_request(typed)["a"], [[1, 2], [3, 4]])


def test_request_with_wrong_typed_count_or_mixed_contents_is_rejected():
    typed = pb.ModelInferRequest()
    tensor = typed.inputs.add(name="a", datatype="INT32", shape=[3])
    tensor.contents.int_contents.extend([1, 2])
    with pytest.raises(codec.CodecError, match="2 values in int_contents, but shape \\[3\\] needs 3"):
        codec.decode_infer_request(typed)
    tensor.contents.int_contents.append(3)
    typed.raw_input_contents.append(b"\x00" * 12)
    with pytest.raises(codec.CodecError, match="both raw and typed"):
        codec.decode_infer_request(typed)


def test_raw_count_must_match_inputs():
    request = codec.encode_infer_request("m", {"a": np.zeros(2, np.float32)})
    request.raw_input_contents.append(b"")
    with pytest.raises(codec.CodecError, match="2 raw contents for 1 input tensors"):
        codec.decode_infer_request(request)


def test_response_round_trip():
    outputs = {"y": sample("FP16", (1, 5))}
    decoded = codec.decode_infer_response(codec.encode_infer_response("m", outputs))
    np.testing.assert_array_equal(decoded["y"], outputs["y"])


def test_typed_contents_in_the_wrong_field_are_named():
    """FP32 values sent in int_contents were "0 values in fp32_contents" (found by review)."""
    contents = codec.pb.InferTensorContents(int_contents=[1, 2])
    with pytest.raises(codec.CodecError, match="tensor 'x': datatype FP32 takes fp32_contents, got int_contents"):
        codec.from_contents(contents, "FP32", (2,), name="x")
