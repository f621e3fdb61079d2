"""The main job (`rr-edge demo`, `make demo`): the whole system on this machine, end to end.

An embedded server on localhost (temporary data dir) -> export a model -> register this machine as an edge node ->
network profile -> profile a p-sample of blocks -> predictions -> Pareto set and chosen plan -> run the plan over gRPC,
checked against local execution -> measured vs predicted latency and speedups against the baselines -> Pareto plot.

Edge and server share this machine's cores here (the edge runs ONNX Runtime on one thread, the server on all of
them): the numbers show the system working, not the gains of a real edge/cloud pair (tools/testbed emulates those).
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from rr_edge.api import EdgeNode
from rr_edge.errors import RoadRunnerError
from rr_edge.measure import Measured, measure_splits
from rr_edge.offload import PlanReport, local_outputs
from rr_edge.planner import Plan
from rr_edge.progress import progress_bars
from rr_edge.session import OrtSettings

CHOSEN = "roadrunner (chosen)"
NOT_RUNNABLE = "not runnable: over a server limit (slice size or message size)"
CLOUD_WAIT_S = 60.0  # how long the demo waits for the server's own timings of the profiled blocks


@dataclass(frozen=True)
class DemoOptions:
    model: str = "resnet18"
    input_size: int = 224
    sample: float = 0.3
    seed: int = 0
    max_mb: float = 64
    repeat: int = 20
    objective: str = "latency"
    out_dir: Path = Path("demo-out")
    edge_threads: int = 1  # the edge is the weaker device: one core; the server uses the rest
    tolerance: float = 1e-3  # largest |difference| allowed between any plan's outputs and the whole model run locally


def _plans_to_measure(report: PlanReport) -> dict[str, Plan]:
    """The chosen plan, the baselines and, when the chosen plan stays local, the best one that offloads; without
    those the planner priced at infinity (`_not_runnable`): the server would refuse them (offload_all of a model
    whose whole slice is over the server's slice limit), and the demo ended in a traceback. When none of those
    offloads, the fastest plan that does: the demo verifies plans over gRPC, and a local one never goes there."""
    plans = {CHOSEN: report.chosen}
    plans.update((name, plan) for name, plan in report.baselines.items() if math.isfinite(plan.latency_ms))
    if report.chosen.i == report.chosen.j:  # also run the best plan that really offloads
        offloading = [p for p in report.pareto if p.i != p.j and math.isfinite(p.latency_ms)]
        if offloading:
            plans["best offloading pareto plan"] = offloading[0]
    if all(p.i == p.j for p in plans.values()):
        i, j, lat, _ = report.table.flat()
        runnable = np.flatnonzero((i != j) & np.isfinite(lat))
        if runnable.size:
            k = runnable[np.argmin(lat[runnable])]
            plans["fastest offloading plan"] = report.table.plan(int(i[k]), int(j[k]))
    return plans


def _not_runnable(report: PlanReport) -> dict[str, Plan]:
    """The baselines the server cannot run (infinite predicted latency): shown as such, not measured."""
    return {name: plan for name, plan in report.baselines.items() if not math.isfinite(plan.latency_ms)}


def run_demo(options: DemoOptions, console: Console) -> dict[str, Any]:
    from rr_edge.export import export_model
    from rr_server import Server, ServerConfig

    out = options.out_dir
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"model": options.model, "input_size": options.input_size}
    # The model name and the paths are the user's: printed as text, not read as rich markup ('net[/v2]' raised).
    console.rule(f"[bold]RoaD-RuNNer demo: {escape(options.model)} at {options.input_size}")
    path = out / f"{options.model}_{options.input_size}.onnx"
    if not path.exists():  # before the server starts: a name torchvision does not know is the first error
        with console.status(f"exporting {escape(options.model)} (random weights)"):
            export_model(options.model, path, input_size=options.input_size)
    console.print(f"model: {escape(str(path))}")
    with tempfile.TemporaryDirectory(prefix="rr-demo-") as data_dir:
        with Server(ServerConfig(data_dir=Path(data_dir), listen="127.0.0.1:0")) as server:
            assert server.address is not None
            console.print(
                f"embedded server on {server.address} (data dir {escape(data_dir)}, providers {server.providers})"
            )
            settings = OrtSettings(intra_op_threads=options.edge_threads)
            with EdgeNode(server.address, "demo-edge", settings=settings) as node:
                graph = node.blocks(path)
                unique = len({b.signature for b in graph.blocks})
                console.print(f"{len(graph.blocks)} atomic blocks, {unique} unique signatures")
                console.print(f"energy meter: {escape(node.meter.description)}")
                console.print(f"network profile up to {options.max_mb} MiB")
                with progress_bars() as progress:  # on stderr, as every command's: stdout has the report
                    net = node.netprofile(max_mb=options.max_mb, progress=progress)
                console.print(
                    f"network: uplink {net.uplink.chosen_model} (held-out error poly4 {net.uplink.poly4_error:.1%}, "
                    f"affine {net.uplink.affine_error:.1%}); downlink {net.downlink.chosen_model}"
                )
                console.print(f"profiling {options.sample:.0%} of the unique blocks; the server times them too")
                with progress_bars() as progress:  # on stderr, as every command's: stdout has the report
                    prof = node.profile(
                        path, sample=options.sample, seed=options.seed, wait_cloud_s=CLOUD_WAIT_S, progress=progress
                    )
                console.print(
                    f"profiled {len(prof.layers)} of {prof.unique_signatures} unique blocks in {prof.elapsed_s:.1f} s"
                )
                report = node.plan(path, options.objective, amortize_over=options.repeat)
                _print_plan(console, report)
                summary["provenance"] = report.costs.provenance_counts()
                summary["amortize_over"] = report.inputs.amortize_over
                x = np.random.default_rng(options.seed).standard_normal(graph.inputs[0].shape).astype(np.float32)
                expected = local_outputs(settings, path.read_bytes(), x)
                plans = _plans_to_measure(report)
                splits = [(p.i, p.j) for p in plans.values()]
                with console.status(f"running {len(set(splits))} plans over gRPC, {options.repeat} requests each"):
                    by_split = measure_splits(lambda s: node.runner(path, s), splits, x, options.repeat, expected)
                measured = {name: by_split[(p.i, p.j)] for name, p in plans.items()}
                summary["plans"] = _print_measured(console, report, plans, measured)
                summary["not_runnable"] = [
                    {"plan": name, "split": [p.i, p.j]} for name, p in _not_runnable(report).items()
                ]
                from rr_edge.plot import plot_pareto

                png = plot_pareto(
                    report.table, report.pareto, report.chosen, report.baselines, out / "pareto.png", title=graph.model
                )
                console.print(f"Pareto plot: {escape(str(png))}")
                summary.update(
                    blocks=len(graph.blocks),
                    unique_signatures=unique,
                    profiled=len(prof.layers),
                    chosen=report.chosen.to_dict(),
                    # np.max keeps a NaN wherever it is (Python's max dropped one that was not first)
                    max_abs_diff_vs_local=float(np.max([m.max_abs_diff for m in measured.values()])),
                    over_grpc=[name for name, p in plans.items() if p.i != p.j and not measured[name].fallback],
                    fell_back=[name for name, m in measured.items() if m.fallback],
                    energy_source=report.costs.energy_source,
                    pareto_png=str(png),
                )
    summary["verified"] = not _not_verified(summary, options.tolerance)
    _print_summary(console, summary, options.tolerance)
    return summary


def check_verified(summary: dict[str, Any], tolerance: float) -> None:
    """Raise when the run did not verify the plan over gRPC (`_not_verified` says why)."""
    if not summary["verified"]:
        raise RoadRunnerError(_not_verified(summary, tolerance))


def _not_verified(s: dict[str, Any], tolerance: float) -> str:
    """Why the outputs over gRPC are not verified against local execution ('' when they are): a plan's outputs
    differ by more than `tolerance` (NaN included), a plan fell back to local execution (its outputs are local
    ones: diff 0, yet nothing went over gRPC), or no plan that offloads was answered by the server."""
    diff = s["max_abs_diff_vs_local"]
    if not diff <= tolerance:
        return f"outputs over gRPC differ from the whole model run locally by {diff:.1e} (tolerance {tolerance:.0e})"
    if s.get("fell_back"):
        return (
            f"{', '.join(s['fell_back'])} fell back to local execution (the server did not answer every request): "
            "not verified over gRPC"
        )
    if not s.get("over_grpc"):
        return "no plan that offloads was answered by the server: nothing was verified over gRPC"
    return ""


def _print_summary(console: Console, s: dict[str, Any], tolerance: float) -> None:
    rows = {row["plan"]: row for row in s["plans"]}
    chosen = rows[CHOSEN]
    error = chosen["measured_ms"] / chosen["predicted_ms"] - 1.0
    speedups = ", ".join(
        f"{row['measured_ms'] / chosen['measured_ms']:.2f}x vs {name}" for name, row in rows.items() if name != CHOSEN
    )
    skipped = [row["plan"] for row in s.get("not_runnable", [])]
    why = _not_verified(s, tolerance)
    verdict = f"NOT verified: {why}" if why else f"verified over gRPC ({', '.join(s['over_grpc'])})"
    lines = [
        f"model {escape(s['model'])}@{s['input_size']}: {s['blocks']} atomic blocks, {s['unique_signatures']} unique; "
        f"profiled {s['profiled']} of them on this node",
        f"chosen plan {tuple(chosen['split'])} ({s['chosen']['objective']}): "
        f"predicted {chosen['predicted_ms']:.1f} ms, "
        f"measured {chosen['measured_ms']:.1f} ms ({error:+.0%})",
        f"speedup of the chosen plan (measured, run-time weight uploads spread over {s['amortize_over']} requests as "
        f"planned): {speedups or 'no other plan measured'}",
        *([f"{', '.join(skipped)}: {NOT_RUNNABLE}"] if skipped else []),
        f"outputs vs the whole model run locally: max |diff| {s['max_abs_diff_vs_local']:.1e}; {verdict}",
        f"edge energy source: {s['energy_source']}" + (" (declared power model: an estimate, not a measurement)"
                                                        if s["energy_source"] == "model" else ""),
        f"Pareto plot: {escape(s['pareto_png'])}",
        "note: edge and server share this machine's cores (the edge runs ONNX Runtime on one thread, the server on "
        "all), so gains here are small; tools/testbed emulates real edge/cloud pairs",
    ]  # fmt: skip
    console.print(Panel("\n".join(lines), title="summary", expand=False))


def _print_plan(console: Console, report: PlanReport) -> None:
    from rr_edge.commands.plan import plan_table

    console.print(plan_table(report, f"Pareto set and baselines (predicted; objective {report.chosen.objective})"))
    counts = report.costs.provenance_counts()
    console.print(f"block predictions: edge {counts['edge']}, cloud {counts['cloud']}")


def _print_measured(
    console: Console, report: PlanReport, plans: dict[str, Plan], measured: dict[str, Measured]
) -> list:
    """Measured as planned: a plan that uploads its middle slice's weights at run time is charged the upload it
    really took, spread over the K requests the plan was made for (`amortize_over`), like its prediction. The
    baselines that cannot run get a row saying so; the rows returned are those measured."""
    k = report.inputs.amortize_over

    def upload_ms(name: str) -> float:
        return measured[name].upload_ms if plans[name].upload_bytes else 0.0

    def per_request_ms(name: str) -> float:
        return measured[name].median_ms + upload_ms(name) / k

    chosen = per_request_ms(CHOSEN)
    table = Table(
        title="measured over gRPC on this machine (median of the requests, interleaved)",
        caption=f"measured = request median + weight upload / {k} for plans that upload at run time (as predicted)",
    )
    columns = ("plan", "i,j", "predicted ms", "measured ms", "request ms", "upload ms (once)", "p90 ms",
               "chosen speedup", "max |diff| vs local")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column == "plan" else "right", no_wrap=column == "plan")
    rows = []
    for name, plan in plans.items():
        m, total, upload = measured[name], per_request_ms(name), upload_ms(name)
        table.add_row(
            name, f"{plan.i},{plan.j}", f"{plan.latency_ms:.1f}", f"{total:.1f}", f"{m.median_ms:.1f}",
            f"{upload:.0f}" if upload else "-", f"{m.p90_ms:.1f}", f"{total / chosen:.2f}x",
            f"{m.max_abs_diff:.1e}" + (" (fallback)" if m.fallback else ""),
        )  # fmt: skip
        rows.append({"plan": name, "split": [plan.i, plan.j], "predicted_ms": plan.latency_ms, "measured_ms": total,
                     "request_ms": m.median_ms, "upload_ms": upload, "p90_ms": m.p90_ms, "fallback": m.fallback,
                     "max_abs_diff": m.max_abs_diff})  # fmt: skip
    for name, plan in _not_runnable(report).items():
        table.add_row(name, f"{plan.i},{plan.j}", "inf", "not runnable", *["-"] * (len(columns) - 4))
    console.print(table)
    return rows
