"""Which slice the server was running on its own when the process died, so that a restart does not run it again.

The cloud profiler times uploaded slices by itself, and at start it queues again every stored slice it has not timed:
a slice whose run ends the process (a processor trap or a crash inside ONNX Runtime, the kernel's OOM killer) would
end every restart a few seconds in. `CrashJournal.running(key)` writes the key to `path` for the duration of a run;
a key found there at start belongs to a run the process did not survive, and is added to the `.crashed` file beside
it for good (`crashed`). Writes are small and not fsynced: they protect against the process dying, not the machine.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)


class CrashJournal:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._crashed_path = path.with_name(path.name + ".crashed")
        crashed = self._read(self._crashed_path)
        for key in self._read(path) - crashed:  # the run in progress when the process last ended
            log.error("%s was running when the server process ended: it is not run by the server again", key)
            with self._crashed_path.open("a", encoding="utf-8") as f:
                f.write(key + "\n")
            crashed.add(key)
        self.crashed = frozenset(crashed)
        path.unlink(missing_ok=True)

    @contextlib.contextmanager
    def running(self, key: str) -> Iterator[None]:
        """Mark `key` as running until the block ends, however it ends (short of the process dying)."""
        self._path.write_text(key + "\n", encoding="utf-8")
        try:
            yield
        finally:
            self._path.unlink(missing_ok=True)

    @staticmethod
    def _read(path: Path) -> set[str]:
        try:
            return {line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()}
        except FileNotFoundError:
            return set()
