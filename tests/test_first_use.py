"""A first-time user on a fresh server: profile, then plan at once. The plan must see the profile's measurements."""

from __future__ import annotations

from _server_support import Stubs, layer, report, serving

from rr_proto.roadrunner.v1 import roadrunner_pb2 as rr

BIG = {"ops": ["MatMul", "Add"], "flops": 2_000_000_000, "param_bytes": 9_000_000, "input_bytes": 600_000,
       "output_bytes": 600_000}  # fmt: skip
TINY = {"ops": ["Transpose"], "flops": 0, "param_bytes": 0, "input_bytes": 600_000, "output_bytes": 600_000}


def predict(stubs: Stubs, node_id: str, signatures: list[str]) -> dict[str, rr.Prediction]:
    request = rr.PredictRequest(node_id=node_id, signatures=signatures)
    return {p.signature: p for p in stubs.predictions.Predict(request, timeout=30).predictions}


def test_a_query_right_after_a_report_uses_the_fit_that_includes_it(tmp_path):
    # A long debounce: the refit of the second report has not run when the query comes, as after a profile whose
    # slices the server timed until moments before the plan.
    with serving(tmp_path, refresh_debounce_s=1.0, cloud_profiling=False) as (server, stubs):
        for node in ("edge-1", "edge-2"):
            stubs.nodes.RegisterNode(rr.RegisterNodeRequest(node_id=node, role=rr.NODE_ROLE_EDGE), timeout=5)
        stubs.profiles.ReportLayerProfiles(
            report("edge-1", layer("tiny", 0.05, **TINY), layer("big", 10.0, **BIG)), timeout=10
        )
        assert server.predictor.wait_fresh(10)
        stubs.profiles.ReportLayerProfiles(report("edge-2", layer("tiny", 0.06, **TINY), layer("big2", 12.0, **BIG)),
                                           timeout=10)  # fmt: skip
        got = predict(stubs, "edge-1", ["big2"])["big2"]
        # edge-2 measured big2 moments ago: edge-1's figure is a prediction from it, not a cold start from tiny.
        assert got.latency_provenance == rr.PROVENANCE_PREDICTED
        assert got.latency_ms > 1.0


def test_queries_waiting_for_a_refit_do_not_put_it_off(tmp_path, monkeypatch):
    """A query about a signature measured since the last fit waits for the refit; each such wait counted as a new
    report and restarted the refit's debounce, so with 20 edges asking every 0.3 s the refit waited its full bound
    and the answers stayed cold-start (found by review). Here the bound is a minute: waiting queries must not hold
    the refit off at all."""
    import threading

    import rr_server.predictor as predictor

    monkeypatch.setattr(predictor, "_MAX_DEBOUNCE_S", 60.0)
    with serving(tmp_path, refresh_debounce_s=0.3, cloud_profiling=False) as (server, stubs):
        stubs.nodes.RegisterNode(rr.RegisterNodeRequest(node_id="e", role=rr.NODE_ROLE_EDGE), timeout=5)
        assert server.predictor.wait_fresh(10)
        done = threading.Event()

        def asking() -> None:  # other edges' queries, each waiting a moment for the fit
            while not done.is_set():
                server.predictor.wait_fresh(0.05)

        askers = threading.Thread(target=asking)
        askers.start()
        try:
            stubs.profiles.ReportLayerProfiles(report("e", layer("big", 10.0, **BIG)), timeout=10)
            assert server.predictor.wait_fresh(10)
        finally:
            done.set()
            askers.join()
        assert predict(stubs, "e", ["big"])["big"].latency_provenance == rr.PROVENANCE_MEASURED


def test_a_query_does_not_wait_for_other_signatures_reports(tmp_path, monkeypatch):
    """Only a query about signatures measured since the last fit waits for the refit: in a fleet that reports all the
    time, every query would otherwise wait for the next one."""
    with serving(tmp_path, refresh_debounce_s=1.0, cloud_profiling=False) as (server, stubs):
        waits: list[float] = []
        for node in ("edge-1", "edge-2"):
            stubs.nodes.RegisterNode(rr.RegisterNodeRequest(node_id=node, role=rr.NODE_ROLE_EDGE), timeout=5)
        stubs.profiles.ReportLayerProfiles(
            report("edge-1", layer("tiny", 0.05, **TINY), layer("big", 10.0, **BIG)), timeout=10
        )
        assert server.predictor.wait_fresh(10)
        real = server.predictor.wait_fresh
        monkeypatch.setattr(server.predictor, "wait_fresh", lambda timeout=10.0: waits.append(timeout) or real(timeout))
        stubs.profiles.ReportLayerProfiles(report("edge-2", layer("big2", 12.0, **BIG)), timeout=10)
        assert predict(stubs, "edge-1", ["tiny", "big"])["big"].latency_provenance == rr.PROVENANCE_MEASURED
        assert waits == []  # nothing it asked about was measured since the fit
        predict(stubs, "edge-1", ["big", "big2"])
        assert len(waits) == 1


