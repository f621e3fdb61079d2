"""Declared power model: energy = declared watts x elapsed time. An ESTIMATE, never a measurement.

The last resort where no real meter works (and the meter of the emulated testbed, whose device classes have no
hardware to measure). Power per device class comes from a JSON or TOML file; the class is `device_class=`, else
``$RR_DEVICE_CLASS``, else the file's ``default`` class, else the built-in `DEFAULT_POWER`. The file is `config=`,
else ``$RR_POWER_CONFIG``, else the testbed table ``tools/testbed/classes.json`` when the source tree is present.
Both shapes are read::

    {"classes": [{"name": "emu-nano", "power": {"active_w": 10, "idle_w": 1.25, "net_tx_w": 1.5, "net_rx_w": 1}}]}

    [classes.emu-nano]            # TOML; a "power" sub-table works too
    active_w = 10.0
    idle_w = 1.25

Activities: compute -> active_w; tx -> idle_w + net_tx_w; rx -> idle_w + net_rx_w; idle -> idle_w (the radio
figures are what a transfer adds on top of the idle device).
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rr_edge.errors import MeterError
from rr_edge.meters.base import Meter

log = logging.getLogger(__name__)

ENV_CONFIG = "RR_POWER_CONFIG"
ENV_DEVICE_CLASS = "RR_DEVICE_CLASS"
TESTBED_CLASSES = Path(__file__).resolve().parents[2] / "tools" / "testbed" / "classes.json"
WATT_KEYS = ("active_w", "idle_w", "net_tx_w", "net_rx_w")  # PowerSpec's watts, as a config names them


@dataclass(frozen=True)
class PowerSpec:
    """Declared power draw (W) of a device class."""

    active_w: float
    idle_w: float
    net_tx_w: float = 0.0
    net_rx_w: float = 0.0
    device_class: str = "default"

    def __post_init__(self) -> None:
        for name in WATT_KEYS:
            value = getattr(self, name)
            # not a bool (JSON's true read as 1 W), nor inf (every energy inf, printed as null)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
                raise MeterError(
                    f"power model {self.device_class!r}: {name} must be a finite number >= 0, got {value!r}"
                )
        if self.idle_w > self.active_w:  # swapped figures: waiting for the server would cost more than computing
            raise MeterError(
                f"power model {self.device_class!r}: idle_w {self.idle_w:g} W is above active_w {self.active_w:g} W "
                "(are the two swapped?)"
            )

    def watts(self, activity: str) -> float:
        return {
            "compute": self.active_w,
            "tx": self.idle_w + self.net_tx_w,
            "rx": self.idle_w + self.net_rx_w,
            "idle": self.idle_w,
        }[activity]

    def request_mJ(self, local_ms: float, server_ms: float, up_ms: float, down_ms: float) -> float:
        """Edge energy of one request, charged as the planner predicts it: local compute at active power, the
        server's run at idle, the transfers at tx and rx power."""
        return (
            self.watts("compute") * local_ms
            + self.watts("idle") * server_ms
            + self.watts("tx") * up_ms
            + self.watts("rx") * down_ms
        )


BUILT_IN_POWER = "built-in default"  # resolve_power's origin of DEFAULT_POWER

# A small edge board (Jetson-Nano-like, 10 W mode) when nothing is configured.
DEFAULT_POWER = PowerSpec(active_w=10.0, idle_w=1.25, net_tx_w=1.5, net_rx_w=1.0, device_class="default")


