"""Options and helpers shared by the commands that talk to a server: connection, energy and ONNX Runtime flags, JSON."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from rr_edge.client import DEFAULT_TIMEOUT_S, MAX_TIMEOUT_S, Client, ClientOptions, TlsOptions, check_address
from rr_edge.client_options import check_token
from rr_edge.errors import RoadRunnerError
from rr_edge.meters import CHOICES, Meter, MeterOptions, select_meter
from rr_edge.session import GRAPH_OPTIMIZATION, MAX_THREADS_PER_CPU, OrtSettings, check_threads

# the commands import the argparse types from here
from rr_proto.argtypes import fraction, non_negative_float, positive_float, positive_float_at_most  # noqa: F401
from rr_proto.limits import id_problem

ENV_TOKEN = "RR_TOKEN"


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(text, 0)


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
    return value


def server_address(text: str) -> str:
    """argparse type: HOST:PORT (`rr_edge.client.check_address`)."""
    try:
        return check_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_server_args(p: argparse.ArgumentParser, node: bool = True, timeout_note: str = "") -> None:
    """--server (required), --node (when `node`), token and TLS flags, --timeout (`timeout_note`: what else it
    bounds in this command)."""
    p.add_argument(
        "--server",
        required=True,
        type=server_address,
        metavar="ADDR",
        help="server address HOST:PORT (rr-server listens on 127.0.0.1:8001 by default)",
    )
    if node:
        p.add_argument("--node", required=True, type=node_id, metavar="NAME", help="this node's id on the server")
    p.add_argument(
        "--token-file",
        type=Path,
        metavar="F",
        help=f"file holding the bearer token (default: the token itself in ${ENV_TOKEN})",
    )
    p.add_argument("--tls-ca", type=Path, metavar="F", help="use TLS; PEM of the CA that signed the server")
    p.add_argument("--tls", action="store_true", help="use TLS with the system's root certificates")
    p.add_argument("--tls-cert", type=Path, metavar="F", help="client certificate (mTLS)")
    p.add_argument("--tls-key", type=Path, metavar="F", help="client key (mTLS)")
    p.add_argument(
        "--timeout",
        type=positive_float_at_most(MAX_TIMEOUT_S),
        default=DEFAULT_TIMEOUT_S,
        metavar="S",
        help=f"per-call deadline in seconds, at most {MAX_TIMEOUT_S:g} (default %(default)g), and 1 s more per MB "
        f"a transfer moves (uploads, echoes){timeout_note}",
    )


def add_model_name_arg(p: argparse.ArgumentParser) -> None:
    """--name: the model's name on the server, which profile, plan and run must agree on."""
    p.add_argument(
        "--name",
        help="the model's name on the server (default: the file name without .onnx); its whole-model corrections "
        "are found by it, so profile, plan and run must use the same one",
    )


def model_name(args: argparse.Namespace) -> str:
    return args.name or Path(args.path).stem


def add_energy_args(p: argparse.ArgumentParser) -> None:
    """--energy (the meter) and the power model's flags, for the commands that measure."""
    p.add_argument("--energy", choices=CHOICES, default="auto", help="energy meter (default auto: a real one if any)")
    add_power_args(p, "the idle and radio watts of waits and transfers, and the active watts of --energy model")


def add_power_args(p: argparse.ArgumentParser, gives: str = "the idle and radio watts of waits and transfers") -> None:
    """--power-config and --device-class: `plan` measures nothing, and takes only these."""
    p.add_argument(
        "--power-config",
        type=Path,
        metavar="F",
        help="power model file (JSON/TOML, watts per device class; default $RR_POWER_CONFIG, else "
        f"tools/testbed/classes.json in a source checkout, else built-in 10 W figures), always used: {gives}",
    )
    p.add_argument("--device-class", metavar="NAME", help="device class in the power model (default $RR_DEVICE_CLASS)")


def add_ort_args(p: argparse.ArgumentParser) -> None:
    """How ONNX Runtime runs the model (`OrtSettings`): `run` takes the flags `profile` measured the node with."""
    p.add_argument("--provider", default="", help="ONNX Runtime provider (default: the best that loads)")
    p.add_argument(
        "--threads",
        type=non_negative_int,
        default=-1,
        help=f"intra-op threads, 0: ONNX Runtime's choice, at most {MAX_THREADS_PER_CPU} per usable CPU (default: "
        "$RR_THREADS, else 0)",
    )
    p.add_argument(
        "--graph-optimization",
        choices=list(GRAPH_OPTIMIZATION),
        default="all",
        help="ONNX Runtime graph optimization level (default %(default)s)",
    )


def ort_settings(args: argparse.Namespace) -> OrtSettings:
    """The settings of `add_ort_args`' flags, resolved (--threads checked first, naming the flag)."""
    check_threads(args.threads, "--threads")
    return OrtSettings(args.provider, args.threads, 1, args.graph_optimization).resolved()


def make_meter(args: argparse.Namespace, gpu_work: bool = False) -> Meter:
    options = MeterOptions(power_config=args.power_config, device_class=args.device_class)
    return select_meter(args.energy, options, gpu_work=gpu_work)


def connect(args: argparse.Namespace) -> Client:
    token = _token(args)
    tls = None
    if args.tls or args.tls_ca or args.tls_cert or args.tls_key:  # --tls-key alone: the "needs both" error
        tls = TlsOptions(root_certificates=args.tls_ca, client_cert=args.tls_cert, client_key=args.tls_key)
    return Client(args.server, ClientOptions(timeout_s=args.timeout, token=token, tls=tls))


def _token(args: argparse.Namespace) -> str | None:
    """The bearer token of --token-file, else of $RR_TOKEN; one that cannot travel in metadata (the server's own
    multi-line token file, say) is an error naming where it came from. The file is read as the server reads its own,
    UTF-8 with or without a byte-order mark (Windows Notepad): the mark was refused as the token's first character."""
    if args.token_file is not None:
        try:
            token = args.token_file.read_text(encoding="utf-8-sig").strip()
        except OSError as exc:
            raise RoadRunnerError(f"cannot read token file {args.token_file}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise RoadRunnerError(f"cannot read token file {args.token_file}: not UTF-8 text") from None
        return check_token(token, f"--token-file {args.token_file}")
    token = os.environ.get(ENV_TOKEN) or None
    return None if token is None else check_token(token, f"${ENV_TOKEN}")


def print_json(obj: Any) -> None:
    """Strict JSON on stdout (NaN and infinities become null)."""
    json.dump(_finite(obj), sys.stdout, indent=2, allow_nan=False)
    sys.stdout.write("\n")


def _finite(o: Any) -> Any:
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {str(k): _finite(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_finite(v) for v in o]
    return o


PIPED_WIDTH = 160  # columns of a table written to a file or a pipe (rich's default there is 80: columns were cut)


def output_console(stderr: bool = False) -> Console:
    """The console a command prints its tables on: the terminal's width, or PIPED_WIDTH when the output is piped or
    redirected (`$COLUMNS` still wins)."""
    out = Console(stderr=stderr)
    if out.is_terminal or os.environ.get("COLUMNS"):
        return out
    return Console(stderr=stderr, width=PIPED_WIDTH)


def node_id(text: str) -> str:
    """A --node the server takes (rr_proto.limits.id_problem); refused before any work, where an empty one had run a
    whole `run` unpredicted."""
    if (problem := id_problem(text)) is not None:
        raise argparse.ArgumentTypeError(f"a node id {problem}: {text[:40]!r}")
    return text
