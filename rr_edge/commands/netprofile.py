"""`rr-edge netprofile --server ADDR --node NAME [--max-mb 256] [--upload-max-mb 64] [--max-transfer-s 3] [--json]`:
profile the link to the server in both directions and the slice upload path, fit the network models and report them
(rr_edge.netprofile.run_netprofile)."""

from __future__ import annotations

import argparse

from rich.table import Table

from rr_edge.commands._common import (
    add_energy_args,
    add_server_args,
    connect,
    make_meter,
    non_negative_float,
    output_console,
    positive_float_at_most,
    positive_int,
    print_json,
)
from rr_edge.errors import RoadRunnerError
from rr_edge.netprofile import (
    DEFAULT_MAX_MB,
    DEFAULT_MAX_TRANSFER_S,
    DEFAULT_UPLOAD_MAX_MB,
    DEFAULT_UPLOAD_MIN_MB,
    MAX_ECHO_MB,
    NetProfileConfig,
    run_netprofile,
    summary,
)
from rr_edge.progress import progress_bars


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("netprofile", help="profile upload/download to the server and fit network models")
    add_server_args(p)
    p.add_argument(
        "--max-mb",
        type=positive_float_at_most(MAX_ECHO_MB),
        default=DEFAULT_MAX_MB,
        help=f"largest echo payload in MiB, at most {MAX_ECHO_MB} (default %(default)g; the slice-upload probes have "
        "--upload-max-mb)",
    )
    p.add_argument(
        "--upload-max-mb",
        type=upload_max_mb,
        default=DEFAULT_UPLOAD_MAX_MB,
        help=f"largest slice upload probe in MiB, from 64 KiB: 0 (none) or >= 0.25 (default {DEFAULT_UPLOAD_MAX_MB})",
    )
    p.add_argument(
        "--max-transfer-s",
        type=non_negative_float,
        default=DEFAULT_MAX_TRANSFER_S,
        help="a direction's sweep ends at the first size whose transfer takes longer; larger messages are costed "
        "by continuing the fitted curve in a straight line (default %(default)g; 0: every size up to the largest)",
    )
    p.add_argument("--repeats", type=positive_int, default=3, help="timed transfers per size (default 3)")
    p.add_argument("--points-per-octave", type=positive_int, default=1, help="sizes per doubling (default 1)")
    add_energy_args(p)
    p.add_argument("--json", action="store_true", help="print the profile summary as JSON")
    p.set_defaults(func=run)


def upload_max_mb(text: str) -> float:
    """argparse type of --upload-max-mb: 0 (no probes) or room for three probe sizes from the smallest."""
    value = non_negative_float(text)
    if 0 < value < 4 * DEFAULT_UPLOAD_MIN_MB:
        raise argparse.ArgumentTypeError(f"0 (no upload probes) or at least {4 * DEFAULT_UPLOAD_MIN_MB:g}, got {text}")
    return value


def run(args: argparse.Namespace) -> int:
    try:
        config = NetProfileConfig(
            max_mb=args.max_mb,
            repeats=args.repeats,
            points_per_octave=args.points_per_octave,
            upload_max_mb=args.upload_max_mb,
            max_transfer_s=args.max_transfer_s,
        )
    except ValueError as exc:
        raise RoadRunnerError(f"invalid option: {exc}") from None
    meter = make_meter(args)
    try:
        with connect(args) as client, progress_bars(not args.json) as progress:
            profile = run_netprofile(client, args.node, config, meter=meter, progress=progress)
    finally:
        meter.close()
    out = summary(profile)
    out["node"] = args.node
    out["energy_measured"] = meter.measured
    if args.json:
        print_json(out)
        return 0
    table = Table(title=f"network profile of {args.node} -> {args.server}")
    for col in ("direction", "chosen", "poly4 err", "affine err", "pwl err", "bandwidth MB/s", "largest", "energy"):
        table.add_column(col, justify="right" if col != "direction" else "left")
    for name in ("uplink", "downlink", "upload"):
        d = out[name]
        if d is None:
            continue
        bw = f"{d['bandwidth_MBps']:.1f}" if d["bandwidth_MBps"] else "-"
        errors = (f"{d[k]:.3f}" if d[k] is not None else "-" for k in ("poly4_error", "affine_error", "pwl_error"))
        table.add_row(name, d["chosen_model"], *errors, bw, f"{d['max_bytes'] / 2**20:.3g} MiB", d["energy_source"])
    console = output_console()
    console.print(table)
    for name in ("uplink", "downlink", "upload"):
        for note in out[name]["notes"] if out[name] else ():
            console.print(f"{name}: {note}", style="dim", highlight=False)
    suffix = "" if meter.measured else " (MODELLED, not measured)"
    console.print(f"energy source: {meter.description}{suffix}")
    return 0
