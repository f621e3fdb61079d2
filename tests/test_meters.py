"""Energy meters: fake sysfs trees for RAPL and Jetson (synthetic traces of known energy), the power model, auto
selection, and the real NVML path where a GPU exists."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from rr_edge.errors import MeterError
from rr_edge.meters import JetsonMeter, MeterOptions, ModelMeter, PowerSpec, RaplMeter, select_meter
from rr_edge.meters import rapl as rapl_mod
from rr_edge.meters.jetson import trapezoid_mj
from rr_edge.meters.nvml import nvml_gpu_name


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _write(path: Path, value: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{value}\n")


# ---------------------------------------------------------------------------------------------------------- RAPL


def _rapl_tree(root: Path, *, max_range: int = 262143328850, with_psys: bool = False) -> dict[str, Path]:
    base = root / "class" / "powercap"
    zones = {
        "pkg0": base / "intel-rapl:0",
        "core0": base / "intel-rapl:0" / "intel-rapl:0:0",
        "dram0": base / "intel-rapl:0" / "intel-rapl:0:1",
        "pkg1": base / "intel-rapl:1",
    }
    names = {"pkg0": "package-0", "core0": "core", "dram0": "dram", "pkg1": "package-1"}
    if with_psys:
        zones["psys"] = base / "intel-rapl:2"
        names["psys"] = "psys"
    for key, path in zones.items():
        _write(path / "name", names[key])
        _write(path / "max_energy_range_uj", max_range)
        _write(path / "energy_uj", 1000)
    # the sysfs class directory also lists sub-zones at top level as symlinks
    (base / "intel-rapl:0:0").symlink_to(zones["core0"])
    return zones


def _rapl_trace(zones: dict[str, Path], meter: RaplMeter, powers_w: dict[str, float], seconds: float) -> float:
    """Advance each zone's counter by power x time; returns the energy (mJ) a correct meter must report."""
    expected = 0.0
    for key, watts in powers_w.items():
        path = zones[key] / "energy_uj"
        max_range = int((zones[key] / "max_energy_range_uj").read_text())
        uj = round(watts * seconds * 1e6)
        _write(path, (int(path.read_text()) + uj) % max_range)
        if key != "core0":  # nested in package-0: must not be added
            expected += uj / 1000.0
    return expected


def test_rapl_sums_packages_and_dram_not_subzones(tmp_path: Path) -> None:
    zones = _rapl_tree(tmp_path)
    meter = RaplMeter(tmp_path)
    assert sorted(z.name for z in meter.zones) == ["dram", "package-0", "package-1"]
    token = meter.start()
    expected = _rapl_trace(zones, meter, {"pkg0": 35.0, "core0": 20.0, "dram0": 4.0, "pkg1": 12.5}, 2.0)
    reading = meter.stop(token)
    assert reading.source == "rapl" and reading.measured
    assert reading.energy_mJ == pytest.approx(expected, rel=0.01)
    assert reading.energy_mJ == pytest.approx((35.0 + 4.0 + 12.5) * 2.0 * 1000, rel=0.01)


def test_rapl_wraparound(tmp_path: Path) -> None:
    max_range = 10_000_000  # 10 J
    zones = _rapl_tree(tmp_path, max_range=max_range)
    for key in zones:
        _write(zones[key] / "energy_uj", max_range - 500_000)  # 0.5 J before the wrap
    meter = RaplMeter(tmp_path)
    with meter.measure() as reading:
        expected = _rapl_trace(zones, meter, {"pkg0": 3.0, "dram0": 1.0, "pkg1": 0.1}, 1.0)
    assert int((zones["pkg0"] / "energy_uj").read_text()) < max_range - 500_000  # it did wrap
    assert reading.energy_mJ == pytest.approx(expected, rel=0.01)
    assert reading.energy_mJ == pytest.approx(4100.0, rel=0.01)


def test_rapl_counter_delta_wrap() -> None:
    assert rapl_mod.counter_delta(90, 10, 100) == 20
    assert rapl_mod.counter_delta(10, 90, 100) == 80


def test_rapl_psys_only_when_no_package(tmp_path: Path) -> None:
    base = tmp_path / "class" / "powercap" / "intel-rapl:0"
    _write(base / "name", "psys")
    _write(base / "max_energy_range_uj", 1000)
    _write(base / "energy_uj", 1)
    assert [z.name for z in RaplMeter(tmp_path).zones] == ["psys"]


