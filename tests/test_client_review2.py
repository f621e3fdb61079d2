"""rr_edge.client against a real in-process server: deadlines, addresses, options, tokens and inputs that could not
work (second client review). Each test names what the old code did."""

from __future__ import annotations

import gc
import math
import re
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from _server_support import IR_VERSION, conv_model, start_server
from onnx import TensorProto, helper

import rr_edge.client
import rr_edge.echo
from rr_edge.cli import main
from rr_edge.client import MAX_TIMEOUT_S, Client, ClientOptions, TlsOptions, check_address
from rr_edge.errors import ArgumentError, InputError, RoadRunnerError, ServerError
from rr_proto import codec

DEAD = ["--server", "127.0.0.1:1", "--timeout", "2"]  # nothing listens on port 1


def _identity(elem_type: int, shape: list[int]) -> bytes:
    x = helper.make_tensor_value_info("x", elem_type, shape)
    y = helper.make_tensor_value_info("y", elem_type, shape)
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity", [x], [y])
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=IR_VERSION
    ).SerializeToString()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    srv = start_server(tmp_path_factory.mktemp("rr-client-review2"))
    try:
        yield srv.address
    finally:
        srv.stop(grace=0.5)


@pytest.fixture()
def client(server: str) -> Iterator[Client]:
    with Client(server) as c:
        yield c


@pytest.fixture(scope="module")
def strings(server: str) -> str:
    """Slice id of a string Identity on the server."""
    with Client(server) as c:
        return c.ensure_slice(_identity(TensorProto.STRING, [3]))


@pytest.fixture(scope="module")
def floats(server: str) -> str:
    with Client(server) as c:
        return c.ensure_slice(_identity(TensorProto.FLOAT, [2]))


@pytest.fixture()
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "m.onnx"
    path.write_bytes(conv_model())
    return path


# -- 1. a huge or infinite deadline -----------------------------------------------------------------------------------


@pytest.mark.parametrize("timeout_s", [1e10, 1e12, math.inf])
def test_a_huge_or_infinite_call_timeout_is_no_deadline(client: Client, floats: str, timeout_s: float) -> None:
    """gRPC's deadline overflowed int64 ns past ~7e9 s: every such call failed at once with DEADLINE_EXCEEDED."""
    assert client.health(timeout_s=timeout_s) == "SERVING"
    assert client.server_info(timeout_s=timeout_s).cloud_node_id
    assert client.echo_send(1000, timeout_s=timeout_s) == 1000
    x = np.array([1.0, 2.0], np.float32)
    assert client.infer(floats, {"x": x}, timeout_s=timeout_s)["y"].tolist() == [1.0, 2.0]
    stream = client.stream_infer(floats, [{"x": x}], timeout_s=timeout_s)
    assert next(stream)["y"].tolist() == [1.0, 2.0]


def test_a_nan_call_timeout_is_an_argument_error(client: Client) -> None:
    with pytest.raises(ArgumentError, match="timeout_s must be a number of seconds > 0, got nan"):
        client.health(timeout_s=math.nan)


def test_the_largest_default_timeout_still_works_for_transfers(server: str) -> None:
    """The default deadline of a transfer adds its bytes' time to timeout_s: capped too."""
    with Client(server, ClientOptions(timeout_s=MAX_TIMEOUT_S, min_bandwidth_bytes_per_s=1e-3)) as c:
        assert c.echo_send(4096) == 4096 and c.echo_receive(4096) == 4096


@pytest.mark.parametrize("timeout_s", [math.inf, math.nan, 2 * MAX_TIMEOUT_S])
def test_a_default_timeout_that_is_no_deadline_is_refused(timeout_s: float) -> None:
    with pytest.raises(ArgumentError, match=r"ClientOptions.timeout_s must be a finite number > 0 and at most 1e\+09"):
        ClientOptions(timeout_s=timeout_s)


def test_the_cli_timeout_is_bounded(capsys: pytest.CaptureFixture[str], model_file: Path) -> None:
    """`--timeout 1e10` was taken, and every call then failed with DEADLINE_EXCEEDED."""
    with pytest.raises(SystemExit) as info:
        main(["upload", str(model_file), "--server", "127.0.0.1:1", "--timeout", "1e10"])
    assert info.value.code == 2
    assert "argument --timeout: must be a finite number > 0 and <= 1e+09, got 1e10" in capsys.readouterr().err


# -- 2. grpcs:// and --tls-key ----------------------------------------------------------------------------------------


