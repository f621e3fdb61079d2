"""Review 4 of the evaluation: the report's sentences follow its numbers, Fig. 6 keeps a model that failed on one
device, and bad options (`plan_quality --repeat 0`, `--classes server`, a model or class named twice) are refused
when parsing.

No testbed, no server: the report is rendered from the synthetic worker outputs of tests/test_eval.py.
"""

from __future__ import annotations

import pytest

matplotlib = pytest.importorskip("matplotlib")
pytest.importorskip("cf_cpp")

from tests.test_eval import _eval_data, _execute, _same_plan_as_neurosurgeon  # noqa: E402
from tools import plan_quality as pq  # noqa: E402
from tools.eval import __main__ as eval_main  # noqa: E402
from tools.eval import analysis, config, figures, report  # noqa: E402


def _data(ex: dict | None = None, rmse: list[float] | None = None) -> dict:
    """`_eval_data()` with every number recomputed from the worker outputs `ex` and Fig. 4's CF RMSE series `rmse`
    (fills 10%, 20%, ...), as `analyze` computes them."""
    d = _eval_data()
    ex = _execute() if ex is None else ex
    rows = analysis.plan_rows(ex)
    if rmse is not None:
        fills = [round(0.1 * (k + 1), 1) for k in range(len(rmse))]
        sweep = {"fills": fills, "seeds": 1, "cf": {"rmse": rmse, "mape": [10.0] * len(rmse)},
                 "ns": {"rmse": [9.0] * len(rmse), "mape": [30.0] * len(rmse)}}  # fmt: skip
        d["fig4"] = {**d["fig4"], "latency": sweep, "energy": sweep}
    d.update(plans=rows, fig3=analysis.fig3(ex), fig5=analysis.fig5(rows), fig6=analysis.fig6(ex))
    d["headline"] = analysis.headline(d["fig3"], d["fig4"], d["fig5"], d["fig6"])
    return d


def _finding(text: str, start: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(f"* **{start}"))


def _set_split(ex: dict, plan: str, split: list[int]) -> dict:
    for out in ex.values():
        for mo in out["models"].values():
            mo["plans"][plan]["split"] = split
            key = f"{split[0]},{split[1]}"
            mo["measured"].setdefault(key, mo["measured"]["-1,9"])
    return ex


# -- what the numbers say ---------------------------------------------------------------------------------------


def test_where_the_plans_ran_is_read_from_the_counts():
    text = report.render(_data())  # NS-nonOffloaded all local; RoaD-RuNNer offloads blocks 3-7 and keeps the end
    line = _finding(text, "Uploading weights is expensive here")
    assert "ran everything locally in 4 of 4 (class, model) cases, so it coincides with Offload None" in line
    assert "kept the end on the edge in 2 of 2 cases, as the paper argues" in line

    ex = _set_split(_set_split(_execute(), "neurosurgeon_non_offloaded", [-1, 9]), "roadrunner", [9, 9])
    text = report.render(_data(ex))  # the opposite: NS-nonOffloaded offloads everything, RoaD-RuNNer stays local
    line = _finding(text, "Where NS-nonOffloaded and RoaD-RuNNer ran the model.")
    assert "locally in 0 of 4 (class, model) cases." in line and "(all-local in 4)" in line
    assert "in 0 of 2 cases." in line
    for claim in ("mostly", "coincides with Offload None", "as the paper argues", "stay local"):
        assert claim not in text.split("### What the numbers say")[1].split("## Fig. 3")[0]


def test_the_verdict_against_neurosurgeon_follows_the_measured_speedup():
    text = report.render(_data())  # RoaD-RuNNer 30 ms, Neurosurgeon 50 ms pre-loaded
    line = _finding(text, "Against Neurosurgeon")
    assert "RoaD-RuNNer (which pays its uploads) wins** (geometric-mean speedup 1.67x over 4 cases), unlike" in line
    assert "RoaD-RuNNer-preOffloaded picked Neurosurgeon's plan (a tie: 1x) in 0 of 4 cases;" in line
    assert "loses" not in line

    ex = _execute()
    for out in ex.values():  # RoaD-RuNNer's split now takes 4x Neurosurgeon's
        for mo in out["models"].values():
            mo["measured"]["2,7"]["latency_ms"]["mean"] = 8 * mo["measured"]["4,9"]["latency_ms"]["mean"]
    line = _finding(report.render(_data(ex)), "Against Neurosurgeon")
    assert "loses** (geometric-mean speedup 0.12x over 4 cases), as in the paper" in line

    line = _finding(report.render(_data(_same_plan_as_neurosurgeon())), "Against Neurosurgeon")
    assert "picked Neurosurgeon's plan (a tie: 1x) in 4 of 4 cases, offloading everything in 0 of them" in line
    assert "speedup over Neurosurgeon is 1.00x" in line


@pytest.mark.parametrize(
    ("rmse", "said", "converged"),
    [
        ([4.0, 2.0, 1.0], "The RMSE keeps falling up to 30% fill", "30%"),
        ([4.0, 1.05, 1.0], "The RMSE falls at every fill; it is within 10% of its 30%-fill value from 20% fill "
                           "on", "20%"),
        ([2.0, 3.0, 1.0], "The RMSE does not fall at every fill (it rises at 20%); it is not within 10% of its "
                          "30%-fill value at any smaller fill", "30%"),
        ([1.0, 5.0], "The RMSE does not fall at every fill (it rises at 20%)", "20%"),
    ],
)  # fmt: skip
def test_the_rmse_trend_is_read_from_the_series_as_the_headline_reads_it(rmse, said, converged):
    text = report.render(_data(rmse=rmse))
    last = f"{0.1 * len(rmse):.0%}"
    assert said in _finding(text, "CF vs regression")
    assert f"latency RMSE within 10% of its {last}-fill value from {converged} fill" in text
    if said.startswith("The RMSE does not fall"):
        assert "keeps falling" not in text


