"""`rr-edge` command line: one sub-command per module in `rr_edge.commands`.

Each command module exposes `add_parser(subparsers)` which registers its parser and sets
`func=run` on it; `run(args) -> int` does the work.  Logging is configured here and only here.
Deliberate errors (RoadRunnerError) and a module missing from an uninstalled extra print one line and exit
with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys

import rr_proto.grpc_verbosity  # noqa: F401 - before grpc is first imported (the commands import it)
from rr_edge.commands._interrupt import INTERRUPTED, stopped_by
from rr_edge.errors import RoadRunnerError, ServerError, ServerUnavailable
from rr_proto.argtypes import Parser
from rr_proto.extras import missing_extra

COMMANDS = ("export", "blocks", "slice", "profile", "netprofile", "upload", "plan", "run", "demo")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; when `argv` names a command, only that command's module is imported (fast start-up)."""
    parser = Parser(prog="rr-edge", description="RoaD-RuNNer edge node")
    _add_log_level(parser, "WARNING")
    sub = parser.add_subparsers(dest="command", required=True)
    named = [a for a in (argv or []) if a in COMMANDS][:1]
    for name in named or COMMANDS:
        importlib.import_module(f"rr_edge.commands.{name}").add_parser(sub)
    for command in sub.choices.values():  # also after the command: `rr-edge plan --log-level info ...`
        _add_log_level(command, argparse.SUPPRESS)
        command.set_defaults(command_parser=command)  # whose options an unknown one is reported against
    return parser


def _add_log_level(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument(
        "--log-level", default=default, type=str.upper, choices=LOG_LEVELS, help="logging level (default WARNING)"
    )


RANGE_OPTIONS = ("--split", "--blocks")  # values may start with '-' (`--split -1,12`, `--blocks -3:-1`)


def attach_range_values(argv: list[str]) -> list[str]:
    """`--split -1,12` as `--split=-1,12`: argparse takes a value that starts with '-' for an option of its own."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] in RANGE_OPTIONS and arg.startswith("-") and arg[1:2].isdigit():
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def command() -> None:
    """The `rr-edge` program: `main`, and a command a signal ended (Ctrl-C, SIGTERM) dies by that signal once it has
    reported, as the shell expects of it (a shell still says 130 or 143): the exit status 143 was a failure to
    systemd's `stop`, and 130 did not stop a calling shell loop (review)."""
    code = main()
    if (signum := stopped_by(code)) is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    sys.exit(code)


def main(argv: list[str] | None = None) -> int:
    argv = attach_range_values(sys.argv[1:] if argv is None else argv)
    try:
        return _run(argv)
    except ModuleNotFoundError as exc:
        hint = missing_extra(exc)
        if hint is None:
            raise
        print(f"rr-edge: error: {hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # also while the command's modules are still being imported
        return INTERRUPTED


def _run(argv: list[str]) -> int:
    parser = build_parser(argv)
    if not argv:  # no command: the list of them, not only that one is required
        parser.print_help(sys.stderr)
        return 2
    args, unknown = parser.parse_known_args(argv)
    command_parser = vars(args).pop("command_parser")
    if unknown:  # said by the command's parser: its --help lists the options, the top one's does not (review)
        command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from rr_proto.allocator import tune_allocator  # here, not at the top: `rr-edge --help` stays fast

    tune_allocator()  # big tensors reuse heap memory instead of fresh pages per call; RR_MALLOC_TUNING=0 opts out
    try:
        return int(args.func(args) or 0)
    except RoadRunnerError as exc:
        print(f"rr-edge {args.command}: error: {exc}{_hint(exc, args)}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`rr-edge blocks m.onnx --json | head`): quietly, as SIGPIPE would
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's flush has nowhere to fail
        return 128 + signal.SIGPIPE
    except OSError as exc:  # a file that cannot be read or written (its name is in the message)
        logging.getLogger("rr_edge").debug("rr-edge %s", args.command, exc_info=True)
        print(f"rr-edge {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return INTERRUPTED


def _hint(exc: RoadRunnerError, args: argparse.Namespace) -> str:
    """What to check, for the errors whose cause is outside the command line's reach."""
    server = getattr(args, "server", None)
    if isinstance(exc, ServerUnavailable) and exc.code == "DEADLINE_EXCEEDED" and server:
        return (
            "; a transfer took longer than its deadline (--timeout, plus its bytes at 1 MB/s): on a slow link, "
            "give a larger --timeout (or send less: a smaller --max-mb / --upload-max-mb)"
        )
    message = str(exc)
    if isinstance(exc, ServerUnavailable) and server and "Connection refused" in message:
        return f"; nothing listens at {server}: check that rr-server is running there"  # TLS or not
    if isinstance(exc, ServerError) and any(s in message for s in ("certificate has expired", "is not yet valid")):
        return "; the server's certificate is outside its dates of validity: check the clock of this device"
    if isinstance(exc, ServerError) and "CERTIFICATE_VERIFY_FAILED" in message:
        ca = getattr(args, "tls_ca", None)
        return f"; the server's certificate is not signed by {f'--tls-ca {ca}' if ca else 'a CA this system trusts'}"
    if isinstance(exc, ServerError) and any(s in message for s in ("SSL server name", "Hostname Verification")):
        return f"; the server's certificate does not name the host of --server {server} (its subjectAltName must)"
    if isinstance(exc, ServerUnavailable) and server and "stopping" in message:  # it said why: nothing to check
        return ""
    if isinstance(exc, ServerUnavailable) and server and "Failed parsing HTTP/2" in message:
        return f"; what answers at {server} is no gRPC server (a web server, or rr-server's --metrics-port?)"
    if isinstance(exc, ServerUnavailable) and server:
        from rr_edge.client_options import split_scheme

        if getattr(args, "tls_cert", None):
            tls = "and that it serves TLS and trusts this client certificate"
        elif getattr(args, "tls", False) or getattr(args, "tls_ca", None) or split_scheme(server)[0] == "grpcs":
            tls = "and that it serves TLS (a server with mTLS also needs --tls-cert and --tls-key)"
        else:
            tls = "(a server with TLS needs --tls or --tls-ca)"
        return f"; check that rr-server is running at {server} {tls}"
    if isinstance(exc, ServerError) and exc.code == "UNAUTHENTICATED":
        from rr_edge.commands._common import ENV_TOKEN

        return f"; pass --token-file F or set ${ENV_TOKEN} (a token of the server's --auth-token-file)"
    return ""


if __name__ == "__main__":
    command()
