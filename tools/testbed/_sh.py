"""The one place the testbed runs ``ip`` and ``tc``."""

from __future__ import annotations

import logging
import shutil
import subprocess

log = logging.getLogger(__name__)

TIMEOUT_S = 30  # an `ip` or `tc` call takes milliseconds; one that hangs (a wedged netns) must not hang `up`


class TestbedError(RuntimeError):
    """A testbed operation failed; the message names the command and its stderr."""

    __test__ = False


def require_tools() -> None:
    missing = [t for t in ("ip", "tc") if shutil.which(t) is None]
    if missing:
        raise TestbedError(f"missing {', '.join(missing)}: install the Debian package 'iproute2'")


def run(*argv: str, check: bool = True, netns: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command (inside ``netns`` when given); raise TestbedError on failure when ``check``."""
    full = ["ip", "netns", "exec", netns, *argv] if netns else list(argv)
    log.debug("run: %s", " ".join(full))
    try:
        proc = subprocess.run(full, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise TestbedError(f"`{' '.join(full)}` did not finish in {TIMEOUT_S} s") from None
    if check and proc.returncode != 0:
        raise TestbedError(f"`{' '.join(full)}` failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc
