"""Zoo models exported once for the benchmarks and kept under `$RR_MODEL_CACHE` (default `.cache/models`)."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cached_export(name: str, size: int) -> Path:
    """Path of torchvision model `name` exported at `size` x `size` (exported on first use)."""
    from rr_edge.export import export_model

    cache = Path(os.environ.get("RR_MODEL_CACHE", REPO / ".cache" / "models"))
    path = cache / f"bench_{name}_{size}.onnx"
    if not path.exists():
        export_model(name, path, input_size=size)
    return path
