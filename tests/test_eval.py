"""Unit tests of the evaluation harness's pure parts (tools/eval): metrics, CSVs, analysis, figures, report.

No testbed, no server: the measured inputs are small synthetic worker outputs.
"""

from __future__ import annotations

import csv
import json
import math
import os
import select
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

matplotlib = pytest.importorskip("matplotlib")
pytest.importorskip("cf_cpp")

from tools.cf_data import load_csv  # noqa: E402
from tools.eval import __main__ as _eval_main  # noqa: E402
from tools.eval import accuracy, analysis, config, device_gt, figures, groundtruth, harness, metrics, report  # noqa: E402
from tools.eval.device_run import PLANS, _tagged  # noqa: E402
from tools.eval.groundtruth import FEATURE_NAMES, from_worker_outputs, read_long_csv, write_long_csv  # noqa: E402
from tools.eval.throttle import CgroupSwitch, keep_moves_cheap  # noqa: E402
from tools.testbed import TestbedConfig  # noqa: E402
from tools.testbed.config import DEFAULT_PREFIX  # noqa: E402

# -- metrics ----------------------------------------------------------------------------------------------------


def test_speedup_and_energy_gain():
    assert metrics.speedup(100.0, 25.0) == pytest.approx(4.0)
    assert metrics.energy_gain_pct(200.0, 50.0) == pytest.approx(75.0)
    assert metrics.energy_gain_pct(100.0, 150.0) == pytest.approx(-50.0)
    with pytest.raises(ValueError):
        metrics.speedup(1.0, 0.0)


def test_errors_and_summaries():
    assert metrics.abs_pct_error(110.0, 100.0) == pytest.approx(10.0)
    assert metrics.abs_pct_error(90.0, 100.0) == pytest.approx(10.0)
    assert metrics.rmse([1, 2, 3], [1, 2, 5]) == pytest.approx(math.sqrt(4 / 3))
    np.testing.assert_allclose(metrics.ape([2, 3], [4, 3]), [50.0, 0.0])
    assert metrics.median([3, None, 1, float("nan"), 2]) == 2
    assert metrics.geomean([1, 4]) == pytest.approx(2.0)
    assert metrics.mean([]) is None


@pytest.mark.parametrize(
    ("s", "g", "q"),
    [
        (2.0, 10.0, "green"),
        (2.0, -5.0, "orange"),
        (0.5, 5.0, "orange"),
        (0.9, -1.0, "red"),
        (1.0, 0.0, "tie"),  # the baseline's own plan: one measurement for both
        (1.0 + 1e-12, -1e-12, "tie"),
        (1.0, -0.5, "red"),  # as fast, more energy: a loss
        (1.0, 0.5, "orange"),
    ],
)
def test_quadrant(s, g, q):
    assert metrics.quadrant(s, g) == q


def test_converged_fill():
    fills = [0.1, 0.2, 0.3, 0.4, 0.5]
    assert metrics.converged_fill(fills, [5.0, 2.0, 1.05, 1.0, 1.0]) == 0.3
    assert metrics.converged_fill(fills, [1.0, 1.0, 1.0, 1.0, 1.0]) == 0.1
    assert metrics.converged_fill([], []) is None


# -- config -----------------------------------------------------------------------------------------------------


def test_model_sets():
    assert set(config.PAPER_MODELS) == set(config.CHAIN) | set(config.RESIDUAL)
    assert len(config.PAPER_MODELS) == 10
    assert config.group_of("vgg16") == "chain" and config.group_of("mobilenet_v2") == "residual"
    assert set(config.QUICK.models) <= set(config.FULL.models)
    assert config.QUICK.default_out.name == "quick" and config.FULL.default_out.name == "results"


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"quick": True},
        {"quick": True, "input_size": 512},
        {"input_size": 768, "name": "big"},
        {"models": ("alexnet", "vgg11"), "classes": ("emu-agx",)},
        {"quick": True, "name": "quick-again"},
    ],
)
def test_cli_flags_remake_the_saved_run(options):
    cfg = config.from_options(**options)
    saved = json.loads(json.dumps(cfg.to_json()))  # as eval.json keeps it
    flags = config.cli_flags(saved)
    assert _eval_main.parse(["all", *flags])[1] == cfg
    legacy = {k: v for k, v in saved.items() if k != "quick"}  # eval.json written before `quick` was saved
    assert config.cli_flags(legacy) == flags


