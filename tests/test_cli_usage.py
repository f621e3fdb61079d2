"""The CLIs as a user meets them: options checked when parsed, defaults in --help, readable output, warnings."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from _server_support import start_server
from test_blocks import branchy_model

from rr_edge.blocks import analyze
from rr_edge.cli import COMMANDS, build_parser, main
from rr_edge.client import Prediction
from rr_edge.errors import ServerUnavailable
from rr_edge.meters.model import DEFAULT_POWER
from rr_edge.netmodel import NetworkModel
from rr_edge.offload import Costs
from rr_edge.runner import Runner
from rr_server import cli as server_cli

DEAD = ["--server", "127.0.0.1:1", "--node", "n", "--timeout", "2"]  # nothing listens on port 1


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("usage") / "good.onnx"
    onnx.save_model(branchy_model(), path)
    return path


@pytest.fixture(scope="module")
def x(model: Path) -> Path:
    shape = [d.dim_value for d in onnx.load(model).graph.input[0].type.tensor_type.shape.dim]
    path = model.parent / "x.npy"
    np.save(path, np.random.default_rng(0).standard_normal(shape).astype(np.float32))
    return path


def synthetic_costs(path: Path, edge_ms: float = 1.0, cloud_ms: float = 0.1) -> Costs:
    """Every block `edge_ms` here and `cloud_ms` on the server, over a fast link (stands in for the server)."""
    graph = analyze(onnx.load(path), path.stem)

    def preds(ms: float) -> tuple[Prediction, ...]:
        return tuple(Prediction(b.signature, ms, ms * 10, "measured", "measured", "model") for b in graph.blocks)

    link = NetworkModel.affine(rtt_ms=0.01, bandwidth_bytes_per_ms=1e6)
    return Costs(preds(edge_ms), preds(cloud_ms), 1.0, link, link, DEFAULT_POWER)


def synthetic_costs_for(graph, edge_ms: float, edge_mJ: float, cloud_ms: float) -> Costs:  # type: ignore[no-untyped-def]
    """Every block the same, measured (so Neurosurgeon's regression has data), over a fast link."""

    def preds(ms: float, mj: float) -> tuple[Prediction, ...]:
        return tuple(Prediction(b.signature, ms, mj, "measured", "measured", "model") for b in graph.blocks)

    link = NetworkModel.affine(rtt_ms=0.01, bandwidth_bytes_per_ms=1e6)
    return Costs(preds(edge_ms, edge_mJ), preds(cloud_ms, 0.0), 1.0, link, link, DEFAULT_POWER)


def parse_error(capsys: pytest.CaptureFixture[str], argv: list[str], command: str) -> str:
    """argv fails when parsed: exit code 2, the error on the last line of stderr, no traceback."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"rr-edge {command}: error: argument "), err
    assert err.strip() == last and last.endswith(f"(see rr-edge {command} --help)")  # one line, not the usage first
    return last


# -- 1. run amortizes the upload over its requests ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "amortize"),
    [
        (["run", "--repeat", "50"], 50),
        (["run", "--repeat", "50", "--amortize", "2"], 2),
        (["run"], 1),
        (["plan"], 1),
        (["plan", "--amortize", "7"], 7),
    ],
)
def test_run_amortizes_over_repeat_unless_told(monkeypatch, model, x, argv: list[str], amortize: int) -> None:  # type: ignore[no-untyped-def]
    seen: dict[str, object] = {}

    def plan_with_server_cache(*args, **kw):  # type: ignore[no-untyped-def]
        seen.update(kw)
        raise ServerUnavailable("stop here", "UNAVAILABLE")  # run then runs locally; plan reports the error

    monkeypatch.setattr("rr_edge.commands.plan.gather_costs", lambda *a, **kw: synthetic_costs(model))
    monkeypatch.setattr("rr_edge.commands.plan.plan_with_server_cache", plan_with_server_cache)
    extra = ["--input", str(x), "--json"] if argv[0] == "run" else []
    main([argv[0], str(model), *DEAD, *argv[1:], *extra])
    assert seen["amortize_over"] == amortize


@pytest.mark.parametrize("command", ["plan", "run"])
@pytest.mark.parametrize(("name", "asked"), [([], "good"), (["--name", "r18"], "r18")])
def test_plan_and_run_ask_for_the_model_by_the_name_it_was_profiled_under(  # type: ignore[no-untyped-def]
    monkeypatch, model, x, command: str, name: list[str], asked: str
) -> None:
    """The server keeps a model's whole-model corrections by its name: profiled with `--name`, a model planned by
    its file name lost them without a word (cloud predictions 40% off; found by review). plan and run take --name."""
    seen: list[str] = []

    def gather_costs(client, node, graph, *a, **kw):  # type: ignore[no-untyped-def]
        seen.append(graph.model)
        raise ServerUnavailable("stop here", "UNAVAILABLE")

    monkeypatch.setattr("rr_edge.commands.plan.gather_costs", gather_costs)
    extra = ["--input", str(x), "--json"] if command == "run" else []
    main([command, str(model), *DEAD, *name, *extra])
    assert seen == [asked]


# -- 2. and 8. options checked when parsed ------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["plan", "run"])
@pytest.mark.parametrize(
    "option",
    [
        ["--amortize", "0"],
        ["--amortize", "-3"],
        ["--amortize", "x"],
        ["--slo-ms", "0"],
        ["--slo-ms", "-5"],
        ["--slo-ms", "nan"],
        ["--timeout", "0"],
        ["--timeout", "-1"],
        ["--wait", "nan"],  # no clock reaches it: waited for ever
        ["--wait", "-1"],
        ["--wait", "inf"],
    ],
)
def test_non_positive_options_are_rejected_when_parsed(capsys, model, x, command: str, option: list[str]) -> None:  # type: ignore[no-untyped-def]
    argv = [command, str(model), "--server", "127.0.0.1:1", "--node", "n", *option, "--input", str(x)]
    line = parse_error(capsys, argv if command == "run" else argv[:-2], command)
    assert option[0] in line


@pytest.mark.parametrize(
    ("command", "option"),
    [
        ("netprofile", ["--max-mb", "nan"]),  # a traceback (NaN to int)
        ("netprofile", ["--max-mb", "inf"]),
        ("netprofile", ["--upload-max-mb", "inf"]),  # a traceback (OverflowError)
        ("netprofile", ["--upload-max-mb", "-1"]),
        ("profile", ["--max-upload-mb", "inf"]),  # a traceback (OverflowError)
        ("profile", ["--max-upload-mb", "-1"]),  # nothing uploaded, silently
        ("profile", ["--min-time", "nan"]),  # every block timed for its 30 s cap
        ("profile", ["--min-time", "-1"]),
        ("run", ["--retry-interval", "nan"]),
        ("run", ["--threads", "-5"]),  # taken for the default, silently
        ("profile", ["--threads", "-1"]),
    ],
)
def test_non_finite_or_negative_amounts_are_rejected_when_parsed(
    capsys, model, x, command: str, option: list[str]
) -> None:  # type: ignore[no-untyped-def]
    """Found by a review of profiling: NaN passes every `<` and `>` check, inf overflowed an int()."""
    target = [] if command == "netprofile" else [str(model)]
    extra = ["--input", str(x)] if command == "run" else []
    line = parse_error(capsys, [command, *target, *DEAD, *option, *extra], command)
    assert option[0] in line


@pytest.mark.parametrize("repeat", ["0", "-1"])
def test_run_rejects_non_positive_repeat_when_parsed(capsys, model, x, repeat: str) -> None:  # type: ignore[no-untyped-def]
    line = parse_error(capsys, ["run", str(model), *DEAD, "--input", str(x), "--repeat", repeat], "run")
    assert "--repeat" in line


@pytest.mark.parametrize("address", ["localhost", "localhost:", ":8001", "host:http", "host:0", "host:70000", "::1"])
@pytest.mark.parametrize("command", ["plan", "netprofile", "upload"])
def test_server_address_needs_host_and_port(capsys, model, command: str, address: str) -> None:  # type: ignore[no-untyped-def]
    node = [] if command == "upload" else ["--node", "n"]
    path = [] if command == "netprofile" else [str(model)]
    line = parse_error(capsys, [command, *path, "--server", address, *node], command)
    assert "--server" in line and repr(address) in line


@pytest.mark.parametrize("node", ["", "camera 1", "tab\there", "x" * 257])
@pytest.mark.parametrize("command", ["run", "plan", "profile", "netprofile"])
def test_a_node_id_the_server_refuses_is_refused_when_parsed(capsys, model, x, command: str, node: str) -> None:  # type: ignore[no-untyped-def]
    """An empty --node ran a whole `run` unpredicted, with a warning only (a new user's walkthrough); `netprofile`
    reached the server before it was refused."""
    target = [] if command == "netprofile" else [str(model)]
    extra = ["--input", str(x)] if command == "run" else []
    line = parse_error(capsys, [command, *target, "--server", "127.0.0.1:1", "--node", node, *extra], command)
    assert "--node" in line and "node id" in line


@pytest.mark.parametrize("address", ["127.0.0.1:8001", "localhost:1", "[::1]:8001", "grpc://host.example:443"])
def test_server_address_accepts_host_port(address: str) -> None:
    args = build_parser(["upload"]).parse_args(["upload", "s.onnx", "--server", address])
    assert args.server == address


@pytest.mark.parametrize(
    ("address", "hint"),
    [
        ("http://127.0.0.1:8001", "'127.0.0.1:8001', got"),
        ("https://rr.example:443/", "'rr.example:443' and TLS (--tls or --tls-ca)"),
    ],
)
def test_server_address_is_not_a_url(capsys, model, address: str, hint: str) -> None:  # type: ignore[no-untyped-def]
    """`--server http://127.0.0.1:8001` (the form of buf curl's URLs in protocol.md) was taken, then failed on a DNS
    lookup of the whole URL ("Misformatted domain name") with the hint to check that rr-server runs (docs review)."""
    line = parse_error(capsys, ["plan", str(model), "--server", address, "--node", "n"], "plan")
    assert "--server: expected HOST:PORT, not a URL: give " + hint in line and repr(address) in line


def test_unreachable_server_error_names_the_address(capsys, model) -> None:  # type: ignore[no-untyped-def]
    """Nothing listening there: said as such, without a note on TLS, which cannot be why (walkthrough)."""
    code = main(["plan", str(model), *DEAD, "--tls"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("rr-edge plan: error: ") and "UNAVAILABLE" in err[0]
    assert err[0].endswith("; nothing listens at 127.0.0.1:1: check that rr-server is running there")


def test_the_unreachable_server_hint_fits_the_tls_flags_given(capsys, model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """With --tls given, the hint still said a TLS server needs --tls (found by review). A plaintext server here:
    the connection is made, and the TLS handshake fails."""
    pem = tmp_path / "ca.pem"
    pem.write_text("not a certificate")
    server = start_server(tmp_path / "data")
    try:
        for flags, hint in (
            (["--tls"], "and that it serves TLS (a server with mTLS also needs --tls-cert and --tls-key)"),
            (["--tls-ca", str(pem), "--tls-cert", str(pem), "--tls-key", str(pem)], "trusts this client certificate"),
        ):
            code = main(["plan", str(model), "--server", server.address, "--node", "n", "--timeout", "2", *flags])
            err = capsys.readouterr().err.strip().splitlines()
            assert code == 2 and len(err) == 1 and err[0].endswith(hint), err
            assert "needs --tls or --tls-ca" not in err[0]
    finally:
        server.stop(grace=0)


def test_a_port_that_answers_http_is_said_to_be_no_grpc_server(capsys, model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """rr-server's --metrics-port given as --server: "Failed parsing HTTP/2" with a hint about TLS (walkthrough)."""
    server = start_server(tmp_path / "data", metrics_port=0)
    try:
        code = main(
            ["plan", str(model), "--server", f"127.0.0.1:{server.metrics_port}", "--node", "n", "--timeout", "2"]
        )
    finally:
        server.stop(grace=0)
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        code == 2
        and len(err) == 1
        and err[0].endswith("is no gRPC server (a web server, or rr-server's --metrics-port?)")
    )
    assert "TLS" not in err[0]


def test_a_server_that_said_it_is_stopping_gets_no_hint() -> None:
    """A network profile cut by a server stopping was told to check that the server runs, and that a TLS server
    needs --tls (walkthrough): the error says what happened."""
    import argparse

    from rr_edge.cli import _hint

    args = argparse.Namespace(server="127.0.0.1:8001")
    for said in ("the server cancelled the stream (stopping?)", "UNAVAILABLE: the server is stopping: transfers n"):
        assert _hint(ServerUnavailable(f"Echo.Exchange: {said}", "UNAVAILABLE"), args) == ""
    assert "TLS" in _hint(ServerUnavailable("Echo.Exchange: UNAVAILABLE: Socket closed", "UNAVAILABLE"), args)


def test_a_missing_token_error_says_how_to_give_one(capsys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    tokens = tmp_path / "tokens"
    tokens.write_text("edge-1 s3cret\n")
    server = start_server(tmp_path / "data", auth_token_file=tokens)
    try:
        code = main(["netprofile", "--server", server.address, "--node", "edge-1", "--max-mb", "0.01"])
    finally:
        server.stop(grace=0.5)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and "UNAUTHENTICATED" in err and err.endswith("(a token of the server's --auth-token-file)")
    assert "--token-file F or set $RR_TOKEN" in err


# -- 3., 4. and 6. help texts -------------------------------------------------------------------------------------


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _undocumented_defaults(parser: argparse.ArgumentParser) -> list[str]:
    """Options with a default value whose help does not show it."""
    missing = []
    for action in parser._actions:
        if not action.option_strings or action.default in (None, False, argparse.SUPPRESS):
            continue
        if "default" not in (action.help or ""):
            missing.append(action.option_strings[-1])
    return missing


@pytest.mark.parametrize("command", COMMANDS)
def test_edge_help_shows_every_default(command: str) -> None:
    parser = _subparsers(build_parser([command]))[command]
    assert _undocumented_defaults(parser) == []
    assert all(a.help for a in parser._actions), "every option has a help text"
    parser.format_help()  # every %(default)s expands


def test_server_help_shows_every_default() -> None:
    parser = server_cli.build_parser()
    assert _undocumented_defaults(parser) == []
    assert "127.0.0.1:8001" in parser.format_help().replace("\n", " ")


def test_server_refuses_unknown_providers(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """An unknown name used to start the server on the CPU without a word."""
    with pytest.raises(SystemExit):
        server_cli.parse_args(["--data-dir", str(tmp_path), "--providers", "cuda,foo"])
    assert "unknown foo" in capsys.readouterr().err
    args = server_cli.parse_args(["--data-dir", str(tmp_path), "--providers", "CUDA,CPUExecutionProvider"])
    assert server_cli.config_from_args(args).providers == ("CUDA", "CPUExecutionProvider")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--auth-token-file", "{tmp}/no-tokens"], "cannot start: --auth-token-file {tmp}/no-tokens: No such file"),
        (["--data-dir", "{tmp}/a-file/data"], "cannot start: --data-dir {tmp}/a-file/data: Not a directory"),
        (["--data-dir", "{tmp}/a-file"], "cannot start: --data-dir {tmp}/a-file: not a directory (a file, or a link"),
        (["--data-dir", "{tmp}/a-link"], "cannot start: --data-dir {tmp}/a-link: not a directory (a file, or a link"),
    ],
)
def test_server_start_errors_name_the_option(tmp_path: Path, flags: list[str], message: str) -> None:
    """`rr-server --auth-token-file tokens` with no such file said only `[Errno 2] No such file or directory:
    'tokens'` (docs review)."""
    import subprocess
    import sys

    (tmp_path / "a-file").write_text("")
    (tmp_path / "a-link").symlink_to(tmp_path / "nothing")
    argv = ["--data-dir", str(tmp_path / "data"), "--listen", "127.0.0.1:0", "--log-format", "text"]
    argv += [f.format(tmp=tmp_path) for f in flags]
    done = subprocess.run([sys.executable, "-m", "rr_server.cli", *argv], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert message.format(tmp=tmp_path) in done.stderr.strip().splitlines()[-1], done.stderr


def test_server_workers_are_configurable(tmp_path: Path) -> None:
    """More edges keep more streams open (one worker thread each): --workers sizes the pool."""
    args = server_cli.parse_args(["--data-dir", str(tmp_path), "--workers", "128"])
    assert server_cli.config_from_args(args).workers == 128
    with pytest.raises(SystemExit):
        server_cli.parse_args(["--data-dir", str(tmp_path), "--workers", "2"])


def test_server_keepalive_is_configurable(tmp_path: Path) -> None:
    args = server_cli.parse_args(["--data-dir", str(tmp_path), "--keepalive-seconds", "5"])
    assert server_cli.config_from_args(args).keepalive_s == 5.0
    with pytest.raises(SystemExit):
        server_cli.parse_args(["--data-dir", str(tmp_path), "--keepalive-seconds", "0"])


def test_planning_help_says_what_the_options_mean() -> None:
    run = {a.dest: a.help or "" for a in _subparsers(build_parser(["run"]))["run"]._actions}
    assert "-1" in run["split"] and "I+1..J" in run["split"]  # what I and J are
    assert "--repeat" in run["amortize"]
    assert "--objective" in run["slo_ms"]  # the SLO wins over the objective


# -- 5. run's summary for people ----------------------------------------------------------------------------------


def test_run_prints_a_readable_summary(capsys, model, x) -> None:  # type: ignore[no-untyped-def]
    assert main(["run", str(model), *DEAD, "--split", "0,0", "--input", str(x), "--repeat", "3"]) == 0
    out = capsys.readouterr().out
    assert "{" not in out and "'latency_ms'" not in out  # not a Python dict
    assert "3 requests" in out and "median ms" in out and "measured" in out
    assert "0 of 3 requests finished locally" in out
    assert "middle slice" not in out  # all local: no middle slice to upload (found by review)


def test_plan_and_run_tables_read_as_text(monkeypatch, capsys, model, x) -> None:  # type: ignore[no-untyped-def]
    """plan printed its provenance counts as Python dicts (`edge {'measured': 4, 'cold-start': 9}`) and run titled
    one request "1 requests" (docs review)."""
    monkeypatch.setattr("rr_edge.commands.plan.gather_costs", lambda *a, **kw: synthetic_costs(model))
    assert main(["plan", str(model), *DEAD, "--preloaded"]) == 0
    out = capsys.readouterr().out
    assert "{" not in out and f"predictions: edge {len(analyze(onnx.load(model)).blocks)} measured; cloud " in out
    assert main(["run", str(model), *DEAD, "--split", "0,0", "--input", str(x)]) == 0
    out = capsys.readouterr().out
    assert ": 1 request in " in out and "1 requests in" not in out


def test_run_shows_its_progress_unless_json(capsys, model, x) -> None:  # type: ignore[no-untyped-def]
    """A run of thousands of requests said nothing until its end (walkthrough): a bar on stderr counts them."""
    argv = ["run", str(model), *DEAD, "--split", "0,0", "--input", str(x), "--repeat", "3"]
    assert main(argv) == 0
    assert "3/3 split " in capsys.readouterr().err
    assert main([*argv, "--json"]) == 0
    assert "3/3" not in capsys.readouterr().err


def test_run_compares_per_request_predictions_with_the_requests(capsys) -> None:  # type: ignore[no-untyped-def]
    """The plan's latency and energy include its share of the slice upload (amortized over --repeat), which no
    request pays: the runner makes the slice ready once, before the first. The table's predicted row leaves that
    share out; the upload is measured and predicted on a line of its own."""
    from types import SimpleNamespace

    from rr_edge.commands._planned_run import Segment
    from rr_edge.commands.run import print_summary, segment_summary

    breakdown = {"weight_upload_ms": 2.0, "weight_upload_mJ": 3.0}
    chosen = SimpleNamespace(latency_ms=5.0, energy_mJ=9.0, breakdown=breakdown)
    plan = SimpleNamespace(chosen=chosen, costs=SimpleNamespace(energy_source="model,rapl"))
    requests = [SimpleNamespace(total_ms=3.1, remote_ms=1.2, fallback=False)] * 5
    summary = {
        "requests": 5, "wall_s": 0.1, "energy_source": "rapl", "upload_ms": 9.5, "fallback_requests": 0,
        "max_abs_diff_vs_local": 1e-6, "segments": [segment_summary(Segment((0, 3), plan, 0, 5), requests, [6.1] * 5)],
        "predicted_upload_ms": 10.0, "slices_made_ready": 1,
    }  # fmt: skip
    print_summary("m", summary)
    out = capsys.readouterr().out
    predicted_row = next(line for line in out.splitlines() if "predicted" in line and "0,3" in line)
    assert "3.00" in predicted_row and "6.0 (model,rapl)" in predicted_row  # 5 - 2 ms, 9 - 3 mJ, from the plan
    measured_row = next(line for line in out.splitlines() if "measured" in line and "0,3" in line)
    assert "6.1 (rapl)" in measured_row  # the run's meter labels only what it measured (found by review)
    assert "made ready once (upload, open): 9.50 ms; upload predicted 10.00 ms" in out  # 2 ms x 5 requests
    # made ready twice (the server lost it), or never (it never answered): that time was not "once" (walkthrough)
    for ready, said in ((2, "made ready twice (upload, open): 9.50 ms"), (0, "never made ready on the server (9.50")):
        print_summary("m", {**summary, "slices_made_ready": ready})
        assert said in capsys.readouterr().out
    assert "planned again" not in out
    print_summary("m", {**summary, "replans": 3})  # said on the table too, not only in the JSON (walkthrough)
    assert "planned again 3 times as the measured network drifted" in capsys.readouterr().out


def test_run_json_is_unchanged(capsys, model, x) -> None:  # type: ignore[no-untyped-def]
    assert main(["run", str(model), *DEAD, "--split", "0,0", "--input", str(x), "--repeat", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    last = len(analyze(onnx.load(model)).blocks) - 1
    assert out["split"] == [last, last]  # all local, written as plan writes it
    assert set(out) == {
        "split", "requests", "latency_ms", "energy_mJ", "energy_source", "energy_measured", "fallback",
        "fallback_requests", "fallback_reasons", "max_abs_diff_vs_local", "remote_ms_median", "wall_s", "splits_used",
        "segments",
        "upload_ms", "slices_made_ready",
    }  # fmt: skip


# -- 6. an SLO no plan meets ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("slo", "warned"), [("0.001", True), ("1000", False)])
def test_plan_warns_when_no_plan_meets_the_slo(monkeypatch, capsys, model, slo: str, warned: bool) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr("rr_edge.commands.plan.gather_costs", lambda *a, **kw: synthetic_costs(model))
    assert main(["plan", str(model), *DEAD, "--slo-ms", slo, "--preloaded", "--json"]) == 0
    captured = capsys.readouterr()
    chosen = json.loads(captured.out)["chosen"]
    assert chosen["objective"] == ("slo-unmet" if warned else "slo")
    lines = [line for line in captured.err.strip().splitlines() if "no power model configured" not in line]
    if warned:
        assert lines == [f"rr-edge plan: warning: no plan meets {float(slo):g} ms; chose the fastest, "
                         f"{chosen['latency_ms']:.2f} ms"]  # fmt: skip
    else:
        assert lines == []


@pytest.mark.parametrize("objective", ["latency", "energy"])
def test_the_neurosurgeon_baselines_minimise_what_the_plan_minimises(objective: str) -> None:
    """With --objective energy the Neurosurgeon baselines were still decided for latency, so the JSON compared an
    energy-saving plan with a Neurosurgeon never asked to save energy (found by review)."""
    from rr_edge.baselines import neurosurgeon
    from rr_edge.offload import make_plan

    graph = analyze(branchy_model(), "m")
    # the edge is fast and hungry, the server slow and idle-cheap: latency and energy want different splits
    costs = synthetic_costs_for(graph, edge_ms=1.0, edge_mJ=100.0, cloud_ms=5.0)
    report = make_plan(graph, costs, objective=objective, preloaded=True)
    basis = dataclasses.replace(report.inputs, preloaded=True)
    by_latency, by_energy = neurosurgeon(basis, objective="latency"), neurosurgeon(basis, objective="energy")
    assert (by_latency.i, by_latency.j) != (by_energy.i, by_energy.j)  # the objective matters here
    got = report.baselines["neurosurgeon"]
    want = by_energy if objective == "energy" else by_latency
    assert (got.i, got.j) == (want.i, want.j)


@pytest.mark.parametrize("preloaded", [False, True])
def test_the_plan_table_says_why_neurosurgeon_beats_the_chosen_plan(preloaded: bool) -> None:
    """Neurosurgeon is costed with its weights on the server beforehand; the chosen plan pays its upload. Over a slow
    link that made the baseline beat the chosen plan in the table without a word (walkthrough)."""
    from rich.console import Console

    from rr_edge.commands.plan import plan_table
    from rr_edge.offload import make_plan

    graph = analyze(branchy_model(), "m")
    costs = dataclasses.replace(
        synthetic_costs_for(graph, edge_ms=5.0, edge_mJ=50.0, cloud_ms=0.1),
        upload=NetworkModel.affine(rtt_ms=1.0, bandwidth_bytes_per_ms=20.0),  # the weights take seconds to upload
    )
    report = make_plan(graph, costs, preloaded=preloaded)
    ns = report.baselines["neurosurgeon"]
    assert (ns.latency_ms < report.chosen.latency_ms) is not preloaded  # only its free upload makes it faster
    console = Console(width=300, record=True)
    console.print(plan_table(report, "t"))
    said = "neurosurgeon is costed with its weights on the server beforehand" in console.export_text()
    assert said is not preloaded


def test_the_plan_table_says_what_an_infinite_baseline_means() -> None:
    """offload_all over the server's slice limit showed `inf` without a word (walkthrough)."""
    from rich.console import Console

    from rr_edge.commands.plan import plan_table
    from rr_edge.offload import make_plan

    graph = analyze(branchy_model(), "m")
    costs = synthetic_costs_for(graph, edge_ms=5.0, edge_mJ=50.0, cloud_ms=0.1)
    for max_slice_bytes, said in ((0, False), (1, True)):  # 0: no limit; 1 byte: no slice fits
        report = make_plan(graph, dataclasses.replace(costs, max_slice_bytes=max_slice_bytes), preloaded=True)
        console = Console(width=300, record=True)
        console.print(plan_table(report, "t"))
        text = console.export_text()
        assert ("inf" in text) == ("inf: a plan this server cannot run" in text) == said


# -- 7. and 9. clean errors -----------------------------------------------------------------------------------------


def test_export_name_and_from_are_exclusive(capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "m.onnx"
    code = main(["export", "resnet18", "--from", "json:dumps", "-o", str(out)])
    _, err = capsys.readouterr()
    assert code == 2 and err.startswith("rr-edge export: error: ") and "not both" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


@pytest.mark.parametrize("blocks", ["3:1", "-1:0", "2:1"])
def test_slice_reversed_range_says_reversed(capsys, model, tmp_path: Path, blocks: str) -> None:  # type: ignore[no-untyped-def]
    code = main(["slice", str(model), "--blocks", blocks, "-o", str(tmp_path / "s.onnx")])
    _, err = capsys.readouterr()
    assert code == 2 and "reversed" in err and "out of range" not in err
    assert ("a negative index counts from the end" in err) == blocks.startswith("-")  # -1:0 is blocks N-1..0


# -- 10. a replan the server refuses --------------------------------------------------------------------------------


def _switching_after_the_first(monkeypatch, model):  # type: ignore[no-untyped-def]
    """`run` plans local, then re-plans after every request to a plan offloading blocks 0..2: (local, offloading).
    The switch is prepared in the requests' thread: made after the request that led to it (in the background, a run
    of 3 requests ends before the health check of the server that is not there gives up)."""
    from rr_edge.commands import _planned_run
    from rr_edge.commands import run as run_command
    from rr_edge.offload import make_plan

    graph = analyze(onnx.load(model), model.stem)
    local = make_plan(graph, synthetic_costs(model, edge_ms=0.1, cloud_ms=10.0))
    offloading = dataclasses.replace(local, chosen=dataclasses.replace(local.chosen, i=0, j=2, latency_ms=77.0))
    monkeypatch.setattr(run_command, "build_plan", lambda *a, **kw: local)
    monkeypatch.setattr(run_command, "replan", lambda *a, **kw: offloading)
    monkeypatch.setattr(Runner, "replan_needed", property(lambda self: True))
    monkeypatch.setattr(run_command, "PlannedRun", functools.partial(_planned_run.PlannedRun, background=False))
    return local, offloading


def test_run_reports_each_split_it_used_apart(monkeypatch, capsys, model, x) -> None:  # type: ignore[no-untyped-def]
    """A re-plan switches split after the first of 3 requests: the requests of each split are measured and predicted
    apart (they were all reported under the last split, next to its prediction; found by review)."""
    local, offloading = _switching_after_the_first(monkeypatch, model)
    argv = ["run", str(model), *DEAD, "--input", str(x), "--repeat", "3"]
    assert main([*argv, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    last = [local.chosen.i, local.chosen.j]
    assert out["splits_used"] == [last, [0, 2]] and out["split"] == [0, 2] and out["requests"] == 3
    first, second = out["segments"]
    assert (first["split"], first["requests"], second["split"], second["requests"]) == (last, 1, [0, 2], 2)
    assert first["predicted"]["latency_ms"] == pytest.approx(local.chosen.latency_ms)  # nothing uploaded
    upload_share = offloading.chosen.breakdown.get("weight_upload_ms", 0.0)
    assert second["predicted"]["latency_ms"] == pytest.approx(77.0 - upload_share)
    assert second["fallback_requests"] == 2 and first["fallback_requests"] == 0  # no server: run here
    # why, for the JSON reader too: the slice being made ready, or (once the runner's health check in the background
    # went unanswered, before either request or between them) the server not answering
    reasons = out["fallback_reasons"]
    made_ready, unanswered = "while the slice is made ready on the server", "does not answer its health check"
    assert sum(reasons.values()) == 2 and all(made_ready in reason or unanswered in reason for reason in reasons)
    assert out["slices_made_ready"] == 0 and out["segments"][1]["remote_ms_median"] is None
    assert main(argv) == 0
    rows = [line.split("│")[1:3] for line in capsys.readouterr().out.splitlines() if line.startswith("│")]
    assert [[cell.strip() for cell in row] for row in rows] == [
        ["measured", "{},{}".format(*last)], ["predicted", "{},{}".format(*last)],
        ["measured", "0,2"], ["predicted", "0,2"],
    ]  # fmt: skip


def test_ctrl_c_as_a_re_plan_switches_split_reports_the_splits_that_ran(
    monkeypatch, capsys, model, x, sigint_default
) -> None:  # type: ignore[no-untyped-def]
    """Ctrl-C during the request after which a re-plan switched split left a segment of no requests, whose summary
    raised IndexError (review). The run reports the split that served its requests, and exits 130."""
    import os
    import signal

    from rr_edge.commands import _planned_run

    local, _ = _switching_after_the_first(monkeypatch, model)
    switch = _planned_run.PlannedRun._switch

    def interrupted(self, *a, **kw):  # type: ignore[no-untyped-def]
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the request that leads to the switch is in flight
        return switch(self, *a, **kw)

    monkeypatch.setattr(_planned_run.PlannedRun, "_switch", interrupted)
    assert main(["run", str(model), *DEAD, "--input", str(x), "--repeat", "3", "--json"]) == 130
    out = json.loads(capsys.readouterr().out)
    last = [local.chosen.i, local.chosen.j]
    assert out["requests"] == 1 and out["interrupted"] == {"requests_asked": 3, "signal": "SIGINT"}
    assert out["splits_used"] == [last] and out["split"] == last and len(out["segments"]) == 1


@pytest.mark.parametrize(
    ("listen", "said"),
    [
        ("127.0.0.1", "--listen: expected HOST:PORT"),
        ("8002", "--listen: expected HOST:PORT"),
        ("127.0.0.1:http", "--listen: expected HOST:PORT"),
        ("127.0.0.1:70000", "--listen: the port must be 0..65535 (0: a free one), got 70000"),
    ],
)
def test_server_listen_needs_a_port(tmp_path: Path, capsys, listen: str, said: str) -> None:  # type: ignore[no-untyped-def]
    """Without a port gRPC bound 443 without a word (and `--listen 8002` failed on an address lookup)."""
    with pytest.raises(SystemExit):
        server_cli.parse_args(["--data-dir", str(tmp_path), "--listen", listen])
    err = capsys.readouterr().err
    assert said in err and len(err.strip().splitlines()) == 1
    args = server_cli.parse_args(["--data-dir", str(tmp_path), "--listen", "[::1]:0", "--log-level", "debug"])
    assert args.listen == "[::1]:0" and args.log_level == "DEBUG"


def test_the_python_api_refuses_an_address_without_a_port() -> None:
    from rr_edge import ArgumentError, RoadRunnerError, connect
    from rr_edge.client import Client

    with pytest.raises(ValueError, match="expected HOST:PORT"):
        Client("127.0.0.1")  # gRPC would dial port 443
    for address in ("127.0.0.1", "127.0.0.1:0"):  # a plain ValueError, not the package's own (found by review)
        with pytest.raises(ArgumentError) as raised:
            connect(address, node="x")
        assert isinstance(raised.value, RoadRunnerError)


def test_a_tls_setting_the_edge_cannot_use_is_an_argument_error(tmp_path: Path) -> None:
    """It was a ServerError with the code INVALID_ARGUMENT, as if the server had answered (found by review)."""
    from rr_edge import ArgumentError
    from rr_edge.client import TlsOptions

    with pytest.raises(ArgumentError, match="cannot read TLS file"):
        TlsOptions(root_certificates=tmp_path / "missing.pem").credentials()
    with pytest.raises(ArgumentError, match="needs both a client certificate and its key"):
        TlsOptions(client_cert=tmp_path / "cert.pem").credentials()


def test_ctrl_c_while_the_command_is_still_importing_exits_130(monkeypatch) -> None:
    """A Ctrl-C in the first half second (importing ONNX Runtime) printed a 30-line traceback (found by review)."""
    import rr_edge.cli as cli

    def interrupted(name: str) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.importlib, "import_module", interrupted)
    assert cli.main(["run", "m.onnx"]) == 130


def test_plan_warns_when_most_blocks_are_only_cold_start_predictions(monkeypatch, capsys, model) -> None:  # type: ignore[no-untyped-def]
    """A model no node profiled was planned from block features alone, 24x off, with no word (found by review)."""
    costs = synthetic_costs(model)
    cold = tuple(dataclasses.replace(p, latency_provenance="cold-start") for p in costs.edge)
    monkeypatch.setattr("rr_edge.commands.plan.gather_costs", lambda *a, **kw: dataclasses.replace(costs, edge=cold))
    assert main(["plan", str(model), *DEAD, "--preloaded", "--json"]) == 0
    err = capsys.readouterr().err
    assert f"warning: {len(cold)} of {len(cold)} blocks have only cold-start predictions" in err
    monkeypatch.setattr("rr_edge.commands.plan.gather_costs", lambda *a, **kw: costs)
    assert main(["plan", str(model), *DEAD, "--preloaded", "--json"]) == 0
    assert "cold-start" not in capsys.readouterr().err


def test_plan_warns_when_its_upload_is_past_the_profiled_sizes(monkeypatch, capsys, model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A slice larger than the largest upload probe was costed by extrapolation with no word: 1.4-4x low after a
    small profile (found by review)."""
    costs = synthetic_costs(model)
    probed = dataclasses.replace(costs, upload=dataclasses.replace(costs.uplink, hi_bytes=64.0))
    server = start_server(tmp_path / "data")  # asked which slices it holds already (none)
    args = ["plan", str(model), "--server", server.address, "--node", "n", "--json"]
    try:
        monkeypatch.setattr("rr_edge.commands.plan.gather_costs", lambda *a, **kw: probed)
        assert main(args) == 0
        captured = capsys.readouterr()
        assert json.loads(captured.out)["chosen"]["upload_bytes"] > 64
        assert "more than the 6.1e-05 MiB the network profile timed" in captured.err
        assert "rr-edge netprofile --upload-max-mb 1 measures it" in captured.err
        assert main([*args, "--preloaded"]) == 0  # nothing to upload
        assert "extrapolated" not in capsys.readouterr().err
        monkeypatch.setattr("rr_edge.commands.plan.gather_costs", lambda *a, **kw: costs)  # no limit recorded
        assert main(args) == 0
        assert "extrapolated" not in capsys.readouterr().err
    finally:
        server.stop(grace=0.5)


def test_a_forced_slice_over_the_servers_limit_is_not_sent_to_netprofile(model: Path) -> None:
    """`run --split` of a slice over the server's --max-slice-mb said that a larger netprofile --upload-max-mb would
    measure its upload; no probe is built past that limit, and the server refused the slice (found by review)."""
    from rr_edge.commands.plan import upload_extrapolated
    from rr_edge.offload import make_plan
    from rr_edge.planner import plan_cost

    graph = analyze(onnx.load(model), model.stem)
    costs = dataclasses.replace(synthetic_costs(model), max_slice_bytes=64)
    report = make_plan(graph, costs)
    forced = dataclasses.replace(report, chosen=plan_cost(report.inputs, -1, len(graph.blocks) - 1))
    assert forced.chosen.upload_bytes > 64
    note = upload_extrapolated(forced)
    assert note is not None and "over the server's limit" in note and "netprofile" not in note
    assert note.startswith("the plan uploads")  # forced, not chosen (walkthrough)


def test_a_transfer_past_its_deadline_says_how_to_give_it_more_time(capsys, monkeypatch, model) -> None:  # type: ignore[no-untyped-def]
    """On a slow link netprofile's large transfers passed their deadline and the hint said to check that the server
    was running (found by review)."""

    def slow(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise ServerUnavailable("Echo.Send 16777216 B: DEADLINE_EXCEEDED: Deadline Exceeded", "DEADLINE_EXCEEDED")

    monkeypatch.setattr("rr_edge.commands.plan.gather_costs", slow)
    assert main(["plan", str(model), *DEAD]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("on a slow link, give a larger --timeout (or send less: a smaller --max-mb / --upload-max-mb)")
    assert "check that rr-server is running" not in err


def test_a_reader_that_goes_away_ends_the_command_quietly(model: Path) -> None:
    """`rr-edge blocks m.onnx --json | head -c 300` ended with "rr-edge blocks: error: [Errno 32] Broken pipe" (model
    review): a closed pipe ends the command as SIGPIPE would, without a word."""
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "rr_edge.cli", "blocks", str(model), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before the command writes: its output goes nowhere
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 128 + signal.SIGPIPE and err == ""


def test_an_energy_plan_on_the_built_in_power_figures_says_so(monkeypatch, capsys, model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Without a power model, the waits and transfers of energy plans were costed at a small board's 1.25 W idle
    with no word, on a desktop idling near 15 W too (found by review)."""
    monkeypatch.delenv("RR_POWER_CONFIG", raising=False)
    monkeypatch.delenv("RR_DEVICE_CLASS", raising=False)
    monkeypatch.setattr("rr_edge.commands.plan.gather_costs", lambda *a, **kw: synthetic_costs(model))
    for flags, warned in ((["--objective", "energy"], True), (["--slo-ms", "50"], True), ([], False)):
        assert main(["plan", str(model), *DEAD, "--preloaded", "--json", *flags]) == 0
        assert ("no power model configured" in capsys.readouterr().err) == warned, flags
    config = tmp_path / "power.json"
    config.write_text('{"classes": [{"name": "desk", "power": {"active_w": 65, "idle_w": 15}}]}')
    assert (
        main(
            ["plan", str(model), *DEAD, "--preloaded", "--json", "--objective", "energy", "--power-config", str(config)]
        )
        == 0
    )
    assert "no power model configured" not in capsys.readouterr().err


def test_rr_edge_without_a_command_lists_them(capsys) -> None:  # type: ignore[no-untyped-def]
    """Usage errors are one line (`rr_proto.argtypes.Parser`); with no command at all, the list of them is the help."""
    assert main([]) == 2
    err = capsys.readouterr().err
    assert all(command in err for command in COMMANDS) and "RoaD-RuNNer edge node" in err


@pytest.mark.parametrize("argv", [["blocks", "m.onnx", "--bogus", "1"], ["--bogus", "blocks", "m.onnx"]])
def test_an_unknown_option_is_reported_against_the_command(capsys, argv: list[str]) -> None:  # type: ignore[no-untyped-def]
    """`rr-edge run ... --bogus` said `rr-edge: error: ... (see rr-edge --help)`, whose help lists no option of
    `run` (review)."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2
    assert err.startswith("rr-edge blocks: error: unrecognized arguments: --bogus") and err.endswith(
        "(see rr-edge blocks --help)"
    )
