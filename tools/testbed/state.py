"""The state file: what the last ``up`` built, so ``status``/``exec`` know addresses and ``down`` can report.

Teardown never depends on it alone (see config.py for the naming conventions ``down`` uses).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def load(path: str) -> dict[str, Any] | None:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None


def save(path: str, data: dict[str, Any]) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, p)


def remove(path: str) -> bool:
    p = Path(path)
    existed = p.exists()
    p.unlink(missing_ok=True)
    p.with_suffix(".tmp").unlink(missing_ok=True)
    try:
        p.parent.rmdir()  # only when empty
    except OSError:
        pass
    return existed
