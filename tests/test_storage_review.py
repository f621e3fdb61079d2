"""Storage and cloud-row fixes: the latest energy beside the latest latency, a signature's features and slice set by
its first report, cloud timing jobs that survive `kill -9`, and writes whose reads happen inside their transaction."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from _server_process import ServerProcess
from _server_support import Stubs, conv_model, layer, report, serving, sha256, start_server

from rr_proto.roadrunner.v1 import roadrunner_pb2 as rr
from rr_server.records import Features, Measurement, ModelRun
from rr_server.storage import MEASUREMENTS_KEPT, RUNS_KEPT, Storage

FEATURES = {"ops": ["Conv", "Relu"], "flops": 10**6, "param_bytes": 448, "input_bytes": 768, "output_bytes": 1024}
OTHER = {"ops": ["Gemm"], "flops": 10**12, "param_bytes": 1, "input_bytes": 1, "output_bytes": 1}


def register(stubs: Stubs, *node_ids: str) -> None:
    for node_id in node_ids:
        stubs.nodes.RegisterNode(rr.RegisterNodeRequest(node_id=node_id, role=rr.NODE_ROLE_EDGE), timeout=10)


def measured(stubs: Stubs, node_id: str) -> set[str]:
    request = rr.ListMeasuredSignaturesRequest(node_id=node_id)
    return set(stubs.profiles.ListMeasuredSignatures(request, timeout=10).signatures)


# -- 3: a report without energy keeps the node's measured energy ------------------------------------------------------


def test_a_report_without_energy_keeps_the_measured_energy(tmp_path):
    with serving(tmp_path, cloud_profiling=False) as (server, stubs):
        register(stubs, "a", "b")
        stubs.profiles.ReportLayerProfiles(report("a", layer("sig", 2.0, energy_mj=10.0, **FEATURES)), timeout=10)
        stubs.profiles.ReportLayerProfiles(report("b", layer("sig", 4.0, energy_mj=30.0, **FEATURES)), timeout=10)
        stubs.profiles.ReportLayerProfiles(report("a", layer("sig", 1.5)), timeout=10)  # no meter this time
        assert server.predictor.wait_fresh()
        (p,) = stubs.predictions.Predict(rr.PredictRequest(node_id="a", signatures=["sig"]), timeout=10).predictions
        assert (p.latency_ms, p.latency_provenance) == (1.5, rr.PROVENANCE_MEASURED)  # the latest latency
        assert (p.energy_mj, p.energy_provenance, p.energy_source) == (10.0, rr.PROVENANCE_MEASURED, "rapl")
        stubs.profiles.ReportLayerProfiles(report("a", layer("sig", 1.6, energy_mj=12.0)), timeout=10)
        (m,) = server.storage.latest_measurements("a")
        assert (m.latency_ms, m.energy_mj) == (1.6, 12.0)  # and the latest energy, once there is a newer one


def test_a_prediction_reads_only_the_measurements_it_asks_for(tmp_path):
    """Predict read every latest measurement of the node for each query (10,000 rows for a node that profiled
    10,000 blocks); it reads those of the queried signatures, the latest of each, energy kept as above."""
    storage = Storage(tmp_path)
    storage.upsert_node("a", "edge", {})
    rows = [Measurement("a", f"sig{k}", 1.0 + k, energy_mj=2.0 * k if k % 2 else None) for k in range(50)]
    storage.add_reports(rows, {}, {}, [])
    storage.add_reports([Measurement("a", "sig3", 9.0)], {}, {}, [])  # newer latency, no meter
    got = storage.latest_measurements("a", ["sig3", "sig4", "nobody's", "sig3"])
    assert [(m.signature, m.latency_ms, m.energy_mj) for m in got] == [("sig3", 9.0, 6.0), ("sig4", 5.0, None)]
    assert storage.latest_measurements("a", []) == [] and len(storage.latest_measurements("a")) == 50
    storage.close()


def test_the_refit_reads_the_latest_values_as_the_records_have_them(tmp_path):
    """The refit reads every latest value as a plain tuple (building full records took longer than the query): the
    same values and metered energy sources as the records."""
    storage = Storage(tmp_path)
    storage.upsert_node("a", "edge", {})
    rows = [Measurement("a", f"sig{k}", 1.0 + k, energy_mj=2.0 * k if k % 2 else None) for k in range(50)]
    storage.add_reports(rows, {}, {}, [])
    storage.add_reports([Measurement("a", "sig3", 9.0)], {}, {}, [])  # newer latency, no meter
    storage.upsert_node("b", "edge", {})
    storage.add_reports([Measurement("b", "sig3", 4.0, energy_mj=8.0, energy_source="rapl")], {}, {}, [])
    values = storage.latest_values()
    records = storage.latest_measurements()
    assert [(v.node_id, v.signature, v.latency_ms, v.energy_mj) for v in values] == [
        (m.node_id, m.signature, m.latency_ms, m.energy_mj) for m in records
    ]
    metered = [(v.signature, v.energy_source) for v in values if v.energy_mj is not None]
    assert metered == [(m.signature, m.energy_source) for m in records if m.energy_mj is not None]
    assert ("sig3", "rapl") in metered and len(values) == 51
    storage.close()


def test_history_is_bounded_per_node_and_signature_and_keeps_the_latest_energy(tmp_path):
    """A node that profiles the same blocks again and again kept every measurement (and every whole-model run):
    the database, and the refit's read of it, grew without end. A write keeps the last MEASUREMENTS_KEPT of each
    (node, signature) it touches and the newest with an energy, and the last RUNS_KEPT runs of each (node, model)."""
    storage = Storage(tmp_path)
    for node in ("a", "b"):
        storage.upsert_node(node, "edge", {})
    storage.add_reports([Measurement("a", "x", 1.0, energy_mj=5.0, energy_source="rapl")], {}, {}, [])
    for k in range(3 * MEASUREMENTS_KEPT):
        batch = [Measurement("a", "x", 2.0 + k), Measurement("a", "y", 1.0 + k), Measurement("b", "x", 3.0 + k)]
        runs = [ModelRun("a", "m", latency_ms=float(k), sum_of_blocks_ms=1.0)]
        storage.add_reports(batch, {}, {}, runs)
    storage.add_reports([Measurement("b", "z", 1.0)], {}, {}, [])  # touches nothing else of b's
    assert storage.count_measurements() == (MEASUREMENTS_KEPT + 1) + MEASUREMENTS_KEPT + MEASUREMENTS_KEPT + 1
    last = 3 * MEASUREMENTS_KEPT - 1
    latest = {(m.node_id, m.signature): (m.latency_ms, m.energy_mj) for m in storage.latest_measurements()}
    assert latest == {("a", "x"): (2.0 + last, 5.0), ("a", "y"): (1.0 + last, None), ("b", "x"): (3.0 + last, None),
                      ("b", "z"): (1.0, None)}  # fmt: skip
    kept_runs = range(3 * MEASUREMENTS_KEPT - RUNS_KEPT, 3 * MEASUREMENTS_KEPT)
    assert storage.e2e_correction("a", "m") == pytest.approx(sum(kept_runs) / RUNS_KEPT)
    storage.close()


def test_a_slice_the_store_lost_before_it_was_timed_gives_way_to_a_reported_one(tmp_path):
    """The first slice reported for a signature (or a whole model) stayed for good: evicted before the server timed
    it, every later upload of the block was ignored and the cloud never measured it (found by review)."""
    s1, s2, filler = conv_model(seed=1), conv_model(seed=2), conv_model(seed=3)  # one structure, other weights
    budget = len(s1) + 10  # room for one slice
    whole = rr.ModelProfile(model="net", latency=rr.LatencyStats(median_ms=2.0), sum_of_blocks_ms=2.0)

    def reported(slice_bytes: bytes) -> Iterator[rr.ReportLayerProfilesRequest]:
        block = layer("X", 2.0, ops=["Conv", "Relu"], flops=1000)
        block.slice_id = whole.slice_id = sha256(slice_bytes)
        return report("a", block, whole)

    with serving(tmp_path, cloud_profiling=False, max_store_bytes=budget, max_slice_bytes=budget) as (server, stubs):
        register(stubs, "a")
        stubs.upload(s1)
        stubs.profiles.ReportLayerProfiles(reported(s1), timeout=10)
        stubs.upload(filler)  # evicts s1, untimed
        assert server.slices.get(sha256(s1)) is None and server.storage.slice_of("X") == sha256(s1)
    with serving(tmp_path, max_store_bytes=budget, max_slice_bytes=budget) as (server, stubs):
        stubs.upload(s2)
        stubs.profiles.ReportLayerProfiles(reported(s2), timeout=10)
        assert server.storage.slice_of("X") == server.storage.model_slice_of("net") == sha256(s2)
        assert server.cloud_profiler is not None and server.cloud_profiler.wait_idle(60)
        assert measured(stubs, "cloud") == {"X"} and server.storage.model_latency("cloud", "net") is not None


def test_acknowledging_a_report_reads_the_cloud_rows_signatures_it_names_only(tmp_path, monkeypatch):
    """Each slice a report named read every signature the cloud node had measured before the answer: a 300-layer
    report over 40,000 cloud measurements took 33.9 s to acknowledge, 0.1 s without slices (found by review)."""
    with serving(tmp_path) as (server, stubs):
        register(stubs, "a")
        stubs.upload(conv_model(seed=1))

        def everything(node_id: str) -> list[str]:
            raise AssertionError(f"read every signature {node_id} measured")

        monkeypatch.setattr(server.storage, "measured_signatures", everything)
        block = layer("X", 2.0, ops=["Conv", "Relu"], flops=1000)
        block.slice_id = sha256(conv_model(seed=1))
        assert stubs.profiles.ReportLayerProfiles(report("a", block), timeout=10).accepted_layers == 1
        assert server.cloud_profiler is not None and server.cloud_profiler.wait_idle(60)
        assert server.storage.measured_by_any(["X", "Y"], "cloud") == {"X"}


# -- 2: a signature's features and slice are set by its first report ---------------------------------------------------


def test_a_signatures_features_and_slice_are_set_by_its_first_report(tmp_path):
    server = start_server(tmp_path)
    stubs = Stubs.connect(server.address)
    timed: list[str] = []
    time_slice = server.cloud_profiler.time_slice

    def recording(slice_id: str) -> tuple[list[float], str]:
        timed.append(slice_id)
        return time_slice(slice_id)

    server.cloud_profiler.time_slice = recording  # type: ignore[method-assign]
    try:
        register(stubs, "a", "b")
        light, heavy = conv_model(seed=1), conv_model(channels=16, size=32, out_channels=16, seed=2)
        stubs.upload(light)
        stubs.upload(heavy)
        # a prediction query's features are not stored: the first report sets them
        query = rr.PredictRequest(node_id="a", signatures=["blk"], features=[rr.BlockFeatures(**OTHER)])
        stubs.predictions.Predict(query, timeout=10)
        first = layer("blk", 1.0, **FEATURES)
        first.slice_id = sha256(light)
        stubs.profiles.ReportLayerProfiles(report("a", first), timeout=10)
        assert server.storage.signatures()["blk"] == Features(tuple(FEATURES["ops"]), 10**6, 448, 768, 1024)
        # b gives other features and another slice: its measurement is stored, the first features and slice stay
        wrong = layer("blk", 9.0, **OTHER)
        wrong.slice_id = sha256(heavy)
        stubs.profiles.ReportLayerProfiles(report("b", wrong), timeout=10)
        assert measured(stubs, "b") == {"blk"}
        assert server.storage.signatures()["blk"] == Features(tuple(FEATURES["ops"]), 10**6, 448, 768, 1024)
        assert server.storage.slice_of("blk") == sha256(light)
        assert server.cloud_profiler.wait_idle(60)
        assert timed == [sha256(light)] and measured(stubs, "cloud") == {"blk"}
        # one report giving a signature two different features is refused too
        with pytest.raises(grpc.RpcError) as err:
            stubs.profiles.ReportLayerProfiles(
                report("b", layer("twice", 1.0, **FEATURES), layer("twice", 1.0, **OTHER)), timeout=10
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "twice" not in server.storage.signatures()
    finally:
        stubs.close()
        server.stop(grace=1)


# -- 1: the cloud's timing jobs survive kill -9 -----------------------------------------------------------------------


def test_slices_reported_before_a_kill_9_are_timed_after_the_restart(tmp_path):
    data_dir = tmp_path / "data"
    block, whole = conv_model(channels=32, size=32, out_channels=32, seed=3), conv_model(seed=4)
    server = ServerProcess(data_dir)
    try:  # a failure must not leave the server process running
        stubs = Stubs.connect(server.address)
        register(stubs, "a")
        stubs.upload(block)
        stubs.upload(whole)
        items = []
        for k in range(20):
            item = layer(f"blk{k:02d}", 2.0 + k, **FEATURES)
            item.slice_id = sha256(block)
            items.append(item)
        run = rr.ModelProfile(model="net", latency=rr.LatencyStats(median_ms=50.0), sum_of_blocks_ms=45.0)
        run.slice_id = sha256(whole)  # last: queued behind every block
        assert stubs.profiles.ReportLayerProfiles(report("a", *items, run), timeout=30).accepted_layers == 20
    except BaseException:
        server.terminate()
        raise
    server.kill9()  # right after the acknowledgement: the queue held most of the jobs
    stubs.close()

    server = ServerProcess(data_dir)
    try:
        stubs = Stubs.connect(server.address)
        cloud = stubs.nodes.GetServerInfo(rr.GetServerInfoRequest(), timeout=10).cloud_node_id
        query = rr.PredictRequest(node_id=cloud, signatures=["blk00"], model="net")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            done = measured(stubs, cloud)
            whole_ms = stubs.predictions.Predict(query, timeout=10).model_latency_ms
            if len(done) == 20 and whole_ms > 0:
                break
            time.sleep(0.5)
        assert done == {f"blk{k:02d}" for k in range(20)}
        assert whole_ms > 0
    finally:
        stubs.close()
        server.terminate()


# -- 4: reads that decide a write happen inside its transaction -------------------------------------------------------


def test_concurrent_registrations_create_a_node_once(tmp_path):
    storage = Storage(tmp_path)
    created: list[tuple[str, bool]] = []
    barriers = {f"n{k}": threading.Barrier(6) for k in range(10)}

    def register_all() -> None:
        for node_id, barrier in barriers.items():
            barrier.wait()
            created.append((node_id, storage.upsert_node(node_id, "edge", {})[1]))

    threads = [threading.Thread(target=register_all) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    storage.close()
    assert len(created) == 60
    assert sorted(node_id for node_id, new in created if new) == sorted(barriers)


def test_a_model_name_with_a_newline_is_refused(tmp_path):
    """Model names reach the log as they are: a newline would forge log lines."""
    with serving(tmp_path) as (server, stubs):
        register(stubs, "a")
        forged = rr.ReportLayerProfilesRequest(
            node_id="a",
            model=rr.ModelProfile(
                model="resnet\nERROR forged", latency=rr.LatencyStats(median_ms=5.0), sum_of_blocks_ms=5.0
            ),
        )
        with pytest.raises(grpc.RpcError) as err:
            stubs.profiles.ReportLayerProfiles(iter([forged]), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "printable" in err.value.details()


def test_reads_wait_for_no_writer(tmp_path):
    """Every read took the one connection's lock, so a refit reading every measurement (2 s at 200,000 of them,
    tools/bench_storage) or a large report being written held up each GetNode and Predict. Reads have read-only
    connections of their own: they see the last commit while a write is in progress, and the write once it has
    committed."""
    storage = Storage(tmp_path)
    storage.upsert_node("a", "edge", {})
    with ThreadPoolExecutor(2) as pool:
        with storage._transaction() as db:  # a write in progress
            db.execute("INSERT INTO nodes VALUES ('b', 'edge', '{}', 0, 0)")
            seen = pool.submit(storage.list_nodes).result(timeout=10)
            assert [n.node_id for n in seen] == ["a"]
            concurrent = [pool.submit(storage.get_node, "a") for _ in range(2)]
            assert all(f.result(timeout=10) is not None for f in concurrent)
        assert [n.node_id for n in pool.submit(storage.list_nodes).result(timeout=10)] == ["a", "b"]
    storage.close()


class _WatchedCondition(threading.Condition):
    """A Condition that says when a thread starts waiting on it."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        self.waiting.set()
        return super().wait(timeout)


def test_close_waits_for_the_reads_running(tmp_path):
    """Reads do not take the writer's lock, so close() used to close a read connection under a running query (the
    server's stop beside a refit's read: a segmentation fault). It waits for running reads; later ones are refused."""
    storage = Storage(tmp_path)
    storage.upsert_node("a", "edge", {})
    readers = storage._readers._changed = _WatchedCondition()  # what close() waits on for the reads
    lent, release = threading.Event(), threading.Event()

    def long_read() -> int:
        with storage._readers.lend() as db:
            lent.set()
            release.wait(10)
            return db.execute("SELECT COUNT(*) FROM nodes").fetchone()[0]

    with ThreadPoolExecutor(2) as pool:
        read = pool.submit(long_read)
        assert lent.wait(10)
        closing = pool.submit(storage.close)
        assert readers.waiting.wait(10), "close() did not wait for the read"
        assert not closing.done()
        release.set()
        assert read.result(timeout=10) == 1
        closing.result(timeout=10)
    with pytest.raises(sqlite3.ProgrammingError):
        storage.get_node("a")
