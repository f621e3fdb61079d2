"""An evaluation that did not measure everything says so: in the exit status, in eval.json and at the top of the report.

No testbed, no server: the harness's phases run against a stand-in cluster, the analysis on synthetic raw outputs.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("cf_cpp")

from tests.test_eval import _eval_data, _execute  # noqa: E402
from tools.eval import __main__ as eval_main  # noqa: E402
from tools.eval import analysis, config, harness, missing, report  # noqa: E402

SETTLED = {"expected": 43, "measured": 43, "models_timed_whole": 2, "waited_s": 3.0}
SHORT = {**SETTLED, "measured": 40, "waited_s": 900.0}


def test_settle_shortfall_counts_slices_and_whole_models():
    assert missing.settle_shortfall(SETTLED, 2) is None
    short = missing.settle_shortfall(SHORT, 2)
    assert short is not None and "timed 40 of 43 reported slices and 2 of 2 models whole" in short
    assert "after 900 s" in short
    assert "1 of 2 models" in (missing.settle_shortfall({**SETTLED, "models_timed_whole": 1}, 2) or "")


def test_of_run_names_each_device_model_and_the_cloud_row():
    execute = {"emu-agx": {"models": {}}, "emu-nx": {"models": {}, "errors": {"resnet18": "RuntimeError: boom"}}}
    failed = {"emu-nano": "execute on emu-nano failed (rc 1); its log: execute-emu-nano.log"}
    classes = ("emu-nano", "emu-tx1", "emu-nx", "emu-agx")
    gaps = missing.of_run(classes, 2, SHORT, execute, failed)
    assert gaps["execute"] == {
        "emu-nx": {"resnet18": "RuntimeError: boom"},
        "emu-nano": failed["emu-nano"],
        "emu-tx1": "the execute worker wrote no output",
    }
    lines = missing.describe(gaps)
    assert "emu-nx/resnet18: no plan measured (RuntimeError: boom)" in lines
    assert lines[-1].startswith("cloud row: the cloud profiler had timed 40 of 43")
    assert missing.of_run(("emu-agx",), 2, SETTLED, {"emu-agx": {"models": {}}}, {}) == {}
    assert missing.of_run(("emu-agx",), 2, None, {"emu-agx": {"models": {}}}, {}) == {}  # settle not kept: no claim


class FakeCluster:
    """The phases' view of a cluster: every worker answers at once; settle gives up short, emu-nano's execute fails."""

    def __init__(self, work: Path) -> None:
        self.work = work

    def run_workers(self, command: str, jobs: dict[str, Any], timeout_s: float = 3600) -> dict[str, Any]:
        dev = next(iter(jobs))
        if command == "report":
            return {dev: {"models": {"alexnet": {"reported": ["a", "b"]}}}}
        if command == "settle":
            return {dev: SHORT}
        if command == "execute" and dev == "emu-nano":
            raise RuntimeError("execute on emu-nano failed (rc 1):\nTraceback ...")
        return {dev: {"models": {}}}


def test_phases_keep_going_and_return_what_is_missing(tmp_path, caplog):
    cfg = replace(config.QUICK, classes=("emu-nano", "emu-agx"))
    with caplog.at_level(logging.WARNING):
        times, gaps = harness._phases(cfg, FakeCluster(tmp_path), {"alexnet": "a.onnx", "resnet18": "r.onnx"})
    assert set(times) == {"groundtruth", "report", "settle", "netprofile", "execute"}
    reason = "execute on emu-nano failed (rc 1); its log: execute-emu-nano.log"
    assert gaps["execute"] == {"emu-nano": reason}
    assert json.loads((tmp_path / "failed.json").read_text()) == {"emu-nano": reason}  # for `analyze`
    assert "40 of 43" in gaps["settle"] and "settle: the cloud profiler had timed 40 of 43" in caplog.text


@pytest.mark.parametrize("command", ["collect", "all"])
def test_an_incomplete_run_exits_non_zero_after_writing_what_it_measured(command, monkeypatch, caplog):
    gaps = {"execute": {"emu-nano": "execute on emu-nano failed (rc 1)"}}
    analyzed = []
    monkeypatch.setattr(eval_main, "exit_on_signals", lambda: None)  # the test run keeps its own signal handlers
    monkeypatch.setattr(harness, "collect", lambda cfg: gaps)
    monkeypatch.setattr(analysis, "analyze_run", lambda cfg, out: analyzed.append(out) or {})
    assert eval_main.main([command, "--quick"]) == 1
    assert analyzed == ([] if command == "collect" else [config.QUICK.default_out])
    assert "the run is incomplete" in caplog.text and "emu-nano: no plan measured" in caplog.text
    monkeypatch.setattr(harness, "collect", lambda cfg: {})
    assert eval_main.main([command, "--quick"]) == 0


def _gt_outputs(devices: tuple[str, ...]) -> dict[str, Any]:
    """Ground truth of the two models `_execute()` runs (4 blocks each), on `devices` and the server."""
    out = {}
    for k, dev in enumerate((*devices, config.SERVER_CLASS)):
        models = {}
        for model in ("alexnet", "resnet18"):
            blocks = [
                {"index": b, "signature": f"{model}{b}", "ops": ["Conv"], "flops": 1000 * (b + 1), "param_bytes": 400,
                 "input_bytes": 4096, "output_bytes": 2048}
                for b in range(4)
            ]  # fmt: skip
            meas = {
                b["signature"]: {"latency_ms": {"mean": (k + 1) * (b["index"] + 1)}, "energy_mJ": 1.0} for b in blocks
            }
            whole = {"latency_ms": {"mean": 10.0 * (k + 1)}, "e2e_over_sum_of_blocks": 1.0}
            models[model] = {"blocks": blocks, "measurements": meas, "whole_model": whole}
        out[dev] = {"energy_source": "model", "models": models}
    return out


def test_analyze_keeps_settle_and_lists_what_is_missing_first(tmp_path, monkeypatch):
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    cfg = replace(config.QUICK, models=("alexnet", "resnet18"), classes=("emu-nano", "emu-agx"), fig4_fills=(0.5,))
    monkeypatch.setattr(config.EvalConfig, "work_dir", property(lambda self: work))
    for dev, gt in _gt_outputs(cfg.classes).items():
        (work / f"groundtruth-{dev}.json").write_text(json.dumps(gt))
    agx = {**_execute()["emu-agx"], "errors": {"resnet18": "RuntimeError: boom"}}
    del agx["models"]["resnet18"]
    agx["models"]["alexnet"]["provenance"] = {}
    (work / "execute-emu-agx.json").write_text(json.dumps(agx))
    (work / "settle-emu-agx.json").write_text(json.dumps(SHORT))
    (work / "failed.json").write_text(json.dumps({"emu-nano": "execute on emu-nano failed (rc 1)"}))
    analysis.analyze_run(cfg, out)
    meta = json.loads((out / "eval.json").read_text())["meta"]
    assert meta["settle"] == SHORT
    assert meta["missing"]["execute"] == {
        "emu-agx": {"resnet18": "RuntimeError: boom"},
        "emu-nano": "execute on emu-nano failed (rc 1)",
    }
    text = (out / "README.md").read_text()
    section = text.index("## Missing / incomplete")
    assert section < text.index("## Headline numbers")
    for line in missing.describe(meta["missing"]):
        assert f"* {line}\n" in text[section:]


def test_a_complete_run_has_no_missing_section():
    assert "Missing / incomplete" not in report.render(_eval_data())
    data = _eval_data()
    data["meta"] = {**data["meta"], "missing": {"settle": missing.settle_shortfall(SHORT, 2)}}
    assert "* cloud row: the cloud profiler had timed 40 of 43" in report.render(data)
