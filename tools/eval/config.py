"""What a run covers: models, device classes, timing policies and sizes for the full and the quick evaluation."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]

# Paper Fig. 3: (a) chain models, (c) residual models (MobileNetV2 is grouped with the ResNets there).
CHAIN = ("alexnet", "vgg11", "vgg13", "vgg16")
RESIDUAL = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "mobilenet_v2")
PAPER_MODELS = CHAIN + RESIDUAL
EDGE_CLASSES = ("emu-nano", "emu-tx1", "emu-nx", "emu-agx")
SERVER_CLASS = "server"
OBJECTIVES = ("latency", "energy")
# A run's name is a folder under .cache/eval/ (wiped by `collect`) and docs/results/: no separators, no `..`.
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
# Names whose folders hold other data: a run named `full` writes over the full run's report in docs/results (and
# `collect` wipes its raw outputs); one named `models` would make .cache/eval/models, the exported models every run
# shares, its work dir.
RESERVED_NAMES = {
    "full": "it is the full run's, whose report is docs/results (leave --name out to make the full run)",
    "models": "its work dir would be .cache/eval/models, the exported models every run shares",
}


def group_of(model: str) -> str:
    return "chain" if model in CHAIN else "residual"


@dataclass(frozen=True)
class Timing:
    """Unthrottled warm-up runs, a throttled burn-in of `burn_s`, then a throttled window of at least `min_runs`
    runs and `min_time_s` (at most `max_runs`) whose mean is the latency (see tools/eval/timing.py)."""

    warmup: int = 1
    min_runs: int = 3
    min_time_s: float = 0.1
    max_runs: int = 10_000
    burn_s: float = 0.02


@dataclass(frozen=True)
class EvalConfig:
    name: str
    models: tuple[str, ...]
    quick: bool = False  # the reduced preset (`--quick`)
    classes: tuple[str, ...] = EDGE_CLASSES
    input_size: int = 224
    sample: float = 0.3  # fraction of a model's unique blocks each node profiles (SPEC default)
    seed: int = 0
    gt_timing: Timing = Timing()  # ground truth: every block and the whole model
    run_timing: Timing = field(default_factory=lambda: Timing(warmup=1, min_runs=3, min_time_s=1.0, max_runs=20))
    netprofile_max_mb: float = 256.0  # the SPEC default; slice uploads reach 553 MB (vgg16)
    upload_probe_max_mb: float = 128.0  # whole-slice upload probes from 64 KiB (rr_edge.netprofile)
    fig4_fills: tuple[float, ...] = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5)
    fig4_seeds: int = 20
    port: int = 50051
    max_slice_mb: int = 2048  # headroom above the largest whole model (vgg16, 553 MB)
    # The server keeps every uploaded slice (each executed plan's middle part, for every class): the full run's
    # slice store grew to about 20 GB here. The run refuses to start with less free disk than this.
    min_free_disk_gb: float = 30.0

    @property
    def work_dir(self) -> Path:
        return REPO / ".cache" / "eval" / self.name

    @property
    def models_dir(self) -> Path:
        return REPO / ".cache" / "eval" / "models"

    @property
    def default_out(self) -> Path:
        """docs/results for the full run, docs/results/NAME for any other (quick, other input sizes, ...)."""
        return REPO / "docs" / "results" / ("" if self.name == "full" else self.name)

    def model_path(self, model: str) -> Path:
        return self.models_dir / f"{model}-{self.input_size}.onnx"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


FULL = EvalConfig(name="full", models=PAPER_MODELS)
QUICK = EvalConfig(
    name="quick",
    quick=True,
    models=("alexnet", "resnet18", "mobilenet_v2"),
    netprofile_max_mb=64.0,
    upload_probe_max_mb=64.0,
    fig4_seeds=10,
    run_timing=Timing(warmup=1, min_runs=3, min_time_s=0.5, max_runs=20),
    min_free_disk_gb=5.0,
)


def get_config(quick: bool) -> EvalConfig:
    return QUICK if quick else FULL


def from_options(
    quick: bool = False,
    models: tuple[str, ...] | None = None,
    classes: tuple[str, ...] | None = None,
    input_size: int | None = None,
    name: str | None = None,
) -> EvalConfig:
    """The run `python -m tools.eval` makes of its options: a preset, overridden; another input size names the run
    NAME-N (e.g. quick-512) unless `name` is given."""
    cfg = get_config(quick)
    for option, names in (("--models", tuple(models or ())), ("--classes", tuple(classes or ()))):
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:  # collect would run them once and analyze count them twice (a false "missing" entry)
            raise ValueError(f"{option} names {', '.join(twice)} more than once")
    if classes and SERVER_CLASS in classes:
        raise ValueError(f"--classes takes edge classes; {SERVER_CLASS!r} is the cloud server, which every run has")
    if models:
        cfg = replace(cfg, models=tuple(models))
    if classes:
        cfg = replace(cfg, classes=tuple(classes))
    if name is not None and not NAME_PATTERN.fullmatch(name):
        raise ValueError(f"--name must be letters, digits, '.', '_' and '-', not starting with '.'; got {name!r}")
    if name in RESERVED_NAMES:
        raise ValueError(f"--name {name} is reserved: {RESERVED_NAMES[name]}")
    if input_size is not None and input_size != cfg.input_size:
        if input_size < 32:
            raise ValueError("--input-size must be >= 32")
        cfg = replace(cfg, input_size=input_size, name=f"{cfg.name}-{input_size}")
    return replace(cfg, name=name) if name else cfg


def cli_flags(saved: dict[str, Any], out: str | None = None) -> list[str]:
    """The options of `python -m tools.eval` that make the run whose configuration was saved (`to_json()`), with its
    output directory `out` (relative to the repository or absolute) when that is not the run's default."""
    quick = saved.get("quick", saved["name"].startswith("quick"))  # runs saved before `quick` was recorded
    preset = get_config(quick)
    flags = ["--quick"] if quick else []
    if tuple(saved["models"]) != preset.models:
        flags += ["--models", ",".join(saved["models"])]
    if tuple(saved["classes"]) != preset.classes:
        flags += ["--classes", ",".join(saved["classes"])]
    if saved["input_size"] != preset.input_size:
        flags += ["--input-size", str(saved["input_size"])]
    if saved["name"] != from_options(quick, input_size=saved["input_size"]).name:
        flags += ["--name", saved["name"]]
    if out is not None and (REPO / out).resolve() != replace(preset, name=saved["name"]).default_out.resolve():
        flags += ["--out", out]
    return flags
