"""Raw worker outputs -> eval.json: every number behind Fig. 3-6 and the report's tables.

Pure except `analyze_run`, which reads the work dir and writes the outputs.

Measured cost of a plan = the mean per-request latency (tools/eval/timing.py) / modelled energy of its split as RUN
on the testbed, plus the measured upload of its middle slice when the plan uploads weights at run time (not
pre-offloaded).
"""

from __future__ import annotations

import json
import logging
import platform
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import accuracy, metrics, missing
from .config import CHAIN, REPO, SERVER_CLASS, EvalConfig, cli_flags, group_of
from .groundtruth import from_worker_outputs, write_blocks_csv, write_energy_csv, write_long_csv

log = logging.getLogger(__name__)

OURS = "roadrunner"
# Fig. 3 comparisons: label -> (our plan, baseline plan)
COMPARISONS = {
    "Offload None": (OURS, "offload_none"),
    "Offload All": (OURS, "offload_all"),
    "Neurosurgeon": (OURS, "neurosurgeon"),
    "NS-nonOffloaded": (OURS, "neurosurgeon_non_offloaded"),
    "RR-preOffloaded vs Neurosurgeon": ("roadrunner_preoffloaded", "neurosurgeon"),
}


def measured_cost(model_out: Mapping[str, Any], plan_name: str) -> dict[str, float]:
    """Measured latency (ms) and modelled energy (mJ) of one plan, upload included when charged."""
    plan = model_out["plans"][plan_name]
    i, j = plan["split"]
    m = model_out["measured"][f"{i},{j}"]
    charged = (not plan["preloaded"]) and i < j
    return {
        "latency_ms": m["latency_ms"]["mean"] + (m["upload_ms"] if charged else 0.0),
        "energy_mJ": m["energy_mJ"] + (m["upload_mJ"] if charged else 0.0),
        "run_ms": m["latency_ms"]["mean"],
        "local_ms": m["latency_ms"]["mean"] - m["remote_ms"],
        "remote_ms": m["remote_ms"],
        "upload_ms": m["upload_ms"] if charged else 0.0,
        "fallback_requests": m["fallback_requests"],
        "max_abs_diff_vs_local": m["max_abs_diff_vs_local"],
    }


def _parts(pred: Mapping[str, Any], *keys: str) -> float | None:
    bd = pred.get("breakdown")
    return None if bd is None else float(sum(bd[k] for k in keys))


def components(rows: list[dict[str, Any]], parts: tuple[str, ...] = ("local", "remote", "upload")) -> dict[str, Any]:
    """Where the latency error comes from: median |error| (%) and median predicted/measured ratio per component."""
    out = {}
    for part in parts:
        pairs = [
            (r[f"predicted_{part}_ms"], r[f"{part}_ms"])
            for r in rows
            if r.get(f"predicted_{part}_ms") is not None and r[f"{part}_ms"] > 0 and r[f"predicted_{part}_ms"] > 0
        ]
        out[part] = {
            "n": len(pairs),
            "median_ape": metrics.median(metrics.abs_pct_error(p, m) for p, m in pairs),
            "median_ratio": metrics.median(p / m for p, m in pairs),
        }
    return out


