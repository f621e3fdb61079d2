"""The main job (`rr-edge demo`) end to end: embedded server, profiles, plan, runs over gRPC, summary and plot."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys

import pytest

from rr_edge.demo import check_verified
from rr_edge.errors import RoadRunnerError
from tests.conftest import REPO, exported_model


def test_demo_runs_end_to_end_and_verifies_outputs(tmp_path):
    out = tmp_path / "demo"
    out.mkdir()
    shutil.copy(exported_model("resnet18"), out / "resnet18_224.onnx")  # skip the export
    done = subprocess.run(
        [sys.executable, "-m", "rr_edge.cli", "demo", "--out", str(out), "--max-mb", "4", "--repeat", "5", "--json"],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["blocks"] == 13 and summary["profiled"] == 4  # ceil(0.3 x 12 unique signatures)
    # the plan waited for the server's own timings: the profiled blocks are measured on the cloud node too
    assert summary["provenance"]["cloud"].get("measured", 0) >= summary["profiled"]
    assert summary["max_abs_diff_vs_local"] <= 1e-4 and summary["verified"]
    names = {row["plan"] for row in summary["plans"]}
    assert {"roadrunner (chosen)", "offload_none", "offload_all", "neurosurgeon"} <= names
    assert all(row["measured_ms"] > 0 and not row["fallback"] for row in summary["plans"])
    # measured as planned: a plan that uploads weights at run time is charged its measured upload over K requests
    rows = {row["plan"]: row for row in summary["plans"]}
    assert rows["offload_all"]["upload_ms"] > 0 and rows["offload_none"]["upload_ms"] == 0
    assert rows["neurosurgeon"]["upload_ms"] == 0  # Neurosurgeon's model is on the server beforehand
    k = summary["amortize_over"]
    assert k == 5
    for row in summary["plans"]:
        assert row["measured_ms"] == pytest.approx(row["request_ms"] + row["upload_ms"] / k)
    # modelled energy: the edge draws at least its idle power all along (a first profile's cold-start predictions
    # once drove every plan's energy to 0: the cf_cpp feature-range clip, tests/test_predictions_review.py)
    chosen = summary["chosen"]
    assert chosen["energy_mJ"] >= 1.0 * chosen["latency_ms"]  # mJ over ms: 1 W, under the built-in 1.25 W idle
    assert (out / "pareto.png").stat().st_size > 10_000
    assert "summary" in done.stderr and "energy source: model" in done.stderr
    assert all(stage in done.stderr for stage in ("uplink", "downlink", "sweep"))  # the long steps' progress bars


def test_demo_fails_when_outputs_differ_from_local():
    check_verified({"verified": True, "max_abs_diff_vs_local": 1e-6}, 1e-3)
    with pytest.raises(RoadRunnerError, match=r"differ from the whole model run locally by 2.0e-02"):
        check_verified({"verified": False, "max_abs_diff_vs_local": 0.02}, 1e-3)


def test_demo_with_a_model_torchvision_does_not_know_starts_no_server(tmp_path, monkeypatch):
    """The embedded server started (and its data dir was made) before the name was refused (found by review)."""
    import rr_server

    class NoServer:
        def __init__(self, *args, **kwargs):
            raise AssertionError("the server started before the model was exported")

    monkeypatch.setattr(rr_server, "Server", NoServer)
    from rich.console import Console

    from rr_edge.demo import DemoOptions, run_demo
    from rr_edge.errors import ModelError

    with pytest.raises(ModelError, match="nosuch"):
        run_demo(DemoOptions(model="nosuch", out_dir=tmp_path), Console(file=io.StringIO()))
