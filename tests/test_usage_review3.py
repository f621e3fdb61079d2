"""The third walkthrough of the docs as a new user: hints and warnings that contradicted the command line, a summary
line about an upload that never happened, a damaged stored slice taken for a failed server, echo streams counted as
CANCELLED, and a progress bar that stopped one short."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from _server_support import serving, start_server, stored_slice_files
from test_blocks import branchy_model
from test_cli_usage import DEAD, synthetic_costs

import rr_server
from rr_edge.blocks import analyze
from rr_edge.cli import main
from rr_edge.client import Client
from rr_edge.netprofile import MiB
from rr_edge.offload import make_runner, plan_slices
from rr_edge.profiler import ProfileConfig, TimingPolicy, profile_model
from rr_edge.runner import RunnerConfig


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("review3") / "good.onnx"
    onnx.save_model(branchy_model(), path)
    return path


def test_the_unreachable_server_hint_takes_grpcs_as_tls(capsys, model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`--server grpcs://...` asks for TLS, yet the hint said a server with TLS needs --tls or --tls-ca. (A plaintext
    server: the connection is made, and the TLS handshake fails.)"""
    server = start_server(tmp_path / "data")
    try:
        code = main(["plan", str(model), "--server", f"grpcs://{server.address}", "--node", "n", "--timeout", "2"])
    finally:
        server.stop(grace=0)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "UNAVAILABLE" in err[0], err
    assert err[0].endswith("and that it serves TLS (a server with mTLS also needs --tls-cert and --tls-key)")
    assert "needs --tls or --tls-ca" not in err[0]


@pytest.mark.parametrize("via_env", [False, True])
def test_a_power_config_without_a_default_class_is_warned_about_once(  # type: ignore[no-untyped-def]
    monkeypatch, capsys, caplog, model, tmp_path, via_env: bool
) -> None:
    """A power config of several classes and no default: the meters module says so and names --device-class; plan
    then added "no power model configured: ... give --power-config", which had been given."""
    monkeypatch.delenv("RR_DEVICE_CLASS", raising=False)
    monkeypatch.setattr("rr_edge.commands.plan.gather_costs", lambda *a, **kw: synthetic_costs(model))
    config = tmp_path / "power.json"
    config.write_text(
        '{"classes": [{"name": "pi4", "power": {"active_w": 6, "idle_w": 2.7}},'
        ' {"name": "desk", "power": {"active_w": 65, "idle_w": 15}}]}'
    )
    flags = ["--objective", "energy"]
    if via_env:
        monkeypatch.setenv("RR_POWER_CONFIG", str(config))
    else:
        monkeypatch.delenv("RR_POWER_CONFIG", raising=False)
        flags += ["--power-config", str(config)]
    with caplog.at_level(logging.WARNING, logger="rr_edge.meters.model"):
        assert main(["plan", str(model), *DEAD, "--preloaded", "--json", *flags]) == 0
    assert "no power model configured" not in capsys.readouterr().err
    assert "several classes (pi4, desk) and no 'default'" in caplog.text  # the one warning, naming the way out


@pytest.mark.parametrize("split", ["0,0", "2,2"])
def test_a_run_that_offloads_nothing_prints_no_upload_line(capsys, model, tmp_path, split: str) -> None:  # type: ignore[no-untyped-def]
    """`--split I,I` (or no server to plan with) uploads nothing: "made ready once (upload, open): 0.00 ms" said
    otherwise."""
    shape = [d.dim_value for d in onnx.load(model).graph.input[0].type.tensor_type.shape.dim]
    x = tmp_path / "x.npy"
    np.save(x, np.zeros(shape, np.float32))
    assert main(["run", str(model), *DEAD, "--split", split, "--input", str(x)]) == 0
    out = capsys.readouterr().out
    assert "1 request in" in out and "middle slice" not in out


def test_a_slice_damaged_on_the_servers_disk_is_uploaded_again_at_once(chain, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A stored slice the server finds damaged when the runner starts is removed, and the load answers NOT_FOUND,
    "upload it again". The runner took that for a failed server and waited for the next health check (119 of 300
    requests ran locally); the server is up and asked for the slice: it is uploaded again at once, off the request
    path, and the requests say why they ran locally without blaming the server. The retry interval here is an hour:
    only an upload at once brings the runner back."""
    _, graph, slicer = chain
    x = np.random.default_rng(0).standard_normal(graph.inputs[0].shape).astype(np.float32)
    middle = plan_slices(slicer, len(graph.blocks), 0, 2).middle
    assert middle is not None
    with rr_server.Server(rr_server.ServerConfig(data_dir=tmp_path, listen="127.0.0.1:0")) as s:
        with Client(str(s.address)) as client:
            client.ensure_slice(middle)  # stored, not opened
            (path,) = stored_slice_files(tmp_path)
            path.write_bytes(middle[: len(middle) // 2])  # a disk fault
            uploads: list[str] = []
            real = client.ensure_slice
            monkeypatch.setattr(
                client, "ensure_slice", lambda *a, **k: uploads.append(threading.current_thread().name) or real(*a, **k)
            )
            runner = make_runner(slicer, graph, (0, 2), client, config=RunnerConfig(retry_interval_s=3600))
            first = runner.run(x)
            assert first.fallback and "NOT_FOUND" in first.error and "damaged" in first.error
            assert "server down" not in first.error and "uploaded again" in first.error
            with runner._probing:  # noqa: SLF001 - held by the background upload that the first request started
                pass
            results = [runner.run(x) for _ in range(5)]
            runner.close()
    assert not any(r.fallback for r in results), [r.error for r in results]
    assert uploads == [threading.main_thread().name, "rr-probe"]  # at start, then off the request path
    assert path.read_bytes() == middle


def test_a_closed_echo_stream_ends_ok_not_cancelled(tmp_path) -> None:
    """Closing the stream half-closed and cancelled at once: every netprofile counted as
    rr_requests_total{code="CANCELLED",method="Exchange"} on the server. It waits for the server's end now."""
    with serving(tmp_path) as (server, _), Client(str(server.address)) as client:
        with client.echo_stream(chunk_bytes=MiB) as stream:  # as netprofile's sweep uses it
            stream.exchange(4096, 0)
            stream.exchange(0, 4096)

        def count(code: str) -> float | None:
            return server.metrics.registry.get_sample_value("rr_requests_total", {"method": "Exchange", "code": code})

        assert count("OK") == 1.0 and count("CANCELLED") is None


def test_the_sweep_progress_reaches_its_total() -> None:
    """The whole-model run's sweep of the blocks the sample left out reported each block before it ran and none
    after the last: the bar stopped at "sweep 8/9"."""
    model = branchy_model()
    graph = analyze(model, "branchy")  # four signatures: one profiled, three swept
    fast = TimingPolicy(warmup_runs=0, min_runs=1, min_time_s=0.0)
    config = ProfileConfig(sample=0.25, seed=0, timing=fast, e2e_timing=fast, sweep=fast)
    calls: list[tuple[str, int, int]] = []
    profile_model(
        model, graph, config=config, progress=lambda stage, done, total, label: calls.append((stage, done, total))
    )
    sweep = [(done, total) for stage, done, total in calls if stage == "sweep"]
    assert sweep and sweep[-1][0] == sweep[-1][1] > 0
