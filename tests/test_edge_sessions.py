"""The edge's ONNX Runtime sessions (`OrtSettings`): what every local part of a plan, and the profiler, run on."""

from __future__ import annotations

from rr_edge.offload import plan_slices
from rr_edge.runner import Runner
from rr_edge.session import OrtSettings


def test_pool_threads_stop_spinning_when_a_run_returns(chain):
    """A split runs its head, middle and tail one after the other as three sessions: left spinning after its run,
    each one's pool threads took the cores from the next (resnet18 split 2,8 on 2 threads: 56 against 17 ms for the
    whole model; `tools/bench_edge_chain.py`, docs/performance.md)."""
    _, graph, slicer = chain
    runner = Runner(plan_slices(slicer, len(graph.blocks), 1, 1), settings=OrtSettings(intra_op_threads=2))
    parts = [p for p in (runner._head, runner._middle_local, runner._tail) if p is not None]
    assert parts
    for part in parts:
        options = part.session.get_session_options()
        assert options.get_session_config_entry("session.force_spinning_stop") == "1"
        assert options.intra_op_num_threads == 2


def test_a_wrong_input_name_is_named_in_the_error(chain):
    """`runner.run({"image": x})` for a model whose input is `x` said "got nothing" without naming `image` (a new
    user's walkthrough; the CLI's .npz message named it)."""
    import numpy as np
    import pytest

    from rr_edge.errors import InputError

    _, graph, slicer = chain
    runner = Runner(plan_slices(slicer, len(graph.blocks), 3, 3))
    x = np.zeros(graph.inputs[0].shape, dtype=np.float32)
    with pytest.raises(InputError, match=r"got nothing \(given: 'image'\)") as err:
        runner.run({"image": x})
    assert repr(graph.inputs[0].name) in str(err.value)
    # a misspelt name beside the right ones was run without a word; the CLI refused such an archive (walkthrough)
    with pytest.raises(InputError, match=r"unknown input\(s\) 'imgae'; the model takes"):
        runner.run({graph.inputs[0].name: x, "imgae": x})


def test_a_runner_whose_client_was_closed_runs_locally_without_blaming_the_server(chain, tmp_path, caplog):
    """A runner used after its node was closed logged "server failed" at WARNING, and its requests said the server
    was down "until it answers", which nothing checks any more: the user closed the client."""
    import logging

    import numpy as np

    import rr_server
    from rr_edge.client import Client

    _, graph, slicer = chain
    x = np.zeros(graph.inputs[0].shape, dtype=np.float32)
    with rr_server.Server(rr_server.ServerConfig(data_dir=tmp_path, listen="127.0.0.1:0")) as server:
        client = Client(str(server.address))
        runner = Runner(plan_slices(slicer, len(graph.blocks), 0, 2), client)
        assert not runner.run(x).fallback
        client.close()
        with caplog.at_level(logging.INFO, logger="rr_edge.runner"):
            results = [runner.run(x) for _ in range(2)]
    assert all(r.fallback for r in results) and runner.server_down
    assert "client is closed" in results[1].error and "until it answers" not in results[1].error  # none will check
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name == "rr_edge.runner"]
    assert [r.getMessage() for r in caplog.records if "client is closed" in r.getMessage()]
