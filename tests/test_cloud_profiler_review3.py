"""The cloud profiler's outcomes (found by review): its open and warm-ups wait for the edges' requests as its timed
runs do, and the crash journal names a slice only while it is opened or run; a timing ends timed, passing (tried
again at the next report: memory short for a moment, a run past the budget beside a request), refused while the
server runs (ONNX Runtime refuses the slice or its inputs, a run past the budget with the server to itself), or, after
two deaths of the process, never again; a server started on another execution provider times its row again."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from _server_support import conv_model, layer, report, serving, sha256
from onnx import TensorProto, helper
from test_run_limits import loop_model
from test_server_profiles import features, register, report_uploaded_block

from rr_proto.roadrunner.v1 import roadrunner_pb2 as rr
from rr_server.activity import InferenceActivity
from rr_server.cloud_profiler import CloudProfiler
from rr_server.errors import ResourceExhausted
from rr_server.records import ModelRun
from rr_server.sessions import SessionPool
from rr_server.slices import SliceStore
from rr_server.storage import Storage


def test_the_open_and_the_warm_ups_wait_for_the_requests_too(tmp_path: Path, monkeypatch) -> None:
    """Only the timed runs waited: the slice's session was opened and warmed up (3 runs) beside the request."""
    with serving(tmp_path) as (server, stubs):
        activity, beside_a_request = server.repository.activity, []

        def noting(call: Callable) -> Callable:
            def noted(*args):  # type: ignore[no-untyped-def]
                beside_a_request.append(activity.wait_idle(0) is None)
                return call(*args)

            return noted

        monkeypatch.setattr(server.sessions, "borrow", noting(server.sessions.borrow))
        monkeypatch.setattr(server.cloud_profiler, "_run", noting(server.cloud_profiler._run))
        with activity.running():  # an edge's request in progress on the server
            report_uploaded_block(stubs, "busysig", seed=7)
            assert not server.cloud_profiler.wait_idle(0.5)  # queued and waiting for the request
        assert server.cloud_profiler.wait_idle(30)
        assert server.storage.measured_signatures("cloud") == ["busysig"]
    assert len(beside_a_request) > 4 and not any(beside_a_request)  # the open, the warm-ups, the timed runs


def test_the_crash_journal_names_a_slice_only_while_it_is_opened_or_run(tmp_path: Path, monkeypatch) -> None:
    """The journal named the slice through the waits for the edges' requests too: a death a request caused then (an
    OOM kill, a trap in ONNX Runtime) was counted against the waiting slice, and two never had it timed again."""
    journal = tmp_path / "cloud-profiler-running"
    with serving(tmp_path) as (server, stubs):
        named: list[str] = []
        borrow = server.sessions.borrow

        def borrowing(slice_id: str, path: Path):  # type: ignore[no-untyped-def]
            session = borrow(slice_id, path)  # not the pool's (none is open): its own, for the profiler alone
            named.append(journal.read_text().strip())
            run = session.run

            def running(*args, **kw):  # type: ignore[no-untyped-def]
                named.append(journal.read_text().strip())
                return run(*args, **kw)

            session.run = running  # type: ignore[method-assign]
            return session

        monkeypatch.setattr(server.sessions, "borrow", borrowing)
        with server.repository.activity.running():  # an edge's request in progress
            report_uploaded_block(stubs, "busysig", seed=7)
            assert not server.cloud_profiler.wait_idle(0.5)  # waiting for the request
            assert not journal.exists()  # a death now is not the slice's
        assert server.cloud_profiler.wait_idle(30)
        assert server.storage.measured_signatures("cloud") == ["busysig"]
    assert len(named) > 4 and set(named) == {sha256(conv_model(seed=7))}  # the open and every run


