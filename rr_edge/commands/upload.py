"""`rr-edge upload PATH --server ADDR [--load] [--json]`: pre-offload a slice (nothing is sent when the server has
it); with `--load` the server also opens its session, so that the first request for it does not wait."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from rr_edge.commands._common import add_server_args, connect, print_json
from rr_edge.errors import ModelError
from rr_edge.onnx_io import load_model


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("upload", help="upload (pre-offload) an ONNX slice to the server's cache")
    p.add_argument("path", metavar="PATH", help="ONNX slice (e.g. from `rr-edge slice`)")
    add_server_args(p, node=False)
    p.add_argument("--label", default="", help="label for the server's logs (default: the file name)")
    p.add_argument("--load", action="store_true", help="have the server open the slice's session too")
    p.add_argument("--json", action="store_true", help='print {"slice_id", "cached", "bytes"}')
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    path = Path(args.path)
    load_model(path, fixed_shape=False)  # a clear local error for a missing or broken file; the server validates again
    try:
        data = path.read_bytes()  # the slice id is the SHA-256 of exactly these bytes
    except OSError as exc:
        raise ModelError(f"{path}: cannot read ({exc.strerror or exc})") from None
    with connect(args) as client:
        result = client.upload_slice(data, label=args.label or path.name, load=args.load)
    if args.json:
        print_json(result.to_json())
    else:
        state = "already cached, nothing sent" if result.cached else "uploaded"
        Console(stderr=True).print(f"{path.name}: {state} ({result.bytes:,} bytes)")
        print(result.slice_id)  # alone on stdout, for scripts
    return 0
