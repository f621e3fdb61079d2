"""Executes one plan: head and tail slices in local ONNX Runtime, the middle slice on the server.

    edge: blocks 0..i  ->  server: blocks i+1..j  ->  edge: blocks j+1..N-1

The middle slice is uploaded once (content-addressed; skipped when the server already holds it) and opened on the
server before the first request (in the upload's own call, `SliceHeader.load`), then called through the KServe
protocol with a deadline (a few times the round trip the network models predict, at most `RunnerConfig.timeout_s`:
`_Link.answer_s`). When the server is unreachable, times out, breaks the stream or answers with an error, the
runner runs the middle slice locally, so the request still completes (`RunResult.fallback` is True,
`RunResult.error` says why; a slice the server no longer holds is uploaded again in the background; a request the
server rejects as invalid, INVALID_ARGUMENT, is finished locally too and says nothing about the server). While the
server is down, failing or refusing the slice, every request runs locally without waiting for it: a health check in
the background, `RunnerConfig.retry_interval_s` after the end of the previous one (twice as long after each
upload that failed while the server answered, up to `MAX_PROBE_WAIT_S`; after the server's pushback when it
was only busy), returns to the plan once the server
answers again. A runner made with `connect_later` starts that way: `connect` makes its slice ready in the calling
thread (a run switching split does so in a thread of its own while the runner it leaves serves), or its first
request starts the health check, which uploads and opens the slice in the background while the requests run locally
(made connecting in the requests' thread, on a dead or slow link no request was served, not even locally, for as
long as the upload's deadline: tens of seconds, review). Observed transfer times update the plan's network models
(exponentially weighted);
`replan_needed` turns True when they drift by more than `RunnerConfig.drift_threshold` and by enough to matter
(`MATERIAL_SHARE` of a round trip).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import queue
import threading
import time
import weakref
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument, RuntimeException

from rr_edge.client import DEFAULT_TIMEOUT_S
from rr_edge.errors import ArgumentError, InputError, ModelError, ServerBusy, ServerError, ServerUnavailable
from rr_edge.local_model import LocalModel
from rr_edge.netmodel import DEFAULT_DRIFT_THRESHOLD, NetworkModel, round_trip_ms, split_network_ms
from rr_edge.session import ORT_DTYPES, OrtSettings, array_fits, ort_reason
from rr_proto import codec

if TYPE_CHECKING:
    from rr_edge.meters.model import PowerSpec

log = logging.getLogger(__name__)

DEFAULT_RETRY_INTERVAL_S = 1.0
DEFAULT_STREAM_RETRY_S = 30.0
MATERIAL_SHARE = 0.05  # a drift asks for a re-plan when it moves this share of a round trip or more
STREAM_DRAIN_S = 1.0  # how long closing a runner waits for the server to end its stream
MAX_PROBE_WAIT_S = 60.0  # the longest wait between two uploads to a server that answers but whose uploads fail
# Deadline of a health check of a server that is down, and of the slice status query that makes a runner's slice
# ready at its start (at most RunnerConfig.timeout_s): with the whole timeout_s, a hung server held the start 30 s.
PROBE_TIMEOUT_S = 2.0
# A slice the server lost again before it served this many requests is uploaded again only after a wait, doubled
# each time (from `retry_interval_s`, up to MAX_PROBE_WAIT_S): two edges whose slices did not fit the server's store
# together evicted each other's at once, 47 uploads each in 35 s, most requests local (walkthrough).
LOST_AGAIN_REQUESTS = 20
# `RunResult.error` of a request finished locally without asking the server, before the error that made it so
DOWN = "server down, running locally until it answers: "
RELOADING = "running locally while the slice is uploaded again: "
# A request waits for the server's answer ANSWER_FACTOR times its expected round trip (the network models' transfer
# and the server's run, as predicted or as it reported it lately, whichever is longer) plus ANSWER_MARGIN_S, twice
# as long after each wait that ran out, at most RunnerConfig.timeout_s (`_Link.answer_s`). With the fixed 30 s
# default, a request in flight when the link went dead waited out a 20 s cut in full (testbed review).
ANSWER_FACTOR = 4.0
ANSWER_MARGIN_S = 1.0
SERVER_MS_DECAY = 0.9  # per answer, of the longest server run reported lately, which the wait expects


class StreamAnswers(Protocol):
    """The answers of one open inference stream, in order (rr_edge.client.InferStream)."""

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]: ...

    def __next__(self) -> dict[str, np.ndarray]: ...

    def cancel(self) -> None: ...


class RemoteExecutor(Protocol):
    """What the runner needs from the server connection (rr_edge.client.Client provides it)."""

    def ensure_slice(
        self,
        onnx_bytes: bytes,
        label: str = "",
        load: bool = False,
        busy_wait_s: float | None = None,
        expected_s: float | None = None,
        slice_id: str | None = None,
        status_timeout_s: float | None = None,
    ) -> str: ...

    def infer(self, slice_id: str, inputs: Mapping[str, np.ndarray], timeout_s: float) -> dict[str, np.ndarray]: ...

    def healthy(self, timeout_s: float) -> bool: ...

    def stream_infer(
        self, slice_id: str, batches: Iterator[Mapping[str, np.ndarray]], timeout_s: float | None = None
    ) -> StreamAnswers: ...


@dataclass(frozen=True)
class PlanSlices:
    """The three parts of a plan as standalone ONNX models (None where a part is empty): the middle as the server is
    sent it (and this device runs it when the server cannot), the head and tail as they run here (a `Runner` keeps
    neither once its sessions hold them: its `slices` has None for both)."""

    split: tuple[int, int]
    head: bytes | LocalModel | None
    middle: bytes | None
    tail: bytes | LocalModel | None
    label: str = ""
    # `slice_id_of(middle)` where the maker hashed it already (`rr_edge.offload.plan_slices`), for the upload; None:
    # the upload hashes it (a 537 MB slice takes 0.3 s)
    middle_id: str | None = None

    @property
    def offloads(self) -> bool:
        return self.middle is not None


@dataclass(frozen=True)
class RunnerConfig:
    """Deadlines and recovery of the runner (seconds)."""

    timeout_s: float = DEFAULT_TIMEOUT_S
    retry_interval_s: float = DEFAULT_RETRY_INTERVAL_S
    drift_threshold: float = DEFAULT_DRIFT_THRESHOLD
    # Keep one ModelStreamInfer stream open for repeated requests instead of one ModelInfer call each.
    stream: bool = True
    # After a server had no stream slot free: one ModelInfer per request for this long, then a stream is tried again.
    stream_retry_s: float = DEFAULT_STREAM_RETRY_S
    # Wait for an answer about as long as the plan's network models predict (`_Link.answer_s`), at most `timeout_s`;
    # False: always `timeout_s`. Without network models (a runner of a split, not of a plan), the round trips seen so
    # far stand for them (the longest lately, scaled to a larger request by its bytes), and the first request waits
    # `timeout_s`.
    adaptive_deadline: bool = True

    def __post_init__(self) -> None:
        # a deadline of 0 timed every request out: the server was taken for down, never for misconfigured
        for name in ("timeout_s", "retry_interval_s", "drift_threshold", "stream_retry_s"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and value > 0 and (name == "drift_threshold" or value < math.inf)):
                raise ArgumentError(f"RunnerConfig.{name} must be a finite number > 0, got {value!r}")


@dataclass
class RunResult:
    """Outputs of one request and how it went (times in ms); its repr leaves the outputs out (20,000 characters of a
    classifier's logits)."""

    outputs: dict[str, np.ndarray] = field(repr=False)
    fallback: bool
    total_ms: float
    head_ms: float = 0.0
    remote_ms: float = 0.0  # the middle slice's round trip to the server (with `fallback`: the wait before it)
    server_ms: float | None = None  # of which the server ran the slice (None: the server did not say)
    tail_ms: float = 0.0
    bytes_up: int = 0
    bytes_down: int = 0
    error: str = ""  # why the request finished locally (with `fallback`)

    def remote_parts(self, expected_server_ms: float | None = None) -> tuple[float, float]:
        """(server ms, network ms) of the round trip: the run the server reported and the rest. When it did not say
        (a server other than rr-server): `expected_server_ms` (the plan's, at most the round trip), or else all of
        it."""
        server_ms = self.server_ms if self.server_ms is not None else expected_server_ms
        if server_ms is None:
            return self.remote_ms, 0.0
        server_ms = min(server_ms, self.remote_ms)
        return server_ms, self.remote_ms - server_ms


def modelled_mJ(
    result: RunResult,
    power: PowerSpec,
    uplink: NetworkModel | None,
    downlink: NetworkModel | None,
    expected_server_ms: float | None = None,
) -> float:
    """A power model's edge energy of one request from its measured times, charged as the planner predicts it:
    local compute at active power, the server's run at idle, the network's time at tx / rx power (the round trip's
    network time shared between the directions by `split_network_ms`; the server's run as `remote_parts` takes it:
    reported, or else `expected_server_ms`). A request the server did not answer (`fallback`) sent its input at tx
    power, for as long as the uplink takes to send it, and waited the rest of `remote_ms` at idle (its whole wait at tx
    power had charged a 5 s timeout as 5 s of sending)."""
    if result.fallback:
        up_ms = min(result.remote_ms, float(uplink.predict_ms(result.bytes_up))) if uplink is not None else 0.0
        return power.request_mJ(result.total_ms - result.remote_ms, result.remote_ms - up_ms, up_ms, 0.0)
    server_ms, network_ms = result.remote_parts(expected_server_ms)
    up_ms, down_ms = split_network_ms(network_ms, uplink, downlink, result.bytes_up, result.bytes_down)
    return power.request_mJ(result.total_ms - result.remote_ms, server_ms, up_ms, down_ms)


class _Local:
    """One local ONNX Runtime session fed by name from the tensors produced so far."""

    def __init__(self, model: bytes | LocalModel, settings: OrtSettings) -> None:
        self.session = settings.create_session(model)
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]
        # per input: numpy type (None: one numpy has no name for) and shape (None: a dimension of any size)
        self._specs = [
            (
                arg.name,
                np.dtype(ORT_DTYPES[arg.type]) if arg.type in ORT_DTYPES else TEXT if arg.type == STRING else None,
                [d if isinstance(d, int) and d > 0 else None for d in arg.shape],
            )
            for arg in self.session.get_inputs()
        ]

    def check(self, given: Mapping[str, Any], also: Collection[str] = ()) -> None:
        """InputError unless `given` holds an array of the right type and shape for each input of this part, and
        nothing else but names in `also` (a misspelt optional name beside the right ones went unnoticed; the CLI
        refused it): checked before any work (a wrong tensor went to the server, and came back as ONNX Runtime's own
        error)."""
        unknown = sorted(map(str, set(given) - {n for n, _, _ in self._specs} - set(also)))
        for name, dtype, shape in self._specs:
            x = given.get(name)
            if not isinstance(x, np.ndarray):
                got = "nothing" if x is None else f"a {type(x).__name__}"
            elif dtype == TEXT and (problem := _text_problem(x)) is not None:
                got = f"{x.dtype} {list(x.shape)}{problem}"
            elif not array_fits(x, None if dtype == TEXT else dtype, shape):
                got = f"{x.dtype} {list(x.shape)}"
                if dtype is not None and dtype != TEXT and array_fits(x, None, shape):  # float64 of np.random.rand
                    got += f" (x.astype(np.{dtype}) converts it)"
            else:
                continue
            named = f" (given: {', '.join(map(repr, unknown))})" if x is None and unknown else ""
            raise InputError(f"input {name!r}: got {got}{named}; the model takes {self._takes()}")
        if unknown:
            raise InputError(f"unknown input(s) {', '.join(map(repr, unknown))}; the model takes {self._takes()}")

    def _takes(self) -> str:
        return ", ".join(f"{n!r} {t or '?'} {['?' if d is None else d for d in dims]}" for n, t, dims in self._specs)

    def feed(self, env: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {name: env[name] for name in self.inputs}

    def __call__(self, env: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            values = self.session.run(self.outputs, self.feed(env))
        except InvalidArgument as exc:  # values the model cannot take (an index past a table, say): this request's
            raise InputError(f"ONNX Runtime refused this request's values: {ort_reason(exc)}") from None
        except (Fail, RuntimeException) as exc:
            raise ModelError(f"ONNX Runtime failed running the model: {ort_reason(exc)}") from None
        return dict(zip(self.outputs, values, strict=True))


def wire_bytes(tensors: Mapping[str, np.ndarray]) -> int:
    """The tensors' contents as sent (`rr_proto.codec.to_raw`): a string is its UTF-8 bytes and a 4-byte length, not
    numpy's 4 bytes per character (or 8 per object: the pointers), which the drift learnt against."""
    return sum(len(codec.to_raw(a)) if a.dtype.kind in "OSU" else a.nbytes for a in tensors.values())


STRING = "tensor(string)"
TEXT = "str"  # the element type `_Local.check` names and requires for a string input


def _text_problem(x: np.ndarray) -> str | None:
    """Why `x` cannot be a string input's array, as words to append (None: it can). It must be numpy str, or objects
    that are all str: bytes went to the server as text, decoded, and to local ONNX Runtime as their repr (two answers
    to one request); and each must be UTF-8: a lone surrogate (`os.fsdecode` of a file name that is not) cannot be
    sent, and had broken the inference stream for every request after it."""
    if not (x.dtype.kind == "U" or (x.dtype.kind == "O" and all(isinstance(e, str) for e in x.flat))):
        return " holding bytes: decode them to str" if x.dtype.kind in "OS" else ""
    try:
        for e in x.flat:
            str(e).encode()
    except UnicodeEncodeError:
        return " holding text that is not UTF-8 (a lone surrogate, as os.fsdecode makes of such a file name)"
    return None


_END = object()


class _Stream:
    """One open ModelStreamInfer stream: requests go in through a queue, each answer is awaited with a deadline."""

    def __init__(self, remote: RemoteExecutor, slice_id: str) -> None:
        self._requests: queue.Queue[Any] = queue.Queue()
        self._answers = remote.stream_infer(slice_id, iter(self._requests.get, _END))
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rr-stream")
        self.answered = 0  # answers received on it
        # A runner dropped without close(): gRPC's thread that reads the requests would wait on the queue for ever.
        weakref.finalize(self, self._requests.put, _END)

    def infer(self, inputs: Mapping[str, np.ndarray], timeout_s: float) -> dict[str, np.ndarray]:
        self._requests.put(dict(inputs))
        try:
            outputs = self._reader.submit(next, self._answers).result(timeout=timeout_s)
            self.answered += 1
            return outputs
        except FutureTimeout:
            raise ServerUnavailable(f"no stream answer within {timeout_s:.1f} s", "DEADLINE_EXCEEDED") from None
        except StopIteration:
            raise ServerUnavailable("the inference stream ended", "UNAVAILABLE") from None

    def close(self, drain_s: float = 0.0) -> None:
        """Half-close the stream. With `drain_s`, wait that long for the server to end it, so that the call finishes
        OK rather than CANCELLED; without (a failed stream), or when the server does not end it in time, cancel the
        call, which also frees a reader still waiting for an answer."""
        self._requests.put(_END)
        drained = drain_s > 0
        if drained:
            draining = self._reader.submit(collections.deque, self._answers, 0)
            try:
                draining.result(timeout=drain_s)
            except FutureTimeout:
                drained = False
            except ServerError:
                pass
            except Exception:  # noqa: BLE001 - a request this side could not send (InferStream re-raises it): cancel
                drained = False
        if not drained:
            self._answers.cancel()
        self._reader.shutdown(wait=False, cancel_futures=True)


@dataclass
class _Link:
    """Network models of the plan, updated from observed transfers."""

    uplink: NetworkModel | None = None
    downlink: NetworkModel | None = None
    expected_cloud_ms: float = 0.0
    last: RunResult | None = None  # the last round trip learnt from
    server_ms: float | None = None  # the longest server run reported lately (less SERVER_MS_DECAY per answer since)
    # Without network models, the waits' base: the longest round trip lately (as server_ms), and the request bytes
    # it sent (a larger request is expected to take longer in proportion).
    round_trip_ms: float | None = None
    round_trip_bytes_up: int = 1
    backoff: float = 1.0  # doubled by each wait for an answer that ran out (`missed`), 1 again once one arrives
    misses: int = 0  # waits in a row that ran out

    def update(self, result: RunResult, learn: bool = True) -> None:
        """Learn from one round trip: its time less the server's run (as the server reports it, else as the plan
        predicted it: `RunResult.remote_parts`) is the network's. Over the predicted network time (`round_trip_ms`)
        it is the ratio both directions' curves learn: each curve is an echo call's time, and both hold the one
        round trip a request makes. An answer also resets the wait's backoff, and its server run (when reported)
        is the server's time the wait expects while it is the longest lately: a server slow now and then (a session
        opened again, other edges' requests) is waited for each time, not only on average. Not `learn`: the first
        answer of a new stream, whose round trip holds the stream's set-up (2-3x a steady one over loopback, which
        asked for a re-plan after a plan's very first request: walkthrough), as the network profile's warm-up
        transfers are not timed either; it is learnt all the same after a wait that ran out (`misses`, `backoff`): the
        stream is new because the last one was dropped, and a link slowed past the waits would never be learnt."""
        learn = learn or self.misses > 0 or self.backoff > 1.0
        if not result.fallback:
            self.backoff, self.misses = 1.0, 0
            if result.server_ms is not None:
                self.server_ms = max(result.server_ms, SERVER_MS_DECAY * (self.server_ms or 0.0))
            decayed = SERVER_MS_DECAY * (self.round_trip_ms or 0.0)
            if result.remote_ms >= decayed:
                self.round_trip_ms, self.round_trip_bytes_up = result.remote_ms, max(result.bytes_up, 1)
            else:
                self.round_trip_ms = decayed
        if self.uplink is None or self.downlink is None:
            return
        if not learn:
            self.last = self.last or result  # the sizes a wait and the drift's weight go by
            return
        _, network_ms = result.remote_parts(self.expected_cloud_ms)
        predicted = round_trip_ms(self.uplink, self.downlink, result.bytes_up, result.bytes_down)
        if predicted > 0:  # curves that cost nothing cannot be scaled to anything
            ratio = network_ms / predicted
            self.uplink = self.uplink.update(result.bytes_up, self.uplink.predict_ms(result.bytes_up) * ratio)
            self.downlink = self.downlink.update(result.bytes_down, self.downlink.predict_ms(result.bytes_down) * ratio)
        self.last = result

    def timed_out(self, bytes_up: int, waited_ms: float) -> None:
        """A round trip that got no answer in the whole `RunnerConfig.timeout_s` (`waited_ms`): learnt as if it had
        taken that long (a lower bound), so that a link slowed down past the deadline asks for a re-plan instead of
        timing out again and again."""
        bytes_down = self.last.bytes_down if self.last is not None else 0  # the same slice answers the same bytes
        self.update(RunResult({}, True, waited_ms, remote_ms=waited_ms, bytes_up=bytes_up, bytes_down=bytes_down))

    def missed(self, bytes_up: int, waited_ms: float) -> None:
        """A wait shorter than the deadline (`answer_s`) ran out: the next waits twice as long, until an answer. The
        first such wait is not learnt as the network's time: a server slower than expected for a moment (other
        edges' requests, a session opened again) made a 20-95x drift of it and an urgent re-plan away from the
        server (review); TCP's retransmission timer does the same (Karn's algorithm). The second in a row is
        (`timed_out`): a link slowed down past the waits re-plans then, where waiting for an answer to learn from
        had stalled every request for the whole doubled wait, 48 s at 800 B/s without a re-plan (review)."""
        self.backoff = min(2.0 * self.backoff, 2.0**10)
        self.misses += 1
        if self.misses >= 2:
            self.timed_out(bytes_up, waited_ms)

    def answer_s(self, bytes_up: int, most_s: float) -> float:
        """How long a request of `bytes_up` waits for its answer: ANSWER_FACTOR times its expected round trip plus
        ANSWER_MARGIN_S, times the backoff, at most `most_s`. The round trip is the models' transfer of the request
        and of an answer as large as the last (the first: as large as the request) and the server's run, the plan's
        prediction or what it reported lately, whichever is longer; without network models, the longest round trip
        lately, scaled up to a larger request in proportion to its bytes (`round_trip_ms`: a split's runner waited
        the whole `most_s` for every answer of a hung server), and before the first answer all of `most_s`. A
        wait that runs out costs little (`missed`): the request finishes locally, the health check reconnects, the
        next request waits twice as long; so the first answer gets no more than the others, although it may hold
        the server session's first run (it had the whole `most_s`: 30 s of a dead link for the first request of a
        split switched to, review)."""
        if self.uplink is None or self.downlink is None:
            if self.round_trip_ms is None:
                return most_s
            expected_s = self.round_trip_ms / 1e3 * max(1.0, bytes_up / self.round_trip_bytes_up)
        else:
            bytes_down = self.last.bytes_down if self.last is not None else bytes_up
            server_ms = max(self.expected_cloud_ms, self.server_ms or 0.0)
            expected_s = (round_trip_ms(self.uplink, self.downlink, bytes_up, bytes_down) + server_ms) / 1e3
        return min(most_s, self.backoff * (ANSWER_MARGIN_S + ANSWER_FACTOR * expected_s))

    def drifted(self, threshold: float) -> bool:
        """A direction's model moved by more than `threshold` (relative) since the plan, and the move matters: it
        changes the last round trip's predicted network time (`round_trip_ms`) by at least `MATERIAL_SHARE` of that
        round trip (a 25% drift of a 0.2 ms transfer in a 10 ms round trip is timing noise, and re-planning costs
        more)."""
        if self.uplink is None or self.downlink is None or self.last is None:
            return False
        if not (self.uplink.drifted(threshold) or self.downlink.drifted(threshold)):
            return False
        planned = (
            replace(self.uplink, drift=self.uplink.ref_drift),
            replace(self.downlink, drift=self.downlink.ref_drift),
        )
        sizes = (self.last.bytes_up, self.last.bytes_down)
        moved_ms = abs(round_trip_ms(self.uplink, self.downlink, *sizes) - round_trip_ms(*planned, *sizes))
        return moved_ms >= MATERIAL_SHARE * self.last.remote_ms

    def moved(self) -> float:
        """The larger factor by which a direction's model moved since the plan (>= 1)."""
        if self.uplink is None or self.downlink is None:
            return 1.0
        ratios = (self.uplink.drift / self.uplink.ref_drift, self.downlink.drift / self.downlink.ref_drift)
        return max(max(r, 1.0 / r) for r in ratios)

    def rebase(self) -> None:
        self.uplink = self.uplink.rebased() if self.uplink else None
        self.downlink = self.downlink.rebased() if self.downlink else None


class Runner:
    """Callable on a dict of input arrays (or one array for a single-input model); thread-safe.

    `remote` is None for a plan that offloads nothing. `uplink`/`downlink` and `expected_cloud_ms` (the plan's
    predicted cloud compute) let the runner track the network; both are optional. `expected_upload_ms`, the plan's
    prediction of the middle slice's upload, sets how long that upload may take (`Client.ensure_slice`).
    `around_local`, when given, is entered around every local ONNX Runtime run (head, tail, fallback middle) and
    nothing else: a meter of local compute, or the testbed's CPU throttle of an emulated device (tools/eval).
    `slices` keeps the plan's middle for the server, not the head and tail once their sessions hold them: kept, they
    held those weights a second time for the runner's life (vgg16 split 7,15: its tail's 504 MB). `model_inputs`:
    the whole model's input names, which a request may give although its first part uses none of them (an input no
    node reads); any other name is refused.
    """

    def __init__(
        self,
        slices: PlanSlices,
        remote: RemoteExecutor | None = None,
        config: RunnerConfig | None = None,
        settings: OrtSettings | None = None,
        *,
        uplink: NetworkModel | None = None,
        downlink: NetworkModel | None = None,
        expected_cloud_ms: float = 0.0,
        expected_upload_ms: float | None = None,
        around_local: Callable[[], contextlib.AbstractContextManager[object]] | None = None,
        connect_later: bool = False,
        model_inputs: Sequence[str] = (),
    ) -> None:
        if slices.offloads and remote is None:
            raise ValueError("a plan that offloads needs a remote executor")
        self.config = config or RunnerConfig()
        self.settings = (settings or OrtSettings()).resolved()
        self.remote = remote
        self._around_local = around_local or contextlib.nullcontext
        self._head = _Local(slices.head, self.settings) if slices.head else None
        self._tail = _Local(slices.tail, self.settings) if slices.tail else None
        self.slices = replace(slices, head=None, tail=None)
        self._middle_local: _Local | None = None
        self._slice_id: str | None = None
        self.upload_ms = 0.0  # time spent making the middle slice ready on the server (upload if needed, then load)
        self.made_ready = 0  # times that succeeded: once, or again after the server lost it (`upload_ms` has all tries)
        self._served = 0  # requests the server answered since the slice was last made ready
        self._lost_wait_s = 0.0  # the wait before uploading a slice lost again soon (LOST_AGAIN_REQUESTS)
        self._hold_until = 0.0  # time.monotonic() before which no health check starts (that wait)
        self._stream: _Stream | None = None
        self._unary_until = 0.0  # ModelInfer calls until then (monotonic): the server had no stream slot free
        self._down_since: float | None = None
        self._down_error: Exception | None = None  # the error that marked the server down (the last one while down)
        self._last_probe = 0.0  # when the last health check of a server that is down ended
        self._probe_wait_s = self.config.retry_interval_s  # doubles while the server answers but the slice fails
        self._probing = threading.Lock()  # held while a health check runs (one at a time)
        self._serving_level = logging.WARNING  # of its "running locally" logs; DEBUG while `connect` runs
        self._lock = threading.Lock()
        self._closed = False  # no health check starts after `close`, and one still running ends quietly
        self._upload_lock = threading.Lock()  # `upload_ms` and `_uploading_since`: a close counts an upload in flight
        self._uploading_since: float | None = None  # perf_counter when the slice's upload in flight began
        # Why the server refused the slice in the background before it was ever ready (made with `connect_later`):
        # this plan cannot work with this server.
        self.refused: ServerError | None = None
        self.link = _Link(uplink, downlink, expected_cloud_ms)
        self._expected_upload_s = None if expected_upload_ms is None else expected_upload_ms / 1e3
        if slices.middle is not None:
            self._middle_local = _Local(slices.middle, self.settings)
            if connect_later:  # down, with no error yet: the first request starts the health check at once
                self._down_since, self._last_probe = time.monotonic(), -math.inf
            else:
                self._connect(at_start=True)
        first = self._head or self._middle_local or self._tail
        assert first is not None
        self._first = first
        self._model_inputs = frozenset(model_inputs)
        self.input_names = first.inputs

    # -- server state -------------------------------------------------------------------------------------------

    @property
    def server_down(self) -> bool:
        return self._down_since is not None

    @property
    def _probe_s(self) -> float:
        return min(self.config.timeout_s, PROBE_TIMEOUT_S)

    @property
    def _remote_closed(self) -> bool:
        """Its client was closed (`Client.closed`): on purpose, so no failure of the server."""
        return bool(getattr(self.remote, "closed", False))

    @property
    def replan_needed(self) -> bool:
        """The measured network moved more than `drift_threshold` from the models the plan was made with, by a
        material share of a round trip (`MATERIAL_SHARE`)."""
        return self.link.drifted(self.config.drift_threshold)

    @property
    def drift_factor(self) -> float:
        """How far the measured network moved from the models the plan was made with: the larger factor of the two
        directions, 2.0 for a link twice as slow or twice as fast (1.0 without network models)."""
        return self.link.moved()

    def network_models(self) -> tuple[NetworkModel | None, NetworkModel | None]:
        """(uplink, downlink) as measured so far, for re-planning."""
        return self.link.uplink, self.link.downlink

    def mark_planned(self) -> None:
        """The current network models were planned with: drift counts from here (under the request lock: a request's
        drift update beside it had put back the reference drift it replaced)."""
        with self._lock:
            self.link.rebase()

    def _connect(self, at_start: bool = False) -> bool:
        """Make the middle slice ready on the server: upload it if needed and have the server open its session (one
        call: `ensure_slice(load=True)`), so that the first request waits for neither. False (and server marked
        down) when the server is unreachable, or when it refuses the slice (too large, or ONNX Runtime there cannot
        open it) while requests are being served; a refusal `at_start` raises the ServerError instead: the plan
        cannot work with this server, and retrying would only repeat the upload. A server with no stream slot free
        for the upload (ServerBusy: many edges starting at once) is busy, not refusing: the runner runs locally at
        once instead of waiting, and the background health check connects again later."""
        assert self.remote is not None and self.slices.middle is not None
        with self._upload_lock:
            self._uploading_since = time.perf_counter()
        try:
            planned: dict[str, Any] = {} if self._expected_upload_s is None else {"expected_s": self._expected_upload_s}
            if self.slices.middle_id is not None:
                planned["slice_id"] = self.slices.middle_id
            self._slice_id = self.remote.ensure_slice(
                self.slices.middle,
                self.slices.label,
                load=True,
                busy_wait_s=0,
                # at start, with no health check before it: a hung server held the start for the whole timeout_s
                status_timeout_s=self._probe_s if at_start else None,
                **planned,
            )
        except ServerError as exc:
            # NOT_FOUND is no refusal: another edge's upload evicted the slice (`--max-store-gb`) between this one's
            # upload and its load, or the stored copy was damaged and removed, and the server says to upload it
            # again; the health check does that (`_mark_down`: at once).
            transient = isinstance(exc, (ServerUnavailable, ServerBusy)) or _slice_lost(exc)
            if at_start and not transient:
                raise
            if self._closed:  # closed meanwhile (and its client, likely): no failure of the server, nothing to say
                return False
            if not transient and self._slice_id is None:
                self.refused = exc
            self._mark_down(exc)  # no request is lost: local until the server answers again
            return False
        finally:
            self._count_upload()  # unless `close` counted it, up to then
        self._down_since = None
        self.made_ready += 1
        self._served = 0
        return True

    def connect(self) -> bool:
        """Make the middle slice of a runner made with `connect_later` ready on the server now, in the calling
        thread, as its first health check would (a run switching split does so in a thread of its own while the
        runner it leaves still serves: no request waits for the slice, and none runs locally for it). Whether the
        runner offloads now; if not (the server is out of reach or busy, or refused the slice: `refused`), its
        requests run locally and its health check connects it later, as before. True for a runner that offloads
        nothing or is connected already."""
        if not self.server_down:
            return True
        self._probing.acquire()  # a health check started meanwhile ends first; this one then finds it connected
        self._serving_level = logging.DEBUG  # no request runs on it yet: its caller says what came of it
        try:
            self._probe()  # releases `_probing`
        finally:
            self._serving_level = logging.WARNING
        return not self.server_down

    @property
    def next_check_s(self) -> float:
        """Seconds until a health check of a server that is down is due (0: now, or the server is up)."""
        if self._down_since is None:
            return 0.0
        now = time.monotonic()
        return max(0.0, self._hold_until - now, self._last_probe + self._probe_wait_s - now)

    def _mark_down(self, exc: Exception) -> None:
        """Local until the server answers again; a new reason while down (it answers but refuses the slice, or
        the edge's token) is logged and reported with the requests from then on. A slice the server lost
        (NOT_FOUND) is no failure of the server: the health check starts at once and uploads it again, off the
        request path (in a request it held every request up for as long as the upload took: 6.5 s once, soak
        review)."""
        self._drop_stream()
        if self._down_since is None or self._down_error is None:  # up, or not connected yet (`connect_later`)
            if self._remote_closed:  # its client was closed on purpose: no failure of the server
                log.info("the client is closed; running locally: %s", exc)
            elif _slice_lost(exc):
                self._lost_wait_s = self._next_lost_wait()
                log.warning(
                    "the server no longer holds the slice; uploading it again%s, running locally meanwhile: %s",
                    f" in {self._lost_wait_s:g} s (lost again after {self._served} requests: is its --max-store-gb "
                    "below what its edges use together?)"
                    if self._lost_wait_s
                    else "",
                    exc,
                )
            elif exc is self.refused:  # it answered: no failure of the server
                log.log(self._serving_level, "the server refused the slice, running locally: %s", exc)
            else:
                log.log(self._serving_level, "server failed, running locally until it answers again: %s", exc)
            self._down_since = self._down_since or time.monotonic()
        elif str(exc) != str(self._down_error):
            log.warning("server still unusable, running locally: %s", exc)
        self._down_error = exc
        if _slice_lost(exc):  # the health check uploads it: at once, or after the wait when it is lost again soon
            self._last_probe, self._hold_until = -math.inf, time.monotonic() + self._lost_wait_s
        else:
            self._last_probe = time.monotonic()

    def _next_lost_wait(self) -> float:
        """0 for a slice that served LOST_AGAIN_REQUESTS requests before the server lost it, else the last wait
        doubled (`retry_interval_s` the first time)."""
        if self.made_ready == 0 or self._served >= LOST_AGAIN_REQUESTS:
            return 0.0
        return min(max(2 * self._lost_wait_s, self.config.retry_interval_s), MAX_PROBE_WAIT_S)

    def _remote_usable(self) -> bool:
        """True while the server is up. While it is down: False at once, and a health check started in the
        background when none is running and the probe wait (`retry_interval_s`, doubled after each failed upload)
        has passed since the last one ended."""
        if self._down_since is None:
            return True
        if self._closed or self._remote_closed:  # closed on purpose: nothing to probe
            return False
        if self._probe_due() and self._probing.acquire(False):
            if self._probe_due():  # not just ended elsewhere
                threading.Thread(target=self._probe, name="rr-probe", daemon=True).start()
            else:
                self._probing.release()
        return False

    def _probe_due(self) -> bool:
        now = time.monotonic()
        return now >= self._hold_until and now - self._last_probe >= self._probe_wait_s

    def _probe(self) -> None:
        """Health check of a server that is down; when it answers, make the slice ready again (upload, load). Not
        under the request lock: no request goes to a server that is down, and `close` must not wait for an upload
        of minutes on a slow link."""
        assert self.remote is not None
        try:
            if self._closed:
                return
            down_since, first = self._down_since, self._down_error is None  # first: made with `connect_later`
            healthy = self.remote.healthy(timeout_s=self._probe_s)
            if not healthy and first and self._last_probe == -math.inf and not self._closed:  # said once
                log.log(
                    self._serving_level, "the server does not answer; running locally until it does and has the slice"
                )
            if not healthy and self._down_error is None:
                # the requests' reason from here on: a server out of reach, not a slice being made ready (review)
                self._down_error = ServerUnavailable("UNAVAILABLE: the server does not answer its health check")
            if healthy and down_since is not None and not self._closed:
                lost = _slice_lost(self._down_error)
                if self._connect():
                    what = (
                        "slice ready on the server" if first else "slice uploaded again" if lost else "server is back"
                    )
                    # at the level its failure was logged: a warning that it failed said nothing once it was over
                    level = logging.INFO if first else logging.WARNING
                    log.log(level, "%s after %.1f s; offloading", what, time.monotonic() - down_since)
                    self._probe_wait_s = self.config.retry_interval_s
                elif isinstance(self._down_error, ServerBusy):  # no upload slot free: again after its pushback
                    self._probe_wait_s = max(self.config.retry_interval_s, self._down_error.retry_after_s)
                else:  # it answers but the upload failed (a slow link, a refusal): do not send it again at once
                    self._probe_wait_s = min(2 * self._probe_wait_s, MAX_PROBE_WAIT_S)
        finally:
            self._last_probe = time.monotonic()
            self._probing.release()

    def _drop_stream(self, drain_s: float = 0.0) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.close(drain_s)

    def _remote_infer(self, feed: Mapping[str, np.ndarray], timeout_s: float) -> dict[str, np.ndarray]:
        assert self.remote is not None and self._slice_id is not None
        if not self.config.stream or time.monotonic() < self._unary_until:
            return self.remote.infer(self._slice_id, feed, timeout_s)
        if self._stream is None:
            self._stream = _Stream(self.remote, self._slice_id)
        try:
            return self._stream.infer(feed, timeout_s)
        except ServerUnavailable:
            self._drop_stream()  # timed out or broken: cancelled, not reused (an error answer leaves it in step)
            raise
        except ServerBusy as exc:
            # The server has no stream slot free (each open stream holds one of its threads): one ModelInfer call
            # per request, which it always has room for, until a stream is worth trying again.
            log.info(
                "the server keeps no stream for this runner; one ModelInfer per request for %.0f s: %s",
                self.config.stream_retry_s,
                exc,
            )
            self._drop_stream()
            self._unary_until = time.monotonic() + self.config.stream_retry_s
            return self.remote.infer(self._slice_id, feed, timeout_s)
        except ServerError:
            raise
        except Exception:
            # This side could not send the request (gRPC drew it in its own thread, and the stream half-closed):
            # this request fails with that error, and the next one opens a new stream (it had failed them all).
            self._drop_stream()
            raise

    def close(self, wait_s: float | None = None) -> None:
        """Close the inference stream (the runner stays usable: the next request opens a new one; a server that is
        down is not checked on again until then); waits for a request on the remote path to finish first. A health
        check in the background is waited for up to `wait_s` (None: `STREAM_DRAIN_S`, at most
        `RunnerConfig.timeout_s`): an upload of the slice still going on then (a large slice, a slow or dead link) is
        counted in `upload_ms` up to here and left to end with its call's deadline or the client (closing it cancels
        the call), quietly. Unwaited, it had gone on after a run, uncounted, and logged that the server failed once
        the run closed its client; waited for in full, `run` had hung 24 s after its last request on a slow link
        (reviews)."""
        self._end_background(min(STREAM_DRAIN_S, self.config.timeout_s) if wait_s is None else wait_s)
        with self._lock:
            self._drop_stream(drain_s=STREAM_DRAIN_S)

    def close_if_idle(self) -> bool:
        """`close` unless a request is on the remote path now (checked and closed at once, a health check in the
        background not waited for); whether it closed."""
        if not self._lock.acquire(blocking=False):
            return False
        try:
            self._end_background(0.0)
            self._drop_stream(drain_s=STREAM_DRAIN_S)
        finally:
            self._lock.release()
        return True

    def _end_background(self, wait_s: float) -> None:
        """No health check from here on; one running is waited for up to `wait_s`, and its upload counted up to then."""
        self._closed = True
        if self._probing.acquire(timeout=wait_s):  # none running, or it ended
            self._probing.release()
        self._count_upload()  # still uploading: what it took so far

    def _count_upload(self) -> None:
        """Add the upload in flight, up to now, to `upload_ms`, once: by the upload when it ends, or by `close`."""
        with self._upload_lock:
            if self._uploading_since is not None:
                self.upload_ms += 1e3 * (time.perf_counter() - self._uploading_since)
                self._uploading_since = None

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- execution ----------------------------------------------------------------------------------------------

    def _middle(self, env: dict[str, np.ndarray], result: RunResult) -> None:
        assert self._middle_local is not None
        feed = self._middle_local.feed(env)
        if self._remote_usable():
            with self._lock:  # one request at a time on the remote path: a stream answers in order
                outputs = self._offload(feed, result) if not self.server_down else None
            if outputs is not None:
                env.update(outputs)
                return
        result.fallback = True
        if self._remote_closed:  # closed on purpose: no server will be asked again
            why = "running locally: this runner's client is closed"
        elif self._down_error is None:  # made with `connect_later`, and not connected yet
            why = "running locally while the slice is made ready on the server"
        elif _slice_lost(self._down_error):  # the server is up: it asked for the slice again
            why = f"{RELOADING}{self._down_error}"
        else:
            why = f"{DOWN}{self._down_error}"
        result.error = result.error or why
        env.update(self._run_local(self._middle_local, env))

    def _offload(self, feed: Mapping[str, np.ndarray], result: RunResult) -> dict[str, np.ndarray] | None:
        """The middle slice on the server; None (and `result.error`) when this request has to finish locally."""
        result.bytes_up = wire_bytes(feed)
        timeout_s = self.config.timeout_s
        if self.config.adaptive_deadline:
            timeout_s = self.link.answer_s(result.bytes_up, timeout_s)
        start = time.perf_counter()
        try:
            outputs = self._remote_infer(feed, timeout_s)
        except ServerError as exc:
            result.error = str(exc)
            # The wait for the server is no local compute: a power model charges it as the plan did (idle, radio).
            result.remote_ms = (time.perf_counter() - start) * 1e3
            if exc.code == "DEADLINE_EXCEEDED" and timeout_s < self.config.timeout_s:
                self.link.missed(result.bytes_up, result.remote_ms)  # the server may only be slower than expected
            elif exc.code == "DEADLINE_EXCEEDED":
                self.link.timed_out(result.bytes_up, result.remote_ms)
            if exc.code == "INVALID_ARGUMENT":
                log.debug("the server rejected this request; running it locally: %s", exc)
            else:  # unreachable, refusing (INTERNAL, RESOURCE_EXHAUSTED, ...), or it lost the slice: local for now
                self._mark_down(exc)
            return None
        result.remote_ms = (time.perf_counter() - start) * 1e3
        self._served += 1
        result.server_ms = getattr(outputs, "server_run_ms", None)  # rr_edge.client.InferOutputs
        result.bytes_down = wire_bytes(outputs)
        self.link.update(result, learn=self._stream is None or self._stream.answered > 1)
        return outputs

    def run(self, inputs: Mapping[str, np.ndarray] | np.ndarray) -> RunResult:
        """Run one request through the plan."""
        if isinstance(inputs, np.ndarray):
            if len(self.input_names) != 1:
                raise InputError(f"this model takes {len(self.input_names)} inputs; pass a dict")
            inputs = {self.input_names[0]: inputs}
        if not isinstance(inputs, Mapping):
            raise InputError(f"inputs are an array or a dict of arrays by input name, not {type(inputs).__name__}")
        self._first.check(inputs, also=self._model_inputs)
        self._closed = False  # used after `close`: health checks may start again
        start = time.perf_counter()
        env = dict(inputs)
        result = RunResult(outputs={}, fallback=False, total_ms=0.0)
        last: _Local | None = None
        if self._head is not None:
            t = time.perf_counter()
            env.update(self._run_local(self._head, env))
            result.head_ms = (time.perf_counter() - t) * 1e3
            last = self._head
        if self._middle_local is not None:
            self._middle(env, result)
            last = self._middle_local
        if self._tail is not None:
            t = time.perf_counter()
            env.update(self._run_local(self._tail, env))
            result.tail_ms = (time.perf_counter() - t) * 1e3
            last = self._tail
        assert last is not None
        # The server's outputs are read-only views of its message: copied only when they are the caller's.
        result.outputs = {name: _writable(env[name]) for name in last.outputs}
        result.total_ms = (time.perf_counter() - start) * 1e3
        return result

    def _run_local(self, part: _Local, env: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._around_local():
            return part(env)

    def __call__(self, inputs: Mapping[str, np.ndarray] | np.ndarray) -> dict[str, np.ndarray]:
        return self.run(inputs).outputs


def fallback_cause(error: str) -> str:
    """The failure a request that finished locally stems from (its `RunResult.error`): a request not sent while the
    server was down, or while it was sent the slice again, names the error that made it so after its own words
    (`DOWN`, `RELOADING`), and counts with the request that met that error."""
    for prefix in (DOWN, RELOADING):
        error = error.removeprefix(prefix)
    return error


def _slice_lost(exc: Exception | None) -> bool:
    """The server answered that it does not hold the slice (evicted, damaged on its disk, a new data dir): it is up,
    and an upload of the slice is what it asks for."""
    return isinstance(exc, ServerError) and exc.code == "NOT_FOUND"


def _writable(value: Any) -> Any:
    """An output as the caller may keep it: a read-only array (a view of the server's message) copied; a tensor
    sequence (a list of arrays from ONNX Runtime) as it is."""
    if isinstance(value, np.ndarray) and not value.flags.writeable:
        return value.copy()
    return value
