"""NVIDIA GPU energy from NVML's total-energy counter (``nvidia-ml-py``; Volta and newer).

``nvmlDeviceGetTotalEnergyConsumption`` returns millijoules since the driver was loaded, but the value only moves
when the driver refreshes it (every ~20-100 ms depending on the GPU). A window is therefore aligned on counter
updates at both ends: `start` waits for the next update, `stop` waits for the one after the work ended. The tail wait
adds at most one update period at idle power; `min_window_s` (1 s) keeps that and the quantisation to a few percent.
The figure is GPU board energy only (not the CPU): use it when the work runs on the GPU.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from rr_edge.errors import MeterError
from rr_edge.meters.base import Meter

log = logging.getLogger(__name__)

DEFAULT_MIN_WINDOW_S = 1.0
UPDATE_WAIT_S = 0.25  # longest wait for the counter to move
_POLL_S = 0.001


def _pynvml() -> Any:
    try:
        import pynvml
    except ImportError:
        raise MeterError("NVML meter needs nvidia-ml-py: pip install 'roadrunner[gpu]' (or nvidia-ml-py)") from None
    return pynvml


def nvml_gpu_name(index: int = 0) -> str | None:
    """Name of GPU `index` via NVML, or None when there is no NVIDIA driver/GPU (never raises)."""
    try:
        nv = _pynvml()
        nv.nvmlInit()
    except Exception:
        return None
    try:
        name = nv.nvmlDeviceGetName(nv.nvmlDeviceGetHandleByIndex(index))
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:
        return None
    finally:
        try:
            nv.nvmlShutdown()
        except Exception:
            pass


class NvmlMeter(Meter):
    """Energy of one NVIDIA GPU from NVML's total-energy counter."""

    source = "nvml"

    def __init__(self, index: int = 0, *, min_window_s: float = DEFAULT_MIN_WINDOW_S, align: bool = True) -> None:
        super().__init__()
        nv = self._nv = _pynvml()
        try:
            nv.nvmlInit()
        except nv.NVMLError as exc:
            raise MeterError(f"NVML unavailable (no NVIDIA driver or GPU): {exc}") from None
        self._initialised = True
        try:
            self._handle = nv.nvmlDeviceGetHandleByIndex(index)
            name = nv.nvmlDeviceGetName(self._handle)
            self.gpu_name = name.decode() if isinstance(name, bytes) else str(name)
            self.read_mj()
        except MeterError:
            self.close()
            raise
        except nv.NVMLError as exc:
            self.close()
            raise MeterError(f"NVML GPU {index}: {exc}") from None
        self.index = index
        self.min_window_s = min_window_s
        self.align = align

    @property
    def description(self) -> str:
        return f"nvml: GPU {self.index} ({self.gpu_name}) total-energy counter"

    def read_mj(self) -> int:
        nv = self._nv
        try:
            return int(nv.nvmlDeviceGetTotalEnergyConsumption(self._handle))
        except nv.NVMLError_NotSupported:
            raise MeterError(
                "this GPU has no NVML total-energy counter (needs Volta or newer); use --energy rapl or model"
            ) from None
        except nv.NVMLError as exc:
            raise MeterError(f"NVML energy counter: {exc}") from None

    def _next_update(self) -> int:
        first = self.read_mj()
        if not self.align:
            return first
        deadline = time.perf_counter() + UPDATE_WAIT_S
        while time.perf_counter() < deadline:
            value = self.read_mj()
            if value != first:
                return value
            time.sleep(_POLL_S)
        return self.read_mj()

    def _begin(self, activity: str) -> Any:
        return self._next_update()

    def _end(self, state: Any, elapsed_s: float) -> float:
        return float(self._next_update() - state)

    def close(self) -> None:
        if getattr(self, "_initialised", False):
            self._initialised = False
            try:
                self._nv.nvmlShutdown()
            except Exception:
                pass
