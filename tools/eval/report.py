"""eval.json -> README.md: figures, tables, the paper's headline numbers beside ours, and what differs and why."""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import missing
from .config import SERVER_CLASS, cli_flags

PAPER = {
    "speedup_vs_ns_non_offloaded": "9.58x average (abstract; body: 4.97x average on CPU, up to 35.74x on GPU)",
    "energy": "up to 88.73% less energy (vs NS-nonOffloaded, GPU)",
    "latency_error": "3.19% latency prediction error (0.18% energy)",
    "rmse_fill": "RMSE converged at 30% fill (p = 0.3 chosen)",
    "offload_share": "74.45% of layers offloaded (latency objective), 90.1% (energy objective)",
}
MAKE_TARGET = {"": "make eval", " --quick": "make eval-quick"}  # the runs a make target makes, by their flags


def _f(v: Any, fmt: str = "{:.2f}", none: str = "n/a") -> str:
    return none if v is None else fmt.format(v)


def _probe_sizes(d: dict[str, Any]) -> str:
    """The range of the slice-upload probes the devices made, from their samples: "64 KiB to 128 MiB"."""
    networks = d.get("network") or {}
    sizes = [b for net in networks.values() for b, _ in ((net or {}).get("upload") or {}).get("samples", [])]
    if not sizes:
        return "none"

    def size(nbytes: float) -> str:
        kib = round(nbytes / 1024)
        return f"{kib} KiB" if kib < 1024 else f"{kib / 1024:.0f} MiB"

    return f"{size(min(sizes))} to {size(max(sizes))}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def _headline(d: dict[str, Any]) -> str:
    h = d["headline"]
    share = h.get("offloaded_share_pct") or {}
    last_fill = (d["fig4"]["latency"]["fills"] or [None])[-1]  # the value converged_fill measures against
    rows = [
        ["average speedup vs NS-nonOffloaded", PAPER["speedup_vs_ns_non_offloaded"],
         f"{_f(h['mean_speedup_vs_ns_non_offloaded'])}x mean, {_f(h['geomean_speedup_vs_ns_non_offloaded'])}x "
         "geometric mean (measured latency)"],
        ["energy reduction", PAPER["energy"],
         f"up to {_f(h['max_energy_gain_pct_vs_ns_non_offloaded'], '{:.1f}')}% vs NS-nonOffloaded, up to "
         f"{_f(h['max_energy_gain_pct_any_baseline'], '{:.1f}')}% vs any baseline (**modelled** energy)"],
        ["whole-plan prediction error", PAPER["latency_error"],
         f"median {_f(h['latency_prediction_median_ape_pct'])}% latency over every executed plan "
         f"({_f(h['chosen_plan_latency_median_ape_pct'])}% for the chosen plans), "
         f"{_f(h['energy_prediction_median_ape_pct'])}% energy (model)"],
        ["CF RMSE convergence", PAPER["rmse_fill"],
         f"latency RMSE within 10% of its {_f(last_fill, '{:.0%}', 'last')}-fill value from "
         f"{_f(h['cf_latency_rmse_converged_fill'], '{:.0%}')} fill; energy from "
         f"{_f(h['cf_energy_rmse_converged_fill'], '{:.0%}')}"],
        ["blocks offloaded", PAPER["offload_share"],
         f"{_f(share.get('latency'), '{:.1f}')}% (latency objective), {_f(share.get('energy'), '{:.1f}')}% "
         "(energy objective)"],
    ]  # fmt: skip
    return _table(["", "paper", "this testbed"], rows)


_FINDINGS = "### What the numbers say"
EVEN = 0.05  # a geometric-mean speedup within 5% of 1 is "about even": the runs' noise floor is several percent
NS_QUOTE = '"the initial version of Neurosurgeon ... performs better"'


def _most(k: int, n: int) -> bool:
    return 2 * k > n


