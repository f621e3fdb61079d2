"""Content-addressed store of uploaded ONNX slices, validated as untrusted input.

A slice's id is the lowercase hex SHA-256 of its bytes. An upload streams into a temporary file while hashing; only
when the size matches the header, the digest matches the id and the model passes validation is it fsynced and
renamed into place (then the directory is fsynced). Anything else removes the temporary file: nothing is stored.
A full disk (or quota) is RESOURCE_EXHAUSTED, not an internal error: the client learns why, the server keeps serving.

With a budget (`rr-server --max-store-gb`), committing a slice first evicts the least recently used others until
the new one fits; an edge whose slice was evicted is told it is not cached and uploads it again.

Validation (`validate_onnx`): parses with external data loading off, rejects any tensor that refers to external data
(initializers, sparse initializers, attribute tensors, subgraphs, functions), any op or opset outside the standard
domains, any model-local function and any `training_info` (a slice is for inference; those graphs would go
unchecked), more than `MAX_SLICE_NODES` nodes, and any 32- or 64-bit integer division by a value computed at run
time (`rr_server.integer_division`: it can trap the processor), then runs `onnx.checker`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import onnx

from rr_proto.operators import STANDARD_DOMAINS
from rr_server.errors import InvalidArgument, NotFound, ResourceExhausted, Unavailable
from rr_server.integer_division import check_integer_division

log = logging.getLogger(__name__)

# A slice evicted within this many seconds of its last use was still in use: the store budget is below what the
# edges use together, and they will upload their slices again and again (warned about once a minute; two edges
# evicted each other's slices 94 times in 35 s with only INFO lines in the log, walkthrough).
IN_USE_S = 60.0

_SLICE_ID = re.compile(r"[0-9a-f]{64}")
# ONNX Runtime opens about 20,000 nodes a second here, and no deadline stops it: a 4.7 MiB slice of 200,000 Relu nodes
# held a worker for 10.7 s (found by review). The largest graphs exported from torchvision have about 6,300 nodes.
MAX_SLICE_NODES = 100_000


@dataclass(frozen=True)
class SliceInfo:
    slice_id: str
    bytes: int
    path: Path


def is_slice_id(name: str) -> bool:
    return _SLICE_ID.fullmatch(name) is not None


def check_slice_id(slice_id: str) -> str:
    if not is_slice_id(slice_id):
        raise InvalidArgument(f"slice id must be 64 lowercase hex characters (SHA-256), got {slice_id[:80]!r}")
    return slice_id


class SliceStore:
    """Slices under `root/<sha256>.onnx`; uploads go through `Upload` (see `begin`). `budget_bytes` (None: no
    bound) caps the bytes of all stored slices; `on_evict` is called with each slice evicted to stay under it."""

    def __init__(
        self,
        root: Path,
        max_bytes: int,
        budget_bytes: int | None = None,
        on_evict: Callable[[SliceInfo], None] | None = None,
    ) -> None:
        if budget_bytes is not None and budget_bytes < max_bytes:
            raise ValueError(f"the slice store budget ({budget_bytes} bytes) must hold the largest slice ({max_bytes})")
        self.root = root
        self.max_bytes = max_bytes
        self.budget_bytes = budget_bytes
        self._on_evict: Callable[[SliceInfo], None] | None = None
        self._uses = itertools.count(1)
        self._last_used: dict[str, int] = {}  # slice id -> tick of its last lookup or commit in this process
        self.clock = time.monotonic  # of `_used_at` (a test sets its own)
        self._used_at: dict[str, float] = {}  # slice id -> self.clock() of that lookup or commit
        self._warned_at = -float("inf")  # when an eviction of a slice in use was last warned about
        self._evict_lock = threading.Lock()
        self._intact: set[str] = set()  # ids whose stored bytes `drop_if_damaged` hashed and found whole
        self._whole_before_open: set[str] = set()  # the same, hashed before their first open (`before_open`)
        self._hashing = [threading.Lock() for _ in range(16)]  # by slice id: one hash of a slice at a time
        self._tmp = root / "tmp"
        self._tmp.mkdir(parents=True, exist_ok=True)
        for stale in self._tmp.iterdir():  # left by a crash mid-upload; never acknowledged
            stale.unlink(missing_ok=True)
        self.trimmed = self._trim()  # evicted as the store opened (for the eviction metric)
        self._on_evict = on_evict  # from here on: nothing uses the slices evicted above

    def _trim(self) -> int:
        """Bring a store over its budget (lowered since the last start) within it at once: it was left over until
        the next upload, which then evicted 20 slices together (walkthrough). How many slices it evicted."""
        stored = self.list()
        total = sum(s.bytes for s in stored)
        if self.budget_bytes is None or total <= self.budget_bytes:
            return 0
        evicted = self._evict(stored, total - self.budget_bytes)
        log.warning(
            "the slice store held %d bytes, over its budget of %d (--max-store-gb): evicted %s, least recently "
            "stored first",
            total,
            self.budget_bytes,
            f"{evicted} slice{'s' * (evicted != 1)}",
        )
        return evicted

    def path_of(self, slice_id: str) -> Path:
        return self.root / f"{check_slice_id(slice_id)}.onnx"

    def get(self, slice_id: str) -> SliceInfo | None:
        path = self.path_of(slice_id)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return None
        self._used(slice_id)
        return SliceInfo(slice_id, size, path)

    def _used(self, slice_id: str) -> None:
        self._last_used[slice_id] = next(self._uses)
        self._used_at[slice_id] = self.clock()

    def require(self, slice_id: str) -> SliceInfo:
        info = self.get(slice_id)
        if info is None:
            raise NotFound(f"slice {slice_id} is not cached on this server; upload it first")
        return info

    def drop_if_damaged(self, slice_id: str, before_open: bool = False) -> bool:
        """Remove the stored copy of `slice_id` when its bytes no longer hash to its id (a disk fault, a hand edit);
        whether it did. The edge then finds the slice not cached and uploads it again; kept, a damaged copy was
        trusted as cached for good, and every request failed. Hashed at most once per process for each of two
        reasons: `before_open`, before this process first opens a slice it did not receive itself (a copy damaged at
        rest whose damage ONNX Runtime does not see, in its weights, was served, and answered wrong: review), and
        when ONNX Runtime refused it (a slice refused as uploaded is not hashed at every request)."""
        whole = self._whole_before_open if before_open else self._intact
        if slice_id in whole:
            return False
        # One hash of a slice at a time: a fleet's first requests after a restart wait for one pass, not one each.
        with self._hashing[int(check_slice_id(slice_id)[:8], 16) % len(self._hashing)]:
            if slice_id in whole:
                return False
            path = self.path_of(slice_id)
            digest = hashlib.sha256()
            try:
                with path.open("rb") as f:
                    hashed = os.fstat(f.fileno())
                    while chunk := f.read(1 << 20):
                        digest.update(chunk)
            except FileNotFoundError:
                return False
            if digest.hexdigest() == slice_id:
                whole.add(slice_id)
                return False
            with self._evict_lock:  # as installs are: the copy hashed is the copy removed, not one uploaded since
                if not _same_file(path, hashed):
                    return False
                path.unlink()
                self._last_used.pop(slice_id, None)
                self._used_at.pop(slice_id, None)
        log.error("stored slice %s was damaged (its bytes no longer hash to its id): removed", slice_id)
        return True

    def list(self) -> list[SliceInfo]:
        out = []
        for path in sorted(self.root.glob("*.onnx")):
            if is_slice_id(path.stem):
                try:
                    out.append(SliceInfo(path.stem, path.stat().st_size, path))
                except FileNotFoundError:  # evicted since the glob
                    continue
        return out

    def begin(self, slice_id: str, size_bytes: int) -> Upload:
        check_slice_id(slice_id)
        if size_bytes <= 0:
            raise InvalidArgument(f"slice size_bytes must be positive, got {size_bytes}")
        if size_bytes > self.max_bytes:
            raise ResourceExhausted(f"slice of {size_bytes} bytes exceeds the server's limit of {self.max_bytes} bytes")
        return Upload(self, slice_id, size_bytes)

    def _install(self, verified: Path, info: SliceInfo) -> None:
        """Move a verified upload into place durably, after making room for it within the budget."""
        with self._evict_lock:  # one install at a time: eviction and the move see one store
            self._make_room(info)
            os.replace(verified, info.path)
            _fsync_dir(info.path.parent)
            self._used(info.slice_id)
            self._whole_before_open.add(info.slice_id)  # hashed as it arrived: its first open does not hash it again

    def _make_room(self, incoming: SliceInfo) -> None:
        """Evict least recently used slices until `incoming` fits the budget (call with `_evict_lock` held)."""
        if self.budget_bytes is None:
            return
        stored = [s for s in self.list() if s.slice_id != incoming.slice_id]
        self._evict(stored, sum(s.bytes for s in stored) + incoming.bytes - self.budget_bytes)

    def _evict(self, stored: Iterable[SliceInfo], excess: int) -> int:
        """Evict the least recently used of `stored` until `excess` bytes are gone; how many."""
        evicted = 0
        for victim in sorted(stored, key=self._recency):
            if excess <= 0:
                break
            victim.path.unlink(missing_ok=True)
            self._last_used.pop(victim.slice_id, None)
            excess -= victim.bytes
            evicted += 1
            log.info("evicted slice %s (%d bytes) to stay within the store budget", victim.slice_id, victim.bytes)
            self._warn_if_in_use(victim)
            if self._on_evict is not None:
                self._on_evict(victim)
        return evicted

    def _warn_if_in_use(self, victim: SliceInfo) -> None:
        now, used_at = self.clock(), self._used_at.pop(victim.slice_id, None)
        if used_at is None or now - used_at > IN_USE_S or now - self._warned_at < IN_USE_S:
            return
        self._warned_at = now
        log.warning(
            "evicted slice %s, used %.0f s ago: the slices in use do not fit the store budget of %d bytes "
            "(--max-store-gb), and edges will upload them again and again; raise it",
            victim.slice_id[:12],
            now - used_at,
            self.budget_bytes,
        )

    def _recency(self, info: SliceInfo) -> tuple[int, float]:
        """Sort key, least recently used first: slices not used since this process started come first, by mtime."""
        tick = self._last_used.get(info.slice_id)
        if tick is not None:
            return (1, tick)
        try:
            return (0, info.path.stat().st_mtime)
        except FileNotFoundError:
            return (0, 0.0)

    def put_bytes(self, data: bytes) -> SliceInfo:
        """Store a complete slice given as bytes (tests, the server's own tools); same checks as an upload."""
        slice_id = hashlib.sha256(data).hexdigest()
        if self.get(slice_id):
            return self.require(slice_id)
        upload = self.begin(slice_id, len(data))
        upload.write(data)
        return upload.commit()


class Upload:
    """One in-progress upload into a temporary file. Use `write` per chunk, then `commit`; `abort` on failure."""

    def __init__(self, store: SliceStore, slice_id: str, size_bytes: int) -> None:
        self._store = store
        self.slice_id = slice_id
        self.size_bytes = size_bytes
        self.received = 0
        self._hash = hashlib.sha256()
        with _disk_space("starting the upload"):
            fd, name = tempfile.mkstemp(dir=store._tmp, prefix=f"{slice_id[:16]}-", suffix=".part")
        self._file = os.fdopen(fd, "wb")
        self._path = Path(name)

    def write(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if self.received > self.size_bytes:
            raise InvalidArgument(
                f"upload sent more than the {self.size_bytes} bytes declared in its header (declared size is wrong)"
            )
        self._hash.update(chunk)
        with _disk_space(f"writing byte {self.received - len(chunk)} of {self.size_bytes}"):
            self._file.write(chunk)

    def commit(self) -> SliceInfo:
        """Verify size, digest and content; move the slice into place durably. Raises on any mismatch."""
        try:
            self._verify()
            info = SliceInfo(self.slice_id, self.received, self._store.path_of(self.slice_id))
            self._store._install(self._path, info)
            log.info("stored slice %s (%d bytes)", self.slice_id, self.received)
            return info
        except BaseException:
            self.abort()
            raise

    def probe(self, then: Callable[[Path], object]) -> int:
        """The work of `commit` up to the rename (verify, fsync, validate), then `then(path)` on the verified file
        (the server opens it as a load would), then discard: nothing is stored. Returns the bytes received; raises
        as `commit` does."""
        try:
            self._verify()
            then(self._path)
            return self.received
        finally:
            self.abort()

    def _verify(self) -> None:
        if self.received != self.size_bytes:
            raise InvalidArgument(f"upload ended after {self.received} bytes but its header declared {self.size_bytes}")
        digest = self._hash.hexdigest()
        if digest != self.slice_id:
            raise InvalidArgument(f"SHA-256 mismatch: header says {self.slice_id}, received bytes hash to {digest}")
        with _disk_space("flushing the upload"):
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
        validate_onnx(self._path)

    def abort(self) -> None:
        if not self._file.closed:
            with contextlib.suppress(OSError):  # closing flushes the buffer: on a full disk that fails as well
                self._file.close()
        self._path.unlink(missing_ok=True)


@contextmanager
def _disk_space(doing: str) -> Iterator[None]:
    """Turn a full disk or quota into RESOURCE_EXHAUSTED (a condition the client can act on), and a store the server
    may not write (read-only, permissions) into UNAVAILABLE saying so, instead of INTERNAL."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):  # the operator's to fix: logged at INFO, it went unseen
            log.error("the slice store is out of disk space (%s): %s", doing, exc.strerror)
            raise ResourceExhausted(
                f"the server's slice store is out of disk space ({doing}); nothing was stored"
            ) from None
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            log.error("the slice store cannot be written (%s): %s", doing, exc)
            raise Unavailable(
                f"the server cannot write its slice store ({doing}: {exc.strerror}); nothing was stored"
            ) from None
        raise


def _same_file(path: Path, seen: os.stat_result) -> bool:
    try:
        now = path.stat()
    except FileNotFoundError:
        return False
    return (now.st_dev, now.st_ino) == (seen.st_dev, seen.st_ino)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def validate_onnx(path: Path) -> None:
    """Parse and check an untrusted ONNX model file; raises InvalidArgument with the first problem found.

    One copy of the model at a time: this parse is dropped before onnx.checker reads the file again (reading the
    bytes once and checking the parsed model and the bytes together took three times the model's size)."""
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - the protobuf parser raises assorted types on garbage
        raise InvalidArgument(f"not an ONNX model: {type(exc).__name__}: {exc}"[:300]) from None
    _check_parsed(model)  # first: given a path, the checker would follow a tensor's external data on this disk
    del model
    try:
        onnx.checker.check_model(str(path))  # from the file: the bytes as received, not a serialization of them
    except Exception as exc:  # noqa: BLE001 - ValidationError and friends
        raise InvalidArgument(f"onnx.checker rejected the model: {exc}"[:500]) from None


def _check_parsed(model: onnx.ModelProto) -> None:
    """What onnx.checker lets through but a server must not run: no graph, custom ops, external data."""
    if not model.HasField("graph") or not model.graph.node:
        raise InvalidArgument("not an ONNX model: no graph or an empty graph")
    for opset in model.opset_import:
        if opset.domain not in STANDARD_DOMAINS:
            raise InvalidArgument(f"opset domain {opset.domain!r} is not a standard ONNX domain (custom ops refused)")
    if model.functions:
        raise InvalidArgument("model-local functions are not accepted (custom ops refused)")
    if model.training_info:  # graphs of their own (initialization, algorithm), which the walks below do not visit
        raise InvalidArgument("training_info is not accepted: a slice is for inference")
    names = [o.name for o in model.graph.output]
    if len(set(names)) < len(names):  # two outputs, one tensor: the response would lay it out twice
        raise InvalidArgument(f"graph outputs {names} name one tensor twice")
    for where, tensor in _tensors(model.graph, "graph"):
        if tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.external_data:
            location = next((e.value for e in tensor.external_data if e.key == "location"), "?")
            raise InvalidArgument(f"{where}: tensor {tensor.name!r} refers to external data {location!r} (refused)")
    count = 0
    for where, node in _nodes(model.graph, "graph"):
        if node.domain not in STANDARD_DOMAINS:
            raise InvalidArgument(f"{where}: op {node.op_type!r} in custom domain {node.domain!r} (refused)")
        count += 1
        if count > MAX_SLICE_NODES:
            raise InvalidArgument(
                f"more than {MAX_SLICE_NODES:,} nodes: not a slice of a DNN (opening it would hold a worker for "
                "seconds to minutes, past any deadline)"
            )
    check_integer_division(model)


def _nodes(graph: onnx.GraphProto, where: str) -> Iterator[tuple[str, onnx.NodeProto]]:
    for node in graph.node:
        yield where, node
        for attr in node.attribute:
            for k, sub in enumerate(_subgraphs(attr)):
                yield from _nodes(sub, f"{where}/{node.name or node.op_type}.{attr.name}[{k}]")


def _tensors(graph: onnx.GraphProto, where: str) -> Iterator[tuple[str, onnx.TensorProto]]:
    for tensor in graph.initializer:
        yield f"{where} initializer", tensor
    for sparse in graph.sparse_initializer:
        yield f"{where} sparse initializer", sparse.values
        yield f"{where} sparse initializer", sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield f"{where} attribute {attr.name}", attr.t
            for t in attr.tensors:
                yield f"{where} attribute {attr.name}", t
            attr_sparse = [*attr.sparse_tensors, *([attr.sparse_tensor] if attr.HasField("sparse_tensor") else [])]
            for st in attr_sparse:
                yield f"{where} attribute {attr.name}", st.values
                yield f"{where} attribute {attr.name}", st.indices
            for k, sub in enumerate(_subgraphs(attr)):
                yield from _tensors(sub, f"{where}/{node.name or node.op_type}.{attr.name}[{k}]")


def _subgraphs(attr: onnx.AttributeProto) -> list[onnx.GraphProto]:
    graphs = list(attr.graphs)
    if attr.HasField("g"):
        graphs.append(attr.g)
    return graphs
