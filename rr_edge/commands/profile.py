"""`rr-edge profile PATH --server ADDR --node NAME [--sample 0.3] [--seed S] [--energy ...] [--wait-cloud S] [--json]`.

Profiles a sample of the model's block signatures the node has not measured yet, registers the node, uploads their
slices and reports everything to the server (rr_edge.profiler.run_profile). With `--wait-cloud`, then waits (up to S
seconds) until the server has timed the uploaded slices on itself, so that a plan made right after uses measured
cloud latencies (rr_edge.profiler.wait_for_cloud).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.table import Table

from rr_edge.blocks import analyze
from rr_edge.commands._common import (
    add_energy_args,
    add_model_name_arg,
    add_ort_args,
    add_server_args,
    connect,
    fraction,
    make_meter,
    model_name,
    non_negative_float,
    ort_settings,
    output_console,
    positive_int,
    print_json,
)
from rr_edge.errors import RoadRunnerError
from rr_edge.onnx_io import load_model
from rr_edge.profiler import (
    DEFAULT_MAX_UPLOAD_BYTES,
    DEFAULT_SAMPLE,
    ProfileConfig,
    TimingPolicy,
    run_profile,
    wait_for_cloud_timings,
)
from rr_edge.progress import progress_bars


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("profile", help="profile a sample of a model's blocks on this node and report them")
    p.add_argument("path", metavar="PATH", help="ONNX model")
    add_server_args(p)
    p.add_argument("--sample", type=fraction, default=DEFAULT_SAMPLE, help="fraction of unique blocks (default 0.3)")
    p.add_argument("--seed", type=int, help="random seed of the sample (default: drawn and reported)")
    add_energy_args(p)
    add_ort_args(p)
    p.add_argument("--min-runs", type=positive_int, default=10, help="timed runs per block, at least (default 10)")
    p.add_argument(
        "--min-time", type=non_negative_float, default=0.5, help="measured seconds per block, at least (default 0.5)"
    )
    p.add_argument(
        "--rounds",
        type=positive_int,
        default=3,
        help="round-robin passes over the blocks, at most --min-runs (default 3)",
    )
    p.add_argument("--no-whole-model", action="store_true", help="skip the end-to-end run of the whole model")
    p.add_argument(
        "--max-upload-mb",
        type=non_negative_float,
        default=DEFAULT_MAX_UPLOAD_BYTES / 2**20,
        help="do not upload profiled slices above this size (default 64)",
    )
    add_model_name_arg(p)
    p.add_argument(
        "--wait-cloud",
        type=non_negative_float,
        default=0.0,
        metavar="S",
        help="then wait up to S seconds for the server to time the uploaded slices itself (default: do not wait)",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.rounds > args.min_runs:  # each round times every block at least once
        raise RoadRunnerError(f"--rounds {args.rounds} is more than --min-runs {args.min_runs}: each round times a run")
    path = Path(args.path)
    settings = ort_settings(args)
    try:
        config = ProfileConfig(
            sample=args.sample,
            seed=args.seed,
            timing=TimingPolicy(min_runs=args.min_runs, min_time_s=args.min_time, rounds=args.rounds),
            whole_model=not args.no_whole_model,
            max_upload_bytes=int(args.max_upload_mb * 2**20),
        )
    except ValueError as exc:
        raise RoadRunnerError(f"invalid option: {exc}") from None
    model = load_model(path)
    meter = make_meter(args, gpu_work=settings.uses_gpu)
    try:
        with connect(args) as client, progress_bars(not args.json) as progress:
            result = run_profile(
                client,
                args.node,
                model,
                model_name(args),
                settings=settings,
                meter=meter,
                config=config,
                progress=progress,
            )
            cloud = None
            if args.wait_cloud > 0:
                cloud = wait_for_cloud_timings(client, analyze(model, result.model), result, args.wait_cloud)
    finally:
        meter.close()
    if args.json:
        print_json({**result.to_json(args.node), **({"cloud": cloud} if cloud else {})})
        return 0
    console = output_console()
    modelled = "" if result.energy_measured else " (MODELLED, not measured)"
    table = Table(
        title=f"{result.model} on {args.node}: {len(result.layers)} of {result.unique_signatures} unique "
        f"signatures profiled ({result.already_measured} already measured), seed {result.seed}"
    )
    for col in ("block", "signature", "ops", "median ms", "p10", "p90", "cv", f"energy mJ [{meter.source}]"):
        table.add_column(col, justify="right" if col not in ("signature", "ops") else "left")
    for m in result.layers:
        ops = ",".join(dict.fromkeys(m.features.ops))
        energy = f"{m.energy_mJ:.3g}" if m.energy_mJ is not None else "-"
        lat = m.latency
        table.add_row(
            str(m.block_index),
            m.signature[:16],
            ops[:40],
            f"{lat.median_ms:.3f}",
            f"{lat.p10_ms:.3f}",
            f"{lat.p90_ms:.3f}",
            f"{lat.cv:.2f}",
            energy,
        )
    console.print(table)
    if result.model_run is not None:
        r = result.model_run
        console.print(
            f"whole model: median {r.latency.median_ms:.2f} ms, sum of blocks {r.sum_of_blocks_ms:.2f} ms "
            f"(ratio {r.e2e_ratio:.2f})"
        )
    console.print(f"energy source: {meter.description}{modelled}; took {result.elapsed_s:.1f} s")
    if cloud:
        whole = "and the whole model " if cloud["whole_model_timed"] else ""
        timed = f"{cloud['measured']} of {cloud['uploaded']} uploaded slices {whole}"
        console.print(f"server timed {timed}in {cloud['waited_s']:.1f} s")
    return 0
