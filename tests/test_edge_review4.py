"""Review 4 of the edge side: the demo verifies its plans over gRPC (a NaN answer, a fallback, no plan offloaded),
user-supplied names are text to rich, not markup, the Pareto plot leaves out plans priced at infinity, and every
element-wise op and reduction of the ONNX default domain has FLOPs."""

from __future__ import annotations

import io
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import helper
from rich.console import Console

import rr_edge.demo as demo
from rr_edge.baselines import all_baselines
from rr_edge.errors import RoadRunnerError
from rr_edge.flops import node_flops
from rr_edge.netmodel import NetworkModel
from rr_edge.onnx_io import TensorInfo
from rr_edge.planner import PlanInputs, choose, evaluate_all, pareto
from rr_edge.plot import plot_pareto
from rr_edge.progress import progress_bars
from tools.bench_runner import conv_chain

# -- the demo: verified over gRPC ----------------------------------------------------------------------------------


def _run_demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model: str = "chain") -> tuple[dict[str, Any], str]:
    """The demo on a four-conv chain against its embedded server: its chosen plan stays local, offload_all offloads."""
    monkeypatch.setattr(demo, "CLOUD_WAIT_S", 5.0)
    onnx.save(conv_chain(layers=4), tmp_path / f"{model}_16.onnx")  # where the demo looks before exporting
    options = demo.DemoOptions(model=model, input_size=16, sample=1.0, max_mb=1, repeat=2, out_dir=tmp_path)
    out = io.StringIO()
    summary = demo.run_demo(options, Console(file=out, width=250))
    return summary, " ".join(out.getvalue().split())


def _server_infer(monkeypatch: pytest.MonkeyPatch, infer: Any) -> None:
    from rr_server.repository import ModelRepository

    monkeypatch.setattr(ModelRepository, "infer", infer)


def test_a_plan_answered_with_nan_over_grpc_fails_the_demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Python's max dropped a NaN that was not the first plan's: the summary said 0.0 and verified."""
    from rr_server.repository import ModelRepository

    infer = ModelRepository.infer

    def nan_answers(self: ModelRepository, *args: Any, **kwargs: Any) -> dict[str, np.ndarray]:
        result = infer(self, *args, **kwargs)
        for value in result.values():
            value[...] = np.nan
        return result

    _server_infer(monkeypatch, nan_answers)
    summary, _ = _run_demo(tmp_path, monkeypatch)
    rows = {row["plan"]: row for row in summary["plans"]}
    assert rows[demo.CHOSEN]["max_abs_diff"] == 0.0  # measured first: a local plan
    assert math.isnan(rows["offload_all"]["max_abs_diff"]) and not rows["offload_all"]["fallback"]
    assert math.isnan(summary["max_abs_diff_vs_local"]) and not summary["verified"]
    with pytest.raises(RoadRunnerError, match="differ from the whole model run locally by nan"):
        demo.check_verified(summary, 1e-3)


def test_a_plan_that_fell_back_to_local_is_not_verified_over_grpc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every request the server got failed and ran locally (diff 0): the demo said 'verified over gRPC'."""

    def failing(*args: Any, **kwargs: Any) -> dict[str, np.ndarray]:
        raise RuntimeError("every inference fails on this server")

    _server_infer(monkeypatch, failing)
    summary, text = _run_demo(tmp_path, monkeypatch)
    assert summary["max_abs_diff_vs_local"] == 0.0
    assert summary["fell_back"] == ["offload_all"] and summary["over_grpc"] == []
    assert not summary["verified"]
    assert "NOT verified: offload_all fell back to local execution" in text
    with pytest.raises(RoadRunnerError, match="offload_all fell back to local execution"):
        demo.check_verified(summary, 1e-3)


