"""How the runner behaves while its server is hung, failing or handed a bad request, and how it comes back.

A hung server is a real `rr-server` subprocess stopped with SIGSTOP: connections stay open, nothing answers (what a
link that black-holes packets looks like too).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest

import rr_server
import rr_server.inference_servicer as inference_servicer
from rr_edge.api import EdgeNode
from rr_edge.client import Client, ClientOptions
from rr_edge.commands import run as run_command
from rr_edge.meters import ModelMeter
from rr_edge.offload import make_runner
from rr_edge.runner import DOWN, LOST_AGAIN_REQUESTS, PROBE_TIMEOUT_S, RunnerConfig, fallback_cause
from rr_server.errors import InvalidArgument
from tests._server_process import ServerProcess

GENEROUS_S = 30.0  # how long a test waits for something that takes well under a second


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path / "data")
    yield proc
    proc.stop()  # SIGKILL ends a stopped process too


@pytest.fixture(scope="module")
def in_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    config = rr_server.ServerConfig(data_dir=tmp_path_factory.mktemp("recovery"), listen="127.0.0.1:0")
    with rr_server.Server(config) as s, Client(str(s.address)) as c:
        yield c


def _x(graph) -> np.ndarray:
    return np.random.default_rng(0).standard_normal(graph.inputs[0].shape).astype(np.float32)


def _local(slicer, graph, x: np.ndarray) -> np.ndarray:
    return make_runner(slicer, graph, (3, 3), None)(x)["y3"]


def _stream_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("rr-stream") and t.is_alive()}


def test_a_hung_server_is_probed_in_the_background_one_check_at_a_time(chain, server, monkeypatch):
    """While the server is down every request runs locally at once: health checks run in a thread of their own,
    never two together, and the next starts `retry_interval_s` after the previous one ended (each takes the whole
    probe deadline here, longer than the interval). When the server answers again, the runner offloads again."""
    _, graph, slicer = chain
    x = _x(graph)
    interval = 0.1
    probes: list[tuple[int, float, float]] = []  # (thread, start, end)
    with Client(server.address) as client:
        healthy = client.healthy

        def recorded(timeout_s: float | None = None) -> bool:
            start = time.monotonic()
            try:
                return healthy(timeout_s)
            finally:
                probes.append((threading.get_ident(), start, time.monotonic()))

        monkeypatch.setattr(client, "healthy", recorded)
        runner = make_runner(slicer, graph, (0, 2), client, config=RunnerConfig(timeout_s=1, retry_interval_s=interval))
        assert not runner.run(x).fallback
        with server.hung():
            first = runner.run(x)  # waits for its answer until the deadline, then finishes locally
            assert first.fallback and runner.server_down
            results = []
            deadline = time.monotonic() + GENEROUS_S
            while len(probes) < 3 and time.monotonic() < deadline:
                results.append(runner.run(x))
                time.sleep(0.01)
        assert len(probes) >= 3, "no health checks while the server was down"
        assert all(r.fallback and r.error.startswith("server down") for r in results)  # local, no remote attempt
        assert threading.get_ident() not in {thread for thread, _, _ in probes}  # never in the request path
        ordered = sorted(probes, key=lambda p: p[1])
        for (_, _, end), (_, next_start, _) in zip(ordered, ordered[1:], strict=False):
            assert next_start >= end + interval - 1e-3, "health checks overlapped or came too soon"
        deadline = time.monotonic() + GENEROUS_S
        while (result := runner.run(x)).fallback and time.monotonic() < deadline:
            time.sleep(0.05)
        runner.close()
    assert not result.fallback and result.remote_ms > 0 and not runner.server_down
    np.testing.assert_allclose(result.outputs["y3"], _local(slicer, graph, x), rtol=1e-5, atol=1e-6)


def test_a_stream_that_timed_out_is_cancelled(chain, server):
    """The request that timed out finishes locally; its stream is cancelled, so the thread that waited for the
    answer ends even though the server never answers."""
    _, graph, slicer = chain
    x = _x(graph)
    with Client(server.address) as client:
        runner = make_runner(slicer, graph, (0, 2), client, config=RunnerConfig(timeout_s=1, retry_interval_s=60))
        before = _stream_threads()
        assert not runner.run(x).fallback
        with server.hung():
            result = runner.run(x)
            assert result.fallback and "no stream answer within 1.0 s" in result.error
            readers = _stream_threads() - before
            deadline = time.monotonic() + GENEROUS_S
            while any(t.is_alive() for t in readers) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not any(t.is_alive() for t in readers), "the stream's reader still waits on the hung call"
        runner.close()


def test_a_runner_started_beside_a_hung_server_runs_locally_after_the_probe_deadline(chain, server, tmp_path):
    """The slice status query that starts a runner waits PROBE_TIMEOUT_S, not the client's whole deadline (30 s by
    default): the application's start is not held while the server is hung. Requests run locally until it answers
    a health check again, then the runner makes its slice ready (its status query waiting as long as any call) and
    offloads."""
    model, graph, _ = chain
    path = tmp_path / "chain.onnx"
    onnx.save(model, path)
    x = _x(graph)
    deadlines: list[float | None] = []
    with EdgeNode(server.address, "hung-start", options=ClientOptions(timeout_s=GENEROUS_S)) as node:
        status = node.client.slice_status

        def recorded(slice_id: str, timeout_s: float | None = None):
            deadlines.append(timeout_s)
            return status(slice_id, timeout_s)

        node.client.slice_status = recorded  # type: ignore[method-assign]
        with server.hung():
            runner = node.runner(path, (0, 2), RunnerConfig(timeout_s=GENEROUS_S, retry_interval_s=0.1))
            assert runner.server_down
            local = runner.run(x)
        assert deadlines[0] == PROBE_TIMEOUT_S
        assert local.fallback and local.error.startswith(DOWN) and "DEADLINE_EXCEEDED" in local.error
        deadline = time.monotonic() + GENEROUS_S
        while (result := runner.run(x)).fallback and time.monotonic() < deadline:
            time.sleep(0.05)
        runner.close()
    assert not result.fallback and result.remote_ms > 0
    # once a health check has had an answer, the server is waited for as long as any call: a slow one is no hung one
    assert deadlines[1:] and set(deadlines[1:]) == {GENEROUS_S}
    np.testing.assert_allclose(result.outputs["y3"], local.outputs["y3"], rtol=1e-5, atol=1e-6)


def test_an_edge_node_runner_takes_its_deadline_from_the_client_options(chain, server, tmp_path):
    model, graph, _ = chain
    path = tmp_path / "chain.onnx"
    onnx.save(model, path)
    x = _x(graph)
    with EdgeNode(server.address, "deadline-node", options=ClientOptions(timeout_s=1.0)) as node:
        runner = node.runner(path, (0, 2))
        assert runner.config.timeout_s == 1.0
        assert not runner.run(x).fallback
        with server.hung():
            result = runner.run(x)
        runner.close()
    assert result.fallback and "within 1.0 s" in result.error


@pytest.mark.parametrize("stream", [True, False])
def test_a_failing_server_is_marked_down_without_reuploading(chain, in_process, monkeypatch, stream):
    """INTERNAL on every request (ONNX Runtime failing on the server): the request finishes locally and the server
    is marked down, in stream mode as in unary mode; only NOT_FOUND makes the runner check and upload the slice."""
    _, graph, slicer = chain
    x = _x(graph)
    runner = make_runner(slicer, graph, (0, 2), in_process, config=RunnerConfig(stream=stream, retry_interval_s=60))
    assert not runner.run(x).fallback
    checks: list[str] = []
    monkeypatch.setattr(in_process, "slice_status", lambda *a, **k: checks.append("slice_status"))

    def broken(self, request, stream=False, **kw):
        raise RuntimeError("simulated ONNX Runtime failure")

    monkeypatch.setattr(inference_servicer.InferenceServicer, "_infer", broken)
    first, second = runner.run(x), runner.run(x)
    runner.close()
    assert first.fallback and "INTERNAL" in first.error and runner.server_down
    assert second.fallback and second.error == f"server down, running locally until it answers: {first.error}"
    # one outage, one reason: the run's summary counts both requests under the error the first one met
    summary = run_command.summarize((0, 2), [first, second], [None, None], ModelMeter(), 0.0)
    assert summary["fallback_reasons"] == {first.error: 2}
    assert summary["remote_ms_median"] is None  # the server answered neither: no round trip to report
    assert checks == []
    np.testing.assert_allclose(first.outputs["y3"], _local(slicer, graph, x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("stream", [True, False])
def test_a_bad_request_does_not_mark_the_server_down(chain, in_process, caplog, monkeypatch, stream):
    """INVALID_ARGUMENT blames the request, not the server: it is finished locally and the next request is
    offloaded as before. (Inputs that do not fit the model never leave the edge: InputError, tests/test_runner.py.)"""
    _, graph, slicer = chain
    x = _x(graph)
    with make_runner(slicer, graph, (-1, 3), in_process, config=RunnerConfig(stream=stream)) as runner:
        assert not runner.run(x).fallback
        real = inference_servicer.InferenceServicer._infer

        def refused(self, request, stream=False, **kw):
            raise InvalidArgument("this request's tensor is not one the slice takes")

        monkeypatch.setattr(inference_servicer.InferenceServicer, "_infer", refused)
        with caplog.at_level(logging.WARNING, logger="rr_edge.runner"):
            bad = runner.run(x)
        assert bad.fallback and "INVALID_ARGUMENT" in bad.error and not runner.server_down
        assert "server failed" not in caplog.text
        monkeypatch.setattr(inference_servicer.InferenceServicer, "_infer", real)
        after = runner.run(x)
    assert not after.fallback and after.remote_ms > 0


@pytest.mark.parametrize("split", [(-1, 3), (0, 3), (0, 2), (1, 1)])
@pytest.mark.parametrize("stream", [True, False])
def test_outputs_are_writable_for_every_plan(chain, in_process, split, stream):
    """Also when the server runs the last block and its answer is the caller's output."""
    _, graph, slicer = chain
    x = _x(graph)
    with make_runner(slicer, graph, split, in_process, config=RunnerConfig(stream=stream)) as runner:
        result = runner.run(x)
    assert not result.fallback
    out = result.outputs["y3"]
    assert out.flags.writeable
    out += 1  # user code may update its outputs in place
    np.testing.assert_allclose(out, _local(slicer, graph, x) + 1, rtol=1e-5, atol=1e-5)


