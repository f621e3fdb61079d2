"""Found by a concurrency and endurance review: 16 edge nodes (threads, asyncio tasks, processes) running forced
splits of resnet18 and mobilenet_v2 against one rr-server with a small slice store (`--max-store-gb`), killed -9 and
restarted under them, closed while requests were in flight."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import rr_server
from rr_edge.client import Client
from rr_edge.offload import make_runner
from rr_edge.runner import RunnerConfig

GENEROUS_S = 15.0  # how long a test waits for something that takes well under a second


@pytest.fixture
def server(tmp_path: Path) -> Iterator[rr_server.Server]:
    config = rr_server.ServerConfig(data_dir=tmp_path / "data", listen="127.0.0.1:0")
    with rr_server.Server(config) as s:
        yield s


def _x(graph) -> np.ndarray:
    return np.random.default_rng(0).standard_normal(graph.inputs[0].shape).astype(np.float32)


def _local(slicer, graph, x: np.ndarray) -> np.ndarray:
    return make_runner(slicer, graph, (3, 3), None)(x)["y3"]


def test_a_slice_evicted_between_its_upload_and_its_load_is_uploaded_again(chain, server, monkeypatch):
    """With a store budget, another edge's upload can evict a slice between this edge's upload and the load in the
    same call; the server answers NOT_FOUND, "upload it again". `node.runner(...)` raised that ServerError as if the
    server refused the slice (2 of 16 soak nodes lost their runner). The runner now starts locally and its health
    check uploads the slice again."""
    _, graph, slicer = chain
    x = _x(graph)
    real_get = server.sessions.get
    evicted: list[str] = []

    def evicted_first(slice_id: str, path: Path):  # type: ignore[no-untyped-def]
        if not evicted:  # evicted by a concurrent upload just before the load opens it
            evicted.append(slice_id)
            path.unlink()
        return real_get(slice_id, path)

    monkeypatch.setattr(server.sessions, "get", evicted_first)
    with Client(str(server.address)) as client:
        runner = make_runner(slicer, graph, (0, 2), client, config=RunnerConfig(retry_interval_s=0.05))
        assert evicted, "the load did not go through the session pool"
        first = runner.run(x)
        assert first.fallback and "NOT_FOUND" in first.error
        deadline = time.monotonic() + GENEROUS_S
        while (result := runner.run(x)).fallback and time.monotonic() < deadline:
            time.sleep(0.02)
        runner.close()
    assert not result.fallback, f"never offloaded again: {result.error}"
    expected = _local(slicer, graph, x)
    for r in (first, result):
        np.testing.assert_allclose(r.outputs["y3"], expected, rtol=1e-5, atol=1e-6)


def test_a_request_racing_the_clients_close_finishes_locally(chain, server, monkeypatch):
    """A node closed by one thread while another opened its runner's stream: the check that the client is open
    passed, the channel closed, and gRPC's bare ValueError ("Cannot invoke RPC: Channel closed!") escaped
    `runner.run` instead of the request finishing locally."""
    _, graph, slicer = chain
    x = _x(graph)
    client = Client(str(server.address))
    runner = make_runner(slicer, graph, (0, 2), client, config=RunnerConfig(retry_interval_s=60))
    real_check = client._check_open

    def closed_right_after(what: str) -> None:  # the interleaving: checked open, then closed by another thread
        real_check(what)
        if what.startswith("ModelStreamInfer"):
            client.close()

    monkeypatch.setattr(client, "_check_open", closed_right_after)
    result = runner.run(x)
    assert result.fallback and "closed" in result.error
    np.testing.assert_allclose(result.outputs["y3"], _local(slicer, graph, x), rtol=1e-5, atol=1e-6)
    assert runner.run(x).fallback  # and the next ones too, without raising
    runner.close()
    client.close()


def test_closing_a_node_does_not_wait_for_a_request_stuck_on_a_hung_server(chain, server, tmp_path, monkeypatch):
    """A node closed while one of its runners waited for a hung server: `close()` took the runner's lock, so it
    waited for that request's deadline (30 s by default) before closing anything. The connection now closes first,
    which ends the stuck call: the request finishes locally at once, and so does close(). No clock: the deadline is
    an hour and the server stays hung until both have finished, so only closing the connection can end them."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import onnx

    from rr_edge.api import EdgeNode
    from rr_edge.client import ClientOptions

    model, graph, _ = chain
    path = tmp_path / "chain.onnx"
    onnx.save(model, path)
    x = _x(graph)
    entered, release = threading.Event(), threading.Event()
    real_infer = server.repository.infer

    def hung(*args, **kwargs):  # type: ignore[no-untyped-def]
        entered.set()
        release.wait(600)  # released by the test's end; the bound only keeps a broken run from hanging the server
        return real_infer(*args, **kwargs)

    node = EdgeNode(str(server.address), "closer", options=ClientOptions(timeout_s=3600.0))
    pool = ThreadPoolExecutor(2)
    try:
        runner = node.runner(path, (0, 2))
        assert not runner.run(x).fallback
        idle = node.runner(path, (1, 2))  # a second runner, idle, with its stream open
        assert not idle.run(x).fallback
        monkeypatch.setattr(server.repository, "infer", hung)
        request = pool.submit(runner.run, x)
        assert entered.wait(GENEROUS_S), "the request never reached the server"
        closing = pool.submit(node.close)
        closing.result(timeout=GENEROUS_S)  # a TimeoutError: close() waited for the stuck request
        result = request.result(timeout=GENEROUS_S)  # both while the server is still hung
    finally:
        release.set()
        pool.shutdown()
        node.close()
    assert result.fallback and "closed" in result.error.lower()
    np.testing.assert_allclose(result.outputs["y3"], _local(chain[2], graph, x), rtol=1e-5, atol=1e-6)
    after = idle.run(x)  # a runner of the closed node finishes locally, saying so
    assert after.fallback and "closed" in after.error
