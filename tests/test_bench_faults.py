"""The pure parts of tools/bench_faults.py: reading a trace into gaps and recovery times, its options, its table."""

from __future__ import annotations

import json
from pathlib import Path

from tools.bench_faults import largest_gap, markdown, parse_args, served_again_s

REPO = Path(__file__).resolve().parents[1]


def _request(k: int, t_s: float, split=(-1, 10), fallback=False) -> dict:  # type: ignore[no-untyped-def]
    return {"event": "request", "k": k, "t_s": t_s, "split": list(split), "fallback": fallback, "total_ms": 1.0,
            "remote_ms": 0.0, "error": ""}  # fmt: skip


def test_the_largest_gap_and_the_first_request_served_after_a_fault():
    trace = [_request(0, 1.0), _request(1, 1.1), _request(2, 3.6, fallback=True), _request(3, 3.7, split=(12, 12)),
             _request(4, 6.0, fallback=True), _request(5, 6.5)]  # fmt: skip
    gap = largest_gap(trace, fault_on_s=1.2)
    assert gap is not None and gap["s"] == 2.5 and gap["after_request"] == 1 and gap["after_fault_began_s"] == -0.1
    assert gap["next"]["fallback"] is True
    assert served_again_s(trace, fault_off_s=3.5) == 3.0  # not the local split at 3.7, nor the fallback at 6.0
    assert served_again_s(trace, fault_off_s=None) is None and largest_gap(trace[:1], None) is None


def _sizes(argv: list[str]) -> tuple[int, int, float, float]:
    args = parse_args(argv)
    return args.repeat, args.at, args.cut_s, args.kill_s


def test_quick_keeps_what_the_command_line_gives():
    assert _sizes(["--quick", "--repeat", "300"]) == (300, 60, 8.0, 4.0)
    assert _sizes([]) == (600, 200, 20.0, 10.0)


def test_the_committed_results_render_as_the_docs_table():
    table = markdown(json.loads((REPO / "docs/results/faults_bench.json").read_text()))
    rows = [line for line in table.splitlines() if line.startswith("| ") and "scenario" not in line]
    assert {row.split(" | ")[0].strip("| ") for row in rows} >= {"baseline", "link-cut", "server-kill"}
    assert table.splitlines()[-1] in (REPO / "docs/testbed.md").read_text()  # the docs show the saved run