def test_a_server_without_a_free_stream_slot_gets_unary_calls(chain, tmp_path):
    """Every stream slot of the server is taken (idle streams of other edges): the runner's stream is refused at
    once, and it sends one ModelInfer per request instead of falling back to local execution. Once slots are free
    again and `stream_retry_s` has passed, it streams again (it used to send ModelInfer calls for ever)."""
    model, graph, slicer = chain
    config = rr_server.ServerConfig(data_dir=tmp_path / "data", listen="127.0.0.1:0", workers=4)
    with rr_server.Server(config) as server, Client(str(server.address)) as client:
        slots = server.stream_slots
        queues = [queue.Queue() for _ in range(slots.capacity["edge"])]
        others = [client.stream_infer("0" * 64, iter(q.get, None)) for q in queues]
        deadline = time.monotonic() + GENEROUS_S
        while slots.in_use["edge"] < slots.capacity["edge"] and time.monotonic() < deadline:
            time.sleep(0.01)
        x = _x(graph)
        runner_config = RunnerConfig(timeout_s=GENEROUS_S, stream_retry_s=0.5)
        with make_runner(slicer, graph, (0, 2), client, config=runner_config) as runner:
            results = [runner.run(x) for _ in range(3)]
            assert not any(r.fallback for r in results) and not runner.server_down
            np.testing.assert_allclose(results[-1].outputs["y3"], _local(slicer, graph, x), rtol=1e-5, atol=1e-5)
            for q in queues:
                q.put(None)
            for other in others:
                list(other)
            while slots.in_use["edge"] > 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(runner_config.stream_retry_s)
            assert not runner.run(x).fallback
            assert slots.in_use["edge"] == 1  # its own stream, kept open for the next request


