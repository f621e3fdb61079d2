"""RoaD-RuNNer edge node: model export, atomic blocks, profiling, planning and offloaded execution."""

from rr_edge.errors import MeterError, ModelError, RoadRunnerError, ServerError, ServerUnavailable

__all__ = ["MeterError", "ModelError", "RoadRunnerError", "ServerError", "ServerUnavailable"]
