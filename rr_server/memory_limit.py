"""An optional bound on the server process's memory, and the exit that keeps a failed allocation from hanging it.

A slice may allocate as much as its inputs' *values* ask for: an Expand, Tile, ConstantOfShape or Range sized by an
input tensor is only known when it runs, and so is every tensor after it. Without a bound the allocation succeeds
(Linux overcommits), the pages fill, and the kernel's OOM killer ends the server, or another process on the machine.
`limit_memory` caps the process's data segment (RLIMIT_DATA: heap and private writable mappings, where ONNX
Runtime's tensors and numpy's arrays live), so such an allocation fails at once: ONNX Runtime raises `bad_alloc`
(RESOURCE_EXHAUSTED for that request, `rr_server.sessions`), numpy a MemoryError (the same, `rr_server.interceptor`),
and the server serves the next request.

The bound is opt-in (`rr-server --max-memory-gb`): it counts address space, not memory in use (every thread's 8 MiB
stack, the heap `rr_proto.allocator.tune_allocator` keeps for reuse; an idle server maps about 200 MB, one with 80
open streams some 870 MB by that count, an estimate: docs/usage.md), and past it an allocation fails in any thread,
gRPC's own included. gRPC's serving thread then dies and the process answers nothing more, SIGTERM included (found
by review): `exit_when_serving_stops` makes the process exit instead, so that a supervisor restarts it, as after an
OOM kill. Applied by the `rr-server` entry point, not by the library: an application that embeds the server decides
for its own process.
"""

from __future__ import annotations

import logging
import os
import resource
import threading

__all__ = ["SERVING_THREAD_DIED", "data_bytes", "exit_when_serving_stops", "limit_memory"]

log = logging.getLogger(__name__)

SERVING_THREAD_DIED = 70  # the exit status when gRPC's serving thread died (EX_SOFTWARE)


def limit_memory(max_bytes: int) -> int:
    """Cap this process's data segment at `max_bytes` (or at the hard limit already in place, if lower); returns
    the bound now in force. ValueError when the process already uses more than that."""
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    bound = max_bytes if hard == resource.RLIM_INFINITY else min(max_bytes, hard)
    in_use = data_bytes()
    if in_use is not None and bound <= in_use:
        raise ValueError(
            f"a memory bound of {bound:,} bytes is below the {in_use:,} bytes this process already maps; "
            "raise --max-memory-gb"
        )
    resource.setrlimit(resource.RLIMIT_DATA, (bound, hard))
    log.info("memory bound: %.2f GiB of data segment (was %s)", bound / 2**30, _describe(soft))
    return bound


def exit_when_serving_stops() -> None:
    """Exit the process (status SERVING_THREAD_DIED) when gRPC's serving thread dies of an exception (a failed
    allocation or thread start under the memory bound): it would stay alive answering nothing."""
    previous = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if args.thread is None or not args.thread.name.endswith("(_serve)"):  # not grpc._server's _serve loop
            previous(args)
            return
        try:  # nothing here may skip the exit: a traceback written to a closed log pipe raised (found by review)
            previous(args)
            log.critical("gRPC's serving thread died of %s: exiting", args.exc_type.__name__)
            logging.shutdown()
        finally:
            os._exit(SERVING_THREAD_DIED)

    threading.excepthook = hook


def data_bytes() -> int | None:
    """The process's data segment now (VmData), or None where /proc does not say."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmData:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _describe(limit: int) -> str:
    return "unbounded" if limit == resource.RLIM_INFINITY else f"{limit / 2**30:.2f} GiB"