def test_closing_a_runner_does_not_wait_for_a_background_reupload(chain, in_process, monkeypatch):
    """The health check held the request lock while it uploaded the slice again: on a slow link `run` hung 24 s
    after its last request, deaf to Ctrl-C (found by review)."""
    _, graph, slicer = chain
    x = _x(graph)
    runner = make_runner(slicer, graph, (0, 2), in_process, config=RunnerConfig(retry_interval_s=0.01))
    assert not runner.run(x).fallback
    uploading, release = threading.Event(), threading.Event()
    real_ensure = in_process.ensure_slice

    def slow_upload(*args, **kwargs):  # type: ignore[no-untyped-def]
        uploading.set()
        release.wait(GENEROUS_S)
        return real_ensure(*args, **kwargs)

    monkeypatch.setattr(in_process, "ensure_slice", slow_upload)
    runner._mark_down(RuntimeError("simulated: the server went away"))  # the next request starts a health check
    time.sleep(0.02)
    assert runner.run(x).fallback
    assert uploading.wait(GENEROUS_S), "no health check uploaded the slice"
    closing = threading.Thread(target=runner.close)
    closing.start()
    closing.join(GENEROUS_S / 3)
    stuck = closing.is_alive()
    release.set()
    closing.join()
    assert not stuck, "close() waited for the background upload"


