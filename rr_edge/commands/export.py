"""`rr-edge export MODEL [--input-size N] [--batch B] [--from MODULE:CALLABLE] -o PATH`."""

from __future__ import annotations

import argparse

from rr_edge.commands._paths import output_path
from rr_edge.errors import ModelError
from rr_edge.export import DEFAULT_BATCH, DEFAULT_INPUT_SIZE, export_model


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "export",
        help="export a torchvision classifier (random weights) or your own torch module to ONNX",
        description="Export a torchvision classification model with random weights (or, with --from, "
        "a torch module of yours) to a self-contained ONNX file with input B x 3 x N x N.",
    )
    p.add_argument("model", nargs="?", help="torchvision model name, e.g. resnet50 (omit with --from)")
    p.add_argument(
        "--input-size", type=int, default=DEFAULT_INPUT_SIZE, metavar="N", help="image side (default %(default)s)"
    )
    p.add_argument("--batch", type=int, default=DEFAULT_BATCH, metavar="B", help="batch size (default %(default)s)")
    p.add_argument(
        "--from",
        dest="from_callable",
        metavar="MODULE:CALLABLE",
        help="export CALLABLE() from MODULE (a module name or path/to/file.py) instead of a torchvision model",
    )
    p.add_argument("--torchscript", action="store_true", help="use the TorchScript exporter instead of the dynamo one")
    p.add_argument("-o", "--output", required=True, type=output_path, metavar="PATH", help="output .onnx file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.model and args.from_callable:
        raise ModelError(f"give a torchvision model name or --from, not both (got {args.model!r} and --from)")
    path = export_model(
        args.model,
        args.output,
        input_size=args.input_size,
        batch=args.batch,
        from_callable=args.from_callable,
        dynamo=not args.torchscript,
    )
    print(path)
    return 0
