"""Emulated device classes: speed (cgroup CPU quota + thread count) and a declared power model.

The data lives in ``classes.json`` next to this module so that non-Python readers (the profiler's ``model`` energy
meter, the evaluation harness) can load it without importing the testbed. Speeds are EMULATED, power is MODELLED;
docs/testbed.md gives the derivation and the source of every figure.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

CLASSES_JSON = Path(__file__).with_name("classes.json")
SERVER_CLASS = "server"


@dataclass(frozen=True)
class PowerModel:
    """Declared (modelled, not measured) power draw of a device class, in watts."""

    active_w: float
    idle_w: float
    net_tx_w: float
    net_rx_w: float
    source: str = "modelled"


@dataclass(frozen=True)
class DeviceClass:
    """One emulated device class.

    ``cpu_quota`` is the share of one host CPU the class may use (None: unlimited); ``threads`` is the intra-op thread
    count handed to ONNX Runtime through ``RR_THREADS`` (None: every host CPU).
    """

    name: str
    board: str
    role: str
    cpu: str
    cpu_score: float | None
    cpu_quota: float | None
    threads: int | None
    power: PowerModel

    @property
    def is_server(self) -> bool:
        return self.role == "server"

    @property
    def short(self) -> str:
        """Short tag used in interface names (at most 8 characters)."""
        return self.name.removeprefix("emu-")[:8]

    def thread_count(self) -> int:
        return self.threads if self.threads is not None else (os.cpu_count() or 1)


def load_classes(path: Path = CLASSES_JSON) -> dict[str, DeviceClass]:
    """Read the class table; keys are class names, in file order."""
    raw = json.loads(path.read_text())
    out: dict[str, DeviceClass] = {}
    for item in raw["classes"]:
        power = PowerModel(**item["power"])
        fields = {k: v for k, v in item.items() if k != "power"}
        out[item["name"]] = DeviceClass(power=power, **fields)
    return out


def get_class(name: str) -> DeviceClass:
    classes = load_classes()
    try:
        return classes[name]
    except KeyError:
        raise KeyError(f"unknown device class {name!r}; known: {', '.join(classes)}") from None
