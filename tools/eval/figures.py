"""eval.json -> fig3.png .. fig6.png (matplotlib, Agg). Every energy axis says "model" (modelled energy)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

TAG = "emulated devices, modelled energy"
MARKERS = {
    "Offload None": "o",
    "Offload All": "s",
    "Neurosurgeon": "^",
    "NS-nonOffloaded": "v",
    "RR-preOffloaded vs Neurosurgeon": "D",
}
X_CLIP = -200.0  # energy "gains" below this (we spend > 3x the baseline's energy) are drawn at the edge
QUADRANT_COLOURS = {"red": "#f4cccc", "orange": "#fde9c9", "green": "#d9ead3"}
TIE_COLOUR = "#b0b0b0"  # a point that is the baseline's own plan (quadrant "tie"): neither a gain nor a loss


def _shade(ax: Any, xlim: tuple[float, float], ylim: tuple[float, float]) -> None:
    (x0, x1), (y0, y1) = xlim, ylim
    ax.fill_between([x0, 0], y0, 1, color=QUADRANT_COLOURS["red"], zorder=0)
    ax.fill_between([0, x1], y0, 1, color=QUADRANT_COLOURS["orange"], zorder=0)
    ax.fill_between([x0, 0], 1, y1, color=QUADRANT_COLOURS["orange"], zorder=0)
    ax.fill_between([0, x1], 1, y1, color=QUADRANT_COLOURS["green"], zorder=0)


def _points(ax: Any, ps: list[dict[str, Any]], marker: str, label: str | None, **colour: str) -> None:
    ax.scatter(
        [max(p["energy_gain_pct"], X_CLIP) for p in ps],
        [p["speedup"] for p in ps],
        marker=marker,
        label=label,
        edgecolors="black",
        linewidths=0.5,
        zorder=3,
        **colour,
    )


def fig3(data: dict[str, Any], path: Path) -> None:
    points = data["fig3"]["points"]
    groups = [("chain", "(a) chain models"), ("residual", "(c) residual models")]
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    for ax, (group, title) in zip(axes, groups, strict=True):
        sel = [p for p in points if p["group"] == group]
        if not sel:
            ax.text(0.5, 0.5, "no models of this group in this run", ha="center", va="center", transform=ax.transAxes)
            ax.set_title(title)
            continue
        xs = [max(p["energy_gain_pct"], X_CLIP) for p in sel]
        ys = [p["speedup"] for p in sel]
        xlim = (min(min(xs), -10.0) - 5, max(max(xs), 10.0) + 5)
        ylim = (min(min(ys), 0.5) / 1.5, max(max(ys), 2.0) * 1.5)
        _shade(ax, xlim, ylim)
        for label, marker in MARKERS.items():
            ps = [p for p in sel if p["comparison"] == label]
            differ = [p for p in ps if p["quadrant"] != "tie"]
            ties = [p for p in ps if p["quadrant"] == "tie"]
            if differ:
                _points(ax, differ, marker, label)
            if ties:  # labelled here only when no point of the comparison differs from its baseline
                _points(ax, ties, marker, None if differ else label, color=TIE_COLOUR)
        clipped = sum(p["energy_gain_pct"] < X_CLIP for p in sel)
        if clipped:
            ax.text(
                0.01,
                0.01,
                f"{clipped} point(s) below {X_CLIP:.0f}% drawn at {X_CLIP:.0f}% (see eval.json)",
                transform=ax.transAxes,
                fontsize=7,
                va="bottom",
            )
        ax.set_yscale("log")
        ax.set_xlim(*xlim)
        ax.set_ylim(*ylim)
        ax.axhline(1, color="grey", lw=0.8)
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_xlabel("energy gain of RoaD-RuNNer (%) [energy: model]")
        ax.set_ylabel("speedup of RoaD-RuNNer (x, measured)")
        ax.set_title(title)
        handles, _ = ax.get_legend_handles_labels()
        n_ties = sum(p["quadrant"] == "tie" for p in sel)
        if n_ties:
            tie = f"grey: the baseline's own plan (tie), {n_ties} point(s)"
            handles.append(Patch(facecolor=TIE_COLOUR, edgecolor="black", linewidth=0.5, label=tie))
        ax.legend(handles=handles, fontsize=7, loc="upper left")
    fig.suptitle(f"Fig. 3 - RoaD-RuNNer vs baselines, plans run on the testbed ({TAG})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def fig4(data: dict[str, Any], path: Path) -> None:
    f4 = data["fig4"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, (target, unit) in zip(axes, (("latency", "ms"), ("energy", "mJ, model")), strict=True):
        d = f4[target]
        fills = [100 * f for f in d["fills"]]
        ax.plot(fills, d["cf"]["rmse"], "o-", label="RoaD-RuNNer (CF, cf_cpp)")
        ax.plot(fills, d["ns"]["rmse"], "s--", label="Neurosurgeon (regression)")
        ax.set_xlabel("profiled blocks per node (%)")
        ax.set_ylabel(f"RMSE of hidden entries ({unit})")
        ax.set_yscale("log")
        ax.set_title(f"{target}")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(
        f"Fig. 4 - prediction RMSE vs fill, ground-truth matrix {len(f4['rows'])} nodes x {f4['cols']} blocks ({TAG})"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _bars(ax: Any, by: dict[str, dict[str, float | None]], title: str, ylabel: str) -> None:
    keys = list(by.get("roadrunner", {}))
    x = np.arange(len(keys))
    for k, (method, label) in enumerate((("roadrunner", "RoaD-RuNNer (CF)"), ("neurosurgeon", "Neurosurgeon"))):
        vals = [by.get(method, {}).get(key) for key in keys]
        ax.bar(x + (k - 0.5) * 0.38, [v if v is not None else 0 for v in vals], 0.38, label=label)
    ax.set_xticks(x, keys, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)


def fig5(data: dict[str, Any], path: Path) -> None:
    f5 = data["fig5"]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    _bars(axes[0, 0], f5["per_model"]["latency"], "(a) latency, per model", "median |error| of plan latency (%)")
    _bars(axes[0, 1], f5["per_model"]["energy"], "(b) energy (model), per model", "median |error| of plan energy (%)")
    _bars(axes[1, 0], f5["per_device"]["latency"], "(c) latency, per device", "median |error| of plan latency (%)")
    _bars(axes[1, 1], f5["per_device"]["energy"], "(d) energy (model), per device", "median |error| of plan energy (%)")
    fig.suptitle(f"Fig. 5 - predicted vs measured whole-plan cost ({TAG})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def fig6(data: dict[str, Any], path: Path) -> None:
    share = data["fig6"]["share_pct"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, (objective, title) in zip(
        axes, (("latency", "(a) latency objective"), ("energy", "(b) energy objective")), strict=True
    ):
        by_dev = share.get(objective, {})
        devices = list(by_dev)
        # every model any device ran, in order: one that failed on a device is a missing bar there, not a 0% bar,
        # and still drawn for the others
        models = list(dict.fromkeys(m for by_model in by_dev.values() for m in by_model))
        w = 0.8 / max(len(devices), 1)
        for k, dev in enumerate(devices):
            ran = [x for x, m in enumerate(models) if m in by_dev[dev]]
            offset = (k - (len(devices) - 1) / 2) * w
            ax.bar([x + offset for x in ran], [by_dev[dev][models[x]] for x in ran], w, label=dev)
        ax.set_xticks(range(len(models)), models, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("blocks offloaded (%)")
        ax.set_ylim(0, 105)
        ax.set_title(title)
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"Fig. 6 - share of blocks offloaded by the chosen plan ({TAG})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


FIGURES = {"fig3.png": fig3, "fig4.png": fig4, "fig5.png": fig5, "fig6.png": fig6}


def write_all(data: dict[str, Any], out_dir: Path) -> list[Path]:
    paths = []
    for name, fn in FIGURES.items():
        fn(data, out_dir / name)
        paths.append(out_dir / name)
    return paths