def _placement(plans: list[dict[str, Any]]) -> str | None:
    """Where NS-nonOffloaded and RoaD-RuNNer ran the model, and only the readings the counts support (None: no
    plans)."""
    ns = [r for r in plans if r["plan"] == "neurosurgeon_non_offloaded"]
    rr = [r for r in plans if r["plan"] == "roadrunner"]
    if not ns or not rr:
        return None

    def local(r: dict[str, Any]) -> bool:
        return bool(r["split"][0] == r["split"][1])

    def keeps_end(r: dict[str, Any]) -> bool:  # offloads a part and runs the last block on the edge
        return bool(r["split"][0] < r["split"][1] < r["blocks"] - 1)

    ns_local, rr_local = sum(map(local, ns)), sum(map(local, rr))
    rr_front = sum(r["split"][0] == -1 and keeps_end(r) for r in rr)
    if _most(ns_local, len(ns)) and _most(sum(local(r) or keeps_end(r) for r in rr), len(rr)):
        head = "Uploading weights is expensive here: NS-nonOffloaded and RoaD-RuNNer mostly finish on the edge."
    else:
        head = "Where NS-nonOffloaded and RoaD-RuNNer ran the model."
    same = ", so it coincides with Offload None" if ns_local == len(ns) else " (there it is Offload None)"
    text = (
        f"* **{head}** NS-nonOffloaded ran everything locally in {ns_local} of {len(ns)} (class, model) "
        f"cases{same if ns_local else ''}. RoaD-RuNNer's two split points let it offload a front part and finish "
        f"locally in {rr_front} of {len(rr)} cases (all-local in {rr_local})"
    )
    chain = [r for r in rr if r["group"] == "chain"]
    if chain:
        k = sum(map(keeps_end, chain))
        names = ", ".join(dict.fromkeys(r["model"] for r in chain))
        text += f"; for the chain models ({names}) it offloaded a part and kept the end on the edge in {k} of "
        text += f"{len(chain)} cases"
        if _most(k, len(chain)):
            text += (
                ", as the paper argues: the convolutions have small weights and big activations, the fully "
                "connected layers at the end most of the weights"
            )
    return text + "."


def _vs_neurosurgeon(d: dict[str, Any]) -> str | None:
    """RoaD-RuNNer against Neurosurgeon with pre-loaded weights: who wins follows the measured speedup, how often
    RoaD-RuNNer-preOffloaded and Neurosurgeon picked the same plan follows the plans (None: nothing compared)."""
    summary = d["fig3"]["summary"].get("all", {})
    ns = summary.get("Neurosurgeon") or {}
    g = ns.get("geomean_speedup")
    if g is None:
        return None
    measured = f"geometric-mean speedup {g:.2f}x over {ns['n']} cases"
    if g < 1 - EVEN:
        verdict = f"loses** ({measured}), as in the paper ({NS_QUOTE})"
    elif g > 1 + EVEN:
        verdict = f"wins** ({measured}), unlike the paper ({NS_QUOTE})"
    else:
        verdict = f"is about even** ({measured}; the paper: {NS_QUOTE})"
    text = f"* **Against Neurosurgeon with pre-loaded weights RoaD-RuNNer (which pays its uploads) {verdict}"
    cases: dict[tuple[str, str], dict[str, Any]] = {}
    for r in d["plans"]:
        cases.setdefault((r["device"], r["model"]), {})[r["plan"]] = r
    pairs = [(c["roadrunner_preoffloaded"], c["neurosurgeon"]) for c in cases.values()]
    same = [a for a, b in pairs if a["split"] == b["split"]]
    everything = sum(a["split"] == [-1, a["blocks"] - 1] for a in same)
    pre = (summary.get("RR-preOffloaded vs Neurosurgeon") or {}).get("geomean_speedup")
    if pairs and pre is not None:
        text += (
            f"; RoaD-RuNNer-preOffloaded picked Neurosurgeon's plan (a tie: 1x) in {len(same)} of {len(pairs)} cases"
        )
        text += f", offloading everything in {everything} of them" if same else ""
        text += f"; its geometric-mean speedup over Neurosurgeon is {pre:.2f}x"
    return text + "."


def _rmse_trend(d: dict[str, Any]) -> str:
    """What CF's latency RMSE does as the fill grows: read from the series and the headline's convergence fill (within
    10% of the last fill's value), so the two agree."""
    f4 = d["fig4"]["latency"]
    fills, rmse = f4["fills"], f4["cf"]["rmse"]
    converged = d["headline"].get("cf_latency_rmse_converged_fill")
    if converged is None or len(fills) < 2:
        return ""
    last = f"{fills[-1]:.0%}"
    rises = [
        f"{fills[k]:.0%}" for k in range(1, len(fills)) if None not in rmse[k - 1 : k + 1] and rmse[k] > rmse[k - 1]
    ]
    if converged < fills[-1]:
        settled = f"it is within 10% of its {last}-fill value from {converged:.0%} fill on"
    elif not rises:
        return (
            f" The RMSE keeps falling up to {last} fill (the paper saw it converge at 30%): with only "
            f"{len(d['fig4']['rows'])} nodes (rows) and {d['fig4']['cols']} columns, each extra profiled block "
            "still adds information."
        )
    else:
        settled = f"it is not within 10% of its {last}-fill value at any smaller fill"
    trend = f"does not fall at every fill (it rises at {', '.join(rises)})" if rises else "falls at every fill"
    return f" The RMSE {trend}; {settled} (the paper saw it converge at 30%)."