def test_rapl_absent_is_clear(tmp_path: Path) -> None:
    with pytest.raises(MeterError, match="no RAPL"):
        RaplMeter(tmp_path)


def test_rapl_permission_error_is_clear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _rapl_tree(tmp_path)
    real = Path.read_text

    def deny(self: Path, *a: object, **k: object) -> str:
        if self.name == "energy_uj":
            raise PermissionError(13, "Permission denied")
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "read_text", deny)
    with pytest.raises(MeterError, match=r"permission denied .*energy_uj.*root"):
        RaplMeter(tmp_path)
    # auto does not fail on it: it falls back (here to the model, with no other meter present)
    meter = select_meter("auto", MeterOptions(sysfs_root=tmp_path, skip=("nvml",)))
    assert meter.source == "model"
    with pytest.raises(MeterError, match="permission denied"):
        select_meter("rapl", MeterOptions(sysfs_root=tmp_path))


# -------------------------------------------------------------------------------------------------------- Jetson


def _hwmon_tree(root: Path, rails: dict[int, str]) -> Path:
    dev = root / "bus" / "i2c" / "drivers" / "ina3221" / "1-0040" / "hwmon" / "hwmon3"
    _write(dev / "name", "ina3221")
    for n, label in rails.items():
        _write(dev / f"in{n}_label", label)
        _write(dev / f"in{n}_input", 5000)
        _write(dev / f"curr{n}_input", 0)
    _write(dev / "in7_label", "sum of shunt voltages")
    _write(dev / "in7_input", 1)
    return dev


def _iio_tree(root: Path, device: str, rails: dict[int, str]) -> Path:
    dev = root / "bus" / "i2c" / "drivers" / "ina3221x" / device / "iio:device0"
    for n, label in rails.items():
        _write(dev / f"rail_name_{n}", label)
        _write(dev / f"in_power{n}_input", 0)
    return dev


def _set_power_hwmon(dev: Path, n: int, mw: float) -> None:
    _write(dev / f"in{n}_input", 5000)
    _write(dev / f"curr{n}_input", round(mw / 5.0))  # 5 V x mA = mW


def _set_power_iio(dev: Path, n: int, mw: float) -> None:
    _write(dev / f"in_power{n}_input", round(mw))


def _trace(t: float) -> float:
    """Synthetic board power (mW): 2 W idle, a 9 W burst with ramps, back to idle."""
    if t < 0.2:
        return 2000.0
    if t < 0.3:
        return 2000.0 + (t - 0.2) / 0.1 * 7000.0
    if t < 0.8:
        return 9000.0
    if t < 0.9:
        return 9000.0 - (t - 0.8) / 0.1 * 7000.0
    return 2000.0


def _trace_energy_mj(duration: float) -> float:
    # exact integral of _trace over [0, duration] for duration >= 0.9
    return 2000 * 0.2 + (2000 + 9000) / 2 * 0.1 + 9000 * 0.5 + (9000 + 2000) / 2 * 0.1 + 2000 * (duration - 0.9)


def _drive(meter: JetsonMeter, clock: FakeClock, set_power, duration: float = 1.2, dt: float = 0.01) -> float:
    set_power(_trace(0.0))
    token = meter.start()
    steps = round(duration / dt)
    for k in range(1, steps + 1):
        clock.t += dt
        set_power(_trace(k * dt))
        if k < steps:
            meter.sample()
    reading = meter.stop(token)
    assert reading.elapsed_s == pytest.approx(duration)
    return reading.energy_mJ or 0.0


def test_jetson_hwmon_uses_input_rail_alone(tmp_path: Path) -> None:
    dev = _hwmon_tree(tmp_path, {1: "VDD_IN", 2: "VDD_CPU_GPU_CV", 3: "VDD_SOC"})
    clock = FakeClock()
    meter = JetsonMeter(tmp_path, interval_s=0, clock=clock)
    assert [r.name for r in meter.rails] == ["VDD_IN"]
    assert "input rail" in meter.description

    def set_power(mw: float) -> None:
        _set_power_hwmon(dev, 1, mw)
        _set_power_hwmon(dev, 2, mw * 0.6)  # nested sub-rails: must not be added
        _set_power_hwmon(dev, 3, mw * 0.2)

    energy = _drive(meter, clock, set_power)
    assert energy == pytest.approx(_trace_energy_mj(1.2), rel=0.01)


