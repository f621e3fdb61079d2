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


def missing_extra(exc: ModuleNotFoundError, role: str = "edge") -> str | None:
    """How to install the module `exc` names, or None when no extra of ours provides it (a bug, not a setup step).
    `role`: the extra the failing command needs as a whole ("server" includes "edge", so a server is told that)."""
    module = (exc.name or "").partition(".")[0]
    extra = EXTRA_OF.get(module)
    if extra is None:
        return None
    if role == "server" and extra == "edge":
        extra = "server"
    return f"the '{module}' module is not installed: pip install 'roadrunner[{extra}]'"
