"""A bound on the server process's memory, so that a request too big for the machine fails instead of the server.

A slice may allocate as much as its inputs' *values* ask for: an Expand, Tile, ConstantOfShape or Range sized by an
input tensor is only known when it runs, and so is every tensor after it. Without a bound the allocation succeeds
(Linux overcommits), the pages fill, and the kernel's OOM killer ends the server, or another process on the machine.
`limit_memory` caps the process's data segment (RLIMIT_DATA: heap and private writable mappings, where ONNX
Runtime's tensors and numpy's arrays live), so such an allocation fails at once: ONNX Runtime raises `bad_alloc`
(RESOURCE_EXHAUSTED for that request, `rr_server.sessions`), numpy a MemoryError (the same, `rr_server.interceptor`),
and the server serves the next request.

The bound counts address space the process has mapped, not only the pages it touched (thread stacks, the heap that
`rr_proto.allocator.tune_allocator` keeps for reuse); an idle server maps about 200 MB. Applied by the `rr-server`
entry point (`--max-memory-gb`, default `DEFAULT_FRACTION` of the memory the machine or its cgroup gives), not by the
library: an application that embeds the server decides for its own process. With a GPU provider there is no default
bound (`GPU_PROVIDERS`); `--max-memory-gb` sets one there too.
"""

from __future__ import annotations

import logging
import resource

__all__ = ["DEFAULT_FRACTION", "GPU_PROVIDERS", "data_bytes", "default_limit", "limit_memory", "uses_gpu"]

log = logging.getLogger(__name__)

DEFAULT_FRACTION = 0.75  # of the machine's (or cgroup's) memory: the rest for the page cache and other processes
# Execution providers under which the server sets no bound by default: their drivers map memory of their own, which
# may count against it (not tried on a GPU machine yet).
GPU_PROVIDERS = ("cuda", "tensorrt", "rocm", "migraphx")  # lower case: TensorrtExecutionProvider, ...


def uses_gpu(providers: list[str] | tuple[str, ...]) -> bool:
    """Whether any of these ONNX Runtime execution providers is a GPU's (`GPU_PROVIDERS`, in any case)."""
    return any(p.lower().startswith(GPU_PROVIDERS) for p in providers)


def default_limit(machine_bytes: int) -> int | None:
    """The default bound for a machine with `machine_bytes` of memory (None when that is unknown: no bound)."""
    return int(machine_bytes * DEFAULT_FRACTION) if machine_bytes > 0 else None


def limit_memory(max_bytes: int) -> int:
    """Cap this process's data segment at `max_bytes` (or at the hard limit already in place, if lower); returns
    the bound now in force. ValueError when the process already uses more than that."""
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    bound = max_bytes if hard == resource.RLIM_INFINITY else min(max_bytes, hard)
    in_use = data_bytes()
    if in_use is not None and bound <= in_use:
        raise ValueError(
            f"a memory bound of {bound:,} bytes is below the {in_use:,} bytes this process already maps; "
            "raise --max-memory-gb (0: no bound)"
        )
    resource.setrlimit(resource.RLIMIT_DATA, (bound, hard))
    log.info("memory bound: %.2f GiB of data segment (was %s)", bound / 2**30, _describe(soft))
    return bound


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
