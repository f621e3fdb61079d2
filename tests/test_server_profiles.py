"""NodeService, ProfileService and PredictionService in-process: registration, reports, predictions, cloud row."""

from __future__ import annotations

import json
import math
import os
import threading
import time

import grpc
import pytest
from _server_support import Stubs, conv_model, layer, report, serving, sha256, upload_requests

from rr_edge.netmodel import NetworkModel
from rr_proto.roadrunner.v1 import roadrunner_pb2 as rr
from rr_server import profile_servicer
from rr_server.activity import InferenceActivity
from rr_server.sessions import SessionPool

SIGS = [f"sig{k:02d}" for k in range(6)]


@pytest.fixture
def env(tmp_path):
    with serving(tmp_path) as (server, stubs):
        yield server, stubs


def register(stubs: Stubs, node_id: str, cores: int = 4) -> rr.RegisterNodeResponse:
    device = rr.DeviceDescriptor(cpu_model="test-cpu", cpu_cores=cores, ort_providers=["CPUExecutionProvider"])
    return stubs.nodes.RegisterNode(
        rr.RegisterNodeRequest(node_id=node_id, role=rr.NODE_ROLE_EDGE, device=device), timeout=5
    )


def features(k: int) -> dict:
    return {
        "ops": ["Conv", "Relu"] * (k + 1),
        "flops": 10**6 * (k + 1),
        "param_bytes": 1000 * (k + 1),
        "input_bytes": 4096,
        "output_bytes": 4096,
    }


def test_register_get_list_and_server_info(env):
    server, stubs = env
    first = register(stubs, "pi4")
    assert first.created and first.node.node_id == "pi4" and first.node.device.cpu_cores == 4
    again = register(stubs, "pi4", cores=8)
    assert not again.created and again.node.device.cpu_cores == 8
    assert again.node.registered_at == first.node.registered_at
    got = stubs.nodes.GetNode(rr.GetNodeRequest(node_id="pi4"), timeout=5).node
    assert got.role == rr.NODE_ROLE_EDGE and got.device.cpu_model == "test-cpu"
    ids = {n.node_id for n in stubs.nodes.ListNodes(rr.ListNodesRequest(), timeout=5).nodes}
    assert ids == {"pi4", "cloud"}
    info = stubs.nodes.GetServerInfo(rr.GetServerInfoRequest(), timeout=5)
    assert info.cloud_node_id == "cloud" and info.providers[-1] == "CPUExecutionProvider"
    assert info.max_message_bytes == server.config.max_message_bytes and info.max_slice_bytes > 0
    cloud = stubs.nodes.GetNode(rr.GetNodeRequest(node_id="cloud"), timeout=5).node
    assert cloud.role == rr.NODE_ROLE_CLOUD


def test_cloud_node_reports_the_cpus_the_server_may_use(tmp_path):
    """The server describes its own node as an edge does (rr_edge.device): under a CPU affinity, the CPUs it may use,
    not all of the machine's."""
    everything = os.sched_getaffinity(0)
    one = {min(everything)}
    os.sched_setaffinity(0, one)  # this thread's: the server registers its node from the thread that starts it
    try:
        with serving(tmp_path) as (_, stubs):
            cloud = stubs.nodes.GetNode(rr.GetNodeRequest(node_id="cloud"), timeout=5).node
    finally:
        os.sched_setaffinity(0, everything)
    assert cloud.device.cpu_cores == 1
    assert cloud.device.memory_bytes > 0 and cloud.device.cpu_model