def _failed(plans: list[dict[str, Any]]) -> str | None:
    """The executed splits that did not run as planned: requests that fell back to local execution (the server did
    not answer; their time is not the plan's) or outputs that are not finite (None: every split ran as planned)."""
    flagged: dict[str, list[str]] = {}  # "device/model split i,j" -> what went wrong, then the plans that chose it
    for r in plans:
        fell, finite = r["fallback_requests"], math.isfinite(r["max_abs_diff_vs_local"])
        if fell or not finite:
            why = [f"{fell} request(s) fell back to local execution"] if fell else []
            why += [] if finite else ["outputs not finite"]
            run = f"{r['device']}/{r['model']} split {r['split'][0]},{r['split'][1]}"
            flagged.setdefault(run, [" and ".join(why)]).append(r["plan"])
    if not flagged:
        return None
    items = "; ".join(f"{run} ({', '.join(what[1:])}): {what[0]}" for run, what in flagged.items())
    return f"* **Plans that did not run as planned** (their measurements are not the plan's): {items}."


def _outputs(plans: list[dict[str, Any]]) -> str:
    """What was checked of the plans' outputs. The run records the largest absolute difference from the all-local
    run, not the outputs' magnitude, so this gives that figure and the runs that went wrong, and claims no match."""
    if not plans:
        return "No plan ran, so no output was compared with local execution."
    runs = {(r["device"], r["model"], tuple(r["split"])): r for r in plans}.values()  # a split ran once for its plans
    finite = [r for r in runs if math.isfinite(r["max_abs_diff_vs_local"])]
    fell, bad = sum(r["fallback_requests"] for r in runs), len(runs) - len(finite)
    text = "Each split's outputs (its last request) are compared with the all-local run's"
    if finite:
        w = max(finite, key=lambda r: r["max_abs_diff_vs_local"])
        text += (
            f": the largest absolute difference is {w['max_abs_diff_vs_local']:.3g} ({w['device']}/{w['model']}, "
            f"split {w['split'][0]},{w['split'][1]}; each plan's is `max_abs_diff_vs_local` in eval.json), an "
            "absolute figure: the run does not record the outputs' magnitude, so it is no relative check"
        )
    text += f". {fell} request(s) fell back to local execution" if fell else ". No request fell back to local execution"
    text += f"; {bad} split(s) gave outputs that are not finite" if bad else ""
    return text + ('; those plans are flagged under "What the numbers say".' if fell or bad else ".")


def _findings(d: dict[str, Any]) -> str:
    comp = d["fig5"].get("components", {})
    up, loc, rem = comp.get("upload", {}), comp.get("local", {}), comp.get("remote", {})
    f4 = d["fig4"]["latency"]
    k30 = f4["fills"].index(0.3) if 0.3 in f4["fills"] else None

    def cf_better(metric: str) -> int:
        pairs = zip(f4["cf"][metric], f4["ns"][metric], strict=True)
        return sum(c is not None and n is not None and c < n for c, n in pairs)

    rep = d.get("repeatability", {}).get("median_abs_diff_pct")
    err = d["headline"]["latency_prediction_median_ape_pct"]
    met = "not measured" if err is None else "met" if err <= 10.0 else "not met"
    lines = [
        _placement(d["plans"]),
        _vs_neurosurgeon(d),
        _failed(d["plans"]),
        f"* **Whole-plan latency prediction (issue 6 target: median error <= 10%): {met}** "
        f"(median {_f(err, '{:.1f}')}% over every executed plan, "
        f"{_f(d['headline'].get('chosen_plan_latency_median_ape_pct'), '{:.1f}')}% over the chosen plans). "
        "By component (median error; predicted / measured): weight uploads, costed with the node's measured "
        f"slice-upload probes ({_probe_sizes(d)}, extrapolated to "
        f"slices of hundreds of MB), {_f(up.get('median_ape'), '{:.1f}')}% ({_f(up.get('median_ratio'))}); local "
        f"compute {_f(loc.get('median_ape'), '{:.1f}')}% ({_f(loc.get('median_ratio'))}), against a noise floor of "
        f"{_f(rep, '{:.1f}')}% (below); the remote part (tensors up and down + cloud compute) "
        f"{_f(rem.get('median_ape'), '{:.1f}')}% ({_f(rem.get('median_ratio'))}).",
        f"* **CF vs regression (Fig. 4).** CF has the lower latency RMSE at {cf_better('rmse')} of "
        f"{len(f4['fills'])} fills and the lower MAPE at {cf_better('mape')}"
        + (f"; at 30% fill {f4['cf']['rmse'][k30]:.2f} ms vs {f4['ns']['rmse'][k30]:.2f} ms, "
           f"{f4['cf']['mape'][k30]:.1f}% vs {f4['ns']['mape'][k30]:.1f}%" if k30 is not None else "")
        + ". The RMSE in ms is set by the few largest blocks (a per-layer-type regression on FLOPs fits those well); "
        "the MAPE weighs every block alike (CF fits relative errors, in log space)." + _rmse_trend(d),
    ]  # fmt: skip
    return "\n".join(line for line in lines if line)