def test_cli_flags_keep_an_output_directory_that_is_not_the_default():
    saved = config.QUICK.to_json()
    assert config.cli_flags(saved, "docs/results/quick") == ["--quick"]
    flags = config.cli_flags(saved, "docs/results/quick-load")
    assert flags == ["--quick", "--out", "docs/results/quick-load"]
    args, cfg = _eval_main.parse(["analyze", *flags])
    assert cfg == config.QUICK and args.out == Path("docs/results/quick-load")


@pytest.mark.parametrize("name", ["../../docs/results", "/etc", ".hidden", "a/b", "..", ""])
def test_a_run_name_cannot_leave_its_folder(name):
    with pytest.raises(ValueError, match="--name"):
        config.from_options(name=name)
    with pytest.raises(SystemExit):
        _eval_main.parse(["collect", "--name", name])
    assert config.from_options(name="quick-2.b_c").name == "quick-2.b_c"


@pytest.mark.parametrize("name", ["full", "models"])
def test_a_run_name_cannot_be_another_runs_data(name):
    """`full` would write over docs/results (and wipe the full run's raw outputs); `models` is the models' cache."""
    with pytest.raises(ValueError, match=f"--name {name} is reserved"):
        config.from_options(quick=True, name=name)
    with pytest.raises(SystemExit):
        _eval_main.parse(["collect", "--quick", "--name", name])
    assert config.from_options().name == "full"  # the full run keeps its name when --name is left out


def test_sighup_raises_system_exit_so_the_teardown_runs():
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # were SIGHUP left alone, it must not kill the test run
    try:
        _eval_main.exit_on_signals()
        with pytest.raises(SystemExit) as info:
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(1)
        assert info.value.code == 128 + signal.SIGHUP
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def test_from_options_rejects_a_tiny_input_size():
    with pytest.raises(ValueError, match="input-size"):
        config.from_options(input_size=8)


# -- throttle ---------------------------------------------------------------------------------------------------


def test_cgroup_switch_writes_pid_to_the_right_descriptor():
    (tr, tw), (fr, fw) = os.pipe(), os.pipe()
    try:
        switch = CgroupSwitch(tw, fw)
        with switch.throttled():
            assert switch.throttled_now
        assert not switch.throttled_now
        pid = str(os.getpid()).encode()
        assert os.read(tr, 64) == pid
        assert os.read(fr, 64) == pid
    finally:
        for fd in (tr, tw, fr, fw):
            os.close(fd)
    CgroupSwitch().throttle()  # without descriptors: a no-op


