"""Run only the timed work at the emulated speed: move this process into its class cgroup and back out.

The harness opens two `cgroup.procs` files on the host (the device class's cgroup and the hierarchy's root), and the
root's `tasks` file for the keepalive thread (`CgroupSwitch`), and passes their descriptors to the worker; `ip netns
exec` hides the host's cgroupfs, so descriptors are the only way in. Writing our pid to one moves every thread of the
process. Model loading, slicing and ONNX Runtime session creation then run at full speed (they are never timed);
timed ONNX Runtime runs (blocks, whole models, and the head and tail of a plan) run throttled; network probes,
uploads and a plan's remote call do not.
Without descriptors (tests, a plain run) both moves are no-ops.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

KEEPALIVE_S = 0.005  # how often the keepalive thread moves itself; moves stay cheap below about 20 ms apart


class CgroupSwitch:
    """`throttled()` context: inside the class cgroup; outside it, the free (root) cgroup.

    With `keepalive_fd` (the free cgroup's `tasks` file) a daemon thread moves itself, alone, into the free cgroup
    every KEEPALIVE_S. The kernel makes the first cgroup move after a pause of some tens of ms cost a few ms (about
    6 ms here; `tools/bench_testbed.py`, `cgroup_move`), and a plan's tail, moved into the class cgroup after waiting
    for the server, paid that on every request; a move every few ms keeps every move cheap.
    """

    def __init__(
        self, throttle_fd: int | None = None, free_fd: int | None = None, keepalive_fd: int | None = None
    ) -> None:
        self._throttle_fd, self._free_fd = throttle_fd, free_fd
        self.throttled_now = False
        if keepalive_fd is not None:
            threading.Thread(
                target=keep_moves_cheap, args=(keepalive_fd,), name="cgroup-keepalive", daemon=True
            ).start()

    def _move(self, fd: int | None) -> None:
        if fd is not None:
            os.write(fd, str(os.getpid()).encode())

    def throttle(self) -> None:
        self._move(self._throttle_fd)
        self.throttled_now = True

    def free(self) -> None:
        self._move(self._free_fd)
        self.throttled_now = False

    @contextmanager
    def throttled(self) -> Iterator[None]:
        self.throttle()
        try:
            yield
        finally:
            self.free()


def keep_moves_cheap(tasks_fd: int, every_s: float = KEEPALIVE_S, stop: threading.Event | None = None) -> None:
    """Move the calling thread (only) into the cgroup of `tasks_fd` every `every_s`, until `stop` is set."""
    me = str(threading.get_native_id()).encode()
    stop = stop or threading.Event()
    while True:
        os.write(tasks_fd, me)
        if stop.wait(every_s):
            return
