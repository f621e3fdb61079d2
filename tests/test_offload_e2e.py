"""End to end against a real `rr-server` subprocess: plan and run over gRPC, local fallback, recovery."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rr_edge.blocks import analyze
from rr_edge.client import Client
from rr_edge.offload import make_runner
from rr_edge.onnx_io import load_model
from rr_edge.profiler import features_of
from rr_edge.runner import RunnerConfig
from rr_edge.session import OrtSettings
from rr_edge.slicing import Slicer
from tests._server_process import ServerProcess
from tests.conftest import REPO, exported_model

NODE = "e2e-edge"


def rr_edge_text(*args: str) -> str:
    """What `rr-edge ARGS` prints (it must exit 0)."""
    done = subprocess.run(
        [sys.executable, "-m", "rr_edge.cli", *args], capture_output=True, text=True, cwd=REPO, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def rr_edge(*args: str) -> dict:
    return json.loads(rr_edge_text(*args))


@pytest.fixture
def server(tmp_path: Path):
    proc = ServerProcess(tmp_path / "data")  # on a port of its choosing, read from its --port-file
    yield proc
    proc.stop()


def _local(path: Path, x: np.ndarray) -> np.ndarray:
    session = OrtSettings().create_session(str(path))
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize(("name", "split"), [("resnet18", (2, 8)), ("mobilenet_v2", (3, 15))])
def test_forced_two_split_plan_matches_local(server, tmp_path, name, split):
    path = exported_model(name)
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = rr_edge(
        "run", str(path), "--server", server.address, "--node", NODE, "--split", f"{split[0]},{split[1]}",
        "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npy"), "--repeat", "3", "--json",
    )  # fmt: skip
    assert out["split"] == list(split)
    assert out["fallback"] is False
    assert out["max_abs_diff_vs_local"] <= 1e-4
    assert set(out["latency_ms"]) >= {"median", "p90"} and out["latency_ms"]["median"] > 0
    assert out["energy_source"] in ("nvml", "rapl", "jetson", "model")
    assert "predicted" not in out  # a node the server cannot predict yet (no profile): the split runs unpredicted
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), _local(path, x), rtol=1e-4, atol=1e-4)


def test_profile_plan_json_against_real_server(server, tmp_path):
    path = exported_model("resnet18")
    common = ["--server", server.address, "--node", NODE]
    net = rr_edge("netprofile", *common, "--max-mb", "2", "--json")
    assert net["uplink"]["chosen_model"] in ("affine", "poly4", "pwl")
    prof = rr_edge("profile", str(path), *common, "--sample", "0.3", "--seed", "1", "--json", "--min-runs", "3",
                   "--min-time", "0.05", "--wait-cloud", "120")  # fmt: skip
    assert len(prof["profiled"]) >= 1
    # the whole model went up too: the server times it for the cloud's calibration (cloud_correction below)
    assert prof["whole_model"]["slice_id"] == hashlib.sha256(load_model(path).SerializeToString()).hexdigest()
    uploaded = {m["signature"] for m in prof["profiled"] if m["slice_id"]}
    assert prof["cloud"]["uploaded"] == len(uploaded) >= 1
    assert prof["cloud"]["measured"] == len(uploaded), "the server never timed the uploaded blocks"
    assert prof["cloud"]["whole_model_timed"], "the server never timed the whole model"
    with Client(server.address) as client:  # what --wait-cloud waited for: measured on the cloud node
        cloud = client.server_info().cloud_node_id
        graph = analyze(load_model(path))
        features = {b.signature: features_of(b) for b in graph.blocks}
        sigs = sorted(uploaded)
        preds = client.predict(cloud, sigs, [features[s] for s in sigs]).by_signature
    assert all(preds[s].latency_provenance == "measured" for s in sigs)
    # amortized as `run --repeat 5` will plan (run spreads the upload over its requests)
    plan = rr_edge("plan", str(path), *common, "--amortize", "5", "--json", "--plot", str(tmp_path / "p.png"))
    n = plan["blocks"]
    assert n == len(analyze(load_model(path)).blocks)
    keys = {"i", "j", "latency_ms", "energy_mJ", "offloaded_blocks", "upload_bytes"}
    for entry in plan["pareto"] + [plan["chosen"], *plan["baselines"].values()]:
        assert keys <= set(entry) and -1 <= entry["i"] <= entry["j"] <= n - 1
    assert set(plan["baselines"]) == {"offload_none", "offload_all", "neurosurgeon", "neurosurgeon_non_offloaded"}
    assert plan["chosen"]["objective"] == "latency"
    front = plan["pareto"]
    for a in front:
        for b in front:
            dominated = (
                b["latency_ms"] <= a["latency_ms"]
                and b["energy_mJ"] <= a["energy_mJ"]
                and (b["latency_ms"] < a["latency_ms"] or b["energy_mJ"] < a["energy_mJ"])
            )
            assert not dominated, (a, b)
    assert plan["chosen"]["latency_ms"] == min(p["latency_ms"] for p in front)
    # block predictions are calibrated to the measured whole model: all-local is predicted as profiled
    whole_ms = prof["whole_model"]["latency_ms"]["median"]
    assert plan["baselines"]["offload_none"]["latency_ms"] == pytest.approx(whole_ms, rel=1e-9)
    assert plan["cloud_correction"] > 0 and plan["cloud_correction"] != 1.0
    assert (tmp_path / "p.png").stat().st_size > 10_000

    np.save(tmp_path / "x.npy", np.random.default_rng(2).standard_normal((1, 3, 224, 224)).astype(np.float32))
    ran = rr_edge("run", str(path), *common, "--input", str(tmp_path / "x.npy"), "--repeat", "5", "--json")
    assert ran["splits_used"][0] == [plan["chosen"]["i"], plan["chosen"]["j"]]  # planned, then run as planned
    assert ran["fallback"] is False and ran["max_abs_diff_vs_local"] <= 1e-4
    assert ran["predicted"]["objective"] == "latency"
    # the prediction carries its own energy source, apart from the run's meter (a modelled figure is no measurement)
    assert (
        ran["predicted"]["energy_source"] == ran["segments"][-1]["predicted"]["energy_source"] == plan["energy_source"]
    )
    # the slice is made ready once, outside the requests: measured on its own, its prediction shared by the 5
    assert ran["amortize_over"] <= 5 and ran["upload_ms"] >= 0  # a re-plan spreads uploads over the requests left
    # a slice was made ready iff some plan of the run offloads (a re-plan may have moved to all-local after it)
    assert (ran["upload_ms"] > 0) == any(i < j for i, j in ran["splits_used"])
    share = ran["predicted"]["weight_upload_ms"]
    assert 0 <= share <= ran["predicted"]["latency_ms"]
    if ran["replans"] == 0:  # a busy machine's drift can re-plan, and a re-plan counts an uploaded slice as cached
        assert ran["amortize_over"] == 5 and ran["predicted_upload_ms"] == pytest.approx(5 * share)
    else:
        assert ran["predicted_upload_ms"] >= ran["amortize_over"] * share
    # the same run for people: the planned run's table (a KeyError once made this exit 1 after every request ran)
    table = rr_edge_text("run", str(path), *common, "--input", str(tmp_path / "x.npy"), "--repeat", "2")
    assert "measured" in table and "predicted" in table
    splits = [(int(i), int(j)) for i, j in re.findall(r"measured\W+(-?\d+),(-?\d+)", table)]
    offloaded = any(i < j for i, j in splits)
    assert splits and ("middle slice made ready" in table) == offloaded  # no upload line for a local run
    # a forced split is predicted as the planner costs it (it printed no prediction): here offload_all
    forced = rr_edge("run", str(path), *common, "--split", f"-1,{n - 1}", "--input", str(tmp_path / "x.npy"),
                     "--repeat", "5", "--json")  # fmt: skip
    predicted, offload_all = forced["predicted"], plan["baselines"]["offload_all"]
    assert (predicted["i"], predicted["j"]) == (-1, n - 1) and forced["segments"][-1]["predicted"]["latency_ms"] > 0
    if forced["replans"] == 0 and predicted["weight_upload_ms"] > 0:  # not re-predicted, its slice not cached
        assert predicted["latency_ms"] == pytest.approx(offload_all["latency_ms"], rel=1e-9)
    # ... with its upload as --preloaded and --amortize say (--split refused both)
    fresh = [s for s in ((1, n - 3), (2, n - 3), (3, n - 3)) if s != (plan["chosen"]["i"], plan["chosen"]["j"])]
    for split, flags in zip(fresh, (["--preloaded"], ["--amortize", "1"]), strict=False):
        forced = rr_edge("run", str(path), *common, "--split", "{},{}".format(*split), *flags, "--repeat", "3",
                         "--input", str(tmp_path / "x.npy"), "--json")  # fmt: skip
        assert forced["split"] == list(split)
        if forced["replans"] == 0:  # a re-plan spreads the upload over the requests left, unless --amortize
            assert forced["amortize_over"] == (1 if "--amortize" in flags else 3)
            assert (forced["predicted"]["weight_upload_ms"] > 0) == ("--amortize" in flags)


def _wait_healthy(client: Client, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not client.healthy(timeout_s=2.0):
        assert time.monotonic() < deadline, "the restarted server never became healthy"
        time.sleep(0.1)


def test_server_killed_mid_run_falls_back_then_resumes(server, tmp_path):
    path = exported_model("resnet18")
    model = load_model(path)
    graph = analyze(model)
    x = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
    expected = _local(path, x)
    address = server.address
    config = RunnerConfig(timeout_s=10, retry_interval_s=0.2)
    with Client(address) as client:
        runner = make_runner(Slicer(model, graph), graph, (1, 9), client, config=config)
        results = []
        for k in range(25):
            if k == 10:
                server.kill9()
            results.append(runner.run(x))
        restarted = ServerProcess(server.data_dir, "--listen", address)  # the port the runner knows
        try:
            _wait_healthy(client)
            # The runner notices in the background (every retry_interval_s): requests finish locally until it has.
            deadline = time.monotonic() + 60
            while (result := runner.run(x)).fallback:
                results.append(result)
                assert time.monotonic() < deadline, "the runner never went back to the restarted server"
            results += [result, *(runner.run(x) for _ in range(9))]
            runner.close()
        finally:
            restarted.stop()
    for r in results:
        np.testing.assert_allclose(next(iter(r.outputs.values())), expected, rtol=1e-4, atol=1e-4)
    assert not any(r.fallback for r in results[:10])
    assert all(r.fallback for r in results[10:25])
    assert not any(r.fallback for r in results[-10:])  # back, and staying
    assert all(r.remote_ms > 0 for r in results[-10:])
