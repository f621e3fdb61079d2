"""Pareto plot: a PNG is written for a real plan table, with the baselines and the chosen plan."""

from __future__ import annotations

import numpy as np

from rr_edge.baselines import all_baselines
from rr_edge.netmodel import NetworkModel
from rr_edge.planner import PlanInputs, choose, evaluate_all, pareto
from rr_edge.plot import plot_pareto


def test_plot_pareto_writes_a_png(tmp_path):
    rng = np.random.default_rng(0)
    n = 20
    inp = PlanInputs(
        edge_ms=rng.uniform(0.5, 5, n), edge_mJ=rng.uniform(5, 50, n), cloud_ms=rng.uniform(0.5, 20, n),
        upload_bytes=rng.integers(0, 200_000, n), boundary_bytes=rng.integers(1_000, 300_000, n + 1),
        uplink=NetworkModel.affine(1.0, 5e4), downlink=NetworkModel.affine(1.0, 5e4), idle_power_W=0.2,
        tx_power_W=1.0,
    )  # fmt: skip
    table = evaluate_all(inp)
    out = plot_pareto(table, pareto(table), choose(table, "pareto"), all_baselines(inp), tmp_path / "p.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    front = pareto(table)
    out2 = plot_pareto(front, front, None, {}, tmp_path / "new" / "dir" / "q.png")  # made, as --plot promises
    assert out2.stat().st_size > 1000
