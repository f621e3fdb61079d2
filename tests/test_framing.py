"""rr_proto.framing: the zero-copy KServe framing is byte-identical to protobuf's own serialisation, reads what
protobuf writes (raw and typed contents, fields in any order), decodes without copying, and rejects bad bytes."""

from __future__ import annotations

import numpy as np
import pytest
from test_codec import NUMERIC, sample

from rr_proto import codec, framing
from rr_proto.inference import grpc_service_pb2 as pb


def _inputs() -> dict[str, np.ndarray]:
    return {
        "a": sample("FP32"),
        "b": np.asfortranarray(sample("INT64", (3, 2))),  # not C-contiguous: framed in C order
        "c": np.arange(6, dtype=">i4").reshape(2, 3),  # big-endian: sent little-endian
        "d": np.array([b"", b"xyz", "\u00e9"], dtype=object),  # BYTES
        "e": np.zeros((0, 4), np.float32),  # empty
    }


@pytest.mark.parametrize("datatype", NUMERIC)
def test_request_is_byte_identical_to_protobuf(datatype):
    inputs = {"x": sample(datatype), "y": sample(datatype, (5,))}
    ours = framing.serialize_infer_request("slice", inputs, outputs=["o1", "o2"], request_id="42")
    theirs = codec.encode_infer_request("slice", inputs, outputs=["o1", "o2"], request_id="42")
    assert ours == theirs.SerializeToString(deterministic=True)
    assert pb.ModelInferRequest.FromString(ours) == theirs


def test_mixed_request_round_trip_and_identity():
    inputs = _inputs()
    ours = framing.serialize_infer_request("m", inputs, request_id="7")
    assert ours == codec.encode_infer_request("m", inputs, request_id="7").SerializeToString(deterministic=True)
    parsed = framing.parse_infer_request(ours)
    assert not parsed.error
    assert parsed.header.model_name == "m" and parsed.header.id == "7"
    assert not parsed.header.raw_input_contents  # the tensors stayed out of protobuf
    decoded = framing.decode_inputs(parsed)
    assert list(decoded) == list(inputs)
    for name, array in inputs.items():
        if array.dtype == object:
            assert decoded[name].tolist() == ["", "xyz", "\u00e9"]  # text, as ONNX Runtime holds strings
        else:
            assert decoded[name].shape == array.shape
            np.testing.assert_array_equal(decoded[name], array)


def test_decoded_raw_tensors_are_views_of_the_message():
    x = np.arange(1000, dtype=np.float32)
    data = framing.serialize_infer_request("m", {"x": x})
    decoded = framing.decode_inputs(framing.parse_infer_request(data))["x"]
    assert np.shares_memory(decoded, np.frombuffer(data, np.uint8))
    assert not decoded.flags.writeable


def test_parses_what_protobuf_writes_with_fields_reordered():
    request = codec.encode_infer_request("m", {"x": sample("FP32")}, outputs=["y"], request_id="1")
    # Protobuf readers accept fields in any order: put the raw contents first.
    raw = b"".join(framing._field_header(framing.RAW_INPUT_FIELD, len(r)) + r for r in request.raw_input_contents)
    header = pb.ModelInferRequest()
    header.CopyFrom(request)
    del header.raw_input_contents[:]
    parsed = framing.parse_infer_request(raw + header.SerializeToString())
    assert parsed.header == header
    np.testing.assert_array_equal(framing.decode_inputs(parsed)["x"], codec.decode_infer_request(request)["x"])


def test_typed_contents_request():
    typed = pb.ModelInferRequest(model_name="m")
    typed.inputs.add(name="a", datatype="FP32", shape=[2, 2]).contents.fp32_contents.extend([1.0, 2.0, 3.0, 4.0])
    typed.inputs.add(name="b", datatype="BYTES", shape=[1]).contents.bytes_contents.append(b"hi")
    decoded = framing.decode_inputs(framing.parse_infer_request(typed.SerializeToString()))
    np.testing.assert_array_equal(decoded["a"], [[1, 2], [3, 4]])
    assert decoded["a"].dtype == np.float32
    assert decoded["b"].tolist() == ["hi"]


@pytest.mark.parametrize("stream", [False, True])
def test_response_is_byte_identical_to_protobuf_and_round_trips(stream):
    outputs = {"y": sample("FP16", (1, 5)), "z": np.arange(4, dtype=">f8"), "s": np.array([b"ab"], dtype=object)}
    response = framing.encode_outputs("m", "1", "9", outputs)
    expected = codec.encode_infer_response("m", outputs, request_id="9")
    expected.model_version = "1"
    if stream:
        data = framing.serialize_stream_item(framing.StreamItem(response=response))
        assert data == pb.ModelStreamInferResponse(infer_response=expected).SerializeToString(deterministic=True)
        item = framing.parse_stream_item(data)
        assert item.error_message == "" and item.response is not None
        parsed = item.response
    else:
        data = framing.serialize_infer_response(response)
        assert data == expected.SerializeToString(deterministic=True)
        parsed = framing.parse_infer_response(data)
    assert parsed.header.model_name == "m" and parsed.header.id == "9"
    decoded = framing.decode_outputs(parsed)
    for name in ("y", "z"):
        np.testing.assert_array_equal(decoded[name], outputs[name])
    assert decoded["s"].tolist() == ["ab"]


