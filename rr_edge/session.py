"""ONNX Runtime settings of this node (`OrtSettings`) and the sessions built from them.

Every latency the node measures is tied to the settings it ran with (execution provider, intra/inter-op threads,
graph optimisation level); they travel with each report (`RuntimeSettings` on the wire). Defaults: the best
provider that really loads here, ``$RR_THREADS`` intra-op threads (the testbed sets it per device class) or one per
physical core (ONNX Runtime's own count, given explicitly so that it pins no thread: `rr_edge.cpus`), one inter-op
thread, all graph optimisations. A thread count is at most `MAX_THREADS_PER_CPU` per usable CPU (`check_threads`).

`onnxruntime.get_available_providers()` lists what the wheel was built with (CUDA on onnxruntime-gpu), not what
works: `usable_providers` creates a probe session and keeps what really loaded.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

from rr_edge.cpus import ort_threads, usable_cpus
from rr_edge.errors import ArgumentError, ModelError, RoadRunnerError
from rr_edge.local_model import LocalModel
from rr_proto.providers import provider_name

log = logging.getLogger(__name__)

ENV_THREADS = "RR_THREADS"
# ONNX Runtime creates every thread it is given when a session opens: 100000 hung the profiler (review); more threads
# than CPUs only contend, and a few per CPU is as many as an experiment oversubscribing the machine needs.
MAX_THREADS_PER_CPU = 4
CPU = "CPUExecutionProvider"
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider", "ROCMExecutionProvider")
GRAPH_OPTIMIZATION = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
ORT_DTYPES = {  # ONNX Runtime's input type names -> numpy
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int16)": np.int16,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(uint16)": np.uint16,  # a depth camera's frames
    "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_,
}


def array_fits(x: np.ndarray, dtype: object, shape: Sequence[int | None]) -> bool:
    """Whether `x` has the element type `dtype` (a numpy dtype or its name; None: any) and the `shape` (a dimension
    that is None or negative: any size)."""
    return (
        (dtype is None or str(x.dtype) == str(dtype))
        and x.ndim == len(shape)
        and all(d is None or d < 0 or d == n for d, n in zip(shape, x.shape, strict=True))
    )


_warned_fallback: set[OrtSettings] = set()  # settings whose session already fell back (warned once each)


@functools.lru_cache(maxsize=8)
def usable_providers(wanted: tuple[str, ...] = GPU_PROVIDERS) -> tuple[str, ...]:
    """Of the providers `wanted` (the GPU ones by default), those built in that really load on this machine, in
    ONNX Runtime's order of preference, then CPU (always)."""
    gpu = _gpu_device_nodes()
    built = [p for p in ort.get_available_providers() if p in wanted and p != CPU and (gpu or p not in GPU_PROVIDERS)]
    if not built:
        return (CPU,)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe", [x], [y])
    probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    options = ort.SessionOptions()
    options.log_severity_level = 4  # a provider failing to load is expected here and reported below
    loaded: list[str] = []
    ort.set_default_logger_severity(4)  # library load failures are logged by ONNX Runtime's default logger
    try:
        # One at a time (a session silently drops providers it cannot load), CUDA first: TensorRT needs it.
        for provider in sorted(built, key=lambda p: p != "CUDAExecutionProvider"):
            if provider == "TensorrtExecutionProvider" and "CUDAExecutionProvider" not in loaded:
                continue  # TensorRT needs CUDA; probing it without prints an "EP Error" banner
            try:
                got = ort.InferenceSession(probe.SerializeToString(), options, providers=[provider, CPU])
            except Exception as exc:  # noqa: BLE001 - any failure means "not usable"
                log.debug("provider %s failed to load: %s", provider, exc)
                continue
            if provider in got.get_providers():
                loaded.append(provider)
    finally:
        ort.set_default_logger_severity(2)
    loaded.sort(key=built.index)
    skipped = [p for p in built if p not in loaded]
    if skipped:
        log.info("execution providers %s are built in but do not load here (no GPU or libraries)", skipped)
    return (*loaded, CPU)


def _gpu_device_nodes() -> bool:
    """Whether an NVIDIA (desktop or Jetson) or AMD GPU device node exists; without one no GPU provider can load."""
    dev = Path("/dev")
    nodes = ("nvhost-ctrl", "kfd", "dxg")  # Jetson, AMD, WSL2
    return any(dev.glob("nvidia[0-9]*")) or any((dev / name).exists() for name in nodes)


def max_threads() -> int:
    """The most threads a session of this process may be given: `MAX_THREADS_PER_CPU` per usable CPU."""
    return MAX_THREADS_PER_CPU * len(usable_cpus())


def check_threads(threads: int, what: str) -> int:
    """`threads`, or an ArgumentError naming `what` (the flag or variable they came from) above `max_threads`."""
    if threads > (most := max_threads()):
        raise ArgumentError(
            f"{what} {threads} is more threads than this process can use: at most {most} "
            f"({MAX_THREADS_PER_CPU} per usable CPU)"
        )
    return threads


def _default_threads() -> int:
    value = os.environ.get(ENV_THREADS, "")
    try:
        threads = max(int(value), 0) if value else 0
    except ValueError:
        log.warning("ignoring %s=%r (not an integer)", ENV_THREADS, value)
        return 0
    return check_threads(threads, f"${ENV_THREADS}")