def test_grpcs_turns_tls_on(server: str) -> None:
    """grpcs:// was stripped and the channel was plaintext: the bearer token went out unencrypted. Now the channel
    is TLS (system roots), so a plaintext server does not answer it."""
    with Client(f"grpcs://{server}", ClientOptions(token="s3cret", timeout_s=5)) as c:
        assert not c.healthy()
        assert c.options.tls == TlsOptions() and c.options.token == "s3cret" and c.address == server
    with Client(f"grpc://{server}") as plain:
        assert plain.options.tls is None and plain.healthy()


def test_grpcs_keeps_the_tls_options_given(server: str) -> None:
    tls = TlsOptions(server_name="rr.example")
    with Client(f"GRPCS://{server}", ClientOptions(tls=tls)) as c:
        assert c.options.tls is tls and c.address == server


def test_tls_key_alone_is_refused_like_tls_cert_alone(capsys: pytest.CaptureFixture[str], model_file: Path) -> None:
    """--tls-key without --tls-cert was ignored without a word (the channel was even plaintext)."""
    key = model_file.parent / "key.pem"
    key.write_text("not read: the flags are checked first")
    for flag in ("--tls-key", "--tls-cert"):
        assert main(["upload", str(model_file), *DEAD, flag, str(key)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "mTLS needs both a client certificate and its key" in err[0], err


# -- 4. object tensors ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("elements", "culprit"),
    [
        ([1, 2, 3], "element 0 is of type int"),
        (["a", 1.5, "b"], "element 1 is of type float"),
        (["a", "b", None], "element 2 is of type NoneType"),
    ],
)
def test_a_bytes_tensor_of_other_objects_is_an_input_error(
    client: Client, strings: str, elements: list, culprit: str
) -> None:
    """Python ints went out as NUL bytes (`bytes(7)`) without a word; floats and None raised a bare TypeError."""
    x = np.array(elements, dtype=object)
    with pytest.raises(InputError, match=f"tensor 'x': BYTES {culprit}; a BYTES tensor holds str or bytes only"):
        client.infer(strings, {"x": x})
    with pytest.raises(InputError, match=culprit):
        next(client.stream_infer(strings, [{"x": x}]))


def test_str_and_bytes_like_elements_travel(client: Client, strings: str) -> None:
    x = np.array(["a", b"b", bytearray(b"c")], dtype=object)
    assert client.infer(strings, {"x": x})["y"].tolist() == ["a", "b", "c"]
    x = np.array([np.str_("d"), np.bytes_(b"e"), memoryview(b"f")], dtype=object)
    assert client.infer(strings, {"x": x})["y"].tolist() == ["d", "e", "f"]


@pytest.mark.parametrize("dtype", [np.complex64, "datetime64[s]"])
def test_a_dtype_kserve_has_no_datatype_for_is_an_input_error(client: Client, floats: str, dtype) -> None:
    """codec's CodecError is no RoadRunnerError: the CLI showed a traceback for it."""
    with pytest.raises(InputError, match="has no KServe datatype") as info:
        client.infer(floats, {"x": np.zeros(2, dtype=dtype)})
    assert isinstance(info.value, RoadRunnerError) and isinstance(info.value, ValueError)


def test_codec_names_the_element_that_cannot_be_sent() -> None:
    with pytest.raises(codec.CodecError, match="tensor 's': BYTES element 3 is of type int"):
        codec.encode_infer_request("m", {"s": np.array(["a", b"b", "c", 4], dtype=object)})


# -- 5. options that cannot work ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "bound"),
    [
        ("busy_wait_s", math.nan, ">= 0"),  # a busy retry never ended
        ("busy_wait_s", -1.0, ">= 0"),
        ("busy_wait_s", math.inf, ">= 0"),
        ("max_reconnect_backoff_s", math.nan, ">= 0"),  # a bare ValueError from round()
        ("max_reconnect_backoff_s", -5.0, ">= 0"),
        ("max_reconnect_backoff_s", 1e12, ">= 0 and at most 3600"),
        ("min_bandwidth_bytes_per_s", math.nan, "> 0"),
        ("min_bandwidth_bytes_per_s", math.inf, "> 0"),
        ("timeout_s", -1.0, "> 0"),
    ],
)
def test_options_must_be_finite_and_in_range(field: str, value: float, bound: str) -> None:
    with pytest.raises(ArgumentError, match=f"ClientOptions.{field} must be a finite number {bound}"):
        ClientOptions(**{field: value})


def test_zero_waits_are_allowed() -> None:
    options = ClientOptions(busy_wait_s=0, max_reconnect_backoff_s=0)
    assert ("grpc.max_reconnect_backoff_ms", 1) in options.channel_options()


# -- 8. the echo payload --------------------------------------------------------------------------------------------


