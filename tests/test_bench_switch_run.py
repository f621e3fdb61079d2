"""`tools/bench_switch_run.py`, whose figures docs/performance.md quotes, still runs, and its run switches split
(twice, unless the run ends first) without running a request locally for a switch."""

from __future__ import annotations

from typing import Any

import pytest

from tools._trees import REPO, run_in_tree


@pytest.mark.slow
def test_the_switch_run_benchmark_switches_and_runs_nothing_locally(zoo_path: Any) -> None:
    path = zoo_path("resnet18", 224)
    out = run_in_tree(REPO, "tools.bench_switch_run", f"measure({str(path)!r}, 90, 1, 1.0)")
    assert out["switches"][0] >= 1 and out["local_requests"] == [0]  # B ready in 30 requests, A maybe not
    assert len(out["gaps_ms"][0]) == 90 and max(out["gaps_ms"][0]) == pytest.approx(out["longest_gap_ms"][0], abs=0.1)
    assert out["upload_ms"][0] > 0  # B's slice was uploaded by the switch