def test_response_with_typed_contents_from_another_server():
    response = pb.ModelInferResponse(model_name="m")
    response.outputs.add(name="y", datatype="INT32", shape=[3]).contents.int_contents.extend([1, -2, 3])
    decoded = framing.decode_outputs(framing.parse_infer_response(response.SerializeToString()))
    np.testing.assert_array_equal(decoded["y"], np.array([1, -2, 3], np.int32))


def test_stream_error_item_round_trip():
    data = framing.serialize_stream_item(framing.StreamItem(error_message="NOT_FOUND: no such slice"))
    assert pb.ModelStreamInferResponse.FromString(data).error_message == "NOT_FOUND: no such slice"
    item = framing.parse_stream_item(data)
    assert item.response is None and item.error_message == "NOT_FOUND: no such slice"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x0a\x05ab", "runs past the end"),  # model_name claims 5 bytes, 2 present
        (b"\x3a\xff\xff\xff\x0f", "runs past the end"),  # raw contents claim ~4 GB
        (b"\x0a", "truncated varint"),
        (b"\x08" + b"\xff" * 11, "varint too long"),
        (b"\x0b", "unsupported wire type 3"),  # start-group
        (b"\x00\x00", "field number 0"),
        (b"\x31\x00\x00", "truncated message"),  # fixed64 with 2 bytes
        (b"\x0a\x02\xff\xfe", "malformed ModelInferRequest"),  # invalid UTF-8 in a string field (protobuf rejects)
    ],
)
def test_malformed_request_is_reported_not_raised(data, message):
    parsed = framing.parse_infer_request(data)
    assert message in parsed.error
    assert parsed.error.startswith("malformed ModelInferRequest")
    assert not parsed.raw and parsed.header == pb.ModelInferRequest()


def test_a_message_of_countless_tiny_fields_is_refused_at_once():
    """Legal protobuf (unknown 2-byte fields), but each field is Python work here: 1 MiB of them took 2 s and 137 MiB;
    32 MiB, half a minute and 4.7 GB of the server's memory. Past MAX_TOP_LEVEL_FIELDS fields it is refused."""
    tiny = b"\x78\x00" * (framing.MAX_TOP_LEVEL_FIELDS + 1)
    parsed = framing.parse_infer_request(
        codec.encode_infer_request("m", {"x": sample("FP32")}).SerializeToString() + tiny
    )
    assert "more than 65536 top-level fields" in parsed.error
    request = serialize_request_with_unknown_fields(framing.MAX_TOP_LEVEL_FIELDS // 2)
    parsed = framing.parse_infer_request(request)  # many, but fewer than the limit: read as protobuf reads them
    assert not parsed.error and framing.decode_inputs(parsed)["z"].tobytes() == sample("INT8").tobytes()


def serialize_request_with_unknown_fields(n: int) -> bytes:
    """A valid request with n unknown 2-byte fields between its raw contents (fields in any order)."""
    request = codec.encode_infer_request("m", {"x": sample("FP32"), "z": sample("INT8")})
    raw = [framing._field_header(framing.RAW_INPUT_FIELD, len(r)) + r for r in request.raw_input_contents]
    del request.raw_input_contents[:]
    return raw[0] + b"\x78\x00" * n + request.SerializeToString() + raw[1]


def test_malformed_response_raises_framing_error():
    good = framing.serialize_infer_response(framing.encode_outputs("m", "1", "", {"y": np.ones(8, np.float32)}))
    with pytest.raises(framing.FramingError, match="runs past the end"):
        framing.parse_infer_response(good[:-1])
    with pytest.raises(codec.CodecError, match="truncated varint"):
        framing.parse_stream_item(b"\x12")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda h, raw: raw.append(memoryview(b"")), "2 raw contents for 1 input tensors"),
        (lambda h, raw: h.inputs[0].shape.__setitem__(0, 3), "16 bytes of raw contents, but FP32 [3] needs 12"),
        (lambda h, raw: setattr(h.inputs[0], "datatype", "BF16"), "unknown datatype 'BF16'"),
        (lambda h, raw: h.inputs.add(name="x", datatype="FP32", shape=[4]), "input 'x' appears twice"),
        (lambda h, raw: h.inputs[0].contents.fp32_contents.append(1.0), "both raw and typed contents"),
    ],
)
def test_inconsistent_requests_raise_codec_errors(mutate, message):
    parsed = framing.parse_infer_request(framing.serialize_infer_request("m", {"x": np.zeros(4, np.float32)}))
    if "twice" in message:
        parsed.raw.append(parsed.raw[0])
    mutate(parsed.header, parsed.raw)
    with pytest.raises(codec.CodecError, match=message.replace("[", "\\[").replace("]", "\\]")):
        framing.decode_inputs(parsed)


def test_server_and_client_share_one_framing():
    from rr_server import wire

    assert wire.parse_infer_request is framing.parse_infer_request
    assert wire.serialize_infer_response is framing.serialize_infer_response
    assert wire.InferRequest is framing.InferRequest


def test_encoded_size_is_the_length_of_the_serialised_response():
    outputs = {"y" * 300: np.arange(40_000, dtype=np.float32).reshape(200, 200), "s": np.array(["a", "€"], object)}
    encoded = framing.encode_outputs("m", "1", "id", outputs)
    encoded.set_run_ms(1.5)
    laid_out, _ = framing.allocate_response("m", "1", "id", [("y", np.dtype(np.float64), (3, 70))])
    for response in (encoded, laid_out):
        assert framing.encoded_size(response) == len(framing.serialize_infer_response(response))
