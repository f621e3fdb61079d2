"""`rr-edge blocks PATH [--json]`: the model's atomic blocks and their features."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.table import Table

from rr_edge.blocks import BlockGraph, analyze
from rr_edge.commands._common import output_console
from rr_edge.onnx_io import load_model


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "blocks",
        help="split a model into atomic blocks (single-tensor cut points) and show their features",
    )
    p.add_argument("path", metavar="PATH", help="ONNX model")
    p.add_argument("--name", help="model name to report (default: file name without .onnx)")
    p.add_argument(
        "--json", action="store_true", help="print one JSON object: the model, its inputs and its atomic blocks"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    path = Path(args.path)
    model = load_model(path)
    graph = analyze(model, args.name or path.stem)
    if args.json:
        json.dump(graph.to_json(), sys.stdout)
        sys.stdout.write("\n")
    else:
        output_console().print(_table(graph))
    return 0


def _ops(ops: tuple[str, ...], width: int = 48) -> str:
    text = " ".join(ops)
    return text if len(text) <= width else text[: width - 3] + "..."


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f}"


def _table(graph: BlockGraph) -> Table:
    ins = ", ".join(f"{t.name} {list(t.shape or ())} {t.dtype}" for t in graph.inputs)  # inputs: fixed shapes
    total = sum(b.flops for b in graph.blocks)
    table = Table(
        title=f"{graph.model}: {len(graph)} blocks, {total / 1e9:.3f} GFLOPs, input {ins}",
        title_justify="left",
    )
    table.add_column("#", justify="right")
    table.add_column("ops", overflow="fold")
    table.add_column("signature", no_wrap=True)
    table.add_column("MFLOPs", justify="right")
    table.add_column("params MB", justify="right")
    table.add_column("slice MB", justify="right")  # what it adds to an uploaded slice: weights and graph
    table.add_column("in MB", justify="right")
    table.add_column("out MB", justify="right")
    for b in graph.blocks:
        table.add_row(
            str(b.index),
            _ops(b.ops),
            b.signature,
            f"{b.flops / 1e6:.1f}",
            _mb(b.param_bytes),
            _mb(b.slice_bytes),
            _mb(b.input_bytes),
            _mb(b.output_bytes),
        )
    return table
