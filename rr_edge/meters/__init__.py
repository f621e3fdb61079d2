"""Energy meters behind one interface (`Meter`): NVML, RAPL, Jetson INA3221 and a declared power model.

select_meter("auto")          # the best real meter, the model only as a last resort
with meter.measure() as r:    # r.energy_mJ, r.elapsed_s, r.source, r.measured
    work()
"""

from rr_edge.meters.base import ACTIVITIES, SOURCES, EnergyReading, Meter
from rr_edge.meters.jetson import JetsonMeter
from rr_edge.meters.model import DEFAULT_POWER, ModelMeter, PowerSpec, load_power_table
from rr_edge.meters.nvml import NvmlMeter
from rr_edge.meters.rapl import RaplMeter
from rr_edge.meters.select import CHOICES, MeterOptions, select_meter

__all__ = [
    "ACTIVITIES",
    "CHOICES",
    "DEFAULT_POWER",
    "SOURCES",
    "EnergyReading",
    "JetsonMeter",
    "Meter",
    "MeterOptions",
    "ModelMeter",
    "NvmlMeter",
    "PowerSpec",
    "RaplMeter",
    "load_power_table",
    "select_meter",
]
