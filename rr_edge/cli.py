"""`rr-edge` command line: one sub-command per module in `rr_edge.commands`.

Each command module exposes `add_parser(subparsers)` which registers its parser and sets
`func=run` on it; `run(args) -> int` does the work.  Logging is configured here and only here.
Deliberate errors (RoadRunnerError) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from rr_edge.errors import RoadRunnerError

COMMANDS = ("export", "blocks", "slice", "profile", "netprofile", "upload", "plan", "run", "demo")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; when `argv` names a command, only that command's module is imported (fast start-up)."""
    parser = argparse.ArgumentParser(prog="rr-edge", description="RoaD-RuNNer edge node")
    parser.add_argument("--log-level", default="WARNING", help="logging level (default WARNING)")
    sub = parser.add_subparsers(dest="command", required=True)
    named = [a for a in (argv or []) if a in COMMANDS][:1]
    for name in named or COMMANDS:
        importlib.import_module(f"rr_edge.commands.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from rr_proto.allocator import tune_allocator  # here, not at the top: `rr-edge --help` stays fast

    tune_allocator()  # big tensors reuse heap memory instead of fresh pages per call; RR_MALLOC_TUNING=0 opts out
    try:
        return int(args.func(args) or 0)
    except RoadRunnerError as exc:
        print(f"rr-edge {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