def test_the_blocks_not_measured_take_the_calibration_and_the_cloud_shares_their_error(tmp_path):
    """One factor for every block (whole-model time / sum of the block predictions) stretched the measured blocks
    with the cold-start error: a measured Transpose of vit_b_16 came out at 18 ms. And a model over the upload limit
    is never timed whole on the server: its cloud correction was 1, so a first profile whose predictions both rows
    share were 350x too fast made offloading everything look 350x cheaper than it measured (first-use review).
    Now the blocks the node did not measure are scaled together to the standalone total the profile's sweep found
    for them, every block takes the whole / sum-of-blocks ratio, and the cloud's unmeasured blocks take the same
    error."""
    import pytest
    from test_blocks import branchy_model

    from rr_edge.blocks import analyze
    from rr_edge.client import Client
    from rr_edge.meters.model import DEFAULT_POWER
    from rr_edge.netprofile import NetProfileConfig, profile_network
    from rr_edge.offload import gather_costs

    graph = analyze(branchy_model(), "branchy")
    signatures = list(dict.fromkeys(b.signature for b in graph.blocks))
    assert len(signatures) == len(graph.blocks) >= 4
    with serving(tmp_path, cloud_profiling=False) as (server, stubs):
        for node in ("e", "other"):
            stubs.nodes.RegisterNode(rr.RegisterNodeRequest(node_id=node, role=rr.NODE_ROLE_EDGE), timeout=5)
        features = [{"ops": ["Conv"], "flops": 1000 * (k + 1)} for k in range(len(signatures))]
        # "other" measured every block, "e" the first two: 1 ms each, and its whole model at 12 ms, 1.5x its
        # blocks' standalone sum of 8 ms (the sweep): the blocks it did not measure total 6 ms standalone.
        stubs.profiles.ReportLayerProfiles(
            report(
                "other",
                *(layer(s, 0.1 * (k + 1), **f) for k, (s, f) in enumerate(zip(signatures, features, strict=True))),
            ),
            timeout=10,
        )
        whole = rr.ModelProfile(model=graph.model_key, latency=rr.LatencyStats(median_ms=12.0), sum_of_blocks_ms=8.0)
        stubs.profiles.ReportLayerProfiles(report("e", *(layer(s, 1.0) for s in signatures[:2]), whole), timeout=10)
        assert server.predictor.wait_fresh(10)
        with Client(server.address) as client:
            config = NetProfileConfig(max_mb=4, repeats=1, min_time_s=0.0, upload_max_mb=0)
            client.report_network_profile("e", profile_network(client, config))
            costs = gather_costs(client, "e", graph, DEFAULT_POWER, wait_s=10)
            raw = client.predict(client.server_info().cloud_node_id, signatures).by_signature
            raw_edge = client.predict("e", signatures).by_signature
        edge = [p.latency_ms for p in costs.edge]
        assert costs.e2e_correction == pytest.approx(1.5)
        assert edge[:2] == [1.0, 1.0]  # measured: kept (stretched by the cold-start error before)
        assert sum(edge[2:]) == pytest.approx(6.0)  # the standalone total of the blocks it did not measure
        assert costs.e2e_correction * sum(edge) == pytest.approx(12.0)  # all blocks here: as measured
        # no node reported energy: each block's is the power model's (its latency at active watts), not 0 mJ, which
        # had made all-local free and the energy objective's choice (found by review)
        assert {p.energy_provenance for p in costs.edge} == {"unknown"}
        for p in costs.edge:
            assert p.energy_mJ == pytest.approx(DEFAULT_POWER.active_w * p.latency_ms) and p.energy_source == "model"
        error = sum(edge[2:]) / sum(raw_edge[s].latency_ms for s in signatures[2:])
        assert costs.cloud_correction == 1.0  # no whole-model time on the cloud: its blocks share the error
        for p, r in zip(costs.cloud, (raw[s] for s in signatures), strict=True):
            assert p.latency_ms == pytest.approx(r.latency_ms * error)