def test_without_executed_plans_the_error_target_is_not_measured_and_no_plan_is_described():
    text = report.render(_data({}))
    assert "median error <= 10%): not measured**" in text
    assert "Against Neurosurgeon" not in text and "NS-nonOffloaded ran" not in text
    assert "No plan ran, so no output was compared with local execution." in text


def test_outputs_are_reported_as_measured_and_failed_plans_are_flagged():
    text = report.render(_data())
    assert "Outputs match local execution" not in text
    assert "the largest absolute difference is 0 (" in text
    assert "No request fell back to local execution." in text and "did not run as planned" not in text

    ex = _execute()
    nano = ex["emu-nano"]["models"]["alexnet"]["measured"]
    nano["2,7"] = {**nano["2,7"], "fallback_requests": 3, "max_abs_diff_vs_local": 28.0}
    nano["4,9"] = {**nano["4,9"], "max_abs_diff_vs_local": float("nan")}
    text = report.render(_data(ex))
    assert "Outputs match local execution" not in text
    assert "the largest absolute difference is 28 (emu-nano/alexnet, split 2,7;" in text
    assert "3 request(s) fell back to local execution; 1 split(s) gave outputs that are not finite; those" in text
    line = _finding(text, "Plans that did not run as planned")
    assert "emu-nano/alexnet split 2,7 (roadrunner): 3 request(s) fell back to local execution" in line
    assert "emu-nano/alexnet split 4,9 (neurosurgeon): outputs not finite" in line
    assert "emu-agx" not in line


def test_rederive_rewrites_the_findings_of_a_committed_report_and_keeps_its_method_text(tmp_path):
    """`python -m tools.eval rederive`: a report rendered by older code, whose raw data is gone, gets the findings its
    eval.json supports; the method text, written when the run was measured, stays."""
    import json

    data = _data()
    old = report.render(data).replace(_finding(report.render(data), "Against Neurosurgeon"), "* **It wins.**")
    old = old.replace("Each split's outputs", "Outputs match local execution (max |diff| in\n  eval.json). Each")
    old = old.replace("(CPU).", "(CPU), as measured then.")
    (tmp_path / "README.md").write_text(old)
    (tmp_path / "eval.json").write_text(json.dumps(data))
    assert eval_main.main(["rederive", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "README.md").read_text()
    assert "It wins" not in text and _finding(text, "Against Neurosurgeon") == _finding(report.render(data), "Against")
    assert "Outputs match local execution" not in text and "the largest absolute difference is 0 (" in text
    assert "as measured then." in text and "its findings re-derived from eval.json" in text
    (tmp_path / "README.md").write_text("# a README without findings\n")
    assert eval_main.main(["rederive", "--out", str(tmp_path)]) == 1


# -- Fig. 6 -----------------------------------------------------------------------------------------------------


def test_fig6_keeps_a_model_that_failed_on_the_first_device(tmp_path, monkeypatch):
    ex = _execute()
    del ex["emu-nano"]["models"]["resnet18"]  # failed on emu-nano, ran on emu-agx
    data = _data(ex)
    drawn = []
    monkeypatch.setattr(figures.plt, "close", drawn.append)
    figures.fig6(data, tmp_path / "fig6.png")
    for ax in drawn[0].axes:
        assert [t.get_text() for t in ax.get_xticklabels()] == ["alexnet", "resnet18"]
        bars = [[round(p.get_x() + p.get_width() / 2, 2) for p in c.patches] for c in ax.containers]
        assert bars == [[-0.2], [0.2, 1.2]]  # emu-nano: alexnet only; emu-agx: both, resnet18 beside it
    table = report.render(data).split("## Fig. 6")[1]
    assert "| latency | 50.0 (1 of 2 models) | 50.0 |" in table


# -- options refused when parsing -------------------------------------------------------------------------------


@pytest.mark.parametrize("repeat", ["0", "-3"])
def test_plan_quality_refuses_a_repeat_below_one_before_any_work(repeat, monkeypatch):
    monkeypatch.setattr(pq, "plan_quality", lambda *a: pytest.fail("ran with --repeat " + repeat))
    with pytest.raises(SystemExit) as info:
        pq.main(["--repeat", repeat])
    assert info.value.code == 2


@pytest.mark.parametrize(
    ("options", "error"),
    [
        (["--classes", "emu-nano,server"], "--classes takes edge classes; 'server' is the cloud server"),
        (["--classes", "emu-nano,emu-agx,emu-nano"], "--classes names emu-nano more than once"),
        (["--models", "alexnet,alexnet"], "--models names alexnet more than once"),
    ],
)
def test_eval_refuses_the_server_class_and_names_given_twice(options, error, capsys):
    with pytest.raises(SystemExit) as info:
        eval_main.parse(["collect", "--quick", *options])
    assert info.value.code == 2 and error in capsys.readouterr().err
    with pytest.raises(ValueError, match=error):
        config.from_options(quick=True, **{options[0][2:]: tuple(options[1].split(","))})
    assert config.from_options(quick=True, classes=("emu-nano", "emu-agx")).classes == ("emu-nano", "emu-agx")
