"""The short names of ONNX Runtime execution providers that `rr-edge --provider` and `rr-server --providers` take."""

from __future__ import annotations

__all__ = ["PROVIDER_NAMES", "provider_name"]

PROVIDER_NAMES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "rocm": "ROCMExecutionProvider",
}


def provider_name(name: str) -> str:
    """ONNX Runtime's name for `name`: a short name (any case) or already ONNX Runtime's own."""
    return PROVIDER_NAMES.get(name.lower(), name)