def test_a_server_that_answers_but_refuses_the_slice_says_why(chain, in_process, monkeypatch, caplog):
    """Restarted with a smaller --max-slice-mb (or without the edge's token), the server answered health checks and
    refused the slice: the edge went on reporting the first failure, UNAVAILABLE, for good (found by review)."""
    from rr_edge.errors import ServerError

    _, graph, slicer = chain
    x = _x(graph)
    runner = make_runner(slicer, graph, (0, 2), in_process, config=RunnerConfig(retry_interval_s=0.01))
    assert not runner.run(x).fallback
    refusal = "UploadSlice: RESOURCE_EXHAUSTED: slice of 9,000 bytes exceeds the server's limit"
    tried = threading.Event()

    def refuse(*args, **kwargs):  # type: ignore[no-untyped-def]
        tried.set()
        raise ServerError(refusal, "RESOURCE_EXHAUSTED")

    monkeypatch.setattr(in_process, "ensure_slice", refuse)
    with caplog.at_level(logging.WARNING, logger="rr_edge.runner"):
        runner._mark_down(RuntimeError("UNAVAILABLE: Stream removed"))
        time.sleep(0.02)
        runner.run(x)  # starts the health check, which the server passes, then refuses the slice
        assert tried.wait(GENEROUS_S)
        deadline = time.monotonic() + GENEROUS_S
        while refusal not in (result := runner.run(x)).error and time.monotonic() < deadline:
            time.sleep(0.01)
    runner.close()
    assert result.fallback and result.error.endswith(refusal)
    assert f"server still unusable, running locally: {refusal}" in caplog.text
    assert runner._probe_wait_s >= 0.02  # each failed upload doubles the wait before the next (it was sent each second)


