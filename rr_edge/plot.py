"""Pareto figure: every plan, the Pareto front, the chosen plan and the baselines (matplotlib, Agg backend).

The only module of the planner family that touches a file; matplotlib is imported lazily so the core stays light.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from rr_edge.planner import Plan, PlanTable

_MARKERS = ("s", "^", "v", "D", "P", "X", "*")
_MAX_POINTS = 200_000  # more plans than this are subsampled (seeded) for drawing


def plot_pareto(
    all_plans: PlanTable | Sequence[Plan],
    pareto: Sequence[Plan],
    chosen: Plan | None,
    baselines: Mapping[str, Plan],
    path: str | Path,
    title: str = "RoaD-RuNNer partition plans",
) -> Path:
    """Write a PNG of latency (ms) vs edge energy (mJ); returns the path written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if isinstance(all_plans, PlanTable):
        _, _, lat, en = all_plans.flat()
    else:
        lat = np.array([p.latency_ms for p in all_plans])
        en = np.array([p.energy_mJ for p in all_plans])
    # Plans over the server's limits are priced at infinity: not drawn, so not counted, and no reason for a log axis.
    finite = np.isfinite(lat) & np.isfinite(en)
    lat, en = lat[finite], en[finite]
    if lat.size > _MAX_POINTS:
        keep = np.random.default_rng(0).choice(lat.size, _MAX_POINTS, replace=False)
        lat, en = lat[keep], en[keep]
    fig, ax = plt.subplots(figsize=(7.5, 5.0), dpi=120)
    ax.scatter(lat, en, s=4, c="0.75", alpha=0.5, linewidths=0, label=f"all plans ({lat.size})", rasterized=True)
    if pareto:
        ax.plot([p.latency_ms for p in pareto], [p.energy_mJ for p in pareto], "-o", color="tab:blue", ms=3,
                lw=1.2, label=f"Pareto front ({len(pareto)})", drawstyle="steps-post")  # fmt: skip
    labels: dict[tuple[float, float], list[str]] = {}
    for k, (name, plan) in enumerate(baselines.items()):
        ax.scatter([plan.latency_ms], [plan.energy_mJ], marker=_MARKERS[k % len(_MARKERS)], s=60, zorder=4,
                   edgecolors="black", linewidths=0.6, label=f"{name} ({plan.i}, {plan.j})")  # fmt: skip
        labels.setdefault((plan.latency_ms, plan.energy_mJ), []).append(name)
    for (x, y), names in labels.items():  # baselines on the same point share one label
        ax.annotate(" = ".join(names), (x, y), textcoords="offset points", xytext=(6, 4), fontsize=7)
    if chosen is not None:
        how = f" / {chosen.objective}" if chosen.objective else ""
        ax.scatter([chosen.latency_ms], [chosen.energy_mJ], marker="*", s=220, c="tab:red", zorder=5,
                   edgecolors="black", linewidths=0.6,
                   label=f"chosen{how} ({chosen.i}, {chosen.j})")  # fmt: skip
    ax.set_xlabel("predicted latency per inference (ms)")
    ax.set_ylabel("predicted edge energy per inference (mJ)")
    if lat.size and lat.max() / max(lat.min(), 1e-12) > 100:
        ax.set_xscale("log")
    if en.size and en.max() / max(en.min(), 1e-12) > 100:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