def test_jetson_iio_l4t32_input_rail(tmp_path: Path) -> None:
    dev = _iio_tree(tmp_path, "6-0040", {0: "POM_5V_IN", 1: "POM_5V_GPU", 2: "POM_5V_CPU"})
    clock = FakeClock()
    meter = JetsonMeter(tmp_path, interval_s=0, clock=clock)
    assert [r.name for r in meter.rails] == ["POM_5V_IN"] and meter.rails[0].layout == "iio"

    def set_power(mw: float) -> None:
        _set_power_iio(dev, 0, mw)
        _set_power_iio(dev, 1, mw / 3)
        _set_power_iio(dev, 2, mw / 3)

    assert _drive(meter, clock, set_power) == pytest.approx(_trace_energy_mj(1.2), rel=0.01)


def test_jetson_sums_rails_without_input_rail(tmp_path: Path) -> None:
    # AGX Xavier on L4T 32: two monitors, no board input rail -> the sum of all six rails
    a = _iio_tree(tmp_path, "1-0040", {0: "GPU", 1: "CPU", 2: "SOC"})
    b = _iio_tree(tmp_path, "1-0041", {0: "CV", 1: "VDDRQ", 2: "SYS5V"})
    clock = FakeClock()
    meter = JetsonMeter(tmp_path, interval_s=0, clock=clock)
    assert len(meter.rails) == 6 and "sum of rails" in meter.description
    shares = [0.3, 0.2, 0.1, 0.1, 0.1, 0.2]

    def set_power(mw: float) -> None:
        for k, dev in enumerate((a, a, a, b, b, b)):
            _set_power_iio(dev, k % 3, mw * shares[k])

    assert _drive(meter, clock, set_power) == pytest.approx(_trace_energy_mj(1.2), rel=0.01)


def test_jetson_agx_orin_sums_rails_sys5v_is_not_input(tmp_path: Path) -> None:
    # AGX Orin on L4T 35: no board input rail; VIN_SYS_5V0 is the 5 V system supply beside GPU/CPU/SOC, not the total
    top = tmp_path / "bus" / "i2c" / "drivers" / "ina3221"
    a = top / "1-0040" / "hwmon" / "hwmon1"
    b = top / "1-0041" / "hwmon" / "hwmon2"
    rails = {(a, 1): ("VDD_GPU_SOC", 3000), (a, 2): ("VDD_CPU_CV", 1000), (a, 3): ("VIN_SYS_5V0", 400),
             (b, 2): ("VDDQ_VDD2_1V8AO", 100)}  # fmt: skip
    for (dev, n), (label, ma) in rails.items():
        _write(dev / "name", "ina3221")
        _write(dev / f"in{n}_label", label)
        _write(dev / f"in{n}_input", 5000)
        _write(dev / f"curr{n}_input", ma)
    meter = JetsonMeter(tmp_path, interval_s=0)
    assert sorted(r.name for r in meter.rails) == ["VDDQ_VDD2_1V8AO", "VDD_CPU_CV", "VDD_GPU_SOC", "VIN_SYS_5V0"]
    assert "sum of rails" in meter.description
    assert meter.read_mw() == pytest.approx(5.0 * (3000 + 1000 + 400 + 100))


def test_jetson_explicit_rails_and_unknown_rail(tmp_path: Path) -> None:
    _hwmon_tree(tmp_path, {1: "VDD_IN", 2: "VDD_CPU_GPU_CV"})
    assert [r.name for r in JetsonMeter(tmp_path, rails=["VDD_CPU_GPU_CV"], interval_s=0).rails] == ["VDD_CPU_GPU_CV"]
    with pytest.raises(MeterError, match="unknown Jetson rail"):
        JetsonMeter(tmp_path, rails=["NOPE"], interval_s=0)


def test_jetson_sampler_thread_integrates_constant_power(tmp_path: Path) -> None:
    dev = _hwmon_tree(tmp_path, {1: "VDD_IN"})
    _set_power_hwmon(dev, 1, 4000.0)
    meter = JetsonMeter(tmp_path, interval_s=0.005)
    import time

    with meter.measure() as reading:
        time.sleep(0.2)
    assert reading.energy_mJ == pytest.approx(4000.0 * reading.elapsed_s, rel=0.02)


