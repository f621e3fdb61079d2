"""Shared fixtures: exported zoo models cached on disk, analysed models cached in memory, ORT helpers.

Exports are slow (seconds to tens of seconds each), so every exported model is kept under
`$RR_MODEL_CACHE` (default `<repo>/.cache/models`), keyed by name, input size, batch, the torch
version and `rr_edge.export.EXPORT_FORMAT` (bumped whenever exported graphs change).
"""

from __future__ import annotations

import functools
import logging
import os
import signal
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np
import onnx
import pytest

from rr_edge.blocks import BlockGraph, analyze
from rr_edge.onnx_io import load_model
from rr_edge.slicing import Slicer

REPO = Path(__file__).resolve().parents[1]

# ORT_ENABLE_BASIC (constant folding, redundant-node elimination, semantics-preserving fusions):
# chained slices reproduced the full output bit for bit on every paper model, and it is faster than
# ORT_DISABLE_ALL. ORT_ENABLE_ALL (layout transforms, fusions that a boundary can split) also stays
# within tolerance but is not bit-exact (2e-5 absolute on resnet50 logits of magnitude 110).
ORT_LEVEL = "basic"


def model_cache_dir() -> Path:
    d = Path(os.environ.get("RR_MODEL_CACHE", REPO / ".cache" / "models"))
    d.mkdir(parents=True, exist_ok=True)
    return d


@functools.cache
def _export_key() -> str:
    import torch

    from rr_edge.export import EXPORT_FORMAT

    return f"t{torch.__version__.split('+')[0]}_f{EXPORT_FORMAT}"


def exported_model(name: str, size: int = 224, batch: int = 1) -> Path:
    """Path of `name` exported at `size` (exporting once, then cached on disk)."""
    from rr_edge.export import export_model

    path = model_cache_dir() / f"{name}_{size}_b{batch}_{_export_key()}.onnx"
    if not path.exists():
        export_model(name, path, input_size=size, batch=batch)
    return path


@functools.lru_cache(maxsize=3)
def analysed_model(name: str, size: int = 224) -> tuple[onnx.ModelProto, BlockGraph]:
    """(model, blocks) of an exported zoo model, a few kept in memory."""
    model = load_model(exported_model(name, size))
    return model, analyze(model, f"{name}@{size}")


_PACKAGE_LOGGERS = ("rr_edge", "rr_server")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Put the root logger (handlers, level) and the package loggers' levels back after every test.

    rr-server's main, run in-process by some tests, replaces the root handlers with one on that test's stderr and
    sets the root level from --log-level (ERROR in one test): left so, a later test that reads a WARNING through
    caplog saw nothing, and passed or failed by the order the tests ran in.
    """
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in _PACKAGE_LOGGERS}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, saved in levels.items():
        logging.getLogger(name).setLevel(saved)


@pytest.fixture
def sigint_default() -> Iterator[None]:
    """Python's own SIGINT handler, as in a terminal (a test run started in the background inherits SIGINT ignored,
    which `rr_edge.commands._interrupt` leaves alone: CI did), put back as it was afterwards."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


def sigint_default_in_child() -> None:
    """`preexec_fn` of a subprocess that must take Ctrl-C (see `sigint_default`)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(scope="module")
def chain() -> tuple[onnx.ModelProto, BlockGraph, Slicer]:
    """A four-conv chain (`tools.bench_runner.conv_chain`), its blocks and a Slicer: what runner tests split."""
    from tools.bench_runner import conv_chain

    model = conv_chain(layers=4)
    graph = analyze(model, "chain")
    return model, graph, Slicer(model, graph)


@pytest.fixture(scope="session")
def zoo() -> Callable[..., tuple[onnx.ModelProto, BlockGraph]]:
    return analysed_model


@pytest.fixture(scope="session")
def zoo_path() -> Callable[..., Path]:
    return exported_model


def ort_session(model: onnx.ModelProto | bytes | Path):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = {
        "disable_all": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[ORT_LEVEL]
    opts.intra_op_num_threads = os.cpu_count() or 1
    src = (
        model.SerializeToString()
        if isinstance(model, onnx.ModelProto)
        else str(model)
        if isinstance(model, Path)
        else model
    )
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def run_onnx(model: onnx.ModelProto | bytes | Path, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = ort_session(model)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, dict(feeds)), strict=True))


def random_inputs(graph: BlockGraph, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {t.name: rng.standard_normal(t.shape).astype(t.dtype) for t in graph.inputs}


class Clock:
    """A monotonic clock the test sets (`clock.t`), from 1000 s."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """`rr_edge.commands._planned_run`'s clock, set by the test: its waits between plans without sleeping."""
    from rr_edge.commands import _planned_run

    c = Clock()
    monkeypatch.setattr(_planned_run.time, "monotonic", c)
    return c
