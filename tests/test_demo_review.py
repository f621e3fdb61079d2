"""`rr-edge demo` (rr_edge.demo) on a tiny model: a baseline the server cannot run, and flags checked when parsed."""

from __future__ import annotations

import io
from pathlib import Path

import onnx
import pytest
from rich.console import Console

import rr_edge.demo as demo
from rr_edge.cli import build_parser
from tools.bench_runner import conv_chain

SLICE_LIMIT = 6000  # bytes: a block of the chain (~2.4 kB) fits, the whole chain (~9.8 kB) does not


def test_a_baseline_the_server_cannot_run_is_shown_not_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """offload_all of a model over the server's slice limit is priced at infinity; the demo still ran it, and ended
    in a traceback when the server refused its slice (RESOURCE_EXHAUSTED)."""
    import rr_server

    config = rr_server.ServerConfig
    monkeypatch.setattr(rr_server, "ServerConfig", lambda **kw: config(**{**kw, "max_slice_bytes": SLICE_LIMIT}))
    monkeypatch.setattr(demo, "CLOUD_WAIT_S", 5.0)
    onnx.save(conv_chain(layers=4), tmp_path / "chain_16.onnx")  # where the demo looks before exporting
    options = demo.DemoOptions(model="chain", input_size=16, sample=1.0, max_mb=4, repeat=2, out_dir=tmp_path)
    out = io.StringIO()
    summary = demo.run_demo(options, Console(file=out, width=200))
    assert summary["not_runnable"] == [{"plan": "offload_all", "split": [-1, 3]}]
    measured = {row["plan"] for row in summary["plans"]}
    assert "offload_all" not in measured and {demo.CHOSEN, "offload_none"} <= measured
    assert summary["verified"]
    text = out.getvalue()
    assert "not runnable" in text.split("measured over gRPC")[1].split("summary")[0]  # a row of the table
    assert f"offload_all: {demo.NOT_RUNNABLE}" in " ".join(text.split())  # and a line of the summary


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--input-size", "0"),
        ("--input-size", "-3"),
        ("--sample", "0"),
        ("--sample", "1.5"),
        ("--sample", "nan"),
        ("--max-mb", "-1"),
        ("--max-mb", "inf"),
        ("--repeat", "0"),
    ],
)
def test_demo_numbers_are_checked_when_parsed(capsys: pytest.CaptureFixture[str], flag: str, value: str) -> None:
    """They were taken as given and failed later, after the export and the server's start, or not at all."""
    with pytest.raises(SystemExit) as info:
        build_parser(["demo"]).parse_args(["demo", flag, value])
    assert info.value.code == 2
    assert f"argument {flag}: " in capsys.readouterr().err


def test_demo_numbers_in_range_are_taken() -> None:
    args = build_parser(["demo"]).parse_args(
        ["demo", "--input-size", "32", "--sample", "1", "--max-mb", "0.5", "--repeat", "1"]
    )
    assert (args.input_size, args.sample, args.max_mb, args.repeat) == (32, 1.0, 0.5, 1)