def test_echo_payloads_of_many_sizes_hold_a_bounded_amount(client: Client) -> None:
    """Every size a sweep sent stayed cached: 402 MiB held after a sweep with 64 MiB chunks. Now one block (the
    largest payload) and at most CACHE_BYTES of recent shorter ones are kept."""
    mib = 1024 * 1024
    chunk = 8 * mib
    client.echo_send(10, chunk_bytes=chunk)  # the channel's own first-call allocations, before the count
    sizes = [k * mib + 1 for k in range(1, 8)]
    gc.collect()
    tracemalloc.start()
    try:
        for n in [*sizes, chunk, 3 * chunk + 5, *reversed(sizes)]:  # sizes up to the chunk, then down again
            assert client.echo_send(n, chunk_bytes=chunk) == n
        gc.collect()
        held = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(True, rr_edge.echo.__file__)])
    finally:
        tracemalloc.stop()
    held_bytes = sum(stat.size for stat in held.statistics("filename"))
    bound = chunk + rr_edge.echo._Payloads.CACHE_BYTES  # before: every size, 36 MiB here
    assert held_bytes <= bound + 64 * 1024, held_bytes


# -- 9. addresses and byte counts --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("::1:8001", "an IPv6 host goes in brackets"),  # which colon ends the host? gRPC guessed
        ("fe80::1:8001", "an IPv6 host goes in brackets"),
        ("host:\u00b2", "the port must be a number from 1 to 65535"),  # "²".isdigit(): a bare ValueError from int()
        ("host:\u0661\u0662", "the port must be a number from 1 to 65535"),  # Arabic-Indic digits: int() takes them
    ],
)
def test_addresses_that_cannot_be_dialled_are_refused(address: str, message: str) -> None:
    with pytest.raises(ArgumentError, match=message):
        check_address(address)


@pytest.mark.parametrize("scheme", ["grpc", "GRPC", "Grpc"])
def test_the_scheme_is_taken_in_any_case(server: str, scheme: str) -> None:
    """GRPC:// stayed in the address, and gRPC could not resolve it."""
    with Client(f"{scheme}://{server}", ClientOptions(timeout_s=5)) as c:
        assert c.address == server and c.health() == "SERVING"


def test_a_negative_byte_count_is_an_argument_error(client: Client) -> None:
    """echo_send(-1) reached the server and came back as DATA_LOSS."""
    with pytest.raises(ArgumentError, match="nbytes must be >= 0, got -1"):
        client.echo_send(-1)
    with pytest.raises(ArgumentError, match="nbytes must be >= 0, got -5"):
        client.echo_receive(-5)
    assert client.echo_send(0) == 0


# -- 10. tokens that cannot travel ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "where"),
    [("a\nb", "2 of 3 is U+000A"), ("t\u00f6k", "2 of 3 is U+00F6"), ("s3 cret", "3 of 7 is U+0020"),
     ("ab\x00", "3 of 3 is U+0000")],
)  # fmt: skip
def test_a_token_that_cannot_travel_in_metadata_is_refused(token: str, where: str) -> None:
    """Such a token failed every call with INTERNAL "Invalid metadata"."""
    with pytest.raises(
        ArgumentError, match=f"ClientOptions.token: .*printable ASCII.*character {re.escape(where)}"
    ) as info:
        ClientOptions(token=token)
    assert token not in str(info.value)


def test_the_cli_names_the_token_file(
    capsys: pytest.CaptureFixture[str], model_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A copy of the server's token file (`node token` lines) failed every call with INTERNAL "Invalid metadata"."""
    tokens = model_file.parent / "tokens"
    tokens.write_text("edge-1 s3cret\nedge-2 other\n")
    assert main(["upload", str(model_file), *DEAD, "--token-file", str(tokens)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--token-file {tokens}: a bearer token is printable ASCII" in err[0], err
    assert "s3cret" not in err[0]
    assert err[0].endswith("(a line of rr-server's --auth-token-file is NODE_ID TOKEN: give the token alone)")
    tokens.write_text("s3cret\n")  # the token alone
    assert main(["upload", str(model_file), *DEAD, "--token-file", str(tokens)]) == 2
    assert "printable ASCII" not in capsys.readouterr().err
    monkeypatch.setenv("RR_TOKEN", "two words")
    assert main(["upload", str(model_file), *DEAD]) == 2
    assert "$RR_TOKEN: a bearer token is printable ASCII" in capsys.readouterr().err


def test_a_valid_token_still_travels(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("edge-1 s3cret~!\n")
    srv = start_server(tmp_path / "data", auth_token_file=tokens)
    try:
        with Client(srv.address, ClientOptions(token="s3cret~!")) as c:
            assert c.register_node("edge-1") is True  # a new node on a new server
        with Client(srv.address, ClientOptions(token="")) as c, pytest.raises(ServerError) as info:
            c.register_node("edge-1")  # "" is no token
        assert info.value.code == "UNAUTHENTICATED"
    finally:
        srv.stop(grace=0.5)