def test_jetson_absent_is_clear(tmp_path: Path) -> None:
    with pytest.raises(MeterError, match="no Jetson INA3221"):
        JetsonMeter(tmp_path)


def test_trapezoid() -> None:
    assert trapezoid_mj([(0.0, 1000.0), (1.0, 3000.0), (2.0, 3000.0)]) == pytest.approx(5000.0)


# ---------------------------------------------------------------------------------------------------- model, auto


def test_model_meter_from_testbed_style_json(tmp_path: Path) -> None:
    cfg = tmp_path / "classes.json"
    cfg.write_text(
        json.dumps({"classes": [{"name": "emu-x", "power": {"active_w": 8.0, "idle_w": 2.0, "net_tx_w": 1.0}}]})
    )
    clock = FakeClock()
    meter = ModelMeter(config=cfg, device_class="emu-x")
    meter.clock = clock
    token = meter.start("compute")
    clock.t += 0.5
    r = meter.stop(token)
    assert r.source == "model" and not r.measured
    assert r.energy_mJ == pytest.approx(4000.0)
    token = meter.start("tx")
    clock.t += 1.0
    assert meter.stop(token).energy_mJ == pytest.approx(3000.0)  # idle + radio
    assert "not measured" in meter.description


def test_model_meter_toml_and_errors(tmp_path: Path) -> None:
    cfg = tmp_path / "power.toml"
    cfg.write_text("[classes.default]\nactive_w = 5.0\nidle_w = 1.0\n[classes.big.power]\nactive_w = 30\nidle_w = 5\n")
    assert ModelMeter(config=cfg).power.active_w == 5.0
    assert ModelMeter(config=cfg, device_class="big").power.idle_w == 5.0
    with pytest.raises(MeterError, match="not in power model config"):
        ModelMeter(config=cfg, device_class="nope")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(MeterError, match="not valid"):
        ModelMeter(config=bad)
    with pytest.raises(MeterError, match=">= 0"):
        PowerSpec(active_w=-1.0, idle_w=0.0)
    # JSON's Infinity and true were taken: every energy inf (printed as null), and 1 W (found by review)
    for watts in (math.inf, True, float("nan")):
        with pytest.raises(MeterError, match="must be a finite number >= 0"):
            PowerSpec(active_w=watts, idle_w=0.0)  # type: ignore[arg-type]
    with pytest.raises(MeterError, match="idle_w 5 W is above active_w 1 W"):  # swapped: waiting dearer than work
        PowerSpec(active_w=1.0, idle_w=5.0)
    assert PowerSpec(active_w=2.0, idle_w=2.0).watts("idle") == 2.0  # equal is a device that never idles down
    infinite = tmp_path / "inf.json"
    infinite.write_text('{"classes": {"nano": {"active_w": Infinity, "idle_w": 1}}}')
    with pytest.raises(MeterError, match="active_w must be a finite number >= 0, got inf"):
        ModelMeter(config=infinite)