def _parse(path: Path) -> dict[str, Any]:
    kind = "TOML" if path.suffix.lower() == ".toml" else "JSON"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise MeterError(f"power model config {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise MeterError(f"power model config {path}: not a text file (expected {kind})") from None
    try:
        if kind == "TOML":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                raise MeterError(f"power model config {path}: TOML needs Python 3.11+; use JSON") from None
            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except ValueError as exc:
        raise MeterError(f"power model config {path}: not valid {kind} ({exc})") from None
    if not isinstance(data, dict):
        raise MeterError(f"power model config {path}: expected an object with a 'classes' list or table")
    return data


def load_power_table(path: str | Path) -> dict[str, PowerSpec]:
    """Class name -> PowerSpec from a JSON/TOML file (see the module docstring)."""
    p = Path(path)
    raw = _parse(p).get("classes")
    if isinstance(raw, list):
        items = [(str(c.get("name", "")), c) for c in raw if isinstance(c, dict)]
    elif isinstance(raw, dict):
        items = [(str(k), v) for k, v in raw.items() if isinstance(v, dict)]
    else:
        raise MeterError(f"power model config {p}: expected a 'classes' list or table")
    table: dict[str, PowerSpec] = {}
    for name, entry in items:
        if not name or name in table:  # one class would silently replace another
            problem = f"class {name!r} is declared twice" if name else "a class has no name"
            raise MeterError(f"power model config {p}: {problem} (each class needs a name of its own)")
        power = entry.get("power", entry)
        if not isinstance(power, dict):
            raise MeterError(f"power model config {p}: class {name!r}: 'power' must be a table of watts")
        unknown = sorted(k for k in power if k.endswith(("_w", "_mw", "_W")) and k not in WATT_KEYS)
        if unknown:  # a misspelt radio figure left it at 0 W without a word (found by review)
            raise MeterError(f"power model config {p}: class {name!r}: unknown {unknown} (watts are {WATT_KEYS})")
        try:
            table[name] = PowerSpec(
                active_w=power["active_w"],
                idle_w=power["idle_w"],
                net_tx_w=power.get("net_tx_w", 0.0),
                net_rx_w=power.get("net_rx_w", 0.0),
                device_class=name,
            )
        except (KeyError, TypeError) as exc:
            raise MeterError(f"power model config {p}: class {name!r} lacks {exc} (needs active_w, idle_w)") from None
    return table


def resolve_power(config: str | Path | None = None, device_class: str | None = None) -> tuple[PowerSpec, str]:
    """The PowerSpec to use and where it came from (a file path or BUILT_IN_POWER)."""
    path = Path(config) if config else Path(os.environ[ENV_CONFIG]) if os.environ.get(ENV_CONFIG) else None
    chosen = path is not None  # by the user, not the testbed's file found beside the code
    if path is None and TESTBED_CLASSES.is_file():
        path = TESTBED_CLASSES
    cls = device_class or os.environ.get(ENV_DEVICE_CLASS) or None
    if path is None:
        if cls and cls != DEFAULT_POWER.device_class:
            raise MeterError(f"device class {cls!r} given but no power model config (set {ENV_CONFIG})")
        return DEFAULT_POWER, BUILT_IN_POWER
    table = load_power_table(path)
    if cls is None:
        if "default" in table:
            return table["default"], str(path)
        if chosen and len(table) == 1:  # a file of one class: the user's device (it was ignored for the built-in)
            (only,) = table.values()
            return only, str(path)
        if chosen:
            log.warning(
                "power model config %s has several classes (%s) and no 'default': the built-in figures are used; "
                "name one with --device-class or $%s",
                path,
                ", ".join(table),
                ENV_DEVICE_CLASS,
            )
        return DEFAULT_POWER, BUILT_IN_POWER
    if cls not in table:
        raise MeterError(f"device class {cls!r} not in power model config {path} (known: {', '.join(table)})")
    return table[cls], str(path)


class ModelMeter(Meter):
    """Energy = declared watts of the current activity x elapsed seconds (source "model", measured=False)."""

    source = "model"
    measured = False
    min_window_s = 0.0

    def __init__(
        self, power: PowerSpec | None = None, *, config: str | Path | None = None, device_class: str | None = None
    ) -> None:
        super().__init__()
        if power is None:
            power, self.origin = resolve_power(config, device_class)
        else:
            self.origin = "given"
        self.power = power

    @property
    def description(self) -> str:
        p = self.power
        return (
            f"model (estimate, not measured): class {p.device_class!r} active {p.active_w} W, idle {p.idle_w} W "
            f"from {self.origin}"
        )

    def _begin(self, activity: str) -> Any:
        return self.power.watts(activity)

    def _end(self, state: Any, elapsed_s: float) -> float:
        return float(state) * elapsed_s * 1000.0
