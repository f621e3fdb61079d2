"""`rr-edge plan PATH --server ADDR --node NAME [--objective latency|energy|pareto] [--preloaded] [--json] [--plot F]`.

Gathers this node's and the cloud node's block predictions and the network profile from the server, evaluates every
plan (i, j), and prints the Pareto set, the chosen plan and the four baselines (rr_edge.offload).
"""

from __future__ import annotations

import argparse
import math
import os
import sys

from rich.table import Table

from rr_edge.blocks import analyze
from rr_edge.commands._common import (
    add_model_name_arg,
    add_power_args,
    add_server_args,
    connect,
    model_name,
    non_negative_float,
    output_console,
    positive_float,
    positive_int,
    print_json,
)
from rr_edge.commands._paths import plot_path
from rr_edge.meters.model import BUILT_IN_POWER, ENV_CONFIG, resolve_power
from rr_edge.netprofile import MAX_ECHO_MB, MAX_UPLOAD_PROBE_MB, MiB
from rr_edge.offload import PlanReport, gather_costs, plan_with_server_cache
from rr_edge.onnx_io import load_model
from rr_edge.planner import OBJECTIVES, Plan
from rr_edge.plot import plot_pareto
from rr_edge.slicing import Slicer

DEFAULT_OBJECTIVE = "latency"
DEFAULT_AMORTIZE = 1


def add_plan_args(p: argparse.ArgumentParser, amortize_default: str = str(DEFAULT_AMORTIZE)) -> None:
    """Flags shared by `plan` and `run` (each adds the power model's flags itself: `run` with its --energy meter).
    `--amortize` defaults to None (given: K); `amortize_default` says in the help what None stands for."""
    p.add_argument(
        "--objective",
        choices=[o for o in OBJECTIVES if o != "slo"],
        default=DEFAULT_OBJECTIVE,
        help="the plan to choose: fastest, least edge energy or the Pareto knee (default %(default)s); "
        "--slo-ms overrides it",
    )
    p.add_argument(
        "--slo-ms",
        type=positive_float,
        metavar="MS",
        help="latency SLO: the least edge energy with latency <= MS, whatever --objective says; "
        "when no plan meets it, the fastest (with a warning)",
    )
    p.add_argument("--preloaded", action="store_true", help="the slices are already on the server (no upload cost)")
    p.add_argument(
        "--amortize",
        type=positive_int,
        metavar="K",
        help=f"spread the weight upload over K inferences (default {amortize_default})",
    )
    p.add_argument(
        "--wait",
        type=non_negative_float,
        default=10.0,
        metavar="S",
        help="wait up to S seconds for the server's predictions (default %(default)g)",
    )


def choice_options(args: argparse.Namespace) -> list[str]:
    """The flags of `add_plan_args` that only steer the choice among plans and were given other than their defaults
    (`--preloaded` and `--amortize` change what plans cost as well)."""
    given = {"--objective": args.objective != DEFAULT_OBJECTIVE, "--slo-ms": args.slo_ms is not None}
    return [flag for flag, on in given.items() if on]


def warn_about_plan(report: PlanReport, command: str) -> None:
    """One line on stderr for each: no plan meets `--slo-ms` (the planner then chose the fastest); most of the model's
    blocks on this node are cold-start predictions (no node measured them: from block features only, far less
    accurate; `rr-edge profile` measures a sample); the chosen plan uploads a slice larger than the network profile
    measured (its upload time is extrapolated, and a server's per-byte costs change with size)."""
    if report.chosen.objective == "slo-unmet":
        slo_ms = report.options.get("slo_ms")
        print(
            f"rr-edge {command}: warning: no plan meets {slo_ms:g} ms; chose the fastest, "
            f"{report.chosen.latency_ms:.2f} ms",
            file=sys.stderr,
        )
    edge = report.costs.provenance_counts()["edge"]
    cold = edge.get("cold-start", 0)
    if cold * 2 > sum(edge.values()):
        print(
            f"rr-edge {command}: warning: {cold} of {sum(edge.values())} blocks have only cold-start predictions "
            "on this node (no node measured them), which can be far off; run rr-edge profile (again: each run measures "
            "a sample of the blocks not measured yet; --sample 1 measures them all)",
            file=sys.stderr,
        )
    note = upload_extrapolated(report)
    if note:
        print(f"rr-edge {command}: warning: {note}", file=sys.stderr)