def plan_rows(execute: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per (device, model, plan): split, predicted (CF and Neurosurgeon) and measured cost."""
    rows = []
    for dev, out in execute.items():
        for model, mo in out["models"].items():
            for name, plan in mo["plans"].items():
                meas = measured_cost(mo, name)
                pred, ns = plan["predicted"], plan["predicted_ns"]
                rows.append({
                    "device": dev, "model": model, "group": group_of(model), "plan": name,
                    "split": plan["split"], "preloaded": plan["preloaded"], "blocks": mo["blocks"],
                    "offloaded_blocks": plan["offloaded_blocks"],
                    "measured_ms": meas["latency_ms"], "measured_mJ": meas["energy_mJ"],
                    "run_ms": meas["run_ms"], "upload_ms": meas["upload_ms"],
                    "local_ms": meas["local_ms"], "remote_ms": meas["remote_ms"],
                    "predicted_local_ms": _parts(pred, "head_ms", "tail_ms"),
                    "predicted_remote_ms": _parts(pred, "uplink_ms", "cloud_ms", "downlink_ms"),
                    "predicted_upload_ms": _parts(pred, "weight_upload_ms"),
                    "predicted_ms": pred["latency_ms"], "predicted_mJ": pred["energy_mJ"],
                    "ns_predicted_ms": ns["latency_ms"] if ns else None,
                    "ns_predicted_mJ": ns["energy_mJ"] if ns else None,
                    "fallback_requests": meas["fallback_requests"],
                    "max_abs_diff_vs_local": meas["max_abs_diff_vs_local"],
                })  # fmt: skip
    return rows


def fig3(execute: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    points = []
    for dev, out in execute.items():
        for model, mo in out["models"].items():
            for label, (ours, base) in COMPARISONS.items():
                a, b = measured_cost(mo, ours), measured_cost(mo, base)
                s, g = (
                    metrics.speedup(b["latency_ms"], a["latency_ms"]),
                    metrics.energy_gain_pct(b["energy_mJ"], a["energy_mJ"]),
                )
                points.append({
                    "device": dev, "model": model, "group": group_of(model), "comparison": label,
                    "speedup": s, "energy_gain_pct": g, "quadrant": metrics.quadrant(s, g),
                    "ours_split": mo["plans"][ours]["split"], "baseline_split": mo["plans"][base]["split"],
                })  # fmt: skip
    summary: dict[str, Any] = {}
    for group in ("chain", "residual", "all"):
        summary[group] = {}
        for label in COMPARISONS:
            sel = [p for p in points if p["comparison"] == label and (group == "all" or p["group"] == group)]
            if not sel:
                continue
            summary[group][label] = {
                "n": len(sel),
                "mean_speedup": metrics.mean(p["speedup"] for p in sel),
                "geomean_speedup": metrics.geomean(p["speedup"] for p in sel),
                "max_speedup": max(p["speedup"] for p in sel),
                "mean_energy_gain_pct": metrics.mean(p["energy_gain_pct"] for p in sel),
                "max_energy_gain_pct": max(p["energy_gain_pct"] for p in sel),
                "quadrants": {q: sum(p["quadrant"] == q for p in sel) for q in metrics.QUADRANTS},
            }
    return {"points": points, "summary": summary}


def _errors(rows: list[dict[str, Any]], key: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for target, unit in (("latency", "ms"), ("energy", "mJ")):
        for method, col in (("roadrunner", f"predicted_{unit}"), ("neurosurgeon", f"ns_predicted_{unit}")):
            errs: dict[str, list[float]] = {}
            for r in rows:
                if r[col] is not None:
                    errs.setdefault(r[key], []).append(metrics.abs_pct_error(r[col], r[f"measured_{unit}"]))
            out.setdefault(target, {})[method] = {k: metrics.median(v) for k, v in errs.items()}
    return out


def _distinct(rows: list[dict[str, Any]], *keys: str) -> list[dict[str, Any]]:
    """The first row of each value of `keys`: a run scored once, whichever plans chose it."""
    first: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        first.setdefault(tuple(tuple(v) if isinstance(v, list) else v for v in (r[k] for k in keys)), r)
    return list(first.values())


def fig5(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Median absolute % error of whole-plan predictions vs measurements, per model and per device."""
    # a plan's whole cost depends on whether its weights were pre-loaded (the upload is charged or not) ...
    uniq = _distinct(rows, "device", "model", "split", "preloaded")
    # ... its local and remote parts do not: the split ran once, and one row of it is scored
    runs = _distinct(rows, "device", "model", "split")
    chosen = [r for r in rows if r["plan"] == OURS]
    overall = {}
    for name, sel in (("all_plans", uniq), ("chosen_plan", chosen)):
        overall[name] = {
            f"{method}_{target}_median_ape": metrics.median(
                metrics.abs_pct_error(r[col], r[f"measured_{unit}"]) for r in sel if r[col] is not None)
            for target, unit in (("latency", "ms"), ("energy", "mJ"))
            for method, col in (("roadrunner", f"predicted_{unit}"), ("neurosurgeon", f"ns_predicted_{unit}"))
        }  # fmt: skip
        overall[name]["n"] = len(sel)
    return {
        "per_model": _errors(uniq, "model"),
        "per_device": _errors(uniq, "device"),
        "per_model_device_latency": {
            f"{d}/{m}": metrics.median(
                metrics.abs_pct_error(r["predicted_ms"], r["measured_ms"])
                for r in uniq
                if r["device"] == d and r["model"] == m
            )
            for d, m in dict.fromkeys((r["device"], r["model"]) for r in uniq)
        },  # fmt: skip
        "overall": overall,
        "components": {**components(runs, ("local", "remote")), **components(uniq, ("upload",))},
    }


def fig6(execute: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    share: dict[str, dict[str, dict[str, float]]] = {}
    for dev, out in execute.items():
        for model, mo in out["models"].items():
            for objective, plan in (("latency", OURS), ("energy", "roadrunner_energy")):
                p = mo["plans"][plan]
                share.setdefault(objective, {}).setdefault(dev, {})[model] = (
                    100.0 * p["offloaded_blocks"] / mo["blocks"]
                )
    mean = {o: {d: metrics.mean(v.values()) for d, v in by_dev.items()} for o, by_dev in share.items()}
    overall = {o: metrics.mean(x for v in by_dev.values() for x in v.values()) for o, by_dev in share.items()}
    return {"share_pct": share, "mean_pct": mean, "overall_pct": overall}


def repeatability(gt_out: Mapping[str, Mapping[str, Any]], execute: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The noise floor: one whole model run locally twice, minutes apart (ground truth vs the Offload None run)."""
    diffs = {}
    for dev, out in execute.items():
        for model, mo in out["models"].items():
            n = mo["blocks"]
            a = gt_out[dev]["models"][model]["whole_model"]["latency_ms"]["mean"]
            b = mo["measured"][f"{n - 1},{n - 1}"]["latency_ms"]["mean"]
            diffs[f"{dev}/{model}"] = metrics.abs_pct_error(a, b)
    return {"abs_diff_pct": diffs, "median_abs_diff_pct": metrics.median(diffs.values())}


def cloud_vs_groundtruth(
    gt_out: Mapping[str, Mapping[str, Any]], execute: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """The cloud row of the plans against the server's own ground truth: each model's predicted cloud compute with
    every block offloaded (Offload All's breakdown; the median over the edge classes) over the server's measured
    whole-model latency (its window mean, as everywhere else). Errors here come from the cloud profiler's timings and
    the cloud's CF predictions."""
    server = gt_out.get(SERVER_CLASS)
    if server is None:
        return {}
    predicted: dict[str, list[float]] = {}
    for out in execute.values():
        for model, mo in out["models"].items():
            breakdown = mo["plans"]["offload_all"]["predicted"].get("breakdown")
            if breakdown is not None and model in server["models"]:
                predicted.setdefault(model, []).append(breakdown["cloud_ms"])
    per_model = {}
    for model, values in predicted.items():
        pred, gt = metrics.median(values), server["models"][model]["whole_model"]["latency_ms"]["mean"]
        per_model[model] = {"predicted_ms": pred, "groundtruth_ms": gt, "ratio": pred / gt}
    return {
        "per_model": per_model,
        "median_ape": metrics.median(
            metrics.abs_pct_error(v["predicted_ms"], v["groundtruth_ms"]) for v in per_model.values()
        ),
        "median_ratio": metrics.median(v["ratio"] for v in per_model.values()),
    }


def groundtruth_summary(gt_out: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    whole: dict[str, dict[str, float]] = {}
    ratio: dict[str, dict[str, float]] = {}
    elapsed: dict[str, Any] = {}
    for dev, out in gt_out.items():
        elapsed[dev] = out.get("worker_elapsed_s")
        for model, m in out["models"].items():
            w = m["whole_model"]
            whole.setdefault(dev, {})[model] = w["latency_ms"]["mean"]
            ratio.setdefault(dev, {})[model] = w["e2e_over_sum_of_blocks"]
    return {"whole_model_ms": whole, "whole_over_sum_of_blocks": ratio, "elapsed_s": elapsed}


def headline(f3: dict[str, Any], f4: dict[str, Any], f5: dict[str, Any], f6: dict[str, Any]) -> dict[str, Any]:
    s = f3["summary"]["all"]
    lat4 = f4.get("latency", {})
    return {
        "mean_speedup_vs_ns_non_offloaded": s.get("NS-nonOffloaded", {}).get("mean_speedup"),
        "geomean_speedup_vs_ns_non_offloaded": s.get("NS-nonOffloaded", {}).get("geomean_speedup"),
        "max_energy_gain_pct_vs_ns_non_offloaded": s.get("NS-nonOffloaded", {}).get("max_energy_gain_pct"),
        "max_energy_gain_pct_any_baseline": max((v["max_energy_gain_pct"] for v in s.values()), default=None),
        "latency_prediction_median_ape_pct": f5["overall"]["all_plans"]["roadrunner_latency_median_ape"],
        "energy_prediction_median_ape_pct": f5["overall"]["all_plans"]["roadrunner_energy_median_ape"],
        "chosen_plan_latency_median_ape_pct": f5["overall"]["chosen_plan"]["roadrunner_latency_median_ape"],
        "cf_latency_rmse_converged_fill": metrics.converged_fill(
            lat4.get("fills", []), lat4.get("cf", {}).get("rmse", [])),
        "cf_energy_rmse_converged_fill": metrics.converged_fill(
            f4.get("energy", {}).get("fills", []), f4.get("energy", {}).get("cf", {}).get("rmse", [])),
        "offloaded_share_pct": f6["overall_pct"],
    }  # fmt: skip


def _load(work: Path, prefix: str) -> dict[str, Any]:
    return {
        p.stem[len(prefix) + 1 :]: json.loads(p.read_text())
        for p in sorted(work.glob(f"{prefix}-*.json"))
        if not p.name.endswith(".spec.json")
    }


def _read(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def _shown(path: Path) -> str:
    """`path` as the printed commands give it: relative to the repository when inside it."""
    path = path.resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def analyze_run(cfg: EvalConfig, out_dir: Path) -> dict[str, Any]:
    """Read cfg.work_dir, write eval.json, the ground-truth CSVs, the figures and the README into out_dir."""
    from . import figures, report

    work = cfg.work_dir
    gt_out = _load(work, "groundtruth")
    if not gt_out:
        raise RuntimeError(f"no raw outputs in {work}; run collect first")
    saved = _read(work / "config.json")  # runs collected before it was written have none
    if saved is not None and cli_flags(saved) != cli_flags(cfg.to_json()):
        raise RuntimeError(
            f"{work} holds the run of `{' '.join(['python -m tools.eval collect', *cli_flags(saved)])}`; "
            "analyze it with the same options"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    execute = _load(work, "execute")
    # the network profiles (their own phase since it runs after settle; runs before that kept them in the reports)
    networks = {d: r.get("network") for d, r in _load(work, "report").items()}
    networks.update({d: r.get("network") for d, r in _load(work, "netprofile").items()})
    order = [d for d in (*cfg.classes, "server") if d in gt_out]
    gt_out = {d: gt_out[d] for d in order}
    execute = {d: execute[d] for d in cfg.classes if d in execute}
    settled = next(iter(_load(work, "settle").values()), None)  # one device waits for the cloud profiler
    gaps = missing.of_run(cfg.classes, len(cfg.models), settled, execute, _read(work / "failed.json") or {})
    gt, occurrences = from_worker_outputs(gt_out)
    n_lat = write_long_csv(out_dir / "groundtruth_latency.csv", gt, gt.latency_ms)
    n_en = write_energy_csv(out_dir / "groundtruth_energy.csv", gt)
    write_blocks_csv(out_dir / "groundtruth_blocks.csv", occurrences)
    blocks = [gt.blocks[c] for c in gt.cols]
    t = time.perf_counter()
    f4 = {
        "latency": accuracy.fill_sweep(gt.latency_ms, gt.features, blocks, cfg.fig4_fills, cfg.fig4_seeds),
        "energy": accuracy.fill_sweep(gt.energy_mJ, gt.features, blocks, cfg.fig4_fills, cfg.fig4_seeds),
        "rows": gt.rows,
        "cols": len(gt.cols),
        "seconds": time.perf_counter() - t,
    }
    rows = plan_rows(execute)
    f3, f5, f6 = fig3(execute), fig5(rows), fig6(execute)
    phases_file = work / "phases.json"
    headline_numbers = headline(f3, f4, f5, f6)
    data: dict[str, Any] = {
        "meta": {
            "run": cfg.name,
            "config": saved or cfg.to_json(),
            "out": _shown(out_dir),
            "generated": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            # when the collect finished (it writes phases.json last): `analyze` may rebuild the report much later
            "measured": (
                time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(phases_file.stat().st_mtime))
                if phases_file.exists()
                else None
            ),
            "host": {
                "platform": platform.platform(),
                "cpus": _cpus(),
                "cpu_count": (_read(work / "host.json") or {}).get("cpu_count"),  # of the host that collected
            },
            "phases_s": json.loads(phases_file.read_text()) if phases_file.exists() else {},
            "speed": "EMULATED: cgroup CPU quota of one host CPU per device class (tools/testbed)",
            "energy_source": "model",
            "energy_note": "MODELLED: declared watts (tools/testbed/classes.json) x measured time; not measured",
            "chain_models": [m for m in cfg.models if m in CHAIN],
            "residual_models": [m for m in cfg.models if m not in CHAIN],
            "settle": settled,  # reported slices the cloud profiler had timed (`measured`) of those `expected`
            "missing": gaps,
        },
        "repeatability": repeatability(gt_out, execute),
        "headline": headline_numbers,
        "groundtruth": {
            "rows": gt.rows,
            "signatures": len(gt.cols),
            "latency_entries": n_lat,
            "energy_entries": n_en,
            **groundtruth_summary(gt_out),
        },
        "cloud": cloud_vs_groundtruth(gt_out, execute),
        "network": networks,
        "fig3": f3,
        "fig4": f4,
        "fig5": f5,
        "fig6": f6,
        "plans": rows,
        "provenance": {d: {m: mo["provenance"] for m, mo in out["models"].items()} for d, out in execute.items()},
    }
    (out_dir / "eval.json").write_text(json.dumps(data, indent=1))
    figures.write_all(data, out_dir)
    report.write(data, out_dir)
    return headline_numbers


def _cpus() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()