def test_a_run_past_the_budget_is_the_slices_only_when_no_request_overlapped_it(tmp_path: Path, monkeypatch) -> None:
    """A run past the time budget skipped its slice for good, also when a request had slowed it."""
    activity = InferenceActivity()
    storage = Storage(tmp_path)
    slices = SliceStore(tmp_path / "slices", 10**6)
    pool = SessionPool(["CPUExecutionProvider"], 2)
    cloud = CloudProfiler("cloud", storage, slices, pool, lambda: None, activity=activity, max_seconds=0.2)
    cloud.start()
    try:
        endless = slices.put_bytes(loop_model()).slice_id  # each run stops at the budget
        run = cloud._run

        def overlapped(*args):  # type: ignore[no-untyped-def]
            with activity.running():  # an edge's request starts during the run
                return run(*args)

        monkeypatch.setattr(cloud, "_run", overlapped)
        assert cloud.submit("loop", endless) and cloud.wait_idle(30)
        monkeypatch.setattr(cloud, "_run", run)
        assert cloud.submit("loop", endless) and cloud.wait_idle(30)  # passing: tried again, the server to itself
        assert not cloud.submit("loop", endless)  # too slow on its own: not tried again while the server runs
    finally:
        cloud.close()
        pool.terminate_runs()
        storage.close()


def test_a_slice_that_cannot_be_opened_for_want_of_memory_for_a_moment_is_timed_at_its_next_report(
    tmp_path: Path, monkeypatch
) -> None:
    """ResourceExhausted skipped the slice for good: a GPU full for a moment, and the block was never timed."""
    with serving(tmp_path) as (server, stubs):
        opened, open_slice = [], server.sessions._open

        def full_once(what: str, path: Path):  # type: ignore[no-untyped-def]
            opened.append(what)
            if len(opened) == 1:
                raise ResourceExhausted(f"the server has not the memory to open {what}: Failed to allocate memory")
            return open_slice(what, path)

        monkeypatch.setattr(server.sessions, "_open", full_once)
        report_uploaded_block(stubs, "sig", seed=5)
        assert server.cloud_profiler.wait_idle(30)
        assert server.storage.measured_signatures("cloud") == []
        report_uploaded_block(stubs, "sig", seed=5)  # another report of the block: memory is free again
        assert server.cloud_profiler.wait_idle(30)
        assert server.storage.measured_signatures("cloud") == ["sig"] and len(opened) == 2