def test_keepalive_moves_only_its_own_thread_until_stopped():
    r, w = os.pipe()
    stop, tids = threading.Event(), []

    def run() -> None:
        tids.append(threading.get_native_id())
        keep_moves_cheap(w, every_s=0.002, stop=stop)

    thread = threading.Thread(target=run)
    try:
        thread.start()
        written, deadline = "", time.monotonic() + 30  # 3 writes 2 ms apart took over 50 ms on a loaded machine
        while not (tids and len(written) >= 3 * len(str(tids[0]))) and time.monotonic() < deadline:
            if select.select([r], [], [], 0.1)[0]:
                written += os.read(r, 1 << 16).decode()
        stop.set()
        thread.join(timeout=5)
        assert not thread.is_alive()
        os.close(w)
        written += os.read(r, 1 << 16).decode()
        tid = str(tids[0])
        assert tid != str(os.getpid()) and len(written) >= 3 * len(tid)  # a thread id, written again and again
        assert written == tid * (len(written) // len(tid))
    finally:
        os.close(r)


def _relu_model() -> bytes:
    """A one-Relu ONNX model over 2 floats, loadable by this ONNX Runtime."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def test_upload_probe_is_a_valid_model_with_a_new_hash():
    data = _relu_model()
    a, b = _tagged(data), _tagged(data)
    assert a != b and len(a) == len(b)
    parsed = onnx.load_from_string(a)
    onnx.checker.check_model(parsed)
    assert parsed.doc_string.startswith("rr-eval upload probe")


# -- ground truth -----------------------------------------------------------------------------------------------


def _spinning(session) -> str:
    try:
        return session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")
    except RuntimeError:  # not set: ONNX Runtime's default, spinning
        return "default"


def test_server_ground_truth_opens_models_as_rr_server_does():
    data = _relu_model()
    open_server, recorded = device_gt.session_opener(config.SERVER_CLASS)
    server = open_server(data)
    assert _spinning(server) == "0" and recorded["spinning"] is False  # rr-server's pool threads do not spin
    assert server.run(None, {"x": np.array([-1.0, 2.0], np.float32)})[0].tolist() == [0.0, 2.0]
    open_edge, _ = device_gt.session_opener("emu-nano")
    assert _spinning(open_edge(data)) == "default"  # rr-edge's sessions keep ONNX Runtime's default


def _block(k: int, sig: str) -> dict:
    return {
        "index": k,
        "signature": sig,
        "ops": ["Conv", "Relu"] if k % 2 else ["Gemm"],
        "flops": 1000 * (k + 1),
        "param_bytes": 400 * (k + 1),
        "input_bytes": 4096 // (k + 1),
        "output_bytes": 2048 // (k + 1),
    }


def _gt_outputs(devices=("emu-nano", "emu-agx", "server"), n=6) -> dict:
    speed = {"emu-nano": 10.0, "emu-agx": 2.0, "server": 0.5}
    out = {}
    for dev in devices:
        blocks = [_block(k, f"s{k}") for k in range(n)]
        meas = {
            b["signature"]: {
                "latency_ms": {"mean": speed[dev] * (b["index"] + 1), "p10": 0, "p90": 0, "cv": 0},
                "samples": 3,
                "energy_mJ": 3.0 * speed[dev] * (b["index"] + 1),
            }
            for b in blocks
        }
        whole = {"latency_ms": {"mean": 21.0 * speed[dev]}, "e2e_over_sum_of_blocks": 1.0}
        out[dev] = {
            "energy_source": "model",
            "models": {"m": {"blocks": blocks, "measurements": meas, "whole_model": whole}},
        }
    return out


def test_groundtruth_csv_round_trip_and_cf_eval_format(tmp_path):
    gt, occurrences = from_worker_outputs(_gt_outputs())
    assert gt.rows == ["emu-nano", "emu-agx", "server"] and len(gt.cols) == 6
    assert gt.latency_ms[0, 2] == pytest.approx(30.0) and gt.energy_mJ[1, 0] == pytest.approx(6.0)
    assert len(occurrences) == 6
    path = tmp_path / "lat.csv"
    assert write_long_csv(path, gt, gt.latency_ms) == 18
    rows, cols, values, feats = read_long_csv(path)
    assert rows == gt.rows and cols == gt.cols
    np.testing.assert_allclose(values, gt.latency_ms, rtol=1e-5)
    assert feats.shape == (6, len(FEATURE_NAMES))
    m = load_csv(path)  # tools/cf_eval reads it as is
    assert m.values.size == 18 and m.features.shape == (6, len(FEATURE_NAMES))
    assert m.feature_names == FEATURE_NAMES and m.row_labels == tuple(gt.rows)


def test_energy_csv_says_unit_and_meter_and_still_loads(tmp_path):
    outputs = _gt_outputs()
    outputs["emu-agx"]["energy_source"] = "ina3221"  # a row measured by another meter keeps its own label
    gt, _ = from_worker_outputs(outputs)
    path = tmp_path / "energy.csv"
    assert groundtruth.write_energy_csv(path, gt) == 18
    with open(path, newline="", encoding="utf-8") as f:
        recs = list(csv.DictReader(f))
    assert list(recs[0])[:5] == ["row", "col", "value", "unit", "energy_source"]
    assert {r["unit"] for r in recs} == {"mJ"}
    assert {(r["row"], r["energy_source"]) for r in recs} == {
        ("emu-nano", "model"),
        ("emu-agx", "ina3221"),
        ("server", "model"),
    }
    m = load_csv(path)  # tools/cf_eval passes over the labels
    assert m.feature_names == FEATURE_NAMES and m.values.size == 18
    np.testing.assert_allclose(read_long_csv(path)[2], gt.energy_mJ, rtol=1e-5)


def test_fill_sweep_cf_learns_a_rank_one_matrix():
    rng = np.random.default_rng(0)
    n_cols = 40
    blocks = [_block(k, f"s{k}") for k in range(n_cols)]
    col = rng.lognormal(0, 1, n_cols)
    values = np.outer(np.array([1, 1.5, 3, 6, 10.0]), col)
    feats = np.stack([np.log1p([b["flops"], b["param_bytes"], b["input_bytes"], b["output_bytes"]]) for b in blocks])
    res = accuracy.fill_sweep(values, feats, blocks, [0.2, 0.5], seeds=2)
    assert res["fills"] == [0.2, 0.5]
    for method in ("cf", "ns"):
        assert all(v is not None and v >= 0 for v in res[method]["rmse"])
    assert res["cf"]["median_ape"][-1] < 20.0  # near-exact structure is learnt from half the entries


def test_reveal_mask_counts():
    values = np.ones((3, 10))
    values[2, 5:] = np.nan
    mask = accuracy.reveal_mask(values, 0.3, np.random.default_rng(1))
    assert mask.sum(axis=1).tolist() == [3, 3, 2]
    assert not mask[2, 5:].any()


# -- analysis, figures, report ----------------------------------------------------------------------------------


def _plan(split, pre, pred_ms, ns_ms, n):
    cost = lambda ms: {"latency_ms": ms, "energy_mJ": 10 * ms}  # noqa: E731
    return {
        "split": split,
        "preloaded": pre,
        "offloaded_blocks": split[1] - split[0],
        "predicted": cost(pred_ms),
        "predicted_ns": cost(ns_ms),
    }


def _meas(ms, upload_ms=0.0):
    return {
        "latency_ms": {"mean": ms, "median": ms, "p90": ms},
        "remote_ms": ms / 2,
        "energy_mJ": 10 * ms,
        "upload_ms": upload_ms,
        "upload_mJ": 2 * upload_ms,
        "fallback_requests": 0,
        "max_abs_diff_vs_local": 0.0,
    }


def _execute() -> dict:
    out = {}
    for dev, k in (("emu-nano", 4.0), ("emu-agx", 1.0)):
        models = {}
        for model in ("alexnet", "resnet18"):
            n = 10
            plans = {
                "roadrunner": _plan([2, 7], False, 30 * k, 40 * k, n),
                "roadrunner_energy": _plan([-1, 9], False, 60 * k, 50 * k, n),
                "roadrunner_preoffloaded": _plan([-1, 9], True, 12 * k, 15 * k, n),
                "offload_none": _plan([9, 9], False, 100 * k, 90 * k, n),
                "offload_all": _plan([-1, 9], False, 60 * k, 50 * k, n),
                "neurosurgeon": _plan([4, 9], True, 40 * k, 35 * k, n),
                "neurosurgeon_non_offloaded": _plan([9, 9], False, 100 * k, 90 * k, n),
            }
            measured = {
                "2,7": _meas(25 * k, 5 * k),
                "-1,9": _meas(10 * k, 50 * k),
                "9,9": _meas(100 * k),
                "4,9": _meas(50 * k, 7 * k),
            }
            models[model] = {"blocks": n, "plans": plans, "measured": measured}
        out[dev] = {"models": models}
    assert set(plans) == set(PLANS)
    return out


def test_cloud_row_is_scored_against_the_servers_ground_truth(tmp_path):
    ex = _execute()
    for dev, k in (("emu-nano", 1.0), ("emu-agx", 3.0)):
        for model, mo in ex[dev]["models"].items():
            mo["plans"]["offload_all"]["predicted"]["breakdown"] = {"cloud_ms": (12.0 if model == "alexnet" else 5) * k}
    whole = {
        m: {"whole_model": {"latency_ms": {"mean": ms, "median": ms / 2}}}
        for m, ms in (("alexnet", 20.0), ("resnet18", 5.0))
    }  # the window mean, as every other latency here
    cloud = analysis.cloud_vs_groundtruth({"server": {"models": whole}}, ex)
    assert cloud["per_model"]["alexnet"] == {"predicted_ms": 24.0, "groundtruth_ms": 20.0, "ratio": pytest.approx(1.2)}
    assert cloud["per_model"]["resnet18"]["ratio"] == pytest.approx(2.0)  # median of 5 and 15 over 5
    assert cloud["median_ape"] == pytest.approx(60.0) and cloud["median_ratio"] == pytest.approx(1.6)
    assert analysis.cloud_vs_groundtruth({}, ex) == {}  # no server row: nothing to score
    text = report.write({**_eval_data(), "cloud": cloud}, tmp_path).read_text()
    assert "| alexnet | 24.0 | 20.0 | 1.20 |" in text and "(median error 60.0%)" in text


def test_measured_cost_charges_upload_only_when_not_preloaded():
    mo = _execute()["emu-agx"]["models"]["alexnet"]
    assert analysis.measured_cost(mo, "roadrunner")["latency_ms"] == pytest.approx(30.0)
    assert analysis.measured_cost(mo, "offload_all")["latency_ms"] == pytest.approx(60.0)
    assert analysis.measured_cost(mo, "roadrunner_preoffloaded")["latency_ms"] == pytest.approx(10.0)
    assert analysis.measured_cost(mo, "neurosurgeon")["latency_ms"] == pytest.approx(50.0)
    assert analysis.measured_cost(mo, "offload_none")["upload_ms"] == 0.0


def test_fig3_fig5_fig6_numbers():
    ex = _execute()
    f3 = analysis.fig3(ex)
    assert len(f3["points"]) == 2 * 2 * len(analysis.COMPARISONS)
    p = next(p for p in f3["points"] if p["comparison"] == "Offload None" and p["device"] == "emu-agx")
    assert p["speedup"] == pytest.approx(100 / 30) and p["quadrant"] == "green"
    s = f3["summary"]["all"]["NS-nonOffloaded"]
    assert s["mean_speedup"] == pytest.approx(100 / 30)
    assert f3["summary"]["chain"]["Offload None"]["n"] == 2  # alexnet on two devices
    rows = analysis.plan_rows(ex)
    f5 = analysis.fig5(rows)
    # distinct plans per (device, model): (2,7), (-1,9) uploaded, (-1,9) pre-loaded, (9,9), (4,9)
    assert f5["overall"]["all_plans"]["n"] == 2 * 2 * 5
    assert f5["per_model"]["latency"]["roadrunner"]["alexnet"] is not None
    assert f5["overall"]["chosen_plan"]["roadrunner_latency_median_ape"] == pytest.approx(0.0)
    f6 = analysis.fig6(ex)
    assert f6["share_pct"]["latency"]["emu-nano"]["alexnet"] == pytest.approx(50.0)
    assert f6["overall_pct"]["energy"] == pytest.approx(100.0)


def _same_plan_as_neurosurgeon() -> dict:
    """`_execute()` where RoaD-RuNNer-preOffloaded picks Neurosurgeon's split: the same pre-loaded run measured once."""
    ex = _execute()
    for out in ex.values():
        for mo in out["models"].values():
            mo["plans"]["roadrunner_preoffloaded"]["split"] = mo["plans"]["neurosurgeon"]["split"]
    return ex


def test_the_baselines_own_plan_is_a_tie_not_a_loss(tmp_path):
    f3 = analysis.fig3(_same_plan_as_neurosurgeon())
    pre = [p for p in f3["points"] if p["comparison"] == "RR-preOffloaded vs Neurosurgeon"]
    assert [(p["speedup"], p["energy_gain_pct"], p["quadrant"]) for p in pre] == [(1.0, 0.0, "tie")] * 4
    summary = f3["summary"]["all"]
    assert summary["RR-preOffloaded vs Neurosurgeon"]["quadrants"] == {"green": 0, "orange": 0, "red": 0, "tie": 4}
    assert summary["Offload None"]["quadrants"] == {"green": 4, "orange": 0, "red": 0, "tie": 0}
    data = {**_eval_data(), "fig3": f3}
    text = report.render(data)
    assert "| green/orange/red/tie |" in text and "| all | RR-preOffloaded vs Neurosurgeon | 4 |" in text
    row = next(line for line in text.splitlines() if line.startswith("| all | RR-preOffloaded vs Neurosurgeon |"))
    assert row.endswith("| 0/0/0/4 |")


def test_fig3_draws_ties_grey(tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr(figures.plt, "close", drawn.append)  # keep the figure to look at it
    figures.fig3({**_eval_data(), "fig3": analysis.fig3(_same_plan_as_neurosurgeon())}, tmp_path / "fig3.png")
    grey = matplotlib.colors.to_rgba(figures.TIE_COLOUR)
    for ax in drawn[0].axes:  # chain and residual models: two ties each, at 0% and 1x
        ties = [c for c in ax.collections if c.get_offsets().shape[0] and tuple(c.get_facecolor()[0]) == grey]
        assert [c.get_offsets().tolist() for c in ties] == [[[0.0, 1.0], [0.0, 1.0]]]
        others = [c for c in ax.collections if c.get_offsets().shape[0] and c not in ties]
        assert others and all(tuple(c.get_facecolor()[0]) != grey for c in others)


def _eval_data() -> dict:
    ex = _execute()
    rows = analysis.plan_rows(ex)
    f3, f5, f6 = analysis.fig3(ex), analysis.fig5(rows), analysis.fig6(ex)
    sweep = {
        "fills": [0.1, 0.3],
        "seeds": 1,
        "cf": {"rmse": [2.0, 1.0], "mape": [20.0, 10.0]},
        "ns": {"rmse": [3.0, 3.0], "mape": [30.0, 30.0]},
    }
    f4 = {"latency": sweep, "energy": sweep, "rows": ["emu-nano", "emu-agx"], "cols": 12}
    gt = analysis.groundtruth_summary(_gt_outputs(("emu-nano", "emu-agx")))
    return {
        "meta": {
            "run": "quick",
            "config": config.QUICK.to_json(),
            "generated": "now",
            "host": {"platform": "linux", "cpus": "cpu"},
            "phases_s": {"execute": 60.0},
        },
        "headline": analysis.headline(f3, f4, f5, f6),
        "groundtruth": gt,
        "fig3": f3,
        "fig4": f4,
        "fig5": f5,
        "fig6": f6,
        "plans": rows,
        "network": {  # upload probe samples (bytes, ms), as run_netprofile records them
            dev: {"upload": {"samples": [[65_640, 2.0], [1 << 20, 15.0], [64 << 20, 900.0]]}}
            for dev in ("emu-nano", "emu-agx")
        },
    }


def test_figures_are_written(tmp_path):
    paths = figures.write_all(_eval_data(), tmp_path)
    assert [p.name for p in paths] == ["fig3.png", "fig4.png", "fig5.png", "fig6.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000


def test_report_places_paper_numbers_beside_ours(tmp_path):
    data = _eval_data()
    text = report.write(data, tmp_path).read_text()
    for needle in ("9.58x", "88.73%", "3.19%", "30%", "modelled", "emulated", "fig3.png", "fig6.png"):
        assert needle in text
    assert f"{data['headline']['mean_speedup_vs_ns_non_offloaded']:.2f}x mean" in text
    assert "slice-upload probes (64 KiB to 64 MiB," in text  # the sizes the devices probed, from their samples
    assert "`value` = window-mean ms / modelled mJ" in text
    assert "lower latency RMSE at 2 of 2 fills and the lower MAPE at 2; at 30% fill 1.00 ms vs 3.00 ms" in text
    json.dumps(data)  # eval.json is plain JSON


def test_report_states_the_servers_speed_over_the_edges_from_the_whole_model_table():
    data = _eval_data()
    data["groundtruth"] = analysis.groundtruth_summary(_gt_outputs())  # whole model: nano 10x, agx 2x the server's
    assert "4.0-20x faster than the emulated edges on whole models" in report.render(data)
    data["groundtruth"] = analysis.groundtruth_summary(_gt_outputs(("emu-nano", "emu-agx")))
    assert "faster than the emulated edges (this run did not time the server's whole models)" in report.render(data)


def test_full_report_links_the_runs_stored_beside_it(tmp_path):
    data = _eval_data()
    data["meta"] = {**data["meta"], "run": "full", "config": config.FULL.to_json()}
    for run in ("quick-768", "quick"):
        (tmp_path / run).mkdir()
        (tmp_path / run / "README.md").write_text("# another run\n")
    text = report.write(data, tmp_path).read_text()
    links = "[quick/README.md](quick/README.md), [quick-768/README.md](quick-768/README.md)"
    assert f"Other runs' reports: {links}." in text


def test_error_components_split_local_remote_upload():
    rows = [
        {"predicted_local_ms": 90.0, "local_ms": 100.0, "predicted_remote_ms": 30.0, "remote_ms": 20.0,
         "predicted_upload_ms": None, "upload_ms": 0.0},
        {"predicted_local_ms": 110.0, "local_ms": 100.0, "predicted_remote_ms": 20.0, "remote_ms": 20.0,
         "predicted_upload_ms": 50.0, "upload_ms": 100.0},
    ]  # fmt: skip
    comp = analysis.components(rows)
    assert comp["local"]["n"] == 2 and comp["local"]["median_ape"] == pytest.approx(10.0)
    assert comp["remote"]["median_ratio"] == pytest.approx(1.25)
    assert comp["upload"]["n"] == 1 and comp["upload"]["median_ratio"] == pytest.approx(0.5)


def _row(split, preloaded, remote=(12.0, 10.0), upload=(None, 0.0)) -> dict:
    """A plan row (as `plan_rows` makes them) with the predicted and measured remote part and upload."""
    return {
        "device": "emu-agx", "model": "alexnet", "plan": "p", "split": split, "preloaded": preloaded,
        "predicted_ms": 50.0, "measured_ms": 50.0, "predicted_mJ": 5.0, "measured_mJ": 5.0,
        "ns_predicted_ms": None, "ns_predicted_mJ": None,
        "predicted_local_ms": None, "local_ms": 0.0,
        "predicted_remote_ms": remote[0], "remote_ms": remote[1],
        "predicted_upload_ms": upload[0], "upload_ms": upload[1],
    }  # fmt: skip


def test_fig5_scores_the_parts_of_a_split_once_whether_preloaded_or_not():
    """Where weights come from changes a plan's whole cost (the upload), not its local and remote parts: the split
    (-1,9), run uploaded and pre-loaded, is one remote measurement; the whole-plan errors and the upload keep both."""
    rows = [
        _row([-1, 9], False, upload=(50.0, 100.0)),
        _row([-1, 9], True),
        _row([2, 7], False, remote=(20.0, 20.0), upload=(8.0, 10.0)),
    ]
    f5 = analysis.fig5(rows)
    remote, upload = f5["components"]["remote"], f5["components"]["upload"]
    assert remote["n"] == 2 and remote["median_ratio"] == pytest.approx(1.1)  # 1.2 and 1.0, not 1.2 twice
    assert upload["n"] == 2 and upload["median_ratio"] == pytest.approx(0.65)
    assert f5["overall"]["all_plans"]["n"] == 3


def test_a_run_refuses_to_start_without_the_disk_it_needs(tmp_path):
    from tools.eval.harness import check_free_disk

    check_free_disk(tmp_path, 0.001)
    with pytest.raises(RuntimeError, match="needs about 1000000 GB free"):
        check_free_disk(tmp_path, 1e6)


def test_report_names_the_hosts_cpus_and_the_output_directory(tmp_path):
    data = _eval_data()
    text = report.render(data)
    assert "same 2-CPU host" in text and "2 ORT threads" in text  # a run from before the count was recorded
    assert "sudo make eval-quick" in text and "--out" not in text
    data["meta"] = {**data["meta"], "host": {**data["meta"]["host"], "cpu_count": 16}, "out": "docs/results/q-load"}
    text = report.render(data)
    assert "same 16-CPU host" in text and "one ORT thread per physical core" in text and "2-CPU" not in text
    assert "sudo .venv/bin/python -m tools.eval all --quick --out docs/results/q-load" in text
    assert "python -m tools.eval analyze --quick --out docs/results/q-load" in text and "sudo make" not in text


# -- harness ----------------------------------------------------------------------------------------------------


def test_the_evaluation_tears_down_only_its_own_testbed(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(harness.testbed, "up", lambda tcfg: calls.append("up"))
    monkeypatch.setattr(harness.testbed, "down", lambda tcfg: calls.append("down") or [])
    tcfg = harness.testbed_config(config.QUICK)
    assert tcfg.prefix != DEFAULT_PREFIX  # a testbed brought up by hand is not the evaluation's
    tcfg = replace(tcfg, state_dir=str(tmp_path))
    with harness.testbed_up(tcfg):
        pass
    assert calls == ["up", "down"]
    Path(tcfg.state_file).write_text("{}")  # another evaluation's testbed
    with pytest.raises(RuntimeError, match="already up"), harness.testbed_up(tcfg):
        pass
    assert calls == ["up", "down"]


@pytest.fixture
def work(tmp_path, monkeypatch):
    """The work dir of a finished run (raw outputs, server data) and empty model and state dirs, all under tmp."""
    work, models = tmp_path / "work", tmp_path / "models"
    (work / "server-data").mkdir(parents=True)
    models.mkdir()
    (work / "execute-emu-nano.json").write_text("{}")
    monkeypatch.setattr(config.EvalConfig, "work_dir", property(lambda self: work))
    monkeypatch.setattr(config.EvalConfig, "models_dir", property(lambda self: models))
    testbed_config, state_dir = harness.testbed_config, str(tmp_path / "state")
    monkeypatch.setattr(harness, "testbed_config", lambda cfg: replace(testbed_config(cfg), state_dir=state_dir))

    def no_testbed(tcfg: TestbedConfig) -> None:
        raise AssertionError("a test brought the testbed up")

    monkeypatch.setattr(harness, "testbed_up", no_testbed)
    return work


@pytest.mark.parametrize(
    ("change", "error"),
    [({"classes": ("emu-bogus",)}, "unknown device class"), ({"models": ("alexnet", "no_such_net")}, "no_such_net")],
)
def test_collect_refuses_a_bad_run_before_deleting_the_last_one(work, change, error):
    pytest.importorskip("torchvision")
    with pytest.raises(RuntimeError, match=error):
        harness.collect(replace(config.QUICK, **change))
    assert (work / "execute-emu-nano.json").exists() and (work / "server-data").exists()


def test_collect_needs_root_and_records_the_runs_configuration(work, monkeypatch):
    cfg = replace(config.QUICK, min_free_disk_gb=1e9)
    for m in cfg.models:
        cfg.model_path(m).write_bytes(b"")
    monkeypatch.setattr(harness.os, "geteuid", lambda: 1000)
    with pytest.raises(RuntimeError, match="needs root"):
        harness.collect(cfg)
    assert (work / "execute-emu-nano.json").exists()
    monkeypatch.setattr(harness.os, "geteuid", lambda: 0)
    with pytest.raises(RuntimeError, match="GB free"):  # past the checks: the last run is gone, this one recorded
        harness.collect(cfg)
    assert not (work / "execute-emu-nano.json").exists() and not (work / "server-data").exists()
    assert json.loads((work / "config.json").read_text()) == json.loads(json.dumps(cfg.to_json()))
    assert json.loads((work / "host.json").read_text()) == {"cpu_count": os.cpu_count()}


def test_analyze_needs_raw_outputs_of_the_same_run(work, tmp_path):
    (work / "execute-emu-nano.json").unlink()
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="no raw outputs in .*; run collect first"):
        analysis.analyze_run(config.QUICK, out)
    (work / "groundtruth-emu-nano.json").write_text("{}")
    collected = config.from_options(quick=True, models=("alexnet",))
    (work / "config.json").write_text(json.dumps(collected.to_json()))
    with pytest.raises(RuntimeError, match="collect --quick --models alexnet`; analyze it with the same options"):
        analysis.analyze_run(config.QUICK, out)
    assert not out.exists()
