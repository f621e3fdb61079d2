"""Bad input to every model command: one line on stderr, exit code 2, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from test_blocks import branchy_model
from test_graph_edge_cases import io, make

from rr_edge.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")
    good = d / "good.onnx"
    onnx.save_model(branchy_model(), good)
    data = good.read_bytes()
    files = {"good": good}
    files["not_onnx"] = d / "notes.onnx"
    files["not_onnx"].write_text("this is not a model\n" * 20)
    files["empty"] = d / "empty.onnx"
    files["empty"].write_bytes(b"")
    for frac in (0.5, 0.9):
        f = d / f"truncated_{frac}.onnx"
        f.write_bytes(data[: int(len(data) * frac)])
        files[f"truncated_{frac}"] = f
    ext = d / "external.onnx"
    onnx.save_model(
        branchy_model(), ext, save_as_external_data=True, all_tensors_to_one_file=True,
        location="external.data", size_threshold=0,
    )  # fmt: skip
    (d / "external.data").unlink()
    files["missing_external"] = ext
    short = d / "short_external.onnx"
    onnx.save_model(
        branchy_model(), short, save_as_external_data=True, all_tensors_to_one_file=True,
        location="short.data", size_threshold=0,
    )  # fmt: skip
    raw = (d / "short.data").read_bytes()
    (d / "short.data").write_bytes(raw[: len(raw) // 2])
    files["short_external"] = short
    files["missing"] = d / "does_not_exist.onnx"
    files["directory"] = d
    return files


BAD = [
    "not_onnx",
    "empty",
    "truncated_0.5",
    "truncated_0.9",
    "missing_external",
    "short_external",
    "missing",
    "directory",
]


def assert_one_line_error(capsys: pytest.CaptureFixture[str], code: int, command: str) -> str:
    out, err = capsys.readouterr()
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"rr-edge {command}: error: ")
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("kind", BAD)
@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_blocks_bad_model(bad_files, capsys, kind: str, json_flag: list[str]) -> None:  # type: ignore[no-untyped-def]
    code = main(["blocks", str(bad_files[kind]), *json_flag])
    line = assert_one_line_error(capsys, code, "blocks")
    if kind == "missing_external":
        assert "external.data" in line


@pytest.mark.parametrize("kind", BAD)
def test_slice_bad_model(bad_files, capsys, tmp_path: Path, kind: str) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "part.onnx"
    code = main(["slice", str(bad_files[kind]), "--blocks", "0:1", "-o", str(out)])
    assert_one_line_error(capsys, code, "slice")
    assert not out.exists()


@pytest.mark.parametrize("blocks", ["0:4", "4:4", "2:1", "-9:0", "0:99", "a:b", "1:x", ""])
def test_slice_bad_range(bad_files, capsys, tmp_path: Path, blocks: str) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "part.onnx"
    code = main(["slice", str(bad_files["good"]), "--blocks", blocks, "-o", str(out)])
    line = assert_one_line_error(capsys, code, "slice")
    assert "--blocks" in line
    assert not out.exists()


def test_slice_good_range_writes_model(bad_files, capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "part.onnx"
    assert main(["slice", str(bad_files["good"]), "--blocks", "-3:-1", "-o", str(out)]) == 0
    onnx.checker.check_model(onnx.load(out), full_check=True)


@pytest.mark.parametrize(
    "argv",
    [
        ["no_such_model_xyz"],
        ["resnet5O"],
        ["resnet18", "--input-size", "0"],
        ["resnet18", "--batch", "-1"],
        ["--from", "nocolon"],
        ["--from", "no_such_module_xyz:make"],
        ["--from", "/no/such/file.py:make"],
        ["--from", "json:nothing_here"],
        ["--from", "json:dumps"],  # callable that fails
        ["--from", "collections:OrderedDict"],  # returns something that is not a module
        [],
    ],
)
def test_export_bad_input(capsys, tmp_path: Path, argv: list[str]) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "m.onnx"
    code = main(["export", *argv, "-o", str(out)])
    assert_one_line_error(capsys, code, "export")
    assert not out.exists()


def test_subprocess_error_has_no_traceback(bad_files) -> None:  # type: ignore[no-untyped-def]
    proc = subprocess.run(
        [sys.executable, "-m", "rr_edge.cli", "blocks", str(bad_files["truncated_0.5"]), "--json"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_export_from_module_with_syntax_error(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "broken.py"
    src.write_text("def make(:\n    pass\n")
    code = main(["export", "--from", f"{src}:make", "-o", str(tmp_path / "m.onnx")])
    line = assert_one_line_error(capsys, code, "export")
    assert "SyntaxError" in line


# -- the commands that talk to a server ---------------------------------------------------------------------------

DEAD = ["--server", "127.0.0.1:1", "--node", "n", "--timeout", "2"]  # nothing listens on port 1


@pytest.mark.parametrize("command", ["profile", "plan", "run", "upload"])
@pytest.mark.parametrize("kind", ["not_onnx", "truncated_0.5", "missing_external", "missing"])
def test_server_commands_reject_bad_models(bad_files, capsys, tmp_path: Path, command: str, kind: str) -> None:  # type: ignore[no-untyped-def]
    extra = ["--input", str(tmp_path / "x.npy")] if command == "run" else []
    argv = [command, str(bad_files[kind]), *(DEAD if command != "upload" else DEAD[:2]), *extra]
    assert_one_line_error(capsys, main(argv), command)


@pytest.mark.parametrize("command", ["profile", "plan", "netprofile"])
def test_unreachable_server_is_a_one_line_error(bad_files, capsys, command: str) -> None:  # type: ignore[no-untyped-def]
    argv = [command, *([] if command == "netprofile" else [str(bad_files["good"])]), *DEAD]
    line = assert_one_line_error(capsys, main(argv), command)
    assert "UNAVAILABLE" in line or "unavailable" in line.lower() or "DEADLINE" in line


def test_run_without_a_server_to_plan_with_runs_locally(bad_files, capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """No plan can be made without the server: every request runs the whole model locally, marked as fallback."""
    x = tmp_path / "x.npy"
    np.save(x, np.random.default_rng(0).standard_normal(_input_of(bad_files["good"])[1]).astype(np.float32))
    assert main(["run", str(bad_files["good"]), *DEAD, "--input", str(x), "--repeat", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["fallback"] and out["fallback_requests"] == 2 and out["max_abs_diff_vs_local"] < 1e-3


@pytest.mark.parametrize(
    "planning",
    [["--objective", "energy"], ["--slo-ms", "5"], ["--objective", "pareto", "--amortize", "4", "--slo-ms", "9"]],
)
def test_run_split_takes_no_choice_of_plan(bad_files, capsys, planning: list[str]) -> None:  # type: ignore[no-untyped-def]
    code = main(["run", str(bad_files["good"]), *DEAD, "--split", "0,0", *planning, "--input", "x.npy"])
    message = assert_one_line_error(capsys, code, "run")
    assert "--split forces the plan" in message
    refused = [flag for flag in planning if flag in ("--objective", "--slo-ms")]
    assert all(flag in message for flag in refused)  # names exactly the flags refused (--amortize costs the split)
    assert message.count("--") == 1 + len(refused)


def _input_of(path: Path) -> tuple[str, list[int]]:
    vi = onnx.load(path).graph.input[0]
    return vi.name, [d.dim_value for d in vi.type.tensor_type.shape.dim]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda shape: np.zeros([d + 1 for d in shape], np.float32), "does not match the model input"),
        (lambda shape: np.zeros(shape, np.float64), "does not match the model input"),
        (None, "cannot read input"),
    ],
)
def test_run_rejects_bad_input_arrays(bad_files, capsys, tmp_path: Path, make, message: str) -> None:  # type: ignore[no-untyped-def]
    x = tmp_path / "x.npy"
    if make is not None:
        np.save(x, make(_input_of(bad_files["good"])[1]))
    code = main(["run", str(bad_files["good"]), *DEAD, "--split", "0,0", "--input", str(x)])
    assert message in assert_one_line_error(capsys, code, "run")


def test_run_says_the_input_must_be_a_npy_array(bad_files, capsys) -> None:  # type: ignore[no-untyped-def]
    # an ONNX file passed as the input: numpy alone says "pickled data", which tells a user nothing
    code = main(["run", str(bad_files["good"]), *DEAD, "--split", "0,0", "--input", str(bad_files["good"])])
    message = assert_one_line_error(capsys, code, "run")
    assert (
        "as a .npy array or an .npz archive (numpy.save / numpy.savez write them): not a .npy or .npz file" in message
    )
    assert "allow_pickle" not in message and "unsafe" not in message  # never advise unpickling a file


def two_input_model() -> onnx.ModelProto:
    """y = Relu(a + b) @ w, z = Sigmoid(y): two inputs, two outputs."""
    from onnx import helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Add", ["a", "b"], ["s"]),
        helper.make_node("Relu", ["s"], ["r"]),
        helper.make_node("MatMul", ["r", "w"], ["y"]),
        helper.make_node("Sigmoid", ["y"], ["z"]),
    ]
    return make(nodes, [io(n, [1, 4]) for n in ("a", "b")], [io(n, [1, 3]) for n in ("y", "z")], [w], ir=9)


def test_run_takes_an_npz_archive_for_a_model_of_several_inputs(capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`rr-edge run` took single-input models only (a token-id + mask model could run from Python alone: model
    review): an .npz archive gives every input by name, and an .npz --output keeps every output."""
    path = tmp_path / "two.onnx"
    onnx.save(two_input_model(), path)
    rng = np.random.default_rng(1)
    a, b = (rng.standard_normal((1, 4)).astype(np.float32) for _ in range(2))
    np.savez(tmp_path / "x.npz", a=a, b=b)
    out = tmp_path / "y.npz"
    argv = ["run", str(path), *DEAD, "--split", "1,1", "--input", str(tmp_path / "x.npz"), "--output", str(out)]
    assert main([*argv, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["max_abs_diff_vs_local"] == 0.0
    with np.load(out) as got:
        y = np.maximum(a + b, 0) @ onnx.numpy_helper.to_array(two_input_model().graph.initializer[0])
        np.testing.assert_allclose(got["y"], y, rtol=1e-5)
        np.testing.assert_allclose(got["z"], 1 / (1 + np.exp(-y)), rtol=1e-5)
    # one array, or an archive of other names: what the model takes, by name
    np.save(tmp_path / "a.npy", a)
    np.savez(tmp_path / "ac.npz", a=a, c=b)
    for given, said in (
        ("a.npy", "is one array; the model takes 2 inputs (a, b)"),
        ("ac.npz", "holds arrays ['a', 'c']"),
    ):
        code = main([*argv[:-4], "--input", str(tmp_path / given)])
        assert said in assert_one_line_error(capsys, code, "run")


def test_run_takes_an_npz_archive_of_one_array_for_a_model_of_one_input(bad_files, capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """numpy.load returns an archive object for .npz: run failed on it with an AttributeError (found by review); an
    archive of one array, whatever its name, is that input."""
    x = tmp_path / "x.npz"
    np.savez(x, np.zeros(_input_of(bad_files["good"])[1], np.float32))  # named arr_0
    assert main(["run", str(bad_files["good"]), *DEAD, "--split", "0,0", "--input", str(x), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["fallback"] is False


@pytest.mark.parametrize("split", ["5,1", "-2,0", "0,99", "a,b", "1", ""])  # "": it had planned as if not given
def test_run_rejects_bad_splits(bad_files, capsys, tmp_path: Path, split: str) -> None:  # type: ignore[no-untyped-def]
    x = tmp_path / "x.npy"
    np.save(x, np.zeros(_input_of(bad_files["good"])[1], np.float32))
    code = main(["run", str(bad_files["good"]), *DEAD, "--split", split, "--input", str(x)])
    assert "--split" in assert_one_line_error(capsys, code, "run")


def test_run_refuses_a_split_that_offloads_a_block_the_server_does_not_run(capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The server refused such a slice after its upload, with a message naming the domain but not the block."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["a"]),
        helper.make_node("Gelu", ["a"], ["b"], domain="com.microsoft"),
        helper.make_node("MatMul", ["b", "w"], ["y"]),
    ]
    w = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4]) for n in ("x", "y")]
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(helper.make_graph(nodes, "g", io[:1], io[1:], [w]), opset_imports=opsets)
    model.ir_version = 8
    onnx.save(model, tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", np.ones((1, 4), np.float32))
    code = main(["run", str(tmp_path / "m.onnx"), *DEAD, "--split", "-1,1", "--input", str(tmp_path / "x.npy")])
    message = assert_one_line_error(capsys, code, "run")
    assert "offloads block 1 (Gelu, MatMul)" in message and "keep it on the edge" in message


def test_output_files_are_checked_before_the_work(bad_files, capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A file a command cannot write is refused when the command line is read, not after the run that produces it."""
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    x = tmp_path / "x.npy"
    np.save(x, np.zeros(_input_of(bad_files["good"])[1], np.float32))
    for argv, fragment in (
        (["run", str(bad_files["good"]), *DEAD, "--split", "0,0", "--input", str(x), "--output", str(tmp_path)],
         "is a directory"),
        (["run", str(bad_files["good"]), *DEAD, "--split", "0,0", "--input", str(x), "--output", f"{blocked}/y.npy"],
         "not a writable directory"),
        (["plan", str(bad_files["good"]), *DEAD, "--plot", str(tmp_path / "p.txt")], "a figure ends in one of"),
        (["slice", str(bad_files["good"]), "--blocks", "0:0", "-o", f"{blocked}/s.onnx"], "not a writable directory"),
    ):  # fmt: skip
        with pytest.raises(SystemExit) as exc:
            main(argv)
        err = capsys.readouterr().err
        assert exc.value.code == 2 and fragment in err.strip().splitlines()[-1] and "Traceback" not in err


def test_output_is_written_at_exactly_the_path_given(bad_files, capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    x = tmp_path / "x.npy"
    np.save(x, np.zeros(_input_of(bad_files["good"])[1], np.float32))
    out = tmp_path / "new-dir" / "y_out"  # no .npy suffix, in a directory made for it
    assert main(["run", str(bad_files["good"]), *DEAD, "--split", "0,0", "--input", str(x), "--output", str(out)]) == 0
    assert np.load(out).shape and not out.with_suffix(".npy").exists()


def test_a_file_error_at_run_time_is_one_line(bad_files, capsys, monkeypatch, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    def refuse(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise PermissionError(13, "Permission denied", str(tmp_path / "s.onnx"))

    monkeypatch.setattr("rr_edge.commands.slice.save_model", refuse)
    code = main(["slice", str(bad_files["good"]), "--blocks", "0:0", "-o", str(tmp_path / "s.onnx")])
    assert "Permission denied" in assert_one_line_error(capsys, code, "slice")


def test_log_level_is_checked_and_taken_after_the_command_too(bad_files, capsys) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit) as exc:
        main(["--log-level", "loud", "blocks", str(bad_files["good"])])
    assert exc.value.code == 2 and "invalid choice: 'LOUD'" in capsys.readouterr().err
    assert main(["blocks", "--log-level", "debug", str(bad_files["good"]), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)


def test_run_of_a_model_onnx_runtime_cannot_load_is_one_clear_error(capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A model ONNX Runtime refuses (here an operator it has no kernel for; an IR version newer than it reads did
    the same) ended in its C++ error's traceback."""
    from onnx import TensorProto, helper

    io = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 4]) for name in ("x", "y")]
    node = helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example")
    graph = helper.make_graph([node], "g", io[:1], io[1:])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]
    onnx.save(helper.make_model(graph, opset_imports=opsets, ir_version=10), tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", np.zeros((1, 4), np.float32))
    code = main(["run", str(tmp_path / "m.onnx"), *DEAD, "--split", "0,0", "--input", str(tmp_path / "x.npy")])
    message = assert_one_line_error(capsys, code, "run")
    assert "ONNX Runtime cannot load the model: " in message and "Frobnicate" in message
    assert ".cc:" not in message and "[ONNXRuntimeError]" not in message


_PEAK_OF_A_RUN = """
import resource, sys
from rr_edge.cli import main
assert main(sys.argv[1:]) == 0
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


def test_a_long_run_keeps_only_the_last_outputs(tmp_path: Path) -> None:
    """`run` kept every request's outputs to compare them at the end: 16 MiB outputs took 1.9 GB at --repeat 100
    (found by review). Peak memory of 40 requests against 2, in fresh processes."""
    from onnx import TensorProto, helper

    n = 4 * 1024 * 1024  # 16 MiB of float32
    io = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, n]) for name in ("x", "y")]
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", io[:1], io[1:])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    onnx.save(model, tmp_path / "big.onnx")
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((1, n)).astype(np.float32))

    def peak_mib(repeat: int) -> int:
        argv = ["run", str(tmp_path / "big.onnx"), *DEAD, "--split", "0,0", "--input", str(tmp_path / "x.npy")]
        argv += ["--repeat", str(repeat), "--output", str(tmp_path / "y.npy"), "--json"]
        done = subprocess.run([sys.executable, "-c", _PEAK_OF_A_RUN, *argv], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        return int(done.stdout.strip().splitlines()[-1])

    assert peak_mib(40) - peak_mib(2) < 100  # 38 more requests kept would be 600 MiB
    assert np.array_equal(np.load(tmp_path / "y.npy"), np.maximum(np.load(tmp_path / "x.npy"), 0))


def test_run_refuses_a_split_whose_tensors_are_over_the_message_limit(capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Such a split fell back on every request and retried the server each second (found by review)."""
    from _server_support import conv_model, start_server

    (tmp_path / "m.onnx").write_bytes(conv_model())  # x [1,3,8,8] -> y [1,4,8,8] float: 768 bytes up, 1,024 down
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 8, 8), np.float32))
    server = start_server(tmp_path / "data", max_message_bytes=1000)
    try:
        argv = ["run", str(tmp_path / "m.onnx"), "--server", server.address, "--node", "n"]
        code = main([*argv, "--split", "-1,0", "--input", str(tmp_path / "x.npy")])
    finally:
        server.stop(grace=0.5)
    message = assert_one_line_error(capsys, code, "run")
    assert "split -1,0 sends 1,024 bytes back from the server in one message, over the limit of 1,000" in message


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (
            "[ONNXRuntimeError] : 1 : FAIL : Load model from /tmp/m.onnx failed:/onnxruntime_src/onnxruntime/core/"
            "graph/model.cc:256 onnxruntime::Model::Model(onnx::ModelProto&&, const onnxruntime::PathString&) "
            "Unsupported model IR version: 14, max supported IR version: 13",
            "Unsupported model IR version: 14, max supported IR version: 13",
        ),
        (
            "[ONNXRuntimeError] : 1 : FAIL : /onnxruntime_src/onnxruntime/core/graph/model_load_utils.h:46 void "
            "onnxruntime::model_load_utils::ValidateOpsetForDomain(const std::unordered_map<std::basic_string<char>, "
            "int>&, bool, int) ONNX Runtime only *guarantees* support for models stamped with official released onnx "
            "opset versions.",
            "ONNX Runtime only *guarantees* support for models stamped with official released onnx opset versions.",
        ),
        ("[ONNXRuntimeError] : 10 : INVALID_GRAPH : This is an invalid model. (x)", "This is an invalid model. (x)"),
    ],
)
def test_onnx_runtime_errors_are_told_without_their_cxx_location(message: str, reason: str) -> None:
    """A return type before the function, and a "Load model from" prefix, left the location in (found by review)."""
    from rr_edge.session import ort_reason

    assert ort_reason(RuntimeError(message)) == reason
