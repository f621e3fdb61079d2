"""Emulated RoaD-RuNNer testbed: device classes in network namespaces and cgroups, joined by shaped veth links.

CLI: ``python -m tools.testbed {up,down,status,exec DEVICE -- CMD...}``; design and figures in docs/testbed.md.
"""

from ._sh import TestbedError
from .classes import CLASSES_JSON, DeviceClass, PowerModel, get_class, load_classes
from .config import TestbedConfig
from .lifecycle import device_env, down, exec_replace, spawn, status, up

__all__ = [
    "CLASSES_JSON",
    "DeviceClass",
    "PowerModel",
    "TestbedConfig",
    "TestbedError",
    "device_env",
    "down",
    "exec_replace",
    "get_class",
    "load_classes",
    "spawn",
    "status",
    "up",
]
