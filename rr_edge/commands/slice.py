"""`rr-edge slice PATH --blocks A:B -o OUT`: blocks A..B as a standalone ONNX model (over protobuf's 2 GiB limit,
its weights in `OUT.data` beside it: `save_model`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rr_edge.blocks import analyze
from rr_edge.commands._paths import output_path
from rr_edge.errors import ModelError
from rr_edge.onnx_io import load_model, save_model
from rr_edge.slicing import slice_model


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "slice",
        help="write blocks A..B (inclusive, 0-based) as a standalone ONNX model",
    )
    p.add_argument("path", metavar="PATH", help="ONNX model")
    p.add_argument(
        "--blocks",
        required=True,
        metavar="A:B",
        help="inclusive 0-based block range, e.g. 0:4 (negative counts from the end: -3:-1 is the last three); the "
        "middle slice of `run --split I,J` is I+1:J",
    )
    p.add_argument("-o", "--output", required=True, type=output_path, metavar="OUT", help="output .onnx file")
    p.set_defaults(func=run)


def parse_range(text: str, n_blocks: int) -> tuple[int, int]:
    """'A:B' (or 'A') -> (A, B); negative indices count from the end, as in Python."""
    first, sep, last = text.partition(":")
    try:
        given = (int(first), int(last) if sep else int(first))
    except ValueError:
        raise ModelError(f"--blocks expects A:B with integers, got {text!r}") from None
    a, b = (k + n_blocks if k < 0 else k for k in given)
    if not (0 <= a < n_blocks and 0 <= b < n_blocks):
        raise ModelError(f"--blocks {text} out of range: the model has blocks 0..{n_blocks - 1}")
    if a > b:
        counted = f" (blocks {a}..{b}: a negative index counts from the end)" if min(given) < 0 else ""
        raise ModelError(f"--blocks {text} is reversed{counted}: A:B means blocks A..B, so A must not come after B")
    return a, b


def run(args: argparse.Namespace) -> int:
    path = Path(args.path)
    model = load_model(path)
    graph = analyze(model, path.stem)
    a, b = parse_range(args.blocks, len(graph))
    out = save_model(slice_model(model, graph, a, b), args.output)
    print(out)
    return 0