def test_register_errors(env):
    _, stubs = env
    for node_id, code in (
        ("", grpc.StatusCode.INVALID_ARGUMENT),
        ("a b", grpc.StatusCode.INVALID_ARGUMENT),
        ("cloud", grpc.StatusCode.PERMISSION_DENIED),
    ):
        with pytest.raises(grpc.RpcError) as err:
            register(stubs, node_id)
        assert err.value.code() == code
    huge = rr.DeviceDescriptor(extra={f"k{k}": "x" * 1000 for k in range(20)})  # ListNodes carries every descriptor
    invalid, denied = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED
    for request, code, fragment in (
        (rr.RegisterNodeRequest(node_id="pi4", device=huge), invalid, "descriptor"),
        (rr.RegisterNodeRequest(node_id="pi4", device=rr.DeviceDescriptor(cpu_cores=-2)), invalid, "cpu_cores"),
        (rr.RegisterNodeRequest(node_id="pi4", role=rr.NODE_ROLE_CLOUD), denied, "cloud role"),
    ):
        with pytest.raises(grpc.RpcError) as err:
            stubs.nodes.RegisterNode(request, timeout=5)
        assert err.value.code() == code and fragment in err.value.details()
    assert [n.node_id for n in stubs.nodes.ListNodes(rr.ListNodesRequest(), timeout=5).nodes] == ["cloud"]
    with pytest.raises(grpc.RpcError) as err:
        stubs.nodes.GetNode(rr.GetNodeRequest(node_id="ghost"), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_layer_report_measured_and_listed(env):
    _, stubs = env
    register(stubs, "pi4")
    layers = [layer(s, 2.0 + k, energy_mj=10.0 + k, **features(k)) for k, s in enumerate(SIGS[:3])]
    model = rr.ModelProfile(model="m", latency=rr.LatencyStats(median_ms=12.0), sum_of_blocks_ms=9.0)
    ack = stubs.profiles.ReportLayerProfiles(report("pi4", *layers, model), timeout=10)
    assert (ack.accepted_layers, ack.accepted_models) == (3, 1)
    listed = stubs.profiles.ListMeasuredSignatures(rr.ListMeasuredSignaturesRequest(node_id="pi4"), timeout=5)
    assert list(listed.signatures) == SIGS[:3]
    answer = stubs.predictions.Predict(rr.PredictRequest(node_id="pi4", signatures=SIGS[:3]), timeout=5)
    assert [p.latency_ms for p in answer.predictions] == [2.0, 3.0, 4.0]
    assert [p.energy_mj for p in answer.predictions] == [10.0, 11.0, 12.0]
    assert {p.latency_provenance for p in answer.predictions} == {rr.PROVENANCE_MEASURED}
    assert {p.energy_source for p in answer.predictions} == {"rapl"}
    assert math.isclose(answer.e2e_correction, 12.0 / 9.0)


def test_e2e_correction_is_per_model_with_the_node_mean_as_fallback(env):
    _, stubs = env
    register(stubs, "jet")

    def run(model: str, e2e_ms: float, blocks_ms: float) -> rr.ModelProfile:
        return rr.ModelProfile(model=model, latency=rr.LatencyStats(median_ms=e2e_ms), sum_of_blocks_ms=blocks_ms)

    stubs.profiles.ReportLayerProfiles(report("jet", run("a", 6.0, 10.0), run("b", 12.0, 10.0)), timeout=10)

    def answer(model: str) -> rr.PredictResponse:
        request = rr.PredictRequest(node_id="jet", signatures=SIGS[:1], model=model, features=[features(0)])
        return stubs.predictions.Predict(request, timeout=5)

    assert math.isclose(answer("a").e2e_correction, 0.6) and math.isclose(answer("b").e2e_correction, 1.2)
    assert math.isclose(answer("never-profiled").e2e_correction, 0.9) and math.isclose(answer("").e2e_correction, 0.9)
    # the measured whole-model latency comes with it (mean of the node's runs), 0 where there is none
    stubs.profiles.ReportLayerProfiles(report("jet", run("a", 8.0, 10.0)), timeout=10)
    assert math.isclose(answer("a").model_latency_ms, 7.0) and math.isclose(answer("b").model_latency_ms, 12.0)
    assert answer("never-profiled").model_latency_ms == 0.0 and answer("").model_latency_ms == 0.0


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        (layer("s", float("nan")), "latency median_ms"),
        (layer("s", -1.0), "latency median_ms"),
        (layer("s", 0.0), "latency median_ms"),
        (layer("s", float("inf")), "latency median_ms"),
        (layer("s", 1.0, energy_mj=-5.0), "energy_mj"),
        (layer("s", 1.0, energy_mj=float("nan")), "energy_mj"),
        (layer("", 1.0), "signature is empty"),
        (layer("s", 1.0, flops=-3), "flops"),
    ],
    ids=["nan", "negative", "zero", "inf", "neg-energy", "nan-energy", "no-signature", "neg-flops"],
)
def test_bad_layer_report_rejected_whole(env, bad, fragment):
    server, stubs = env
    register(stubs, "pi4")
    with pytest.raises(grpc.RpcError) as err:
        stubs.profiles.ReportLayerProfiles(report("pi4", layer("good", 1.0), bad), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in err.value.details()
    assert server.storage.count_measurements() == 0  # the good item of the same report is not stored either
    ack = stubs.profiles.ReportLayerProfiles(report("pi4", layer("good", 1.0)), timeout=10)
    assert ack.accepted_layers == 1


def test_size_limits_and_unknown_nodes_answer_as_the_protocol_says(env):
    """docs/protocol.md: at most 10,000 ops per block, RESOURCE_EXHAUSTED past that (it was INVALID_ARGUMENT); an
    unknown node is NOT_FOUND (ListMeasuredSignatures answered it with an empty list)."""
    _, stubs = env
    register(stubs, "pi4")
    with pytest.raises(grpc.RpcError) as err:
        stubs.profiles.ReportLayerProfiles(report("pi4", layer("s", 1.0, ops=["Relu"] * 10_001)), timeout=10)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "10001 ops" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        stubs.profiles.ListMeasuredSignatures(rr.ListMeasuredSignaturesRequest(node_id="ghost"), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    known = stubs.profiles.ListMeasuredSignatures(rr.ListMeasuredSignaturesRequest(node_id="pi4"), timeout=5)
    assert list(known.signatures) == []


def test_a_report_of_whole_model_runs_only_asks_for_no_refit(env):
    """Whole-model runs are read when a query asks (e2e_correction, model_latency_ms); a report of only those bumped
    the data version, and the predictor refit both matrices for nothing (3.4 s each at 40,000 blocks; review)."""
    server, stubs = env
    register(stubs, "pi4")
    stubs.profiles.ReportLayerProfiles(report("pi4", layer("a", 1.0)), timeout=10)
    assert server.predictor.wait_fresh(10)
    version = server.storage.version
    whole = rr.ModelProfile(model="m", latency=rr.LatencyStats(median_ms=3.0), sum_of_blocks_ms=2.0)
    assert stubs.profiles.ReportLayerProfiles(report("pi4", whole), timeout=10).accepted_models == 1
    assert server.storage.version == version
    answer = stubs.predictions.Predict(rr.PredictRequest(node_id="pi4", signatures=["a"], model="m"), timeout=10)
    assert answer.model_latency_ms == 3.0 and answer.e2e_correction == 1.5  # read at once, no refit needed


def test_a_report_is_stored_only_when_it_closes_with_its_end_message(env):
    """gRPC Python can hand a cancelled stream to the server as a clean end (grpc/grpc#33038): a report is stored
    only when its end message arrives and counts every item before it."""
    server, stubs = env
    register(stubs, "pi4")
    *items, end = report("pi4", layer("a", 1.0), layer("b", 2.0))
    miscounted = rr.ReportLayerProfilesRequest(node_id="pi4", end=rr.ReportEnd(items=1))
    for stream, fragment in (
        (items, "without its end message"),
        ([*items, miscounted], "counts 1 items, 2 arrived"),
        ([*items, end, items[0]], "after the report's end"),
    ):
        with pytest.raises(grpc.RpcError) as err:
            stubs.profiles.ReportLayerProfiles(iter(stream), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and fragment in err.value.details()
    assert server.storage.count_measurements() == 0
    assert stubs.profiles.ReportLayerProfiles(iter([*items, end]), timeout=10).accepted_layers == 2


def test_a_report_may_hold_exactly_the_most_items(env, monkeypatch):
    _, stubs = env
    register(stubs, "pi4")
    monkeypatch.setattr(profile_servicer, "MAX_ITEMS_PER_REPORT", 2)
    assert stubs.profiles.ReportLayerProfiles(report("pi4", layer("a", 1.0), layer("b", 1.0)), timeout=10)
    with pytest.raises(grpc.RpcError) as err:
        stubs.profiles.ReportLayerProfiles(report("pi4", *[layer(s, 1.0) for s in "abc"]), timeout=10)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "more than 2 items" in err.value.details()


def _finished_reports(server) -> float:
    """How many ReportLayerProfiles calls the server has finished handling, whatever their status."""
    return sum(
        sample.value
        for metric in server.metrics.registry.collect()
        for sample in metric.samples
        if sample.name == "rr_requests_total" and sample.labels["method"] == "ReportLayerProfiles"
    )


def test_a_report_cancelled_by_its_client_is_never_stored(env):
    """Before the end message, 13-20 of 60 such cancelled reports were stored (a reviewer's count). Each report is
    cancelled while the server reads it, half of them once the client has sent every item but the end message; the
    storage is checked after the server has finished with every one of them."""
    server, stubs = env
    register(stubs, "pi4")
    for k in range(20):
        sent, release = threading.Event(), threading.Event()

        def cut_short(k=k, sent=sent, release=release):
            yield from list(report("pi4", layer(f"c{k}a", 1.0), layer(f"c{k}b", 1.0)))[:-1]
            sent.set()
            release.wait(10)  # the client cancels here, before its end message

        call = stubs.profiles.ReportLayerProfiles.future(cut_short(), timeout=10)
        try:
            _wait_for(lambda: server.stream_slots.in_use["other"] == 1)  # the server is reading the report
            if k % 2:
                assert sent.wait(10)
            call.cancel()
        finally:
            release.set()
        _wait_for(lambda k=k: _finished_reports(server) == k + 1)
    assert server.storage.count_measurements() == 0
    assert not stubs.profiles.ListMeasuredSignatures(rr.ListMeasuredSignaturesRequest(node_id="pi4")).signatures


def _wait_for(predicate, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert predicate()


def test_report_for_unregistered_node(env):
    _, stubs = env
    with pytest.raises(grpc.RpcError) as err:
        stubs.profiles.ReportLayerProfiles(report("ghost", layer("s", 1.0)), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "RegisterNode" in err.value.details()


def test_reports_for_the_servers_own_row_are_refused(env):
    """The cloud node's row is timed by the server; an edge reporting as it would poison that row."""
    server, stubs = env
    with pytest.raises(grpc.RpcError) as err:
        stubs.profiles.ReportLayerProfiles(report("cloud", layer("sigX", 1.0)), timeout=10)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and "server's own row" in err.value.details()
    profile = rr.NetworkProfile(uplink=rr.DirectionProfile(samples=[rr.NetworkSample(bytes=1024, ms=1.0)]))
    with pytest.raises(grpc.RpcError) as err:
        stubs.profiles.ReportNetworkProfile(rr.ReportNetworkProfileRequest(node_id="cloud", profile=profile), timeout=5)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "sigX" not in set(server.storage.measured_signatures("cloud"))


def test_cloud_profiling_leaves_the_edges_sessions_open(tmp_path):
    """Timing a reported block opens its own session: it does not push the edges' slices out of the session cache."""
    with serving(tmp_path, session_cache_size=2) as (server, stubs):
        edge_slice = conv_model(seed=11)
        stubs.slices.UploadSlice(upload_requests(edge_slice, load=True), timeout=10)
        for k in range(3):
            report_uploaded_block(stubs, f"timed{k}", seed=20 + k)
        assert server.cloud_profiler.wait_idle(60)
        assert len(server.storage.latest_measurements("cloud")) == 3
        assert server.sessions.loaded(sha256(edge_slice))


def test_network_profile_roundtrip_and_validation(env):
    _, stubs = env
    register(stubs, "pi4")
    with pytest.raises(grpc.RpcError) as err:
        stubs.profiles.GetNetworkProfile(rr.GetNetworkProfileRequest(node_id="pi4"), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    up = rr.DirectionProfile(
        samples=[rr.NetworkSample(bytes=1024, ms=1.5, energy_mj=0.5), rr.NetworkSample(bytes=2**20, ms=15.0)],
        chosen_model="affine",
        poly4_error=0.2,
        affine_error=0.1,
        model_json=json.dumps(NetworkModel.affine(1.0, 1e5).to_dict()),
    )
    upload = rr.DirectionProfile(
        samples=[rr.NetworkSample(bytes=2**20, ms=30.0), rr.NetworkSample(bytes=2**22, ms=80.0)],
        chosen_model="affine",
        poly4_error=-1.0,  # not computed: too few sizes
        affine_error=-1.0,
        model_json='{"kind": "affine", "coeffs": [13.3, 1.6e-5]}',
    )
    profile = rr.NetworkProfile(uplink=up, downlink=up, energy_source="model", measured_at=1.7e9, upload=upload)
    stubs.profiles.ReportNetworkProfile(rr.ReportNetworkProfileRequest(node_id="pi4", profile=profile), timeout=5)
    got = stubs.profiles.GetNetworkProfile(rr.GetNetworkProfileRequest(node_id="pi4"), timeout=5).profile
    assert got == profile and got.HasField("upload")
    bad = rr.NetworkProfile(uplink=rr.DirectionProfile(samples=[rr.NetworkSample(bytes=10, ms=float("nan"))]))
    bad_upload = rr.NetworkProfile(uplink=up, downlink=up, upload=rr.DirectionProfile(pwl_error=float("inf")))

    def downlink_model(text: str) -> rr.NetworkProfile:
        return rr.NetworkProfile(uplink=up, downlink=rr.DirectionProfile(model_json=text))

    for message, where in (
        (bad, "uplink sample 0"),
        (bad_upload, "upload: pwl_error"),
        (downlink_model('{"kind": "affine", "coeffs": [1.0, 1e-5], "drift": NaN}'), "must be finite"),
        (downlink_model("affine"), "downlink: model_json is not a network model"),
        (downlink_model("{}"), "downlink: model_json is not a network model"),  # the edge could not plan with it
        (downlink_model(""), "downlink: model_json is not a network model"),
        (downlink_model('{"kind": "affine", "coeffs": [1.0, 1e999]}'), "must be finite"),
        (downlink_model('{"kind": "affine", "coeffs": [-1e9, -1]}'), "must not be negative"),
        (downlink_model("[" * 5000 + "]" * 5000), "not a network model"),  # too deep for the JSON parser
        (downlink_model('{"kind": "affine", "coeffs": ' + "[" * 600 + "]" * 600 + "}"), "not a network model"),
        (rr.NetworkProfile(uplink=up, downlink=up, measured_at=float("nan")), "measured_at"),
        (rr.NetworkProfile(uplink=up, downlink=up, measured_at=-1e300), "measured_at"),
        (rr.NetworkProfile(uplink=up, downlink=up, measured_at=1764230400000.0), "not milliseconds"),
        (rr.NetworkProfile(uplink=up, downlink=up, energy_source="guess"), "energy_source"),
    ):
        with pytest.raises(grpc.RpcError) as err:
            stubs.profiles.ReportNetworkProfile(
                rr.ReportNetworkProfileRequest(node_id="pi4", profile=message), timeout=5
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and where in err.value.details()
    # unbounded strings (a 100 MB chosen_model, 3M coefficients) were stored and sent to every planner (review)
    named = rr.DirectionProfile()
    named.CopyFrom(up)
    named.chosen_model = "x" * 10_000
    huge = downlink_model('{"kind": "poly4", "coeffs": [' + ", ".join(["1.0"] * 100_000) + "]}")
    for message, code, where in (
        (rr.NetworkProfile(uplink=up, downlink=named), grpc.StatusCode.INVALID_ARGUMENT, "chosen_model must be one"),
        (huge, grpc.StatusCode.RESOURCE_EXHAUSTED, "downlink: model_json of"),
    ):
        with pytest.raises(grpc.RpcError) as err:
            stubs.profiles.ReportNetworkProfile(
                rr.ReportNetworkProfileRequest(node_id="pi4", profile=message), timeout=5
            )
        assert err.value.code() == code and where in err.value.details()
    assert stubs.profiles.GetNetworkProfile(rr.GetNetworkProfileRequest(node_id="pi4"), timeout=5).profile == profile


def test_predictions_measured_predicted_cold_start_and_fold_in(env):
    server, stubs = env
    # Two nodes measure everything (node b twice as slow), node c measures half: the rest is predicted.
    for node, factor in (("a", 1.0), ("b", 2.0)):
        register(stubs, node)
        layers = [
            layer(s, factor * (1.0 + k), energy_mj=factor * 5.0 * (1 + k), **features(k))
            for k, s in enumerate(SIGS[:4])
        ]
        stubs.profiles.ReportLayerProfiles(report(node, *layers), timeout=10)
    assert server.predictor.wait_fresh(10)
    fitted = server.predictor._targets["latency"].engine
    register(stubs, "c")
    stubs.profiles.ReportLayerProfiles(
        report("c", *[layer(s, 2.0 * (1.0 + k), energy_mj=10.0 * (1 + k)) for k, s in enumerate(SIGS[:2])]),
        timeout=10,
    )
    assert server.predictor.wait_fresh(10)
    assert server.predictor._targets["latency"].engine is fitted  # the new node was folded in, no refit
    assert "c" in server.predictor._targets["latency"].rows
    cold_features = [rr.BlockFeatures()] * 4 + [rr.BlockFeatures(**features(4)), rr.BlockFeatures(**features(5))]
    answer = stubs.predictions.Predict(
        rr.PredictRequest(node_id="c", signatures=SIGS, features=cold_features), timeout=10
    )
    by_sig = {p.signature: p for p in answer.predictions}
    assert [by_sig[s].latency_provenance for s in SIGS] == [rr.PROVENANCE_MEASURED] * 2 + [
        rr.PROVENANCE_PREDICTED
    ] * 2 + [rr.PROVENANCE_COLD_START] * 2
    for p in answer.predictions:
        assert p.latency_ms > 0 and math.isfinite(p.latency_ms)
        assert p.energy_mj > 0 and p.energy_source == "rapl"
    # c looks like b (twice as slow as a): its predictions for sig02/sig03 lean toward b's values (6, 8)
    assert by_sig["sig02"].latency_ms > 3.0 and by_sig["sig03"].latency_ms > 4.0
    assert answer.e2e_correction == 1.0


def test_a_node_that_reports_no_energy_gets_no_other_devices_joules(env):
    """A Pi that reports latency only was given the median metered node's energy, labelled with that node's meter
    (rapl), and its plans used a GPU host's joules (found by review). It gets none: the edge uses its power model."""
    server, stubs = env
    register(stubs, "gpu")
    register(stubs, "pi")
    layers = [layer(s, 2.0 + k, energy_mj=500.0 + k, **features(k)) for k, s in enumerate(SIGS[:3])]
    stubs.profiles.ReportLayerProfiles(report("gpu", *layers), timeout=10)
    stubs.profiles.ReportLayerProfiles(report("pi", layer(SIGS[0], 40.0)), timeout=10)
    assert server.predictor.wait_fresh(10)
    answer = stubs.predictions.Predict(rr.PredictRequest(node_id="pi", signatures=SIGS[:3]), timeout=10)
    for p in answer.predictions:
        assert (p.energy_mj, p.energy_provenance, p.energy_source) == (0.0, rr.PROVENANCE_UNSPECIFIED, "")
        assert p.latency_ms > 0
    gpu = stubs.predictions.Predict(rr.PredictRequest(node_id="gpu", signatures=SIGS[:1]), timeout=10).predictions
    assert (gpu[0].energy_mj, gpu[0].energy_source) == (500.0, "rapl")


def test_a_node_whose_latency_is_additive_in_the_block_sizes_is_predicted_by_that_sum(env):
    """A new node unlike the fleet (its latency grows with the flops, theirs does not) that reports enough blocks is
    folded in as a weighted sum of the blocks' sizes, and predicted by it where it measured nothing."""
    server, stubs = env
    sigs = [f"blk{k:02d}" for k in range(16)]
    for node, factor in (("a", 1.0), ("b", 3.0), ("c", 0.5)):
        register(stubs, node)
        layers = [layer(s, factor * (1.0 + k % 3), **features(k)) for k, s in enumerate(sigs)]
        stubs.profiles.ReportLayerProfiles(report(node, *layers), timeout=10)
    assert server.predictor.wait_fresh(10)
    fitted = server.predictor._targets["latency"].engine
    register(stubs, "npu")
    npu_ms = [0.5 + 2.0 * (k + 1) for k in range(len(sigs))]  # 0.5 ms + 2 ms per Mflop
    stubs.profiles.ReportLayerProfiles(report("npu", *[layer(s, npu_ms[k]) for k, s in enumerate(sigs[:12])]))
    assert server.predictor.wait_fresh(10)
    target = server.predictor._targets["latency"]
    assert target.engine is fitted and target.engine.additive_rows.tolist() == [target.rows["npu"]]
    answer = stubs.predictions.Predict(rr.PredictRequest(node_id="npu", signatures=sigs[12:]), timeout=10)
    for p, truth in zip(answer.predictions, npu_ms[12:], strict=True):
        assert p.latency_provenance == rr.PROVENANCE_PREDICTED
        assert p.latency_ms == pytest.approx(truth, rel=0.01)


def test_predict_errors(env):
    _, stubs = env
    with pytest.raises(grpc.RpcError) as err:
        stubs.predictions.Predict(rr.PredictRequest(node_id="ghost", signatures=["x"]), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    register(stubs, "pi4")
    with pytest.raises(grpc.RpcError) as err:
        stubs.predictions.Predict(rr.PredictRequest(node_id="pi4", signatures=["never-seen"]), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "send their features" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        stubs.predictions.Predict(
            rr.PredictRequest(node_id="pi4", signatures=["a", "b"], features=[rr.BlockFeatures()]), timeout=5
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_predictions_without_any_data_are_unspecified(env):
    _, stubs = env
    register(stubs, "pi4")
    answer = stubs.predictions.Predict(
        rr.PredictRequest(node_id="pi4", signatures=["s"], features=[rr.BlockFeatures(**features(1))]), timeout=5
    )
    (p,) = answer.predictions
    assert p.latency_provenance == rr.PROVENANCE_UNSPECIFIED and p.latency_ms == 0.0


def report_uploaded_block(stubs: Stubs, signature: str, seed: int) -> None:
    """pi4 reports a block whose slice it uploaded first: the server's cloud profiler queues it."""
    register(stubs, "pi4")
    block = conv_model(seed=seed)
    stubs.upload(block)
    item = layer(signature, 3.0, **features(0))
    item.slice_id = sha256(block)
    stubs.profiles.ReportLayerProfiles(report("pi4", item), timeout=10)


def test_cloud_node_times_reported_slices(env):
    server, stubs = env
    report_uploaded_block(stubs, "convsig", seed=5)
    assert server.cloud_profiler.wait_idle(30)
    listed = stubs.profiles.ListMeasuredSignatures(rr.ListMeasuredSignaturesRequest(node_id="cloud"), timeout=5)
    assert list(listed.signatures) == ["convsig"]
    (m,) = server.storage.latest_measurements("cloud")
    assert m.source == "cloud-profiler" and m.latency_ms > 0 and m.samples >= 3
    answer = stubs.predictions.Predict(rr.PredictRequest(node_id="cloud", signatures=["convsig"]), timeout=5)
    assert answer.predictions[0].latency_provenance == rr.PROVENANCE_MEASURED


def test_cloud_node_times_only_while_no_inference_runs(env):
    server, stubs = env
    with server.repository.activity.running():  # an edge's request in progress on the server
        report_uploaded_block(stubs, "busysig", seed=7)
        assert not server.cloud_profiler.wait_idle(0.5)  # queued and waiting for the request (budget 5 s)
        assert server.storage.latest_measurements("cloud") == []
    assert server.cloud_profiler.wait_idle(30)  # the request is over: timed now
    (m,) = server.storage.latest_measurements("cloud")
    assert m.signature == "busysig" and m.samples >= 3


def test_inference_activity_marks_runs_that_a_request_disturbed():
    activity = InferenceActivity()
    mark = activity.wait_idle(0.0)
    assert mark is not None and activity.undisturbed_since(mark)
    with activity.running():
        assert activity.wait_idle(0.01) is None  # busy: no mark
        assert not activity.undisturbed_since(mark)
    assert not activity.undisturbed_since(mark)  # a request started (and ended) since the mark
    assert activity.undisturbed_since(activity.wait_idle(0.0))
    assert not activity.undisturbed_since(None)
    started, finishing = threading.Event(), threading.Event()

    def request() -> None:
        with activity.running():
            started.set()
            time.sleep(0.2)
            finishing.set()  # the last thing the request does before it stops counting as running

    worker = threading.Thread(target=request)
    worker.start()
    assert started.wait(5)
    assert activity.wait_idle(30) is not None and finishing.is_set()  # returns once the request is over
    worker.join()


def test_cloud_node_times_a_reported_whole_model_once(env):
    """A model run that names the uploaded whole model: the server times it on its own provider and answers its
    whole-model latency for the cloud node (what the edge calibrates the cloud's block predictions with)."""
    server, stubs = env
    register(stubs, "pi4")
    whole = conv_model(seed=6)
    stubs.upload(whole)

    def run(slice_id: str) -> rr.ModelProfile:
        return rr.ModelProfile(model="convnet", latency=rr.LatencyStats(median_ms=9.0), sum_of_blocks_ms=10.0,
                               slice_id=slice_id)  # fmt: skip

    def cloud_latency() -> float:
        request = rr.PredictRequest(node_id="cloud", signatures=["s"], features=[features(0)], model="convnet")
        return stubs.predictions.Predict(request, timeout=5).model_latency_ms

    stubs.profiles.ReportLayerProfiles(report("pi4", run(sha256(whole))), timeout=10)
    assert server.cloud_profiler.wait_idle(30)
    first = cloud_latency()
    assert first > 0
    assert server.storage.e2e_correction("cloud", "convnet") == 1.0  # a whole-model time only, no ratio
    assert not server.cloud_profiler.submit_model("convnet", sha256(whole))  # timed once per data dir
    stubs.profiles.ReportLayerProfiles(report("pi4", run(sha256(whole))), timeout=10)
    assert server.cloud_profiler.wait_idle(30) and cloud_latency() == first
    with pytest.raises(grpc.RpcError) as err:  # a malformed slice id is refused with the report
        stubs.profiles.ReportLayerProfiles(report("pi4", run("not-a-sha")), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_the_cloud_summarises_its_timings_as_the_edge_does(tmp_path, monkeypatch):
    """The cloud's rows held a population cv (ddof 0) beside the edges' sample cv (ddof 1) in one column (found by
    review)."""
    from rr_edge.profiles import LatencyStats

    times = [2.0, 2.5, 3.0, 10.0]
    with serving(tmp_path) as (server, stubs):
        monkeypatch.setattr(server.cloud_profiler, "time_slice", lambda slice_id: (times, "CPUExecutionProvider"))
        report_uploaded_block(stubs, "timed", seed=5)
        assert server.cloud_profiler.wait_idle(60)
        (stored,) = server.storage.latest_measurements("cloud")
    expected = LatencyStats.of(times)
    assert (stored.latency_ms, stored.p10_ms, stored.p90_ms, stored.samples) == (
        expected.median_ms, expected.p10_ms, expected.p90_ms, 4
    )  # fmt: skip
    assert stored.cv == pytest.approx(expected.cv)


def test_a_slice_whose_timing_ended_the_process_twice_is_not_timed_again(tmp_path, monkeypatch):
    """A slice whose run killed the server (INT64_MIN / -1 traps the processor in ONNX Runtime) was queued again at
    every start, so every restart died a few seconds in (found by review). The journal names the slice being opened
    or run; the state a dead process leaves is made here by copying it while the slice's open hangs. One death may be
    a kill -9: the slice is timed once more; after a second it is not."""
    import threading

    journal = tmp_path / "cloud-profiler-running"

    def dies_timing(signature: str, report_it: bool) -> str:
        """Start a server whose timing hangs, (report a slice,) and return the journal a crash would leave."""
        hanging, release = threading.Event(), threading.Event()

        def hang(self, slice_id: str, path):  # type: ignore[no-untyped-def]
            hanging.set()
            release.wait(30)
            raise RuntimeError("stopped")

        monkeypatch.setattr(SessionPool, "borrow", hang)  # before the server starts: it queues stored slices
        with serving(tmp_path) as (server, stubs):
            if report_it:
                report_uploaded_block(stubs, signature, seed=5)
            assert hanging.wait(30), "the slice was not timed"
            left = journal.read_text()
            release.set()
            assert server.cloud_profiler.wait_idle(30)
        monkeypatch.undo()
        assert not journal.exists()  # a timing that ends, however, clears it
        journal.write_text(left)
        return left

    deadly = dies_timing("deadly", report_it=True)
    assert dies_timing("deadly", report_it=False) == deadly  # queued again at start after one death
    with serving(tmp_path) as (server, stubs):
        report_uploaded_block(stubs, "fine", seed=6)
        assert server.cloud_profiler.wait_idle(30)
        assert [m.signature for m in server.storage.latest_measurements("cloud")] == ["fine"]
    assert (tmp_path / "cloud-profiler-running.crashed").read_text().split() == [deadly.strip()] * 2
