"""Benchmark: the network profiler on a slow emulated link (docs/performance.md#profiling).

    sudo python tools/bench_netprofile_link.py [--rate 10mbit] [--device emu-agx] [--check-mb 32]
                                               [--max-transfer-s 3]

Brings up the testbed (tools.testbed, own prefix `rrn`, removed after) with one edge class behind veth + tbf at
`--rate`, runs rr-server in its server namespace and, in the edge's namespace, `run_netprofile` with the defaults of
`rr-edge netprofile` (echo sizes to 256 MiB, upload probes to 64 MiB) but `--max-transfer-s`. Reports the wall time
of the profile, the largest size measured per direction with its note, and how well the fitted curves cost a message
larger than any measured: one `--check-mb` echo up and one down, timed after the profile, against the prediction.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rr_edge.client import Client  # noqa: E402
from rr_edge.netmodel import NetworkModel  # noqa: E402
from rr_edge.netprofile import DEFAULT_MAX_TRANSFER_S, NetProfileConfig, run_netprofile  # noqa: E402
from tools._server import emulated_link, rr_server_command, serving  # noqa: E402

TESTBED_PREFIX = "rrn"
TESTBED_PORT = 50071
MiB = 2**20


def measure(address: str, check_mb: float, max_transfer_s: float) -> dict:
    """The profile's wall time and outcome, then one echo of `check_mb` each way against its curve (this process)."""
    with Client(address) as client:
        t0 = time.perf_counter()
        profile = run_netprofile(client, "bench-link", NetProfileConfig(max_transfer_s=max_transfer_s))
        wall_s = time.perf_counter() - t0
        out: dict = {"netprofile_s": round(wall_s, 1), "max_transfer_s": max_transfer_s, "directions": {}}
        directions = {"uplink": profile.uplink, "downlink": profile.downlink, "upload": profile.upload}
        for name, d in directions.items():
            if d is not None:
                largest = max(s.bytes for s in d.samples)
                out["directions"][name] = {"largest_MiB": round(largest / MiB, 3), "notes": list(d.notes)}
        nbytes = int(check_mb * MiB)
        for name, call in (("uplink", client.echo_send), ("downlink", client.echo_receive)):
            t0 = time.perf_counter()
            call(nbytes)
            measured_ms = (time.perf_counter() - t0) * 1000.0
            predicted_ms = NetworkModel.from_dict(directions[name].model).predict_ms(nbytes)
            out["directions"][name]["check"] = {
                "MiB": check_mb,
                "measured_ms": round(measured_ms, 1),
                "predicted_ms": round(predicted_ms, 1),
                "predicted_over_measured": round(predicted_ms / measured_ms, 4),
            }
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate", default="10mbit", help="tbf rate of the link (default %(default)s)")
    p.add_argument("--device", default="emu-agx", help="edge class the profiler runs as (default %(default)s)")
    p.add_argument("--check-mb", type=float, default=32.0, help="size of the extrapolation check (default 32)")
    p.add_argument("--max-transfer-s", type=float, default=DEFAULT_MAX_TRANSFER_S)
    p.add_argument("--client-of", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.client_of:
        print(json.dumps(measure(args.client_of, args.check_mb, args.max_transfer_s)))
        return 0
    import subprocess

    with tempfile.TemporaryDirectory(prefix="rr-bench-netprofile-") as tmp_dir:
        tmp = Path(tmp_dir)
        with emulated_link(TESTBED_PREFIX, args.rate, args.device) as testbed:
            server = rr_server_command(tmp / "d", tmp / "server.port", f"0.0.0.0:{TESTBED_PORT}")
            with serving([*testbed, "exec", "server", "--", *server], tmp / "server.port", "rr-server"):
                client = [sys.executable, __file__, "--client-of", f"$RR_SERVER_HOST:{TESTBED_PORT}",
                          "--check-mb", str(args.check_mb), "--max-transfer-s", str(args.max_transfer_s)]  # fmt: skip
                done = subprocess.run([*testbed, "exec", args.device, "--", "sh", "-c", " ".join(client)],
                                      cwd=REPO, capture_output=True, text=True, check=True)  # fmt: skip
    result = {"benchmark": "netprofile_link", "link": f"testbed veth + tbf {args.rate}, edge as {args.device}"}
    print(json.dumps({**result, **json.loads(done.stdout)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
