"""Which pip extra of `roadrunner` provides a module: one clear line instead of a traceback when it is missing."""

from __future__ import annotations

__all__ = ["EXTRA_OF", "missing_extra"]

EXTRA_OF = {
    "onnx": "edge",
    "onnxruntime": "edge",
    "matplotlib": "edge",
    "grpc_health": "server",
    "grpc_reflection": "server",
    "prometheus_client": "server",
    "torch": "zoo",
    "torchvision": "zoo",
    "onnxscript": "zoo",
    "pynvml": "gpu",
}


def missing_extra(exc: ModuleNotFoundError) -> str | None:
    """How to install the module `exc` names, or None when no extra of ours provides it (a bug, not a setup step)."""
    module = (exc.name or "").partition(".")[0]
    extra = EXTRA_OF.get(module)
    if extra is None:
        return None
    return f"the '{module}' module is not installed: pip install 'roadrunner[{extra}]'"