def test_a_request_that_timed_out_counts_as_a_slow_network(chain, in_process, monkeypatch):
    """A link slowed down past the deadline timed out, the health check passed, the next request timed out again,
    and so on every few seconds, with no re-plan: a failed request told the network models nothing (found by
    review). Its wait is now a lower bound of the network's time."""
    from rr_edge.netmodel import NetworkModel
    from rr_edge.offload import plan_slices
    from rr_edge.runner import Runner

    _, graph, slicer = chain
    x = _x(graph)
    honest = NetworkModel.affine(rtt_ms=0.5, bandwidth_bytes_per_ms=1e6)
    slices = plan_slices(slicer, len(graph.blocks), 0, 2)
    runner = Runner(slices, in_process, RunnerConfig(timeout_s=0.3, stream=False), uplink=honest, downlink=honest)
    assert not runner.run(x).fallback
    real_infer = inference_servicer.InferenceServicer._infer

    def slow(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        time.sleep(0.6)  # past the 0.3 s deadline: the link is that slow now
        return real_infer(self, *args, **kwargs)

    monkeypatch.setattr(inference_servicer.InferenceServicer, "_infer", slow)
    late = runner.run(x)
    runner.close()
    assert late.fallback and "DEADLINE_EXCEEDED" in late.error
    assert runner.link.uplink is not None and runner.link.uplink.drift > 10  # 300 ms against a 0.5 ms model
    assert runner.replan_needed


def test_a_slice_the_server_lost_is_uploaded_again_off_the_request_path(chain, tmp_path, monkeypatch, caplog):
    """NOT_FOUND (the slice evicted, or a server on a fresh data dir): the upload ran in the request that met it,
    under the runner's lock, so every request waited for it (6.5 s once: soak review). It runs in the health check
    now; requests finish locally meanwhile, then offload again."""
    import threading

    _, graph, slicer = chain
    x = _x(graph)
    address = None
    with rr_server.Server(rr_server.ServerConfig(data_dir=tmp_path / "a", listen="127.0.0.1:0")) as s:
        address = str(s.address)
        client = Client(address)
        runner = make_runner(slicer, graph, (0, 2), client, config=RunnerConfig(stream=False, retry_interval_s=0.05))
        assert not runner.run(x).fallback
    uploads: list[str] = []
    real = client.ensure_slice
    monkeypatch.setattr(
        client, "ensure_slice", lambda *a, **k: uploads.append(threading.current_thread().name) or real(*a, **k)
    )
    with rr_server.Server(rr_server.ServerConfig(data_dir=tmp_path / "b", listen=address)):
        lost = runner.run(x)
        assert lost.fallback and "NOT_FOUND" in lost.error
        deadline = time.monotonic() + GENEROUS_S
        while (result := runner.run(x)).fallback:
            assert fallback_cause(result.error) == lost.error  # the slice lost is why, however the request says it
            assert time.monotonic() < deadline, "the runner never offloaded again"
            time.sleep(0.02)
        runner.close()
    client.close()
    assert uploads and threading.main_thread().name not in uploads and set(uploads) == {"rr-probe"}
    assert runner.made_ready == 2  # at the start, and again
    # the end of it is said at the warning's level too (a warning said it failed, then nothing, walkthrough)
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("no longer holds the slice" in m for m in said) and any("slice uploaded again after" in m for m in said)


def test_a_stopping_server_answers_the_request_in_flight_then_ends_the_stream(chain, tmp_path, monkeypatch):
    """A server asked to stop ends an edge's inference stream at once when it waits for a request, else after the
    answer to the one it serves (`rr_server.open_streams`): that request is served, and the next runs locally."""
    _, graph, slicer = chain
    x = _x(graph)
    serving, go = threading.Event(), threading.Event()
    real = inference_servicer.InferenceServicer._infer

    def held(self, *a, **kw):
        serving.set()
        assert go.wait(GENEROUS_S)
        return real(self, *a, **kw)

    server = rr_server.Server(rr_server.ServerConfig(data_dir=tmp_path, listen="127.0.0.1:0", grace_s=600))
    server.start()
    with Client(str(server.address)) as client:
        runner = make_runner(slicer, graph, (0, 2), client, config=RunnerConfig(timeout_s=GENEROUS_S))
        assert not runner.run(x).fallback  # the stream is open
        monkeypatch.setattr(inference_servicer.InferenceServicer, "_infer", held)
        results: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: results.put(runner.run(x)), daemon=True).start()
        assert serving.wait(GENEROUS_S)
        stopping = threading.Thread(target=server.stop, daemon=True)
        stopping.start()
        deadline = time.monotonic() + GENEROUS_S
        while not server._inference.streams.ended and time.monotonic() < deadline:  # asked to end while it serves
            time.sleep(0.01)
        go.set()
        served = results.get(timeout=GENEROUS_S)
        stopping.join(GENEROUS_S)  # not the 600 s grace: the stream ended after its answer
        assert not stopping.is_alive() and not served.fallback and served.remote_ms > 0
        after = runner.run(x)
        runner.close()
    assert after.fallback  # no server: locally
    np.testing.assert_allclose(served.outputs["y3"], _local(slicer, graph, x), rtol=1e-5, atol=1e-6)