def test_without_a_plan_that_offloads_nothing_is_verified_over_grpc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server whose slice limit no block fits: every plan ran locally, and the demo said 'verified'."""
    import rr_server

    config = rr_server.ServerConfig
    monkeypatch.setattr(rr_server, "ServerConfig", lambda **kw: config(**{**kw, "max_slice_bytes": 500}))
    summary, text = _run_demo(tmp_path, monkeypatch)
    assert all(row["split"][0] == row["split"][1] for row in summary["plans"])
    assert summary["over_grpc"] == [] and not summary["verified"]
    assert "NOT verified: no plan that offloads" in text
    with pytest.raises(RoadRunnerError, match="no plan that offloads"):
        demo.check_verified(summary, 1e-3)


def test_when_no_plan_measured_offloads_the_fastest_that_does_is_run_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A block fits the server's slice limit, the whole chain does not: offload_all is not runnable and the chosen
    plan, the other baselines and the Pareto set stay local; the fastest plan that offloads goes over gRPC."""
    import rr_server

    config = rr_server.ServerConfig
    monkeypatch.setattr(rr_server, "ServerConfig", lambda **kw: config(**{**kw, "max_slice_bytes": 6000}))
    summary, _ = _run_demo(tmp_path, monkeypatch)
    rows = {row["plan"]: row for row in summary["plans"]}
    split = rows["fastest offloading plan"]["split"]
    assert split[0] != split[1] and not rows["fastest offloading plan"]["fallback"]
    assert summary["over_grpc"] == ["fastest offloading plan"] and summary["verified"]


def test_the_demo_prints_a_model_name_as_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """'chain[b]' was read as rich markup: the rule and the summary showed 'chain' in bold. The progress bars go to
    stderr, as every command's (they were among the report on stdout: walkthrough)."""
    summary, text = _run_demo(tmp_path, monkeypatch, model="chain[b]")
    assert summary["verified"] and "offload_all" in summary["over_grpc"]  # a plan that offloads, answered
    assert "RoaD-RuNNer demo: chain[b] at 16" in text
    assert "model chain[b]@16:" in text and "verified over gRPC (" in text
    elapsed = re.compile(r"\b\d+:\d\d:\d\d\b")  # a bar's time column
    assert elapsed.search(capsys.readouterr().err) and not elapsed.search(text)


# -- progress bars -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet[v2]", "cam[/v2]", "net[@x]"])
def test_progress_labels_are_text_not_markup(name: str) -> None:
    """'cam[/v2]' raised MarkupError; 'resnet[v2]' showed as 'resnet'."""
    out = io.StringIO()
    with progress_bars(console=Console(file=out, width=120)) as progress:
        progress("profile", 1, 3, f"{name}[3]")
    assert f"{name}[3]" in out.getvalue()


def test_no_step_draws_nothing() -> None:
    """A command failing before its first step (no server) printed an empty line before its error."""
    out = io.StringIO()
    with progress_bars(console=Console(file=out, width=120, force_terminal=True)):
        pass
    assert out.getvalue() == ""