def expand_model() -> bytes:
    """x[3] -> Expand to the shape input: the profiler's zero shape is refused by ONNX Runtime at every run."""
    graph = helper.make_graph(
        [helper.make_node("Expand", ["x", "shape"], ["y"])],
        "expand",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [3]),
            helper.make_tensor_value_info("shape", TensorProto.INT64, [1]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def test_a_slice_onnx_runtime_refuses_is_not_opened_again_at_every_report(tmp_path: Path, monkeypatch) -> None:
    """Each report of the block opened a new session of it, and failed the same way."""
    block = expand_model()
    with serving(tmp_path) as (server, stubs):
        opened, open_slice = [], server.sessions._open
        monkeypatch.setattr(server.sessions, "_open", lambda what, path: opened.append(what) or open_slice(what, path))
        stubs.nodes.RegisterNode(rr.RegisterNodeRequest(node_id="pi4", role=rr.NODE_ROLE_EDGE), timeout=5)
        stubs.upload(block)
        for _ in range(3):
            item = layer("sig", 3.0, **features(0))
            item.slice_id = sha256(block)
            stubs.profiles.ReportLayerProfiles(report("pi4", item), timeout=10)
            assert server.cloud_profiler.wait_idle(30)
        assert len(opened) == 1 and server.storage.measured_signatures("cloud") == []
        assert not server.cloud_profiler.submit("sig", sha256(block))


def test_a_server_started_on_another_provider_times_its_row_again(tmp_path: Path, monkeypatch) -> None:
    """The cloud row was timed once per data dir: started on CPU after its GPU no longer loaded, the server answered
    the GPU's timings as measured, and never timed the blocks on CPU."""
    real_time_slice = CloudProfiler.time_slice
    monkeypatch.setattr(CloudProfiler, "time_slice", lambda self, slice_id: ([0.001] * 5, "GoneExecutionProvider"))
    model = conv_model(seed=6)
    whole = rr.ModelProfile(
        model="net", latency=rr.LatencyStats(median_ms=9.0), sum_of_blocks_ms=10.0, slice_id=sha256(model)
    )

    def cloud(stubs) -> tuple[float, int, float]:  # type: ignore[no-untyped-def]
        request = rr.PredictRequest(node_id="cloud", signatures=["sig"], model="net")
        answer = stubs.predictions.Predict(request, timeout=10)
        return answer.predictions[0].latency_ms, answer.predictions[0].latency_provenance, answer.model_latency_ms

    with serving(tmp_path) as (server, stubs):
        report_uploaded_block(stubs, "sig", seed=5)
        stubs.upload(model)
        stubs.profiles.ReportLayerProfiles(report("pi4", whole), timeout=10)
        assert server.cloud_profiler.wait_idle(30)
        assert cloud(stubs) == (0.001, rr.PROVENANCE_MEASURED, 0.001)
    release, timed = threading.Event(), []

    def held(self, slice_id: str):  # type: ignore[no-untyped-def]
        timed.append(slice_id)
        release.wait(30)
        return real_time_slice(self, slice_id)

    monkeypatch.setattr(CloudProfiler, "time_slice", held)
    with serving(tmp_path) as (server, stubs):
        latency, provenance, model_ms = cloud(stubs)  # the old timings are gone: not served until timed again
        assert provenance != rr.PROVENANCE_MEASURED and model_ms == 0.0
        release.set()
        assert server.cloud_profiler.wait_idle(30) and len(timed) == 2  # the block and the model
        (m,) = server.storage.latest_measurements("cloud")
        assert m.settings == {"execution_provider": server.sessions.providers[0]}
        latency, provenance, model_ms = cloud(stubs)
        assert (latency, provenance) == (m.latency_ms, rr.PROVENANCE_MEASURED) and model_ms not in (0.0, 0.001)
    timed.clear()
    with serving(tmp_path) as (server, stubs):  # the same provider: nothing to time again
        assert server.cloud_profiler.wait_idle(30) and timed == []
        assert cloud(stubs)[1] == rr.PROVENANCE_MEASURED


def with_a_gone_providers_model_run(data_dir: Path) -> None:
    """`data_dir` as a server leaves it whose cloud row was registered on a provider now gone: model "net" timed
    whole on that provider (1e6 ms), and no block timing of the cloud row."""
    model = conv_model(seed=6)
    whole = rr.ModelProfile(
        model="net", latency=rr.LatencyStats(median_ms=9.0), sum_of_blocks_ms=10.0, slice_id=sha256(model)
    )
    with serving(data_dir) as (server, stubs):
        register(stubs, "pi4")
        stubs.upload(model)
        stubs.profiles.ReportLayerProfiles(report("pi4", whole), timeout=10)
        assert server.cloud_profiler.wait_idle(30) and server.storage.untimed_models("cloud") == {}
        assert server.storage.latest_measurements("cloud") == []
        device = server.storage.get_node("cloud").device
        server.storage.upsert_node("cloud", "cloud", {**device, "ort_providers": ["GoneExecutionProvider"]})
        server.storage.add_reports([], {}, {}, [ModelRun("cloud", "net", 1e6, 0.0, measured_at=1.0)])  # the old one's


def test_whole_model_runs_of_another_provider_go_without_block_timings(tmp_path: Path) -> None:
    """Whole-model runs record no provider: they went with a block timing of another provider, so a cloud row with
    model runs and no block timings kept the old provider's for good. The provider the row was registered with
    tells; the model is then timed again on the new one."""
    with_a_gone_providers_model_run(tmp_path)
    with serving(tmp_path) as (server, stubs):
        assert server.cloud_profiler.wait_idle(30)
        runs = stubs.predictions.Predict(rr.PredictRequest(node_id="cloud", model="net"), timeout=10)
        assert 0.0 < runs.model_latency_ms < 1e5  # timed again on this provider; the 1e6 ms run is gone
