"""The public surfaces: every name in __all__ resolves, and the edge API works sync and async on a tiny model."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

import rr_edge
import rr_server


@pytest.mark.parametrize("package", [rr_edge, rr_server])
def test_all_names_resolve(package):
    assert package.__all__ == sorted(package.__all__) or package is rr_server
    for name in package.__all__:
        assert getattr(package, name) is not None, name


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        rr_edge.nope  # noqa: B018


@pytest.fixture(scope="module")
def tiny_server(tmp_path_factory):
    from tests._server_support import conv_model

    base = tmp_path_factory.mktemp("api")
    path = base / "tiny.onnx"
    path.write_bytes(conv_model())
    with rr_server.Server(rr_server.ServerConfig(data_dir=base / "data", listen="127.0.0.1:0")) as server:
        yield server.address, path


def test_sync_and_async_runner_match_local(tiny_server):
    address, path = tiny_server
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    with rr_edge.connect(address, "api-edge") as node:
        n = len(node.blocks(path).blocks)
        with node.runner(path, (-1, n - 1)) as run:  # everything on the server
            remote = run.run(x)
        with node.runner(path, (n - 1, n - 1)) as run:  # everything local
            local = run(x)
    assert remote.fallback is False and remote.remote_ms > 0
    np.testing.assert_allclose(next(iter(remote.outputs.values())), next(iter(local.values())), rtol=1e-5, atol=1e-6)

    async def main() -> dict:
        async with rr_edge.connect_async(address, "api-edge") as node:
            assert len((await node.blocks(path)).blocks) == n
            async with await node.runner(path, (-1, n - 1)) as runner:
                result = await runner.run(x)
                assert not result.fallback and not runner.replan_needed  # no network models: nothing to drift
            return result.outputs

    out = asyncio.run(main())
    np.testing.assert_allclose(next(iter(out.values())), next(iter(local.values())), rtol=1e-5, atol=1e-6)


def test_plan_without_network_profile_says_what_to_do(tiny_server):
    address, path = tiny_server
    with rr_edge.connect(address, "never-profiled") as node, pytest.raises(rr_edge.RoadRunnerError, match="netprofile"):
        node.plan(Path(path), wait_s=0)
