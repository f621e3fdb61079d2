"""The operator domains a RoadRunner server runs: standard ONNX only (a custom op library is refused, and so is a
slice that merely imports a custom domain). The edge plans with the same set: a block of other ops stays local."""

from __future__ import annotations

__all__ = ["STANDARD_DOMAINS"]

STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})
