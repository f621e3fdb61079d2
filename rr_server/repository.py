"""Slices as models: what the KServe service sees (readiness, signatures, load/unload, execution)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from rr_server.activity import InferenceActivity
from rr_server.errors import InvalidArgument, NotFound
from rr_server.metrics import Metrics
from rr_server.run_watchdog import RunCaller
from rr_server.sessions import Allocate, Session, SessionPool
from rr_server.slices import SliceInfo, SliceStore, is_slice_id

PLATFORM = "onnxruntime_onnx"
VERSION = "1"


@dataclass(frozen=True)
class ModelState:
    name: str
    version: str
    state: str  # "READY" (session open), "UNAVAILABLE" (cached, loads on first use)
    reason: str


class ModelRepository:
    """Cached slices addressed by id; sessions are opened on first use (dynamic offloading) or by `load`."""

    def __init__(self, slices: SliceStore, sessions: SessionPool, metrics: Metrics) -> None:
        self._slices = slices
        self._sessions = sessions
        self._metrics = metrics
        self.activity = InferenceActivity()  # every run in progress, for the cloud profiler to keep out of the way

    def is_ready(self, slice_id: str) -> bool:
        """A cached slice is ready unless ONNX Runtime refused it: its session opens on the first request if it is
        not open yet."""
        return (
            is_slice_id(slice_id)
            and self._slices.get(slice_id) is not None
            and self._sessions.failure(slice_id) is None
        )

    def require(self, name: str) -> SliceInfo:
        """The cached slice `name`; a name that is no slice id names no model (NOT_FOUND, as KServe has it)."""
        if not is_slice_id(name):
            raise NotFound(f"no model {name[:80]!r}: model names are slice ids (64 lowercase hex characters, SHA-256)")
        return self._slices.require(name)

    def session(self, slice_id: str) -> Session:
        """The open session of a cached slice; its stored copy is hashed before this process first opens it, and
        again when ONNX Runtime refuses it (`SliceStore.drop_if_damaged`)."""
        path = self.require(slice_id).path
        if self._slices.drop_if_damaged(slice_id, before_open=True):
            raise _removed_as_damaged(slice_id)
        try:
            return self._sessions.get(slice_id, path)
        except InvalidArgument:  # ONNX Runtime refused the stored file: refused as uploaded, or damaged since?
            if self._slices.drop_if_damaged(slice_id):
                self._sessions.forget_failure(slice_id)
                raise _removed_as_damaged(slice_id) from None
            if not self._slices.path_of(slice_id).exists():  # removed while this request waited for an open that
                # found it damaged: it was handed that open's refusal (found by review)
                raise NotFound(f"slice {slice_id} is not cached on this server; upload it again") from None
            raise

    def infer(
        self,
        slice_id: str,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str] = (),
        allocate: Allocate | None = None,
        caller: RunCaller | None = None,
        max_output_bytes: int | None = None,
    ) -> dict[str, np.ndarray]:
        """Run a slice (`Session.run`: `allocate` lets ONNX Runtime write the outputs into caller memory; the run is
        stopped past the caller's deadline or the server's limit, or when the caller ends). With `max_output_bytes`,
        outputs declared larger than that are refused before the run (`Session.check_output_size`), and larger ones
        it gave after it (`Session.check_result_size`)."""
        session = self.session(slice_id)
        if max_output_bytes is not None:
            session.check_output_size(inputs, outputs, max_output_bytes)
        try:
            with self.activity.running(), self._metrics.inference_seconds.time():
                result = session.run(inputs, outputs, allocate, caller)
            if max_output_bytes is not None:
                session.check_result_size(result, max_output_bytes)
        except Exception:
            self._metrics.inferences.labels("error").inc()
            raise
        self._metrics.inferences.labels("ok").inc()
        return result

    def terminate_runs(self) -> None:
        """Stop every run in progress and refuse new ones (`SessionPool.terminate_runs`): the server is stopping."""
        self._sessions.terminate_runs()

    def load(self, slice_id: str) -> Session:
        return self.session(slice_id)

    def unload(self, slice_id: str) -> bool:
        self.require(slice_id)
        return self._sessions.evict(slice_id)

    def index(self, ready_only: bool = False) -> list[ModelState]:
        loaded = set(self._sessions.loaded_ids())
        states = []
        for info in self._slices.list():
            ready = info.slice_id in loaded
            if ready_only and not ready:
                continue
            reason = "" if ready else self._sessions.failure(info.slice_id) or "cached; loads on first request"
            states.append(ModelState(info.slice_id, VERSION, "READY" if ready else "UNAVAILABLE", reason))
        return states


def _removed_as_damaged(slice_id: str) -> NotFound:
    return NotFound(f"slice {slice_id} was damaged on this server's disk and is removed; upload it again")
