"""Every module under tools/ imports: a benchmark the docs tell users to rerun must not break silently when a name
it imports moves (bench_transport and bench_cloud_profiler imported `grpc_options` from rr_server for a stop after
it moved to rr_proto.transport)."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import tools

MODULES = sorted(m.name for m in pkgutil.walk_packages(tools.__path__, "tools.") if not m.name.endswith("__main__"))


def test_the_tools_are_all_found() -> None:
    assert {"tools.bench_transport", "tools.eval.harness", "tools.testbed.netns"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_tool_module_imports(name: str) -> None:
    importlib.import_module(name)
