"""Progress bars for long steps: a callback `(stage, done, total, label)`, one rich bar per stage."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich import progress as bars
from rich.console import Console

Progress = Callable[[str, int, int, str], None]  # (stage, done, total, label)


@contextmanager
def progress_bars(enabled: bool = True, console: Console | None = None) -> Iterator[Progress]:
    """Yields the callback, drawing on `console` (stderr by default); a no-op callback when not `enabled`."""
    if not enabled:
        yield lambda *a: None
        return
    progress = bars.Progress(
        bars.TextColumn("{task.description:<10}"),
        bars.BarColumn(),
        bars.MofNCompleteColumn(),
        bars.TextColumn("{task.fields[label]}", markup=False),  # model and block names, as text: 'net[/v2]' raised
        bars.TimeElapsedColumn(),
        console=console or Console(stderr=True),
        transient=False,
    )
    tasks: dict[str, Any] = {}
    moved: list[tuple[logging.StreamHandler, Any]] = []

    def update(stage: str, done: int, total: int, label: str = "") -> None:
        if not tasks:  # drawn from the first step on: a command failing before any (no server) left an empty line
            stderr = sys.stderr
            progress.start()
            moved.extend(_follow(stderr))
        if stage not in tasks:
            tasks[stage] = progress.add_task(stage, total=max(total, 1), label="")
        progress.update(tasks[stage], completed=done if total else 1, total=max(total, 1), label=label)

    try:
        yield update
    finally:
        if tasks:
            progress.stop()
            for handler, stream in moved:
                handler.setStream(stream)


def _follow(stderr: Any) -> list[tuple[logging.StreamHandler, Any]]:
    """Point the log handlers that write to `stderr` at what the live bars put in its place (on a terminal), so a
    warning is printed above the bars; written to `stderr` itself, it was glued to the bar's line (review). The
    handlers and their streams, to put back."""
    if sys.stderr is stderr:  # not redirected: no terminal
        return []
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, logging.StreamHandler) and h.stream is stderr]
    return [(h, h.setStream(sys.stderr)) for h in handlers]