@dataclass(frozen=True)
class OrtSettings:
    """How this node runs ONNX Runtime. `intra_op_threads=0`: one per physical core, ONNX Runtime's choice, given
    explicitly so that its threads are not pinned (`rr_edge.cpus`)."""

    provider: str = ""
    intra_op_threads: int = -1
    inter_op_threads: int = 1
    graph_optimization: str = "all"

    def __post_init__(self) -> None:
        if self.graph_optimization not in GRAPH_OPTIMIZATION:
            raise ValueError(
                f"graph optimization {self.graph_optimization!r} unknown (choose {', '.join(GRAPH_OPTIMIZATION)})"
            )

    def resolved(self) -> OrtSettings:
        """Concrete settings: provider and thread count filled in from this machine (0 threads: the count
        `rr_edge.cpus.ort_threads` gives ONNX Runtime, so that reports name the threads that really ran)."""
        usable = usable_providers()
        default = "CUDAExecutionProvider" if "CUDAExecutionProvider" in usable else usable[0]  # TensorRT: opt-in
        provider = provider_name(self.provider) if self.provider else default
        if provider not in usable:
            raise RoadRunnerError(f"execution provider {provider} does not load here (usable: {', '.join(usable)})")
        if self.intra_op_threads < 0:
            threads = _default_threads()
        else:
            threads = check_threads(self.intra_op_threads, "intra_op_threads")
        check_threads(self.inter_op_threads, "inter_op_threads")
        return replace(self, provider=provider, intra_op_threads=ort_threads(threads))  # reported as it runs

    @property
    def uses_gpu(self) -> bool:
        return self.provider in GPU_PROVIDERS

    def session_options(self) -> ort.SessionOptions:
        """The pool threads spin during a run and stop when it returns (`session.force_spinning_stop`): a split runs
        its head, middle and tail as three sessions one after the other, and each one's threads, left spinning,
        took the cores from the next (resnet18 split 2,8 on 2 threads: 56 against 17.5 ms, the whole model 17 ms;
        `tools/bench_edge_chain.py`). Not spinning at all costs a model of many small operators (rr_server.sessions)."""
        options = ort.SessionOptions()
        options.intra_op_num_threads = ort_threads(self.intra_op_threads)
        options.inter_op_num_threads = max(self.inter_op_threads, 0)
        options.graph_optimization_level = GRAPH_OPTIMIZATION[self.graph_optimization]
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        options.add_session_config_entry("session.force_spinning_stop", "1")
        return options

    def create_session(self, model: bytes | str | LocalModel) -> ort.InferenceSession:
        """A session on these settings' provider (CPU as ONNX Runtime's own fallback for unsupported ops); a model
        ONNX Runtime refuses (an IR version newer than it reads, an operator it lacks) is a ModelError."""
        s = self.resolved()
        providers = [s.provider] if s.provider == CPU else [s.provider, CPU]
        options = s.session_options()
        if isinstance(model, LocalModel):
            names = list(model.weights)
            options.add_external_initializers(
                names, [ort.OrtValue.ortvalue_from_numpy(model.weights[n]) for n in names]
            )
            model = model.onnx
        try:
            session = ort.InferenceSession(model, options, providers=providers)
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises several unrelated types
            raise ModelError(f"ONNX Runtime cannot load the model: {ort_reason(exc)}") from None
        got = session.get_providers()
        if got[:1] != [s.provider] and s not in _warned_fallback:
            _warned_fallback.add(s)
            log.warning(
                "ONNX Runtime did not put %s first for this model (session providers: %s): latencies measured "
                "with these settings are not %s latencies",
                s.provider,
                ", ".join(got) or "none",
                s.provider,
            )
        return session


_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : (?:Load model from .*? failed:)?")
_ORT_SOURCE = re.compile(r"\S+\.(?:cc|cpp|h):\d+ ")  # where in its C++ it failed, then the function's signature


def run_session(session: ort.InferenceSession, names: Sequence[str] | None, feeds: Mapping[str, Any]) -> list[Any]:
    """`session.run`, where a model that loads but fails to run (a Gather index out of range passes the checker) is a
    ModelError in one line, as one ONNX Runtime cannot load is (`OrtSettings.create_session`)."""
    try:
        return session.run(names, feeds)
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises several unrelated types
        raise ModelError(f"ONNX Runtime cannot run the model: {ort_reason(exc)}") from None


def ort_reason(exc: BaseException) -> str:
    """ONNX Runtime's error message without its status prefix, its C++ source location and function signature."""
    text = _ORT_PREFIX.sub("", " ".join(str(exc).split()))
    where = _ORT_SOURCE.search(text)
    if where is not None and (start := text.find("(", where.end())) >= 0:
        depth = 0
        for k in range(start, len(text)):  # the signature's argument list ends where its parentheses close
            depth += {"(": 1, ")": -1}.get(text[k], 0)
            if depth == 0:
                rest = text[k + 1 :].removeprefix(" const")
                text = text[: where.start()] + rest.strip()
                break
    return text.strip() or type(exc).__name__


def random_feeds(
    session: ort.InferenceSession, seed: int = 0, given: Mapping[str, np.ndarray] | None = None
) -> dict[str, np.ndarray]:
    """Made-up inputs for a session (profiling, reading shapes): standard-normal floats, zeros for integers and
    booleans (zeros are valid indices), free dimensions 1; the arrays of `given` as they are."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = dict(given or {})
    for arg in session.get_inputs():
        if arg.name in feeds:
            continue
        dtype = ORT_DTYPES.get(arg.type)
        if dtype is None:
            raise ModelError(f"input {arg.name!r} has type {arg.type}, for which no made-up input can be generated")
        shape = tuple(d if isinstance(d, int) and d >= 0 else 1 for d in arg.shape)
        if np.issubdtype(dtype, np.floating):
            feeds[arg.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[arg.name] = np.zeros(shape, dtype=dtype)
    return feeds