def _fig3(d: dict[str, Any]) -> str:
    rows = []
    for group, by in d["fig3"]["summary"].items():
        for label, s in by.items():
            q = s["quadrants"]
            rows.append(
                [
                    group,
                    label,
                    str(s["n"]),
                    _f(s["mean_speedup"]),
                    _f(s["geomean_speedup"]),
                    _f(s["max_speedup"]),
                    _f(s["mean_energy_gain_pct"], "{:.1f}"),
                    _f(s["max_energy_gain_pct"], "{:.1f}"),
                    f"{q['green']}/{q['orange']}/{q['red']}/{q['tie']}",
                ]
            )
    return _table(
        [
            "models",
            "RoaD-RuNNer vs",
            "points",
            "mean speedup",
            "geomean",
            "max",
            "mean energy gain %",
            "max energy gain %",
            "green/orange/red/tie",
        ],
        rows,
    )


def _fig4(d: dict[str, Any]) -> str:
    f4 = d["fig4"]
    rows = []
    lat, en = f4["latency"], f4["energy"]
    for k, fill in enumerate(lat["fills"]):
        rows.append(
            [
                f"{fill:.0%}",
                _f(lat["cf"]["rmse"][k], "{:.3f}"),
                _f(lat["ns"]["rmse"][k], "{:.3f}"),
                _f(lat["cf"]["mape"][k], "{:.1f}"),
                _f(lat["ns"]["mape"][k], "{:.1f}"),
                _f(en["cf"]["rmse"][k], "{:.2f}"),
                _f(en["ns"]["rmse"][k], "{:.2f}"),
            ]
        )
    return _table(
        ["fill", "CF RMSE ms", "NS RMSE ms", "CF MAPE %", "NS MAPE %", "CF RMSE mJ (model)", "NS RMSE mJ (model)"], rows
    )


def _fig5(d: dict[str, Any]) -> str:
    f5 = d["fig5"]
    parts = []
    for key, title in (("per_model", "model"), ("per_device", "device")):
        lat, en = f5[key]["latency"], f5[key]["energy"]
        rows = [
            [
                k,
                _f(lat["roadrunner"].get(k)),
                _f(lat["neurosurgeon"].get(k)),
                _f(en["roadrunner"].get(k)),
                _f(en["neurosurgeon"].get(k)),
            ]
            for k in lat["roadrunner"]
        ]
        parts.append(
            _table(
                [title, "RR latency err %", "NS latency err %", "RR energy err % (model)", "NS energy err % (model)"],
                rows,
            )
        )
    cells = f5["per_model_device_latency"]
    devices = list(dict.fromkeys(k.split("/")[0] for k in cells))
    models = list(dict.fromkeys(k.split("/")[1] for k in cells))
    rows = [[m] + [_f(cells.get(f"{dv}/{m}"), "{:.1f}") for dv in devices] for m in models]
    comp = f5.get("components", {})
    if comp:
        crow = [
            [k, str(v["n"]), _f(v["median_ape"], "{:.1f}"), _f(v["median_ratio"], "{:.2f}")] for k, v in comp.items()
        ]
        parts.append(
            "Where the latency error comes from (local = head + tail on the edge, remote = uplink + cloud + downlink "
            "as seen by the edge, each scored once per executed split; upload = the slice's weights, once per split "
            "whose weights a plan uploaded):\n\n"
            + _table(["component", "runs", "median error %", "median predicted / measured"], crow)
        )
    cloud = d.get("cloud", {}).get("per_model")
    if cloud:
        crow = [
            [m, _f(v["predicted_ms"], "{:.1f}"), _f(v["groundtruth_ms"], "{:.1f}"), _f(v["ratio"], "{:.2f}")]
            for m, v in cloud.items()
        ]
        parts.append(
            "The cloud's part, against the server's own ground truth: each model's predicted cloud compute with every "
            "block offloaded (the cloud profiler's timings and the CF predictions of the cloud row, calibrated by the "
            "profiler's whole-model run) next to the server's whole-model latency measured in the ground-truth phase "
            f"(median error {_f(d['cloud']['median_ape'], '{:.1f}')}%):\n\n"
            + _table(["model", "predicted cloud ms", "server ground truth ms", "predicted / measured"], crow)
        )
    parts.append(
        "Median absolute error (%) of the predicted latency of every executed plan, per model and device:\n\n"
        + _table(["model"] + devices, rows)
    )
    return "\n\n".join(parts)


