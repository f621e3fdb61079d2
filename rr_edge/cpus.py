"""The CPUs this process may use, and how many intra-op threads an ONNX Runtime session gets.

Left to choose (``intra_op_num_threads = 0``), ONNX Runtime makes one thread per physical core and pins the session's
pool thread k to core k, in every session the process opens. With several sessions in one process (the server's
slices, an edge's head and tail) all their pool threads share the same cores, and a calling thread that the scheduler
puts on a pinned thread's core waits for it. On this 2-core machine a resnet18 run took 37.1 ms with its caller on
core 1 against 19.0 ms on core 0, and two sessions run at once took 31.0 and 49.1 ms per run where unpinned ones took
38.3 and 40.7 (`tools/bench_threads.py`, docs/performance.md "ONNX Runtime's thread pinning").
Asked for a number explicitly, ONNX Runtime pins nothing, so the node and the server ask for that same number
(`ort_threads`). The count also follows this process's CPU affinity, which ONNX Runtime's own default ignores: under
`taskset -c 0` it still made a second thread, and pinned it to CPU 1.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

SYS_CPU = Path("/sys/devices/system/cpu")


def usable_cpus() -> set[int]:
    """The logical CPUs this process may run on (its affinity; all of them where the OS has no such notion)."""
    try:
        return os.sched_getaffinity(0)
    except AttributeError:  # not Linux
        return set(range(os.cpu_count() or 1))


def _cpu_list(text: str) -> set[int]:
    """The CPUs of a sysfs list such as "0-3,8"."""
    cpus: set[int] = set()
    for part in filter(None, text.strip().split(",")):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def physical_cores(cpus: Iterable[int] | None = None, sys_cpu: Path = SYS_CPU) -> int:
    """How many physical cores `cpus` (default: the usable ones) span: hyperthreads of one core count once, and a CPU
    whose topology cannot be read counts alone unless a readable sibling lists it."""
    wanted = usable_cpus() if cpus is None else set(cpus)
    cores: set[frozenset[int]] = set()
    unread = set()
    for cpu in wanted:
        try:
            cores.add(frozenset(_cpu_list((sys_cpu / f"cpu{cpu}" / "topology" / "thread_siblings_list").read_text())))
        except (OSError, ValueError):
            unread.add(cpu)
    covered = set().union(*cores)
    return max(len(cores) + len(unread - covered), 1)


def ort_threads(requested: int) -> int:
    """The intra-op thread count to give ONNX Runtime: `requested`, or where it is 0 or less (ONNX Runtime's choice)
    the count ONNX Runtime would choose, given explicitly so that its threads are not pinned. Without a sysfs CPU tree
    (not Linux, or /sys masked) it stays 0, ONNX Runtime's own choice: cores cannot be told from hyperthreads there."""
    if requested > 0:
        return requested
    return physical_cores() if SYS_CPU.is_dir() else 0