def test_a_warning_logged_under_live_bars_is_printed_above_them(capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI's log handler wrote to the stderr the bars had replaced, so on a terminal a warning was glued to the
    bar's line (review); it goes through the bars' console now, and back to stderr once they stop."""
    import logging
    import sys

    handler = logging.StreamHandler(sys.stderr)
    logging.getLogger().addHandler(handler)
    out = io.StringIO()
    try:
        with progress_bars(console=Console(file=out, width=120, force_terminal=True)) as progress:
            progress("requests", 1, 3, "")
            logging.getLogger("rr_edge.test").warning("the server failed")
        logging.getLogger("rr_edge.test").warning("after the bars")
    finally:
        logging.getLogger().removeHandler(handler)
    err = capsys.readouterr().err
    assert "the server failed" in out.getvalue() and "the server failed" not in err
    assert "after the bars" in err and handler.stream is sys.stderr


def test_profiling_a_model_named_like_markup() -> None:
    from rr_edge.blocks import analyze
    from rr_edge.profiler import profile_model

    model = conv_chain(layers=2)
    out = io.StringIO()
    with progress_bars(console=Console(file=out, width=120)) as progress:
        result = profile_model(model, analyze(model, "cam[/v2]"), progress=progress)
    assert result.layers and "cam[/v2]" in out.getvalue()


# -- the Pareto plot -----------------------------------------------------------------------------------------------


def test_plans_priced_at_infinity_are_not_counted_nor_make_the_axes_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Plans over the server's slice limit cost +inf: both axes went log, and the legend counted them."""
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(0)
    n = 5
    inp = PlanInputs(
        edge_ms=rng.uniform(0.5, 5, n), edge_mJ=rng.uniform(5, 50, n), cloud_ms=rng.uniform(0.5, 20, n),
        upload_bytes=rng.integers(1000, 200_000, n), boundary_bytes=rng.integers(1_000, 300_000, n + 1),
        uplink=NetworkModel.affine(1.0, 5e4), downlink=NetworkModel.affine(1.0, 5e4), idle_power_W=0.2,
        tx_power_W=1.0, max_slice_bytes=150_000,
    )  # fmt: skip
    table = evaluate_all(inp)
    _, _, lat, en = table.flat()
    finite = np.isfinite(lat) & np.isfinite(en)
    assert 0 < finite.sum() < lat.size  # some plans over the limit
    assert lat[finite].max() / lat[finite].min() < 100 and en[finite].max() / en[finite].min() < 100
    close = plt.close
    figures: list[Any] = []
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figure to look at
    plot_pareto(table, pareto(table), choose(table, "latency"), all_baselines(inp), tmp_path / "p.png")
    (fig,) = figures
    ax = fig.axes[0]
    assert (ax.get_xscale(), ax.get_yscale()) == ("linear", "linear")
    assert f"all plans ({finite.sum()})" in ax.get_legend_handles_labels()[1]
    close(fig)


# -- FLOPs ---------------------------------------------------------------------------------------------------------

SHAPE = (1, 8, 4, 4)
N = 8 * 4 * 4
REDUCED = (1, 1, 4, 4)


def _flops(op: str, inputs: int = 1, out: tuple[int, ...] = SHAPE) -> int:
    infos = {"x": TensorInfo("x", SHAPE, "float32"), "y": TensorInfo("y", out, "float32")}
    return node_flops(helper.make_node(op, ["x"] * inputs, ["y"]), infos)


UNARY = (
    "Sin Cos Tan Asin Acos Atan Sinh Cosh Asinh Acosh Atanh Ceil Floor Round Sign IsInf IsNaN Not BitwiseNot "
    "Softsign ThresholdedRelu Shrink Swish Hardmax CumSum CumProd Relu Erf"
).split()
BINARY = "Equal Greater GreaterOrEqual Less LessOrEqual And Or Xor BitShift BitwiseAnd BitwiseOr BitwiseXor Mod".split()


@pytest.mark.parametrize("op", UNARY + BINARY)
def test_element_wise_ops_count_one_per_output_element(op: str) -> None:
    """Sin, Floor, Equal, Softsign and the like counted 0, against the module's own docstring."""
    assert _flops(op, 2 if op in BINARY else 1) == N


@pytest.mark.parametrize(
    ("op", "per_element"),
    [("ReduceSum", 1), ("ReduceProd", 1), ("ReduceLogSum", 1), ("ArgMax", 1), ("ArgMin", 1), ("ReduceL1", 2),
     ("ReduceL2", 2), ("ReduceSumSquare", 2), ("ReduceLogSumExp", 2), ("GlobalLpPool", 2)],
)  # fmt: skip
def test_reductions_count_per_input_element(op: str, per_element: int) -> None:
    assert _flops(op, out=REDUCED) == per_element * N


@pytest.mark.parametrize(
    ("op", "per_element"),
    [("LpNormalization", 3), ("MeanVarianceNormalization", 5), ("RMSNormalization", 4), ("LayerNormalization", 5)],
)
def test_normalisations_count_per_output_element(op: str, per_element: int) -> None:
    assert _flops(op) == per_element * N