def _fig6(d: dict[str, Any]) -> str:
    """Each device's mean share per objective; a device that lacks some of the run's models (they failed there) says
    over how many its mean is, as it is not comparable with the others' then."""
    mean, share = d["fig6"]["mean_pct"], d["fig6"]["share_pct"]
    devices = list(mean.get("latency", {}))

    def cell(o: str, dv: str) -> str:
        have, every = share[o].get(dv, {}), {m for by in share[o].values() for m in by}
        return _f(mean[o].get(dv), "{:.1f}") + (
            f" ({len(have)} of {len(every)} models)" if len(have) < len(every) else ""
        )

    return _table(["objective"] + devices, [[o] + [cell(o, dv) for dv in devices] for o in mean])


def _plans(d: dict[str, Any]) -> str:
    rows = []
    for r in d["plans"]:
        err = 100 * abs(r["predicted_ms"] - r["measured_ms"]) / r["measured_ms"]
        rows.append(
            [
                r["device"],
                r["model"],
                r["plan"],
                f"{r['split'][0]},{r['split'][1]}",
                f"{r['offloaded_blocks']}/{r['blocks']}",
                _f(r["predicted_ms"], "{:.1f}"),
                _f(r["measured_ms"], "{:.1f}"),
                _f(r["upload_ms"], "{:.0f}"),
                f"{err:.1f}",
                _f(r["measured_mJ"], "{:.0f}"),
            ]
        )
    return _table(
        [
            "device",
            "model",
            "plan",
            "split i,j",
            "offloaded",
            "predicted ms",
            "measured ms",
            "of which upload ms",
            "error %",
            "energy mJ (model)",
        ],
        rows,
    )


def _groundtruth(d: dict[str, Any]) -> str:
    g = d["groundtruth"]
    whole = g["whole_model_ms"]
    devices = list(whole)
    models = list(next(iter(whole.values()), {}))
    rows = [
        [m] + [f"{whole[dv][m]:.1f} ({g['whole_over_sum_of_blocks'][dv][m]:.2f})" for dv in devices] for m in models
    ]
    return _table(["model"] + devices, rows)


def _server_speedup(d: dict[str, Any]) -> str:
    """How much faster the server ran whole models than the emulated edges: "3.5-21x faster than ...". Computed from
    the ground truth's whole-model times (the report's ground-truth table), as a range typed into the text went
    stale against that table."""
    whole = d["groundtruth"]["whole_model_ms"]
    server = whole.get(SERVER_CLASS) or {}
    ratios = [ms[m] / server[m] for dv, ms in whole.items() if dv != SERVER_CLASS for m in ms if server.get(m)]
    if not ratios:
        return "faster than the emulated edges (this run did not time the server's whole models)"

    def x(v: float) -> str:
        return f"{v:.1f}" if v < 10 else f"{v:.0f}"

    return f"{x(min(ratios))}-{x(max(ratios))}x faster than the emulated edges on whole models (ground-truth table)"


def _host(meta: dict[str, Any]) -> tuple[str, str]:
    """The measuring host's CPU count and the server's ONNX Runtime threads (rr-server: ORT's default); runs from
    before the count was recorded ran on a 2-CPU host."""
    n = meta["host"].get("cpu_count")
    return ("2", "2 ORT threads") if n is None else (str(n), "one ORT thread per physical core")


def _input_size_note(cfg: dict[str, Any]) -> str:
    """Which of the paper's input sizes (224, 512, 768) this run covers."""
    n = cfg["input_size"]
    if n == 224:
        return (
            "224x224 only; the paper's 512 and 768 variants are not in this run (time budget). The three quick-run "
            "models at 512x512 and 768x768: docs/results/quick-512/ and quick-768/ (`python -m tools.eval all --quick "
            "--input-size 512`, `... 768`)."
        )
    return f"{n}x{n} only in this run; the full run (docs/results/) is at 224x224. The paper ran 224, 512 and 768."


