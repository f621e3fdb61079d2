"""The third CLI review: bad input archives, models that load but fail to run, a meter that fails mid-run, binary
token files, a --port-file that cannot be written, `plan --energy`, and `run`'s ONNX Runtime settings."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from _server_support import start_server
from test_blocks import branchy_model
from test_cli_errors import assert_one_line_error
from test_cli_usage import _subparsers, synthetic_costs

import rr_server
from rr_edge.cli import build_parser, main
from rr_edge.client import Client
from rr_edge.device import describe_device, registered_device
from rr_edge.errors import MeterError
from rr_edge.meters.base import Meter
from rr_edge.session import OrtSettings
from rr_server import cli as server_cli

REPO = Path(__file__).resolve().parents[1]
DEAD = ["--server", "127.0.0.1:1", "--node", "n", "--timeout", "2"]  # nothing listens on port 1


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("review3") / "good.onnx"
    onnx.save_model(branchy_model(), path)
    return path


@pytest.fixture(scope="module")
def x(model: Path) -> Path:
    shape = [d.dim_value for d in onnx.load(model).graph.input[0].type.tensor_type.shape.dim]
    path = model.parent / "x.npy"
    np.save(path, np.random.default_rng(0).standard_normal(shape).astype(np.float32))
    return path


@pytest.fixture
def server(tmp_path: Path):  # type: ignore[no-untyped-def]
    server = start_server(tmp_path / "data")
    yield server
    server.stop(grace=0.5)


# -- 1. an --input archive that numpy cannot read -------------------------------------------------------------------


def _npz(arrays: dict[str, np.ndarray], compressed: bool = False) -> bytes:
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def _damaged(data: bytes) -> bytes:
    """The archive with bytes in the middle of its member flipped (its directory intact)."""
    damaged = bytearray(data)
    for k in range(len(data) // 3, len(data) // 2):
        damaged[k] ^= 0x5A
    return bytes(damaged)


def _bad_member() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("x.npy", b"\x93NUMPY garbage")
    return buffer.getvalue()


BAD_INPUTS = {  # each ended in a traceback: the archive's members were read outside the error handling
    "object_array": lambda x: _npz({"x": np.array([{"a": 1}], dtype=object)}),
    "member_not_npy": lambda x: _bad_member(),
    "truncated_npz": lambda x: _npz({"x": x})[: len(_npz({"x": x})) // 2],  # zipfile.BadZipFile
    "damaged_member": lambda x: _damaged(_npz({"x": x})),  # BadZipFile: bad CRC-32
    "damaged_compressed_member": lambda x: _damaged(_npz({"x": x}, compressed=True)),  # zlib.error
}


@pytest.mark.parametrize("kind", sorted(BAD_INPUTS))
def test_an_unreadable_input_archive_is_a_one_line_error(capsys, tmp_path: Path, model, x, kind: str) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "x.npz"
    bad.write_bytes(BAD_INPUTS[kind](np.load(x)))
    code = main(["run", str(model), *DEAD, "--split", "0,0", "--input", str(bad)])
    message = assert_one_line_error(capsys, code, "run")
    assert f"cannot read input {bad} as a .npy array or an .npz archive" in message
    assert "allow_pickle" not in message and "unsafe" not in message  # never advise unpickling a file
    if kind == "object_array":
        assert message.endswith("it holds Python objects (dtype=object), not numbers")


# -- 2. a model that loads but fails when run -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gather_out_of_range(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A model that passes onnx.checker (full check) and loads in ONNX Runtime, whose Gather's constant index 9 is
    out of range of its 4 rows: it fails only when run."""
    from onnx import TensorProto, helper, numpy_helper

    d = tmp_path_factory.mktemp("gather")
    idx = numpy_helper.from_array(np.array([0, 9], dtype=np.int64), "idx")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["x", "idx"], ["g"], axis=0), helper.make_node("Relu", ["g"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        [idx],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, d / "gather.onnx")
    np.save(d / "x.npy", np.ones((4, 3), np.float32))
    return d / "gather.onnx", d / "x.npy"


def test_run_of_a_model_that_fails_to_run_is_one_clear_error(capsys, gather_out_of_range) -> None:  # type: ignore[no-untyped-def]
    path, x = gather_out_of_range
    code = main(["run", str(path), *DEAD, "--split", "0,0", "--input", str(x)])
    message = assert_one_line_error(capsys, code, "run")
    assert "ONNX Runtime cannot run the model: " in message and "out of data bounds" in message
    assert "[ONNXRuntimeError]" not in message


def test_profile_of_a_model_that_fails_to_run_is_one_clear_error_and_registers_nothing(  # type: ignore[no-untyped-def]
    capsys, server, gather_out_of_range
) -> None:
    path, _ = gather_out_of_range
    code = main(["profile", str(path), "--server", server.address, "--node", "edge", "--json"])
    message = assert_one_line_error(capsys, code, "profile")
    assert "gather[0]: ONNX Runtime cannot run the model: " in message and "out of data bounds" in message
    with Client(server.address) as client:
        assert registered_device(client, "edge") is None  # it failed before anything was sent


# -- 3. an energy meter that fails mid-run --------------------------------------------------------------------------


class FailingMeter(Meter):
    """A real meter (5 W) whose reads fail after `good` windows, as a Jetson rail that stops answering or a RAPL
    file that goes away: every window closed after that raises MeterError."""

    source = "rapl"

    def __init__(self, good: int, min_window_s: float = 1e-6) -> None:
        super().__init__()
        self.good, self.min_window_s, self.stops = good, min_window_s, 0

    def _begin(self, activity: str) -> None:
        return None

    def _end(self, state: Any, elapsed_s: float) -> float:
        self.stops += 1
        if self.stops > self.good:
            raise MeterError("/sys/class/powercap/intel-rapl:0/energy_uj does not exist")
        return 5.0 * elapsed_s * 1000.0


def _meter_failures(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "energy meter failed" in r.getMessage()]


def test_run_keeps_its_requests_when_the_meter_fails_mid_run(monkeypatch, caplog, capsys, tmp_path, model, x) -> None:  # type: ignore[no-untyped-def]
    """`run` threw away every finished request and wrote no --output when the meter failed (found by review)."""
    caplog.set_level("WARNING", logger="rr_edge")
    meter = FailingMeter(good=3)
    monkeypatch.setattr("rr_edge.commands._common.select_meter", lambda *a, **kw: meter)
    y = tmp_path / "y.npy"
    argv = ["run", str(model), *DEAD, "--split", "0,0", "--input", str(x), "--repeat", "8", "--output", str(y)]
    assert main([*argv, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["requests"] == 8 and y.exists()
    assert out["energy_mJ"] > 0 and out["energy_source"] == "rapl"  # from the windows read before the failure
    assert 1 <= out["energy_unmetered_requests"] <= 5
    assert meter.stops == meter.good + 1  # not read again once it failed
    assert len(_meter_failures(caplog)) == 1


def test_run_whose_meter_never_reads_reports_its_energy_unavailable(monkeypatch, caplog, capsys, model, x) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level("WARNING", logger="rr_edge")
    monkeypatch.setattr("rr_edge.commands._common.select_meter", lambda *a, **kw: FailingMeter(good=0))
    argv = ["run", str(model), *DEAD, "--split", "0,0", "--input", str(x), "--repeat", "3"]
    assert main([*argv, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["energy_mJ"] is None and out["energy_unmetered_requests"] == 3
    assert [s["energy_mJ"] for s in out["segments"]] == [None]
    assert main(argv) == 0  # the table for people too
    assert "energy: the meter failed; 3 requests not metered" in capsys.readouterr().out
    assert len(_meter_failures(caplog)) == 2  # once per run


def test_profile_keeps_its_latencies_when_the_meter_fails_mid_run(monkeypatch, caplog, capsys, server, model) -> None:  # type: ignore[no-untyped-def]
    """A profile lost every latency measured when the meter failed; the blocks the meter did read keep their
    energy, the rest are reported without, and the server stores them all."""
    caplog.set_level("WARNING", logger="rr_edge")
    meter = FailingMeter(good=1)
    monkeypatch.setattr("rr_edge.commands._common.select_meter", lambda *a, **kw: meter)
    argv = ["profile", str(model), "--server", server.address, "--node", "edge", "--sample", "1", "--rounds", "1"]
    assert main([*argv, "--min-runs", "2", "--min-time", "0", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    profiled = out["profiled"]
    assert len(profiled) >= 2 and all(p["latency_ms"]["median"] > 0 for p in profiled)
    assert profiled[0]["energy_mJ"] > 0  # its window closed before the failure
    assert [p["energy_mJ"] for p in profiled[1:]] == [None] * (len(profiled) - 1)
    assert out["whole_model"]["latency_ms"]["median"] > 0 and out["whole_model"]["energy_mJ"] is None
    assert meter.stops == 2 and len(_meter_failures(caplog)) == 1
    with Client(server.address) as client:
        assert client.list_measured_signatures("edge") == {p["signature"] for p in profiled}


# -- 4. a token file that is not text -------------------------------------------------------------------------------


def test_a_binary_token_file_is_a_one_line_error(capsys, tmp_path: Path, model) -> None:  # type: ignore[no-untyped-def]
    token = tmp_path / "bin.tok"
    token.write_bytes(b"\xff\xfe\x00abc")
    code = main(["upload", str(model), "--server", "127.0.0.1:1", "--token-file", str(token)])
    assert assert_one_line_error(capsys, code, "upload").endswith(f"cannot read token file {token}: not UTF-8 text")


def test_the_server_names_its_binary_token_file(tmp_path: Path) -> None:
    token = tmp_path / "bin.tok"
    token.write_bytes(b"\xff\xfe\x00abc")
    argv = ["--data-dir", str(tmp_path / "data"), "--listen", "127.0.0.1:0", "--log-format", "text"]
    done = subprocess.run(
        [sys.executable, "-m", "rr_server.cli", *argv, "--auth-token-file", str(token)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].endswith(f"cannot start: --auth-token-file {token}: not UTF-8 text")


def test_a_decode_error_of_another_file_is_not_blamed_on_the_token_file(tmp_path: Path) -> None:
    token = tmp_path / "tokens"
    token.write_text("edge secret\n")
    args = server_cli.parse_args(["--data-dir", str(tmp_path), "--auth-token-file", str(token)])
    exc = UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
    assert server_cli._with_its_flag(exc, args) == str(exc)


# -- 5. a --port-file that cannot be written ------------------------------------------------------------------------


def test_a_port_file_that_is_a_directory_is_refused_when_parsed(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit) as exc:
        server_cli.parse_args(["--data-dir", str(tmp_path / "data"), "--port-file", str(tmp_path)])
    assert exc.value.code == 2
    assert f"--port-file: '{tmp_path}' is a directory" in capsys.readouterr().err


def test_a_port_file_that_cannot_be_written_stops_the_server(monkeypatch, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """Made a directory after the flags were checked: the write failed with a traceback after the port was bound,
    and left its temporary file. (main replaces the root logger's handlers: conftest puts them back.)"""
    port_file = tmp_path / "port"
    parse_args = server_cli.parse_args

    def parse_then_block(argv: list[str] | None = None) -> Any:
        args = parse_args(argv)
        port_file.mkdir()
        return args

    monkeypatch.setattr(server_cli, "parse_args", parse_then_block)
    argv = ["--data-dir", str(tmp_path / "data"), "--listen", "127.0.0.1:0", "--port-file", str(port_file)]
    assert server_cli.main([*argv, "--log-format", "text"]) == 2
    err = capsys.readouterr().err
    assert f"cannot write --port-file {port_file}" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "port"]  # no port.tmp left
    with rr_server.Server(rr_server.ServerConfig(data_dir=tmp_path / "data", listen="127.0.0.1:0")) as again:
        assert again.address  # the first server stopped: its data dir is free


# -- 6. plan measures nothing -----------------------------------------------------------------------------------------


def test_plan_takes_no_energy_meter(capsys, model) -> None:  # type: ignore[no-untyped-def]
    """`plan --energy nvml` was accepted and ignored: plan makes no meter."""
    with pytest.raises(SystemExit) as exc:
        main(["plan", str(model), *DEAD, "--energy", "nvml"])
    assert exc.value.code == 2 and "unrecognized arguments: --energy nvml" in capsys.readouterr().err
    plan = build_parser(["plan"]).parse_args(["plan", str(model), *DEAD, "--power-config", "p.json"])
    assert plan.power_config == Path("p.json") and plan.device_class is None


@pytest.mark.parametrize("command", ["profile", "netprofile", "run", "plan"])
def test_the_power_config_help_says_what_the_file_is_used_for(command: str) -> None:
    helps = {a.dest: a.help or "" for a in _subparsers(build_parser([command]))[command]._actions}
    assert "idle and radio watts" in helps["power_config"]
    assert ("energy" in helps) == (command != "plan")


# -- 7. run's ONNX Runtime settings ---------------------------------------------------------------------------------


def _run_args(model: Path, *flags: str) -> Any:
    return build_parser(["run"]).parse_args(["run", str(model), *DEAD, "--input", "x.npy", *flags])


def test_run_takes_the_onnx_runtime_settings_profile_takes(model) -> None:  # type: ignore[no-untyped-def]
    from rr_edge.commands._common import ort_settings

    assert ort_settings(_run_args(model)) == OrtSettings(intra_op_threads=-1).resolved()  # the default as before
    settings = ort_settings(_run_args(model, "--provider", "cpu", "--graph-optimization", "basic", "--threads", "1"))
    assert settings == OrtSettings("CPUExecutionProvider", 1, 1, "basic").resolved()


def test_run_warns_when_the_node_was_profiled_with_another_setup(monkeypatch, caplog, server, model, x) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level("WARNING", logger="rr_edge")
    profiled = OrtSettings(intra_op_threads=1, graph_optimization="basic").resolved()
    with Client(server.address) as client:
        client.register_node("edge", describe_device(profiled))
    monkeypatch.setattr("rr_edge.commands.run.gather_costs", lambda *a, **kw: synthetic_costs(model))
    argv = ["run", str(model), "--server", server.address, "--node", "edge", "--split", "0,0", "--input", str(x)]

    def setup_warnings() -> list[str]:
        found = [r.getMessage() for r in caplog.records if "was profiled with another setup" in r.getMessage()]
        caplog.clear()
        return found

    assert main([*argv, "--threads", "1", "--graph-optimization", "basic", "--json"]) == 0
    assert setup_warnings() == []
    assert main([*argv, "--threads", "1", "--json"]) == 0
    [warning] = setup_warnings()
    assert "graph_optimization basic -> all" in warning and "intra_op_threads" not in warning
