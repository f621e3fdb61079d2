"""The edge's ONNX Runtime sessions (`OrtSettings`): what every local part of a plan, and the profiler, run on."""

from __future__ import annotations

from rr_edge.offload import plan_slices
from rr_edge.runner import Runner
from rr_edge.session import OrtSettings


def test_pool_threads_stop_spinning_when_a_run_returns(chain):
    """A split runs its head, middle and tail one after the other as three sessions: left spinning after its run,
    each one's pool threads took the cores from the next (resnet18 split 2,8 on 2 threads: 56 against 18 ms for the
    whole model; `tools/bench_edge_chain.py`, docs/performance.md)."""
    _, graph, slicer = chain
    runner = Runner(plan_slices(slicer, len(graph.blocks), 1, 1), settings=OrtSettings(intra_op_threads=2))
    parts = [p for p in (runner._head, runner._middle_local, runner._tail) if p is not None]
    assert parts
    for part in parts:
        options = part.session.get_session_options()
        assert options.get_session_config_entry("session.force_spinning_stop") == "1"
        assert options.intra_op_num_threads == 2