def test_a_power_model_config_of_one_class_is_used_without_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The docs' own one-class example (pi4, no `default`) was ignored for the built-in 10 W figures, silently, unless
    its class was named (docs review). Several classes and no default: the built-in figures, with a warning."""
    monkeypatch.delenv("RR_DEVICE_CLASS", raising=False)
    one = tmp_path / "pi4.json"
    one.write_text(json.dumps({"classes": [{"name": "pi4", "power": {"active_w": 6.4, "idle_w": 2.7}}]}))
    meter = ModelMeter(config=one)
    assert (meter.power.device_class, meter.power.active_w) == ("pi4", 6.4) and str(one) in meter.description
    two = tmp_path / "two.json"
    two.write_text(json.dumps({"classes": [{"name": n, "power": {"active_w": w, "idle_w": 1.0}} for n, w in
                                           (("pi4", 6.4), ("nano", 7.5))]}))  # fmt: skip
    with caplog.at_level("WARNING", logger="rr_edge.meters.model"):
        meter = ModelMeter(config=two)
    assert "built-in default" in meter.description and "pi4, nano" in caplog.text and "--device-class" in caplog.text


@pytest.mark.parametrize(
    ("content", "error"),
    [
        (b"\x93NUMPY\x01\x00v\x00{'descr': '<f4'", "not a text file"),  # a .npy given by mistake
        (b"[1]", "expected an object with a 'classes'"),
        (b'{"classes": [{"name": "a", "power": 5}]}', "'power' must be a table of watts"),
        # found by review: a misspelt radio figure was 0 W, and an unnamed or repeated class replaced another
        (b'{"classes": [{"name": "a", "active_w": 5, "idle_w": 1, "tx_w": 2}]}', "unknown \\['tx_w'\\]"),
        (b'{"classes": [{"name": "a", "active_w": 5, "idle_w": 1, "net_tx_mw": 900}]}', "unknown"),
        (b'{"classes": [{"active_w": 60, "idle_w": 9}, {"active_w": 5, "idle_w": 1}]}', "a class has no name"),
        (
            b'{"classes": [{"name": "a", "active_w": 6, "idle_w": 1}, {"name": "a", "active_w": 5, "idle_w": 1}]}',
            "a name of its own",
        ),
    ],
)
def test_a_power_model_config_of_the_wrong_shape_is_one_clear_error(tmp_path: Path, content: bytes, error: str) -> None:
    """A binary file raised UnicodeDecodeError, a JSON list AttributeError, with tracebacks (found by review)."""
    cfg = tmp_path / "power.json"
    cfg.write_bytes(content)
    with pytest.raises(MeterError, match=error):
        ModelMeter(config=cfg)


def test_model_meter_testbed_classes_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    classes = Path(__file__).resolve().parents[1] / "tools" / "testbed" / "classes.json"
    assert classes.is_file()  # tracked, and what ModelMeter reads for RR_DEVICE_CLASS: missing is a failure
    monkeypatch.setenv("RR_DEVICE_CLASS", "emu-nano")
    meter = ModelMeter()
    assert meter.power.device_class == "emu-nano" and meter.power.active_w > 0


def test_auto_prefers_real_meter_over_model(tmp_path: Path) -> None:
    _rapl_tree(tmp_path)
    assert select_meter("auto", MeterOptions(sysfs_root=tmp_path, skip=("nvml",))).source == "rapl"
    _hwmon_tree(tmp_path, {1: "VDD_IN"})
    assert select_meter("auto", MeterOptions(sysfs_root=tmp_path, skip=("nvml",))).source == "jetson"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert select_meter("auto", MeterOptions(sysfs_root=empty, skip=("nvml",))).source == "model"
    with pytest.raises(MeterError, match="unknown energy meter"):
        select_meter("bogus")


def test_nvml_meter_on_gpu() -> None:
    if nvml_gpu_name() is None:
        pytest.skip("no NVIDIA GPU/driver visible to NVML on this machine: the NVML meter path is not exercised here")
    from rr_edge.meters import NvmlMeter

    meter = NvmlMeter()
    with meter.measure() as reading:
        import time

        time.sleep(1.0)
    meter.close()
    assert reading.source == "nvml" and reading.measured
    assert reading.energy_mJ is not None and reading.energy_mJ > 0
    assert math.isfinite(reading.power_W or math.nan) and 1.0 < (reading.power_W or 0) < 2000.0


def test_nvml_explicit_without_gpu_is_clear() -> None:
    if nvml_gpu_name() is not None:
        pytest.skip("a GPU is present")
    with pytest.raises(MeterError, match="NVML|nvidia-ml-py"):
        select_meter("nvml")


def test_a_meter_that_reads_no_energy_leaves_the_energy_out_not_the_profile(tmp_path: Path, chain, caplog) -> None:  # type: ignore[no-untyped-def]
    """A RAPL counter that never moves (some VMs) gave 0 mJ per block, which the server refuses: the whole report,
    latencies with it, was lost (found by review). Now the blocks are reported without energy, with a warning."""
    from rr_edge.profiler import ProfileConfig, TimingPolicy, profile_model

    _rapl_tree(tmp_path)  # counters written once, never advanced
    model, graph, _ = chain
    policy = TimingPolicy(warmup_runs=1, min_runs=3, min_time_s=0.0, rounds=1)
    config = ProfileConfig(sample=1.0, seed=0, timing=policy, e2e_timing=policy)
    with caplog.at_level("WARNING", logger="rr_edge.profiler"):
        result = profile_model(model, graph, meter=RaplMeter(tmp_path, min_window_s=0.0), config=config)
    assert result.layers and all(m.energy_mJ is None and m.latency.median_ms > 0 for m in result.layers)
    assert "the meter read no positive energy" in caplog.text


def test_a_jetson_read_that_fails_once_is_skipped_and_one_that_keeps_failing_is_raised(tmp_path: Path) -> None:
    """An INA3221 attribute that read empty for 30 ms ended the measurement, and the profile with it (found by
    review). A skipped read leaves the integral of the rest; a rail that stays unreadable still fails the window."""
    dev = _hwmon_tree(tmp_path, {1: "VDD_IN"})
    clock = FakeClock()
    meter = JetsonMeter(tmp_path, interval_s=0, clock=clock)
    _set_power_hwmon(dev, 1, 4000)
    token = meter.start()
    for k in range(10):
        clock.t += 0.01
        if k == 4:
            (dev / "curr1_input").write_text("")
        meter.sample()
        _set_power_hwmon(dev, 1, 4000)
    assert meter.stop(token).energy_mJ == pytest.approx(4000 * 0.1)
    (dev / "curr1_input").write_text("")  # the window's first read fails: skipped as well (found by review)
    token = meter.start()
    _set_power_hwmon(dev, 1, 4000)
    for _ in range(10):
        clock.t += 0.01
        meter.sample()
    reading = meter.stop(token)  # the window is the span of its samples: from the first read that worked
    assert reading.elapsed_s == pytest.approx(0.09) and reading.energy_mJ == pytest.approx(4000 * 0.09)
    token = meter.start()
    (dev / "curr1_input").write_text("")
    for _ in range(5):
        clock.t += 0.01
        meter.sample()
    with pytest.raises(MeterError, match="expected an integer"):
        meter.stop(token)


def test_a_window_whose_work_fails_is_closed(tmp_path: Path, chain) -> None:  # type: ignore[no-untyped-def]
    """A profile or request that raised left its Jetson window open, and its sampler thread ran for the node's
    life (found by review)."""
    import threading

    from rr_edge.profiler import TimingPolicy, _measure

    dev = _hwmon_tree(tmp_path, {1: "VDD_IN"})
    _set_power_hwmon(dev, 1, 4000)
    meter = JetsonMeter(tmp_path, interval_s=0.01)

    def fails() -> None:
        raise RuntimeError("the run failed")

    for _ in range(3):
        with pytest.raises(RuntimeError):
            _measure(fails, TimingPolicy(warmup_runs=0, min_runs=1, min_time_s=0.0), meter)  # type: ignore[arg-type]
    assert meter._open == []
    assert not [t for t in threading.enumerate() if t.name == "jetson-meter"]
    meter.close()


def test_a_request_window_whose_request_fails_is_closed(tmp_path: Path) -> None:
    """`rr-edge run` meters consecutive requests in one window: a request that raised left it open."""
    from types import SimpleNamespace

    from rr_edge.commands.run import RequestEnergy

    dev = _hwmon_tree(tmp_path, {1: "VDD_IN"})
    _set_power_hwmon(dev, 1, 4000)
    meter = JetsonMeter(tmp_path, interval_s=0.01, min_window_s=10.0)

    def fails(x):  # type: ignore[no-untyped-def]
        raise RuntimeError("the request failed")

    energy = RequestEnergy(meter)
    with pytest.raises(RuntimeError):
        energy.run(SimpleNamespace(run=fails), {}, remaining=3)  # type: ignore[arg-type]
    assert meter._open == []
    meter.close()


def test_auto_falling_back_to_the_model_warns_in_one_short_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Every command that meters warned in 400 characters, every meter's reason inline (a new user's walkthrough):
    the warning says the energy is modelled, in one short line; the reasons go to INFO."""
    import logging

    with caplog.at_level(logging.INFO, logger="rr_edge.meters.select"):
        meter = select_meter("auto", MeterOptions(sysfs_root=tmp_path, skip=("nvml",)))
    assert meter.source == "model"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(warnings) == 1 and "MODELLED" in warnings[0] and len(warnings[0]) < 200
    assert "rapl" not in warnings[0] and "jetson" not in warnings[0]
    assert any("rapl:" in m and "jetson:" in m for m in infos)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="rr_edge.meters.select"):
        select_meter("model")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # chosen: nothing to warn about