def _missing(meta: dict[str, Any]) -> str:
    """The report's first section when the run did not measure everything (`collect` then exited non-zero)."""
    lines = missing.describe(meta.get("missing") or {})
    if not lines:
        return ""
    items = "\n".join(f"* {line}" for line in lines)
    return (
        "\n## Missing / incomplete\n\nThis run did not measure everything; the figures and tables below hold what it "
        f"did measure.\n\n{items}\n"
    )


def render(d: dict[str, Any], runs_below: Sequence[str] = ()) -> str:
    """The report's markdown; `runs_below`: the other runs' directories next to it (the full run links them)."""
    meta = d["meta"]
    cfg = meta["config"]
    run = meta["run"]
    phases = ", ".join(f"{k} {v / 60:.1f} min" for k, v in meta["phases_s"].items())
    gt = cfg["gt_timing"]
    rt = cfg["run_timing"]
    up = "" if run == "full" else "../"  # this report's place below docs/results/
    if run == "full":
        others = ", ".join(f"[{r}/README.md]({r}/README.md)" for r in runs_below) or "none"
    else:
        others = "[../README.md](../README.md) (the full run)"
    flags = "".join(f" {f}" for f in cli_flags(cfg, meta.get("out")))
    cpus, threads = _host(meta)
    command = f"python -m tools.eval all{flags}"
    regenerate = f"sudo {MAKE_TARGET[flags]:<21}# = " if flags in MAKE_TARGET else ""
    regenerate += f"sudo .venv/bin/{command}"
    return f"""# RoaD-RuNNer on the emulated testbed: evaluation results ({run} run)

> **Read first.** Every device here is **emulated**: a cgroup CPU quota of *one CPU of this host*
> ({meta["host"]["cpus"]}, {meta["host"]["platform"]}) per Jetson class, in its own network namespace behind a
> `tc tbf` link ({"640mbit"} per device, both directions), see [docs/testbed.md]({up}../testbed.md). Every energy figure
> is **modelled** (declared watts of `tools/testbed/classes.json` x measured time, `energy_source = "model"`), never
> measured. The "cloud server" is the same {cpus}-CPU host (its own namespace and cgroup, no quota, {threads}), not
> the paper's 2 x Xeon + V100. Latencies in Fig. 3, 5 and 6 are **measured** by running each plan on the testbed.

Measured {meta.get("measured") or "at an unknown time"} by `{command}` (phases: {phases}); report generated
{meta["generated"]}.
Models: {", ".join(cfg["models"])} at {cfg["input_size"]}x{cfg["input_size"]}; edge classes:
{", ".join(cfg["classes"])}.
Other runs' reports: {others}. Raw numbers: [eval.json](eval.json).
{_missing(meta)}
## Headline numbers: paper vs this testbed

{_headline(d)}

{_FINDINGS}

{_findings(d)}

## Fig. 3: speedup and energy gain (measured latency, modelled energy)

![Fig. 3](fig3.png)

Each point is one (edge class, model): x = % less (modelled) energy than the baseline, y = how many times faster
(measured). "RoaD-RuNNer" is the plan chosen for the latency objective with dynamic offloading: its middle slice's
weights are uploaded at run time, and the measured upload is added to its latency, as for Offload All and
NS-nonOffloaded. Neurosurgeon and RoaD-RuNNer-preOffloaded have their weights on the server already (no upload).
Neurosurgeon decides with its own regression predictor; every plan is then run and measured. Green: faster and less
energy; orange: one of the two; red: neither; tie (grey in the figure): the same plan as the baseline, one
measurement for both (1x, 0%).

{_fig3(d)}

## Fig. 4: prediction RMSE vs fraction of profiled blocks

![Fig. 4](fig4.png)

Ground-truth matrix: {len(d["fig4"]["rows"])} nodes ({", ".join(d["fig4"]["rows"])}) x {d["fig4"]["cols"]} unique
block signatures, complete. Per fill, every node reveals that fraction of its blocks at random; CF (the server's
cf_cpp engine and features, all nodes at once) and Neurosurgeon's per-layer-type regression (fitted per node on the
same revealed blocks) predict the hidden entries; mean over {d["fig4"]["latency"]["seeds"]} seeds.

{_fig4(d)}

## Fig. 5: whole-plan prediction error per model and per device

![Fig. 5](fig5.png)

Error = |predicted - measured| / measured of the whole-plan latency (and modelled energy), over every distinct plan
executed (the chosen plans and the baselines), median per model / device. "RR" predictions are the planner's cost
with CF predictions (what RoaD-RuNNer uses to decide); "NS" the same cost with Neurosurgeon's regression figures.

{_fig5(d)}

**Noise floor.** The same whole model, run locally on the same class minutes apart (ground-truth run vs the Offload
None plan), differs by a median {_f(d.get("repeatability", {}).get("median_abs_diff_pct"), "{:.1f}")}% here: the
{cpus}-CPU host is shared with other jobs, and a CFS quota only holds while the host has CPU to give. No prediction can
be more accurate than this on this host.

## Fig. 6: share of blocks offloaded per device class and objective

![Fig. 6](fig6.png)

Mean over models of the chosen plan's offloaded blocks / all blocks (%):

{_fig6(d)}

## Every executed plan

{_plans(d)}

## Ground truth (the CF data set)

[groundtruth_latency.csv](groundtruth_latency.csv) and [groundtruth_energy.csv](groundtruth_energy.csv) are in the
long format of `tools/cf_eval` (`row` = device class, `col` = block signature, `value` = window-mean ms / modelled mJ,
`f_*` = the server's CF column features, log scale; the energy file labels every entry with its `unit` and its
`energy_source`, the meter: `model`); [groundtruth_blocks.csv](groundtruth_blocks.csv) maps every
(model, block index) to its signature, ops and sizes. Evaluate CF on it with
`python -m tools.cf_eval --csv docs/results/groundtruth_latency.csv --protocol random --fill 0.3`.
Whole-model latency per class in ms (whole model / sum of its blocks run one by one):

{_groundtruth(d)}

## How it was measured

* **Timing on an emulated device** (`tools/eval/timing.py`): a CFS quota is a rate limit, so work shorter than the
  quota of a 10 ms period runs at full host speed and the *median* of back-to-back runs shows the host, not the
  device (mobilenet_v2's blocks summed to 12 ms by medians on emu-nano while the whole model took 90 ms). Every
  latency here is therefore the **mean over a throttled window** of back-to-back runs: {gt["warmup"]} unthrottled
  warm-up run(s), a throttled burn-in of {gt["burn_s"]} s, then at least {gt["min_runs"]} runs and
  {gt["min_time_s"]} s (ground truth) / {rt["min_runs"]} requests and {rt["min_time_s"]} s (plans), at most
  {rt["max_runs"]} requests. This is the cheapest policy that fits the 90-minute budget (emu-nano runs at 10% of
  one CPU).
* **Ground truth**: every unique block of every model as a standalone slice (`rr_edge.slicing.Slicer`, the
  profiler's sessions and random inputs) and the whole model, inside each class's cgroup and namespace, one class
  at a time (in parallel, the host's other load skewed the quotas: emu-nano came out as fast as emu-tx1); the
  server row opened as `rr-server` opens a slice (ONNX Runtime's default thread count, pool threads not spinning).
* **Profiling (p = {cfg["sample"]})**: each node reports the blocks `rr-edge profile --sample {cfg["sample"]}` would
  pick (same `select_signatures`, seeded, skipping signatures it already reported), with the ground-truth
  measurements of those blocks (window mean in place of the median) instead of timing them a second time, plus the
  whole-model record (the e2e correction). The server times the reported slices itself (its cloud row); the
  device waits after each model until it has (with the next model's slicing beside it, the server's timings came
  out up to 2x slow). Then `run_netprofile` (up to {cfg["netprofile_max_mb"]:.0f} MiB each direction, slice-upload
  probes of {_probe_sizes(d)}) runs in each device's namespace in turn (while the
  server was still timing slices, its busy CPU made small probes several times slower than on a quiet host).
* **Plans**: `rr_edge.offload.gather_costs` + `make_plan` for the latency and energy objectives and pre-offloaded;
  the four baselines of `rr_edge.baselines`. Every distinct split is run with `rr_edge.offload.make_runner` inside
  the device (head and tail local, middle over gRPC on the server). {_outputs(d["plans"])}
  The upload of a plan's middle slice is timed on a fresh copy (a unique `doc_string` appended, so the
  server cannot short-circuit it by hash); it includes the server's validation (size cap, `onnx.checker`, SHA-256,
  write to disk) and its opening in ONNX Runtime, as the runner has it opened before its first request (the
  network profile's upload probes include the opening too).
* **What is throttled**: ONNX Runtime compute only. The worker moves itself into its class cgroup for every timed
  window of blocks and whole models, and around the head and tail runs of a plan (`Runner`'s `around_local` hook),
  and back to the root cgroup for everything else (loading, slicing, session creation, untimed), via `cgroup.procs`
  descriptors the harness passes in (`tools/eval/throttle.py`). The network profile, the upload probes and a plan's
  remote call (the runner's gRPC client) run at host speed in the device's namespace: the boards have 4-8 cores to
  move bytes while our classes get a fraction of one host CPU, so a throttled client would measure the emulation,
  not the 80 MB/s link. A local part that follows a remote call starts with the CFS period's quota unspent, so up to
  one quota of CPU time (1 ms on emu-nano, 5 ms on emu-agx) runs at host speed: short tails measure faster than
  their blocks' steady-state times.

## Differences from the paper, and why

1. **Emulated devices.** The Jetsons are one x86 CPU scaled by a CFS quota (nano 0.10, tx1 0.121, nx 0.235,
   agx 0.506 of a CPU, 1 thread). Every class therefore has the same per-operator speed profile; the latency matrix
   is close to rank 1, which makes CF's job *easier* than on the paper's real ARM boards with GPUs. Small blocks are
   distorted by throttling granularity (10 ms CFS period) and per-call overheads.
2. **No GPU experiments.** Fig. 3b/3d (GPU execution) have no counterpart; our Fig. 3 is the paper's 3a/3c (CPU).
3. **The server is weak and shares the host.** The paper's server (40 cores + V100) is about 10-100x faster than its
   edges; ours is the same {cpus} CPUs ({threads} vs a fraction of one),
   {_server_speedup(d)}.
   Offloading therefore pays less, which lowers speedups against Offload None and raises them against Offload All.
4. **Modelled energy.** Declared watts x measured time, charged as the planner charges its predictions: compute at
   active power, the server's run (the time it reports with each answer) at idle power, the rest of the round trip
   at idle + tx (uplink) and idle + rx (downlink), the uploads at idle + tx. Energy "gains" therefore follow the time
   split between local compute, network and waiting, not a meter; the paper used the Jetsons' INA3221 rails.
5. **Network.** One dedicated 640mbit `tbf` link per device (≈ 77 MB/s of payload, docs/testbed.md), not a shared
   wireless medium; no loss, no contention between devices (devices offload one at a time).
6. **Short timing policy on a shared host.** Three runs (or a short window) per figure, on a {cpus}-CPU host shared with
   other jobs: individual figures carry noise of several percent (see the p90s in eval.json), which flows into the
   prediction errors. CFS throttling adds its own artefacts (see "How it was measured").
7. **Profiling reuses the ground truth** (see above): the same code and the same block choice as `rr-edge profile`,
   but measured once, to fit the time budget.
8. **Neurosurgeon on residual models.** Our atomic blocks fold residual structures into one block, so a single-split
   Neurosurgeon applies to ResNets and MobileNetV2 too; the paper compared on chain models only.
9. **Input size.** {_input_size_note(cfg)}

## Regenerate

```
{regenerate}
```

Needs root (namespaces, tc, cgroups); `make eval` brings the testbed up and always tears it down. Raw worker outputs
and logs stay in `.cache/eval/{run}/`; `python -m tools.eval analyze{flags}` rebuilds
this report, the figures and eval.json from them without re-measuring.
"""