def test_a_slice_lost_again_soon_is_uploaded_again_only_after_a_wait(chain, tmp_path, monkeypatch, caplog):
    """Two edges whose slices did not fit the server's store together evicted each other's at once, over and over
    (walkthrough). A slice lost before it served `LOST_AGAIN_REQUESTS` requests waits `retry_interval_s` (doubled
    each time) before its upload; one that served that many is uploaded at once, as before."""

    _, graph, slicer = chain
    x = _x(graph)
    data = iter(tmp_path / name for name in "abcd")
    with rr_server.Server(rr_server.ServerConfig(data_dir=next(data), listen="127.0.0.1:0")) as s:
        address = str(s.address)
        client = Client(address)
        runner = make_runner(slicer, graph, (0, 2), client, config=RunnerConfig(stream=False, retry_interval_s=30))
        for _ in range(LOST_AGAIN_REQUESTS):
            assert not runner.run(x).fallback
    uploads: list[float] = []
    real = client.ensure_slice
    monkeypatch.setattr(client, "ensure_slice", lambda *a, **k: uploads.append(time.monotonic()) or real(*a, **k))
    with rr_server.Server(rr_server.ServerConfig(data_dir=next(data), listen=address)):  # lost after 20: at once
        deadline = time.monotonic() + GENEROUS_S
        while runner.run(x).fallback:
            assert time.monotonic() < deadline, "the runner never offloaded again"
            time.sleep(0.02)
        assert len(uploads) == 1 and runner.made_ready == 2
    caplog.clear()
    with rr_server.Server(rr_server.ServerConfig(data_dir=next(data), listen=address)):  # lost after 1: waits 30 s
        results = [runner.run(x) for _ in range(20)]
        time.sleep(0.2)  # a health check started at once would have begun its upload by now
        results.append(runner.run(x))
        runner.close()
    client.close()
    assert len(uploads) == 1 and all(r.fallback for r in results)
    assert "uploading it again in 30 s (lost again after 1 requests" in caplog.text


def test_a_stream_the_stopping_server_cancelled_says_so(chain, tmp_path):
    """The idle stream a stopping server cancels reached the runner as "CANCELLED: CANCELLED" (review); a client
    closed on purpose still says so."""
    _, graph, slicer = chain
    x = _x(graph)
    server = rr_server.Server(rr_server.ServerConfig(data_dir=tmp_path, listen="127.0.0.1:0"))
    server.start()
    with Client(str(server.address)) as client:
        runner = make_runner(slicer, graph, (0, 2), client)
        assert not runner.run(x).fallback  # the stream is open, and idle
        server.stop()
        after = runner.run(x)
        runner.close()
    # cancelled as idle; or, when the stop came as the server's thread went back to waiting, ended as stopping
    said = ("the server cancelled the stream (stopping?)", "the server is stopping")
    assert after.fallback and any(s in after.error for s in said) and "CANCELLED: CANCELLED" not in after.error
