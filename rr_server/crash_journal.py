"""Which slice the server was running on its own when the process died, so that restarts do not keep running it.

The cloud profiler times uploaded slices by itself, and at start it queues again every stored slice it has not timed:
a slice whose run ends the process (a processor trap or a crash inside ONNX Runtime, the kernel's OOM killer) would
end every restart a few seconds in. `CrashJournal.running(key)` writes the key to `path` for the duration of a run;
a key found there at start belongs to a run the process did not survive, and is counted in the `.crashed` file beside
it. A key counted `MAX_DEATHS` times is not run again (`crashed`): one death may be an operator's kill -9 or a
reboot, two in the same run are the slice's. Writes are small and not fsynced: they protect against the process
dying, not the machine.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

MAX_DEATHS = 2


class CrashJournal:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._crashed_path = path.with_name(path.name + ".crashed")
        deaths = Counter(self._read(self._crashed_path))
        for key in self._read(path):  # the run in progress when the process last ended
            deaths[key] += 1
            then = "it is not run again" if deaths[key] >= MAX_DEATHS else "it is run once more"
            log.error("%s was running when the server process ended (%d times): %s", key, deaths[key], then)
            with self._crashed_path.open("a", encoding="utf-8") as f:
                f.write(key + "\n")
        self.crashed = frozenset(key for key, n in deaths.items() if n >= MAX_DEATHS)
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
    def _read(path: Path) -> list[str]:
        try:
            return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except FileNotFoundError:
            return []
