"""argparse types of the files a command writes, checked before the work that produces them (no heavy imports)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def output_path(text: str) -> Path:
    """argparse type: a file this command may create: not a directory, and under a directory it can write to (one
    that does not exist yet is made when the file is written). Checked before the work that produces it."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a directory; name the file to write")
    if path.exists() and not os.access(path, os.W_OK):
        raise argparse.ArgumentTypeError(f"cannot overwrite {text!r}: not writable")
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot create {text!r}: {parent} is not a writable directory")
    return path


PLOT_FORMATS = (".png", ".pdf", ".svg", ".jpg", ".jpeg")


def plot_path(text: str) -> Path:
    """argparse type: an `output_path` whose suffix names a figure format matplotlib writes."""
    path = output_path(text)
    if path.suffix.lower() not in PLOT_FORMATS:
        raise argparse.ArgumentTypeError(f"{text!r}: a figure ends in one of {', '.join(PLOT_FORMATS)}")
    return path