def upload_extrapolated(report: PlanReport) -> str | None:
    """What to say when the plan's slice upload (chosen, or forced by `run --split`) is larger than any the network
    profile timed, or than the server takes (None: it is not; a slice already on the server, or preloaded, uploads
    nothing)."""
    size = report.chosen.upload_bytes
    link = report.inputs.weight_link
    limit_bytes = report.costs.max_slice_bytes
    if limit_bytes and size > limit_bytes:  # no probe measures it: the server refuses such a slice
        return (
            f"the plan uploads a {size / MiB:.1f} MiB slice, over the server's limit of "
            f"{limit_bytes / MiB:.3g} MiB (rr-server --max-slice-mb): the server will refuse it"
        )
    if size <= link.hi_bytes:
        return None
    flag, limit = ("--upload-max-mb", MAX_UPLOAD_PROBE_MB) if report.costs.upload else ("--max-mb", MAX_ECHO_MB)
    mib = min(limit, max(1, 2 ** math.ceil(math.log2(size / MiB))))
    return (
        f"the plan uploads a {size / MiB:.1f} MiB slice, more than the {link.hi_bytes / MiB:.3g} MiB the "
        f"network profile timed: its upload time is extrapolated; rr-edge netprofile {flag} {mib} measures it (a "
        "slow link's sweep also stops at --max-transfer-s)"
    )


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("plan", help="choose how to split a model between this node and the server")
    p.add_argument("path", metavar="PATH", help="ONNX model")
    add_server_args(p)
    add_model_name_arg(p)
    add_plan_args(p)
    add_power_args(p)  # the node's idle and radio power: `plan` measures nothing, so it takes no --energy meter
    p.add_argument(
        "--json", action="store_true", help="print one JSON object: the chosen plan, the Pareto set and the baselines"
    )
    p.add_argument("--plot", type=plot_path, metavar="PNG", help="write the Pareto figure (.png, .pdf, .svg, .jpg)")
    p.set_defaults(func=run)


def build_plan(
    args: argparse.Namespace, client, model, graph, slicer: Slicer, amortize_over: int = DEFAULT_AMORTIZE
) -> PlanReport:
    """The plan the flags of `add_plan_args` ask for; `amortize_over` applies when `--amortize` was not given."""
    power, origin = resolve_power(args.power_config, args.device_class)
    configured = args.power_config or os.environ.get(ENV_CONFIG)  # resolve_power already said why it went unused
    if origin == BUILT_IN_POWER and not configured and (args.objective != "latency" or args.slo_ms is not None):
        # energy decides the plan: say whose watts cost the waits and transfers (a desktop idles far above 1.25 W)
        print(
            f"rr-edge {args.command}: warning: no power model configured: waits and transfers are costed with the "
            f"built-in figures of a small board (idle {power.idle_w:g} W, send +{power.net_tx_w:g} W, receive "
            f"+{power.net_rx_w:g} W); give --power-config (and --device-class) for this device",
            file=sys.stderr,
        )
    costs = gather_costs(client, args.node, graph, power, wait_s=args.wait)
    return plan_with_server_cache(
        client,
        model,
        graph,
        costs,
        slicer,
        objective=args.objective,
        slo_ms=args.slo_ms,
        preloaded=args.preloaded,
        amortize_over=args.amortize or amortize_over,
    )


def run(args: argparse.Namespace) -> int:
    model = load_model(args.path)
    graph = analyze(model, model_name(args))
    with connect(args) as client:
        report = build_plan(args, client, model, graph, Slicer(model, graph))
    warn_about_plan(report, "plan")
    if args.plot:
        plot_pareto(report.table, report.pareto, report.chosen, report.baselines, args.plot, title=graph.model)
    if args.json:
        print_json(report.to_json())
    else:
        print_report(report)
    return 0


def _row(table: Table, name: str, plan: Plan) -> None:
    table.add_row(
        name,
        f"{plan.i},{plan.j}",
        str(plan.offloaded_blocks),
        f"{plan.latency_ms:.2f}",
        f"{plan.energy_mJ:.1f}",
        f"{plan.upload_bytes / 1e6:.2f}",
    )


def plan_table(report: PlanReport, title: str) -> Table:
    table = Table(title=title)
    for column in (
        "plan",
        "i,j",
        "offloaded",
        "latency ms",
        f"edge energy mJ ({report.costs.energy_source})",
        "upload MB",
    ):
        table.add_column(column, justify="right" if column != "plan" else "left")
    for k, plan in enumerate(report.pareto):
        _row(
            table,
            f"pareto {k}" + (" <- chosen" if (plan.i, plan.j) == (report.chosen.i, report.chosen.j) else ""),
            plan,
        )
    for name, plan in report.baselines.items():
        _row(table, name, plan)
    notes = []
    ns, chosen = report.baselines.get("neurosurgeon"), report.chosen
    if ns and not report.inputs.preloaded and (ns.latency_ms < chosen.latency_ms or ns.energy_mJ < chosen.energy_mJ):
        notes.append(
            "neurosurgeon is costed with its weights on the server beforehand, as in the paper; the plans above pay "
            "their upload (--preloaded compares them on equal terms)"
        )
    if any(math.isinf(plan.latency_ms) for plan in report.baselines.values()):
        notes.append(
            "inf: a plan this server cannot run (its slice over the server's slice limit, a tensor over its message "
            "limit, or a slice it refused)"
        )
    table.caption, table.caption_justify = "\n".join(notes) or None, "left"
    return table


def print_report(report: PlanReport) -> None:
    console = output_console()
    console.print(plan_table(report, f"{report.blocks} blocks; objective {report.chosen.objective}"))
    counts = report.costs.provenance_counts()
    edge, cloud = (", ".join(f"{n} {kind}" for kind, n in counts[row].items()) for row in ("edge", "cloud"))
    console.print(f"predictions: edge {edge}; cloud {cloud}; e2e correction {report.costs.e2e_correction:.3f}")
