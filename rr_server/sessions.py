"""Bounded LRU of ONNX Runtime sessions, one per slice, on the best execution provider that really loads.

`onnxruntime.get_available_providers()` lists what the wheel was built with (CUDA on onnxruntime-gpu), not what
works: the CUDA provider needs its libraries and a GPU, and ONNX Runtime silently falls back to CPU when it cannot
load. `resolve_providers` therefore keeps only the providers a probe session really got (`rr_edge.session`).

`Session.run` can write the outputs straight into memory its caller provides (its `allocate` argument: the inference
servicer passes the raw-content slots of the response message, so the outputs are not copied once more when it is
sent). That needs the output shapes before the run: static ones from the model, dynamic ones as the last run with the
same input shapes produced them; when they differ (data-dependent shapes), the run falls back to ONNX Runtime's own
output memory and that input-shape key is not bound again. Every run is watched (`rr_server.run_watchdog`).
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import Fail as OrtFail
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument as OrtInvalidArgument
from onnxruntime.capi.onnxruntime_pybind11_state import RuntimeException as OrtRuntimeException

from rr_edge.cpus import ort_threads
from rr_edge.session import usable_providers
from rr_proto.codec import datatype_of, dtype_of, raw_size
from rr_proto.providers import provider_name
from rr_server.config import DEFAULT_PROVIDERS
from rr_server.errors import InvalidArgument, NotFound, ResourceExhausted, Unavailable
from rr_server.run_watchdog import MAX_RUN_SECONDS, Run, RunCaller, RunWatchdog

log = logging.getLogger(__name__)

# ONNX Runtime element types -> KServe datatypes.
_KSERVE = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


# (name, dtype, shape) of each output -> writable C-contiguous arrays of exactly those, for ONNX Runtime to fill,
# or None to let ONNX Runtime allocate them (a plain run).
Allocate = Callable[[list[tuple[str, np.dtype, tuple[int, ...]]]], list[np.ndarray] | None]
_MAX_SHAPE_KEYS = 64  # remembered input-shape -> output-shape entries per session
_MAX_FAILED = 1024  # remembered load failures (slice ids ONNX Runtime refused)
# The most bytes of random inputs `random_inputs` makes (a slice's declared input shapes are the uploader's word:
# float[50000,50000] is 10 GB; real block inputs are a few MB).
MAX_TIMING_INPUT_BYTES = 256 * 1024 * 1024
# Optimizers the server's sessions go without. Constant folding would keep whatever a slice's constants compute: a
# ConstantOfShape of 171 bytes folds to 1 GB held by every cached session of it. The exported models' slices have
# nothing left to fold (BatchNorm and shape chains are gone at export): they run as fast without it and open faster.
UNFOLDED = ["ConstantFolding"]


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output: name, KServe datatype, shape (-1 for a dynamic dimension)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


def session_options(intra_op_threads: int = 0) -> ort.SessionOptions:
    """How the server opens every slice (0 threads: one per physical core, as ONNX Runtime would choose, but given
    explicitly so that no slice's pool threads are pinned to cores: `rr_edge.cpus`).

    ONNX Runtime's pool threads spin after each run by default; on a server they would steal the cores that gRPC's
    threads need (tiny-tensor ModelInfer round trip 1.09 ms spinning vs 0.65 ms not, 2-core machine). A model of
    many small operators runs slower without spinning (224x224, 2 threads: mobilenet_v2 1.27x, alexnet and resnet18
    1.15x, resnet34 1.02x; `tools/bench_spinning.py`), and the server's own timings (`rr_server.cloud_profiler`)
    include that.

    No CPU memory arena: an arena keeps the peak of every run for as long as its session is cached, and the cache
    counts slices, not bytes (four 139-byte slices that expand to 2 GiB inside pinned 8.7 GB). Without it a run's
    buffers go back to malloc (rr-server's tuning keeps up to 1 GiB of them for reuse); the middle third of resnet18
    and of mobilenet_v2 at 224 ran no slower side by side (`tools/bench_arena.py`, docs/performance.md).
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = ort_threads(intra_op_threads)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.enable_cpu_mem_arena = False
    return options


def nvidia_gpu_present(driver: Path = Path("/proc/driver/nvidia/gpus"), devices: Path = Path("/dev")) -> bool:
    """Whether the NVIDIA driver shows a GPU here (its /proc entries, or a device node in a container): read from
    the files, not NVML, which only the `gpu` extra installs."""
    return any(driver.glob("*")) or any(devices.glob("nvidia[0-9]*"))


def resolve_providers(requested: Sequence[str]) -> list[str]:
    """ONNX Runtime provider names that really load here (`rr_edge.session.usable_providers`), in the requested
    order; CPU is always among them (last unless it was asked for before others)."""
    names = list(dict.fromkeys([*(provider_name(p) for p in requested), "CPUExecutionProvider"]))
    usable = usable_providers(tuple(names))
    built = set(ort.get_available_providers())
    missing = [n for n in names if n in built and n not in usable]
    if missing:
        # The default asks for CUDA wherever it loads: on a host with no NVIDIA GPU, serving on CPU is as expected
        # (it was a warning at every start of a CPU server); on one with a GPU, or when asked for, it is not.
        expected = tuple(requested) == DEFAULT_PROVIDERS and not nvidia_gpu_present()
        log.log(
            logging.INFO if expected else logging.WARNING,
            "execution providers %s are built in but do not load here%s; using %s",
            missing,
            " (no NVIDIA GPU)" if expected else "",
            usable,
        )
    return [n for n in names if n in usable]


_STANDALONE = RunWatchdog()  # watches the runs of sessions made outside a SessionPool (its thread starts with a run)


class Session:
    """An ONNX Runtime session of one slice with its KServe-facing signature. `run` is thread-safe."""

    def __init__(self, slice_id: str, session: ort.InferenceSession, watchdog: RunWatchdog | None = None) -> None:
        self.slice_id = slice_id
        self._session = session
        self._watchdog = watchdog or _STANDALONE  # a pool's sessions share the pool's
        self.providers = tuple(session.get_providers())
        self.inputs = tuple(_spec(a) for a in session.get_inputs())
        self.outputs = tuple(_spec(a) for a in session.get_outputs())
        self._output_names = [o.name for o in self.outputs]
        self._dtypes = {spec.name: dtype_of(spec.datatype) for spec in self.inputs + self.outputs}
        # Outputs are bound to caller memory only for numeric tensors (BYTES need ONNX Runtime's own objects), and
        # not when an output is an input: ONNX Runtime hands the input back and never writes the bound memory, whose
        # uninitialised bytes (another request's tensors) went to the caller (found by review).
        aliased = {spec.name for spec in self.inputs} & set(self._output_names)
        self._bindable = all(dt.kind not in "OSU" for dt in self._dtypes.values()) and not aliased
        self._static = {spec.name: spec.shape for spec in self.outputs if all(d >= 0 for d in spec.shape)}
        # Declared dimensions as ONNX Runtime gives them: an int, a symbol (str, e.g. a batch "N") or None.
        self._input_dims = {a.name: tuple(a.shape) for a in session.get_inputs()}
        self._output_dims = {a.name: tuple(a.shape) for a in session.get_outputs()}
        self._shapes: dict[tuple, tuple[tuple[int, ...], ...] | None] = {}  # None: data-dependent, never bind

    def check_inputs(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Raise InvalidArgument unless `arrays` are exactly this slice's inputs with matching dtypes and shapes."""
        expected = {spec.name: spec for spec in self.inputs}
        unknown = sorted(set(arrays) - set(expected))
        if unknown:
            raise InvalidArgument(f"unknown input(s) {unknown}; slice {self.slice_id[:12]} takes {sorted(expected)}")
        missing = sorted(set(expected) - set(arrays))
        if missing:
            raise InvalidArgument(f"missing input(s) {missing} for slice {self.slice_id[:12]}")
        for name, array in arrays.items():
            spec = expected[name]
            got = datatype_of(array.dtype)
            if got != spec.datatype:
                raise InvalidArgument(f"input {name!r}: datatype {got}, but the slice expects {spec.datatype}")
            if len(array.shape) != len(spec.shape) or any(
                want >= 0 and want != have for want, have in zip(spec.shape, array.shape, strict=True)
            ):
                raise InvalidArgument(
                    f"input {name!r}: shape {list(array.shape)}, but the slice expects {list(spec.shape)} (-1 = any)"
                )

    def declared_output_bytes(self, arrays: Mapping[str, np.ndarray], outputs: Sequence[str] = ()) -> dict[str, int]:
        """Bytes of each named output (empty: all) whose shape is known before the run: every dimension static, or a
        symbol that an input of `arrays` has too (a batch "N"), taken from that input. Outputs whose size only the run
        can tell (data-dependent, strings) are left out. For refusing a run whose result could never be sent."""
        symbols: dict[str, int] = {}
        for name, dims in self._input_dims.items():
            array = arrays.get(name)
            if array is None or array.ndim != len(dims):
                continue  # check_inputs refuses it
            for dim, size in zip(dims, array.shape, strict=True):
                if isinstance(dim, str):  # the smallest, should inputs disagree: a lower bound never refuses wrongly
                    symbols[dim] = min(size, symbols.get(dim, size))
        sizes = {}
        for name in outputs or self._output_names:
            declared, dtype = self._output_dims.get(name), self._dtypes.get(name)
            if declared is None or dtype is None or dtype.kind in "OSU":
                continue  # an unknown output: `run` refuses it
            resolved = [_resolve(dim, symbols) for dim in declared]
            if all(size is not None for size in resolved):
                sizes[name] = math.prod(size for size in resolved if size is not None) * dtype.itemsize
        return sizes

    def check_output_size(self, arrays: Mapping[str, np.ndarray], outputs: Sequence[str], limit: int) -> None:
        """ResourceExhausted when the outputs whose size is known before the run (`declared_output_bytes`) already
        exceed `limit` (the server's message size): a float[2^28] output ran for seconds and took 2 GB of memory,
        and then gRPC refused to send it."""
        self._check_sizes(self.declared_output_bytes(arrays, outputs), limit, "would take", "not run")

    def check_result_size(self, results: Mapping[str, np.ndarray], limit: int) -> None:
        """ResourceExhausted when the outputs a run gave exceed `limit`: sizes that depend on the input values (an
        Expand to a shape read from an input) are only known now. Refused here, before the response is encoded:
        gRPC's own refusal came after two more copies, and ended a ModelStreamInfer stream instead of one message."""
        self._check_sizes({name: raw_size(a, name) for name, a in results.items()}, limit, "take", "not sent")

    def _check_sizes(self, sizes: Mapping[str, int], limit: int, verb: str, outcome: str) -> None:
        total = sum(sizes.values())
        if total > limit:
            largest = sorted(sizes.items(), key=lambda item: -item[1])[:3]
            named = ", ".join(f"{name!r} {size:,} bytes" for name, size in largest)
            raise ResourceExhausted(
                f"slice {self.slice_id[:12]}: its outputs {verb} {total:,} bytes ({named}), over the server's "
                f"message limit of {limit:,} bytes; {outcome} (ask for fewer outputs or a smaller batch)"
            )

    def run(
        self,
        arrays: Mapping[str, np.ndarray],
        outputs: Sequence[str] = (),
        allocate: Allocate | None = None,
        caller: RunCaller | None = None,
        seconds: float | None = None,
    ) -> dict[str, np.ndarray]:
        """The named outputs (empty: all); with `allocate`, written into the arrays it returns where it can.

        The run is stopped (`RunWatchdog.watch`) past `seconds`, the caller's deadline or the server's limit
        (DeadlineExceeded), when the caller ends (its reason: Cancelled, ...) or the server stops (Unavailable)."""
        names = list(outputs) or list(dict.fromkeys(self._output_names))
        if len(set(names)) < len(names):  # laid out twice, one of them freed with the response: a use after free
            raise InvalidArgument(f"outputs {names} name one output twice")
        unknown = sorted(set(names) - set(self._output_names))
        if unknown:
            raise InvalidArgument(f"unknown output(s) {unknown}; slice {self.slice_id[:12]} has {self._output_names}")
        self.check_inputs(arrays)
        key = (tuple(names), tuple((name, array.shape) for name, array in arrays.items()))
        with self._watchdog.watch(f"slice {self.slice_id[:12]}", caller, seconds) as run:
            if allocate is not None and self._bindable:
                placed = self._run_placed(arrays, names, key, allocate, run)
                if placed is not None:
                    return placed
            try:
                results = self._session.run(names, dict(arrays), run.options)
            except (OrtInvalidArgument, OrtFail, OrtRuntimeException) as exc:  # a kernel refused these values
                # (an index out of range, a string Cast to a number, ...), unless the device failed
                if isinstance(exc, OrtRuntimeException) and _DEVICE_FAULT.search(str(exc)):
                    raise Unavailable(f"slice {self.slice_id[:12]}: the server's device failed: {exc}"[:500]) from None
                if _HOST_ALLOC.search(str(exc)):  # sizes the request chose (an Expand to its shape): a size limit
                    raise ResourceExhausted(
                        f"slice {self.slice_id[:12]}: these inputs need more memory than the server has: {exc}"[:500]
                    ) from None
                raise InvalidArgument(f"slice {self.slice_id[:12]} cannot run on these inputs: {exc}"[:500]) from None
        if self._bindable and key not in self._shapes:
            if len(self._shapes) >= _MAX_SHAPE_KEYS:
                self._shapes.clear()
            self._shapes[key] = tuple(r.shape for r in results)
        return dict(zip(names, results, strict=True))

    def _run_placed(
        self, arrays: Mapping[str, np.ndarray], names: list[str], key: tuple, allocate: Allocate, run: Run
    ) -> dict[str, np.ndarray] | None:
        """Run with the outputs bound to `allocate`d memory; None when the output shapes are not known (yet), or a
        bound run failed before for these input shapes."""
        shapes = self._shapes.get(key, ())  # one lookup: another run may clear the table meanwhile
        if shapes is None:
            return None
        if all(name in self._static for name in names):
            shapes = tuple(self._static[name] for name in names)
        if not shapes:
            return None
        placed = allocate([(name, self._dtypes[name], shape) for name, shape in zip(names, shapes, strict=True)])
        if placed is None:
            return None
        binding = self._session.io_binding()
        for name, array in arrays.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        for name, out in zip(names, placed, strict=True):
            binding.bind_output(name, "cpu", 0, out.dtype, out.shape, out.ctypes.data)
        try:
            self._session.run_with_iobinding(binding, run.options)
        except Exception as exc:  # noqa: BLE001 - ORT's own types; usually data-dependent output shapes
            if run.stopped is not None:
                raise
            log.info("slice %s: bound run failed (%s); plain runs for these input shapes", self.slice_id[:12], exc)
            self._shapes[key] = None
            return None
        written = [value.data_ptr() for value in binding.get_outputs()]
        if written != [out.ctypes.data for out in placed]:  # ONNX Runtime put an output elsewhere: not in `placed`
            log.info("slice %s: an output was not written where bound; plain runs for these shapes", self.slice_id[:12])
            self._shapes[key] = None
            return None
        return dict(zip(names, placed, strict=True))


# An ONNX Runtime RuntimeException that is the server's fault (its GPU, its memory), not the request's: UNAVAILABLE,
# so that the edge runs locally until the server recovers instead of sending it every request.
_DEVICE_FAULT = re.compile(r"CUDA|cuDNN|CUDNN|CUBLAS|cublas|TensorRT|out of memory")
# A host allocation that failed: the request's own sizes, RESOURCE_EXHAUSTED (UNAVAILABLE made its edge take the
# server for down; found by review).
_HOST_ALLOC = re.compile(r"bad.alloc")
# Memory that ran out while a session was opened (the host's, a GPU's, an arena's): passing, not the slice's fault.
_OPEN_ALLOC = re.compile(r"bad.alloc|out of memory|Failed to allocate memory")


class SessionPool:
    """At most `capacity` open sessions, least recently used evicted first; concurrent loads of one slice are merged."""

    def __init__(
        self,
        providers: Sequence[str],
        capacity: int,
        on_lookup: Callable[[bool], None] | None = None,
        intra_op_threads: int = 0,
        max_run_seconds: float | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError("session cache capacity must be >= 1")
        self.providers = list(providers)
        self.capacity = capacity
        self.watchdog = RunWatchdog(MAX_RUN_SECONDS if max_run_seconds is None else max_run_seconds)
        self._intra = intra_op_threads
        self._on_lookup = on_lookup or (lambda hit: None)
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}
        self._failed: OrderedDict[str, str] = OrderedDict()  # slice id -> why its last load failed (bounded)
        self._opening: Counter[str] = Counter()  # slice id -> opens of it in progress
        self._evicted: set[str] = set()  # slices evicted while being opened: those opens' sessions are not cached

    def _known(self, slice_id: str) -> Session | None:
        """The open session of `slice_id`, marked most recently used; its remembered refusal raised (the same bytes
        fail the same way: opened again, each request took seconds); None: it is to be opened (caller holds the
        lock)."""
        session = self._sessions.get(slice_id)
        if session is not None:
            self._sessions.move_to_end(slice_id)
            self._on_lookup(True)
            return session
        failed = self._failed.get(slice_id)
        if failed is not None:
            raise InvalidArgument(failed)
        return None

    def get(self, slice_id: str, path: Path) -> Session:
        with self._lock:
            session = self._known(slice_id)
            if session is not None:
                return session
            load_lock = self._loading.setdefault(slice_id, threading.Lock())
        with load_lock:
            with self._lock:  # the open waited for may have succeeded, or been refused (each waiter opened it again)
                session = self._known(slice_id)
                if session is not None:
                    return session
                self._opening[slice_id] += 1
            self._on_lookup(False)
            try:
                session = self._load(slice_id, path)
            except Exception as exc:  # any outcome leaves no load lock behind (NotFound: evicted meanwhile)
                with self._lock:
                    self._opened(slice_id)
                    self._loading.pop(slice_id, None)
                    if isinstance(exc, InvalidArgument):  # ONNX Runtime refused it: remembered
                        self._failed[slice_id] = str(exc)
                        while len(self._failed) > _MAX_FAILED:
                            self._failed.popitem(last=False)
                raise
            with self._lock:
                self._loading.pop(slice_id, None)
                if self._opened(slice_id):  # unloaded, or gone from the store, while it opened
                    log.info("slice %s was evicted while it opened: its session is not cached", slice_id[:12])
                    return session  # the request in hand came before the eviction: it runs on it
                self._sessions[slice_id] = session
                self._failed.pop(slice_id, None)
                while len(self._sessions) > self.capacity:
                    evicted, _ = self._sessions.popitem(last=False)
                    log.info("session cache full: evicted slice %s", evicted[:12])
            return session

    def _opened(self, slice_id: str) -> bool:
        """An open of `slice_id` has ended; whether the slice was evicted during it (caller holds the lock). Evicted
        during any of several opens at once, none of them is cached."""
        self._opening[slice_id] -= 1
        evicted = slice_id in self._evicted
        if not self._opening[slice_id]:
            del self._opening[slice_id]
            self._evicted.discard(slice_id)
        return evicted

    def forget_failure(self, slice_id: str) -> None:
        """Drop the remembered refusal of `slice_id` (its stored file is gone: a new upload is tried afresh)."""
        with self._lock:
            self._failed.pop(slice_id, None)

    def _open(self, what: str, path: Path) -> ort.InferenceSession:
        try:
            return ort.InferenceSession(
                str(path), session_options(self._intra), providers=self.providers, disabled_optimizers=UNFOLDED
            )
        except Exception as exc:  # noqa: BLE001 - ORT raises its own Fail/InvalidGraph types
            if not path.exists():  # evicted from the store meanwhile: gone, not refused
                raise NotFound(f"{what} is not cached on this server (evicted); upload it again") from None
            reason = str(exc).replace(str(path), what)  # not the server's file layout
            # Passing, and the server's, not the slice's: not remembered as a refusal (a GPU full for a moment was
            # INVALID_ARGUMENT for good; found by review).
            # Only ORT's run-time failures are read for it: a refusal of the model (INVALID_GRAPH, INVALID_PROTOBUF,
            # NOT_IMPLEMENTED) quotes the slice's own node names, and a node named "out of memory" made one passing.
            runtime = isinstance(exc, (OrtRuntimeException, OrtFail))
            if isinstance(exc, MemoryError) or (runtime and _OPEN_ALLOC.search(reason)):
                raise ResourceExhausted(f"the server has not the memory to open {what}: {reason}"[:500]) from None
            if isinstance(exc, OrtRuntimeException) and _DEVICE_FAULT.search(reason):  # as in `Session.run`
                raise Unavailable(f"the server's device failed to open {what}: {reason}"[:500]) from None
            raise InvalidArgument(f"ONNX Runtime cannot load {what}: {reason}"[:500]) from None

    def _load(self, slice_id: str, path: Path) -> Session:
        session = Session(slice_id, self._open(f"slice {slice_id[:12]}", path), self.watchdog)
        log.info("loaded slice %s on %s", slice_id[:12], ",".join(session.providers))
        return session

    def open_once(self, path: Path) -> None:
        """Open the model at `path` as a load would, then close it, keeping nothing: the last step of an upload
        probe, which times what an edge waits for before its first request (an upload with `load`)."""
        self._open("the probe slice", path)

    def borrow(self, slice_id: str, path: Path) -> Session:
        """The open session of `slice_id` if there is one, else a new one that is not cached: for timing runs
        (`rr_server.cloud_profiler`), which must not evict the sessions edges are using."""
        with self._lock:
            session = self._sessions.get(slice_id)
        return session if session is not None else self._load(slice_id, path)

    def loaded(self, slice_id: str) -> bool:
        with self._lock:
            return slice_id in self._sessions

    def failure(self, slice_id: str) -> str | None:
        """Why ONNX Runtime refused `slice_id` the last time it was opened (None: never refused, or opened since)."""
        with self._lock:
            return self._failed.get(slice_id)

    def evict(self, slice_id: str) -> bool:
        with self._lock:
            self._failed.pop(slice_id, None)
            if slice_id in self._opening:  # cached once opened, it held memory and a slot for a slice unloaded
                self._evicted.add(slice_id)
            return self._sessions.pop(slice_id, None) is not None

    def loaded_ids(self) -> list[str]:
        with self._lock:
            return list(self._sessions)

    def terminate_runs(self) -> None:
        """Stop every run of these sessions in progress (inference and timing) and refuse new ones: the server is
        stopping, and a run that never ends would keep its process from exiting."""
        self.watchdog.terminate_all(Unavailable("the server is stopping: runs in progress were stopped"))


def _resolve(dim: int | str | None, symbols: Mapping[str, int]) -> int | None:
    """A declared dimension's size: static, or a symbol's size in the inputs; None when unknown before the run."""
    if isinstance(dim, int):
        return dim if dim >= 0 else None
    return symbols.get(dim) if isinstance(dim, str) else None


def _spec(arg) -> TensorSpec:
    datatype = _KSERVE.get(arg.type)
    if datatype is None:
        raise InvalidArgument(f"tensor {arg.name!r} has type {arg.type}, which KServe cannot carry")
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in arg.shape)
    return TensorSpec(arg.name, datatype, shape)


def random_inputs(session: Session, seed: int = 0, max_bytes: int = MAX_TIMING_INPUT_BYTES) -> dict[str, np.ndarray]:
    """Inputs of the right dtype and shape (dynamic dimensions set to 1), for timing; ResourceExhausted (and nothing
    allocated) when they would take more than `max_bytes` together."""
    shapes = {spec.name: tuple(d if d >= 0 else 1 for d in spec.shape) for spec in session.inputs}
    dtypes = {spec.name: dtype_of(spec.datatype) for spec in session.inputs}
    total = sum(math.prod(shapes[name]) * dtypes[name].itemsize for name in shapes)
    if total > max_bytes:
        raise ResourceExhausted(
            f"slice {session.slice_id[:12]} declares inputs of {total / 2**20:,.0f} MiB; random inputs for timing "
            f"are limited to {max_bytes / 2**20:,.0f} MiB"
        )
    rng = np.random.default_rng(seed)
    arrays = {}
    for name, shape in shapes.items():
        dt = dtypes[name]
        if dt.kind == "f":
            arrays[name] = rng.standard_normal(shape, dtype=np.float32).astype(dt, copy=False)
        elif dt.kind in "iu":
            arrays[name] = np.zeros(shape, dtype=dt)
        elif dt.kind == "b":
            arrays[name] = np.zeros(shape, dtype=bool)
        else:
            arrays[name] = np.full(shape, b"", dtype=object)
    return arrays