def rederive(out_dir: Path) -> Path:
    """The statements of `out_dir`'s README that are read off its numbers, derived again from its eval.json: "What
    the numbers say" and what the output check found. For a committed run whose raw data is gone, after a change to
    how they are read; the rest (how the run was measured) stays as written when it was measured."""
    path = out_dir / "README.md"
    try:
        data, text = json.loads((out_dir / "eval.json").read_text()), path.read_text()
        head, rest = text.split(f"{_FINDINGS}\n\n", 1)
        tail = rest.split("\n\n", 1)[1]
    except (OSError, ValueError, IndexError) as exc:
        raise RuntimeError(f"cannot re-derive {path}: {exc or 'no findings section'}") from None
    text = f"{head}{_FINDINGS}\n\n{_findings(data)}\n\n{tail}"
    text = re.sub(r"Outputs match local execution \(max \|diff\| in\s+eval\.json\)\.", _outputs(data["plans"]), text)
    generated = data["meta"]["generated"]
    note = f"{generated}; its findings re-derived from eval.json {time.strftime('%Y-%m-%d %Z')}"
    path.write_text(text.replace(f"report generated\n{generated}.", f"report generated\n{note}."))
    return path


def write(data: dict[str, Any], out_dir: Path) -> Path:
    path = out_dir / "README.md"
    path.write_text(render(data, sorted(p.parent.name for p in out_dir.glob("*/README.md"))))
    return path
