"""Entry point the harness spawns inside a device (namespace + cgroup):

    python -m tools.eval.worker {groundtruth,report,settle,netprofile,execute} --spec SPEC.json --out OUT.json
                                [--throttle-fd N --free-fd M --keepalive-fd K]

Reads a JSON spec, writes a JSON result; logging goes to stderr (the harness keeps it in the work dir).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from . import device_gt, device_run
from .throttle import CgroupSwitch

COMMANDS = {
    "groundtruth": device_gt.run,
    "report": device_run.report,
    "settle": device_run.settle,
    "netprofile": device_run.netprofile,
    "execute": device_run.execute,
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.eval.worker")
    p.add_argument("command", choices=sorted(COMMANDS))
    p.add_argument("--spec", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--throttle-fd", type=int)
    p.add_argument("--free-fd", type=int)
    p.add_argument("--keepalive-fd", type=int, help="the free cgroup's tasks file (tools.eval.throttle.CgroupSwitch)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    spec = json.loads(args.spec.read_text())
    switch = CgroupSwitch(args.throttle_fd, args.free_fd, args.keepalive_fd)
    started = time.perf_counter()
    result = COMMANDS[args.command](spec, switch)
    result["worker_elapsed_s"] = time.perf_counter() - started
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
