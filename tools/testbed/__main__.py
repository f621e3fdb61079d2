"""Command line: ``python -m tools.testbed {up,down,status,exec DEVICE -- CMD...}``. Output is JSON."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from . import lifecycle
from ._sh import TestbedError
from .config import (
    DEFAULT_BURST,
    DEFAULT_LATENCY,
    DEFAULT_PERIOD_US,
    DEFAULT_PREFIX,
    DEFAULT_RATE,
    DEFAULT_SERVER_PORT,
    DEFAULT_STATE_DIR,
    TestbedConfig,
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.testbed", description=__doc__)
    p.add_argument("--prefix", default=DEFAULT_PREFIX, help="name prefix of every object (default %(default)s)")
    p.add_argument("--state-dir", default=DEFAULT_STATE_DIR, help="default %(default)s")
    p.add_argument("-v", "--verbose", action="store_true", help="log every ip/tc command")
    sub = p.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("up", help="create (or repair) the testbed; idempotent")
    u.add_argument("--rate", default=DEFAULT_RATE, help="tbf rate on both ends of every link (default %(default)s)")
    u.add_argument("--burst", default=DEFAULT_BURST, help="default %(default)s")
    u.add_argument("--latency", default=DEFAULT_LATENCY, help="tbf latency (queue bound); default %(default)s")
    u.add_argument("--period-us", type=int, default=DEFAULT_PERIOD_US, help="CFS period (default %(default)s)")
    u.add_argument("--cpu-shares", type=int, default=None,
                   help="CPU weight of the whole testbed vs other host load (v1 units, default 1024)")  # fmt: skip
    u.add_argument("--classes", default="", help="comma-separated device classes (default: all; server always)")
    sub.add_parser("down", help="remove everything the testbed created, also after a crash")
    sub.add_parser("status", help="print JSON of what exists")
    e = sub.add_parser("exec", help="run CMD inside DEVICE's namespace and cgroup")
    e.add_argument("device")
    e.add_argument("--port", type=int, default=DEFAULT_SERVER_PORT, help="port put into RR_SERVER")
    e.epilog = "usage: exec DEVICE [--port P] -- CMD [ARGS...]"
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if "--" in argv:  # everything after the first `--` is the command for `exec`, untouched by argparse
        cut = argv.index("--")
        argv, command = argv[:cut], argv[cut + 1 :]
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    common = {"prefix": args.prefix, "state_dir": args.state_dir}
    try:
        if args.cmd == "up":
            classes = tuple(c for c in args.classes.split(",") if c)
            cfg = TestbedConfig(rate=args.rate, burst=args.burst, latency=args.latency, period_us=args.period_us,
                                classes=classes, cpu_shares=args.cpu_shares, **common)  # fmt: skip
            print(json.dumps(lifecycle.up(cfg), indent=2, sort_keys=True))
        elif args.cmd == "down":
            print(json.dumps({"removed": lifecycle.down(TestbedConfig(**common))}, indent=2))
        elif args.cmd == "status":
            print(json.dumps(lifecycle.status(TestbedConfig(**common)), indent=2, sort_keys=True))
        else:
            if not command:
                raise TestbedError("exec needs a command: exec DEVICE [--port P] -- CMD [ARGS...]")
            lifecycle.exec_replace(TestbedConfig(**common), args.device, command, port=args.port)
    except (TestbedError, ValueError, OSError) as exc:  # OSError: a state dir or cgroupfs this user cannot write
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
