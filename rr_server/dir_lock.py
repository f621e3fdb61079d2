"""One rr-server per data dir: an exclusive lock on `<data dir>/rr-server.lock`, held while the server lives.

Two servers on one data dir do not corrupt the SQLite file, but the second swept the first's uploads in progress from
`slices/tmp` at its start (the upload then failed as INVALID_ARGUMENT), evicted its slices under its own store budget,
and each predictor missed the other's reports. The lock is `flock`, released by the kernel however the process ends;
the file holds the holder's pid, for the message.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

LOCK_NAME = "rr-server.lock"


class DataDirInUse(OSError):
    """Another live process holds the data dir."""


class DataDirLock:
    def __init__(self, data_dir: Path) -> None:
        path = data_dir / LOCK_NAME
        self._file: IO[str] | None = path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read().strip() or "?"
            self._file.close()
            raise DataDirInUse(
                f"data dir {str(data_dir)!r} is in use by another rr-server (pid {holder}); give each server its own "
                "--data-dir"
            ) from None
        self._file.truncate(0)
        self._file.write(f"{os.getpid()}\n")
        self._file.flush()

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the descriptor releases the flock
            self._file = None
