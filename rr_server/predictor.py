"""Latency and energy predictions per (node, block signature), with provenance.

Two matrices, nodes x signatures, of positive values (latency ms, energy mJ), factorised in log space by the cf_cpp
engine (`rr_server.cf_engine`). Columns carry structural features (log flops and bytes, op-type counts), so a
signature no node measured is still predicted from its features (cold start), and additive features (flops, bytes,
op count), so a new node unlike the fleet whose values are close to a weighted sum of them is predicted by that sum.

Answers, per value:
* MEASURED    - the node reported this signature (or the server timed it for its own row): the latest measurement.
* PREDICTED   - collaborative filtering from this node's and other nodes' measurements.
* COLD_START  - no node measured this signature: predicted from its features only.
* UNKNOWN     - nothing to go on (no measurement of this quantity anywhere yet); the value is 0.

Refits run in a background thread, debounced after reports arrive (`notify`), never on the request path (a query
about signatures measured since the last fit waits for the next, up to `FRESH_WAIT_S`), and with
at least `REFIT_IDLE_FACTOR` times the last refit's duration between two of them: a refit reads and fits everything,
so under steady reports at tens of thousands of signatures (3.4 s each) they had run back to back. A node that
was not in the last fit is folded in (a Bayesian fold-in against the fixed columns, its prior a mixture built from the
fitted rows, or an additive row: a weighted sum of the additive features) instead of refitting, unless it
measured a signature no fitted node measured (only a refit carries that to the others). A node with no row at all is
predicted by the median of the edge rows.

A query stores nothing: a signature outside the fit gets a cold-start column keyed by its features, kept only until the
next refit. Past `MAX_COLD_COLUMNS` of them a refit is scheduled, which drops them, and until it has, a query that
needs new ones is refused as Busy (retry shortly): queries alone cannot grow the engine's memory without bound.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rr_proto.allocator import release_free_memory
from rr_server.cf_engine import engine_name, make_engine
from rr_server.errors import Busy, NotFound
from rr_server.records import (
    MAX_ENERGY_MJ,
    MAX_LATENCY_MS,
    MIN_ENERGY_MJ,
    MIN_LATENCY_MS,
    ROLE_CLOUD,
    Features,
    LatestValue,
)
from rr_server.storage import Storage

log = logging.getLogger(__name__)

MEASURED = "measured"
PREDICTED = "predicted"
COLD_START = "cold_start"
UNKNOWN = "unknown"

# Op types counted as separate features; everything else lands in "other".
OP_VOCABULARY = (
    "Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization", "Relu", "Clip", "Sigmoid", "HardSigmoid",
    "HardSwish", "Mul", "Add", "MaxPool", "AveragePool", "GlobalAveragePool", "Concat", "Reshape", "Flatten",
    "Transpose", "Softmax", "LayerNormalization", "Gelu", "Erf", "Div", "Sub", "ReduceMean", "Split", "Slice",
)  # fmt: skip
_MAX_DEBOUNCE_S = 5.0
_MAX_RETRY_S = 60.0  # longest wait before a failed refit is tried again
REFIT_IDLE_FACTOR = 2.0  # refits take at most a third of a core: after one of t s, the next waits >= 2 t
BOUNDS = {
    "latency": (MIN_LATENCY_MS, MAX_LATENCY_MS),
    "energy": (MIN_ENERGY_MJ, MAX_ENERGY_MJ),
}  # what reports may hold
MAX_COLD_COLUMNS = 10_000
REFIT_RETRY_AFTER_S = 1.0  # the pushback of a query refused until the refit that drops the cold columns
FRESH_WAIT_S = 5.0  # longest a query waits for the refit of measurements stored before it


def _sizes(f: Features) -> list[int]:
    return [f.flops, f.param_bytes, f.input_bytes, f.output_bytes, len(f.ops)]


def feature_vector(f: Features) -> np.ndarray:
    """Numeric column features of a block: log sizes and log(1 + count) per op type."""
    counts = Counter(f.ops)
    known = [counts.get(op, 0) for op in OP_VOCABULARY]
    other = len(f.ops) - sum(known)
    return np.log1p(np.asarray(_sizes(f) + known + [other], dtype=np.float64))


def additive_vector(f: Features) -> np.ndarray:
    """Additive features of a block: the raw sizes (flops, parameter / input / output bytes, op count). A device
    whose cost is compute plus memory traffic plus a per-op overhead is a weighted sum of them (cf_cpp folds such a
    node in as one when that fits its reports far better than the fleet does)."""
    return np.asarray(_sizes(f), dtype=np.float64)


def additive_matrix(features: Sequence[Features]) -> np.ndarray:
    return np.stack([additive_vector(f) for f in features])


@dataclass(frozen=True)
class PredictionRecord:
    signature: str
    latency_ms: float
    energy_mj: float
    latency_provenance: str
    energy_provenance: str
    energy_source: str


@dataclass
class _Target:
    """One fitted matrix (latency or energy) and its index maps. Engine calls go through `lock`."""

    engine: Any
    rows: dict[str, int]
    cols: dict[str, int]
    measured: np.ndarray  # per column: some node measured it (bool; a set of 40,000 signatures held megabytes)
    row_counts: dict[str, tuple[int, int]]  # per node: (values, hash of its (signature, value) pairs)
    scale: tuple[np.ndarray, np.ndarray]
    edge_rows: np.ndarray  # rows of edge nodes (not the server's own row): what a node without a row is like
    bounds: tuple[float, float]  # a prediction is clipped to what a report may hold (an extrapolation can overflow)
    cold: dict[bytes, int] = field(default_factory=dict)  # engine columns added for queried feature vectors
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_cold(self, blocks: Sequence[Features]) -> None:
        """Columns for the feature vectors of `blocks` that have none yet, in one engine call: added one at a time,
        each call copying every column, a query of 16,000 new blocks took 36 s."""
        with self.lock:
            self._add_cold(blocks)

    def _add_cold(self, blocks: Sequence[Features]) -> list[bytes]:
        """(The caller holds the lock.) The `cold` keys of `blocks`, their columns added where missing."""
        keys, new = [], {}
        for f in blocks:
            raw, additive = feature_vector(f), additive_vector(f)
            key = raw.tobytes() + additive.tobytes()  # all a cold column depends on
            keys.append(key)
            if key not in self.cold:
                new[key] = raw, additive
        if new and self.cold and len(self.cold) + len(new) > MAX_COLD_COLUMNS:
            raise Busy(
                f"{len(new)} block(s) no node measured, beside the {len(self.cold)} already queried since the last "
                "fit: the server is refitting to make room; retry shortly",
                REFIT_RETRY_AFTER_S,
            )
        if new:
            mean, std = self.scale
            raws, additives = (np.stack(parts) for parts in zip(*new.values(), strict=True))
            first = self.engine.add_cols(len(new), (raws - mean) / std, additives)
            self.cold.update({key: first + k for k, key in enumerate(new)})
        return keys

    def value(self, node_id: str, signature: str, features: Features | None) -> tuple[float, str] | None:
        with self.lock:
            col = self.cols.get(signature)
            if col is None:
                if features is None:
                    return None
                (key,) = self._add_cold([features])
                col = self.cold[key]
            provenance = PREDICTED if col < self.measured.size and self.measured[col] else COLD_START
            row = self.rows.get(node_id)
            if row is not None:
                value = float(self.engine.predict(np.array([row]), np.array([col]))[0])
            else:
                rows = self.edge_rows if self.edge_rows.size else np.fromiter(self.rows.values(), dtype=np.int64)
                value = float(np.exp(np.median(self.engine.predict(rows, np.full(rows.size, col), log=True))))
            return float(np.clip(value, *self.bounds)), provenance


class Predictor:
    """Serves predictions from the latest fit; `notify()` after storing reports schedules a refit."""

    def __init__(self, storage: Storage, debounce_s: float = 0.5) -> None:
        self._storage = storage
        self._debounce_s = debounce_s
        self._targets: dict[str, _Target | None] = {"latency": None, "energy": None}
        self._sources: dict[str, str] = {}
        self._fitted_version = -1
        self._wake = threading.Event()
        self._notices = 0  # notify() calls: a debounce lasts while they keep coming, and a wake-up with none new
        self._notices_fitted = 0  # (a query waiting for a fit) refits nothing: the last refit began at this count
        self._retry_in_s: float | None = None  # after a failed refit: when to try again (None: when notified)
        self._fresh = threading.Condition()
        self._last_refit = (0.0, 0.0)  # (monotonic end, duration s) of the last refit
        self._urgent = threading.Event()  # refit now, no debounce nor rest (queries are refused until then), or stop
        self._stop = False
        self._thread = threading.Thread(target=self._worker, name="rr-predictor", daemon=True)

    def start(self) -> None:
        self.refresh()
        release_free_memory()
        self._thread.start()

    def close(self) -> None:
        self._stop = True
        self._urgent.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def notify(self) -> None:
        """New measurements were stored: refit soon (debounced), off the request path."""
        self._notices += 1
        self._wake.set()

    def wait_fresh(self, timeout: float = 10.0) -> bool:
        """Block until the fit includes every measurement stored before this call (queries right after a report,
        tests). It wakes the worker without prolonging its debounce: as a notice, every query waiting here had
        pushed the refit it waited for back, and 20 edges asking about a block every 0.3 s got cold-start answers
        for 5 s after a node measured it (found by review)."""
        target = self._storage.version
        self._wake.set()
        with self._fresh:
            return self._fresh.wait_for(lambda: self._fitted_version >= target, timeout=timeout)

    def _worker(self) -> None:
        while not self._stop:
            self._wake.wait(self._retry_in_s)
            started = time.monotonic()
            while not self._stop and not self._urgent.is_set():  # debounce: until reports stop arriving (bounded)
                seen = self._notices
                self._wake.clear()
                self._urgent.wait(self._debounce_s)
                if self._notices == seen or time.monotonic() - started > _MAX_DEBOUNCE_S:
                    break
            self._urgent.wait(idle_before_refit(*self._last_refit, time.monotonic()))
            urgent = self._urgent.is_set()
            self._urgent.clear()
            changed = self._notices != self._notices_fitted or self._storage.version != self._fitted_version
            asked = urgent or self._retry_in_s is not None or changed
            if not self._stop and asked:
                self._notices_fitted = self._notices
                begun = time.monotonic()
                self.refresh()
                release_free_memory()  # a refit's transients: about half the server's memory at 40,000 blocks
                ended = time.monotonic()
                self._last_refit = (ended, ended - begun)

    def refresh(self) -> None:
        """Refit (or fold new nodes into) both matrices from storage. Never raises: a failed fit keeps the old one
        and is tried again after a pause (doubling, at most `_MAX_RETRY_S`) or the next report."""
        version = self._storage.version
        try:
            values = self._storage.latest_values()
            signatures = self._storage.signatures()
            cloud = {n.node_id for n in self._storage.list_nodes() if n.role == ROLE_CLOUD}
            latency = [(v.node_id, v.signature, v.latency_ms) for v in values]
            energy = [(v.node_id, v.signature, v.energy_mj) for v in values if v.energy_mj is not None]
            started = time.perf_counter()
            # Each target is kept as soon as it is fitted: a fold-in grows the previous engine in place, and its row
            # map must not be lost when the other target's fit then fails (a retry would fold the node in again).
            for quantity, data in (("latency", latency), ("energy", energy)):
                fitted = self._fit(data, quantity, signatures, cloud, self._targets[quantity])
                self._targets = {**self._targets, quantity: fitted}
            self._sources = _energy_sources(values)
            log.info(
                "predictor refreshed with %s: %d measurements, %d signatures in %.1f ms",
                engine_name(),
                len(values),
                len(signatures),
                1e3 * (time.perf_counter() - started),
            )
        except Exception:  # noqa: BLE001 - keep serving the previous fit
            self._retry_in_s = min(2 * (self._retry_in_s or 0.5), _MAX_RETRY_S)
            log.exception(
                "predictor refresh failed; keeping the previous fit, trying again in %.0f s", self._retry_in_s
            )
            return
        self._retry_in_s = None
        with self._fresh:
            self._fitted_version = max(self._fitted_version, version)
            self._fresh.notify_all()

    def _fit(
        self,
        data: list[tuple[str, str, float]],  # (node, signature, value)
        quantity: str,  # "latency" or "energy"
        signatures: dict[str, Features],
        cloud: set[str],
        previous: _Target | None,
    ) -> _Target | None:
        if not data:
            return None
        by_node: dict[str, dict[str, float]] = {}
        for node, signature, value in data:
            by_node.setdefault(node, {})[signature] = value
        col_names = sorted(set(signatures) | {signature for _, signature, _ in data})
        # Fingerprint per node: a changed or added value of a known node forces a refit, a new node is folded in.
        counts = {node: (len(values), hash(tuple(sorted(values.items())))) for node, values in by_node.items()}
        if previous is not None and _only_new_rows(previous, col_names, by_node, counts):
            return self._fold_in(previous, by_node, counts, cloud)
        rows = {node: k for k, node in enumerate(sorted(by_node))}
        cols = {sig: k for k, sig in enumerate(col_names)}
        r = np.array([rows[node] for node, _, _ in data], dtype=np.int64)
        c = np.array([cols[signature] for _, signature, _ in data], dtype=np.int64)
        v = np.array([value for _, _, value in data], dtype=np.float64)
        blocks = [signatures.get(s, Features()) for s in col_names]
        raw = np.stack([feature_vector(f) for f in blocks])
        mean, std = raw.mean(axis=0), raw.std(axis=0)
        std[std == 0] = 1.0
        engine = make_engine(len(data))
        features = (raw - mean) / std
        engine.fit(r, c, v, len(rows), len(cols), col_features=features, additive_features=additive_matrix(blocks))
        measured = np.zeros(len(cols), dtype=bool)
        measured[c] = True
        return _Target(engine, rows, cols, measured, counts, (mean, std), _edge_rows(rows, cloud), BOUNDS[quantity])

    @staticmethod
    def _fold_in(
        previous: _Target,
        by_node: dict[str, dict[str, float]],
        counts: dict[str, tuple[int, int]],
        cloud: set[str],
    ) -> _Target:
        rows = dict(previous.rows)
        with previous.lock:
            for node in sorted(set(by_node) - set(rows)):
                values = by_node[node]
                cols = np.array([previous.cols[s] for s in values], dtype=np.int64)
                rows[node] = previous.engine.fold_in_row(cols, np.array(list(values.values()), dtype=np.float64))
                log.info("folded node %s into the model (%d measurements)", node, len(values))
        return dataclasses.replace(previous, rows=rows, row_counts=counts, edge_rows=_edge_rows(rows, cloud))

    def predict(
        self, node_id: str, signatures: Sequence[str], features: Mapping[str, Features] | None = None
    ) -> list[PredictionRecord]:
        """Latency and energy of each signature on `node_id`; raises NotFound for a signature nobody knows, and Busy
        (retry shortly) for one only reported since the last fit, without its features."""
        self._await_fit(signatures)
        features = dict(features or {})
        known = self._storage.signatures(signatures)  # those of the query only (all: 40,000 of them, say)
        mine = {m.signature: m for m in self._storage.latest_measurements(node_id, signatures)}
        latency_t, energy_t = self._targets["latency"], self._targets["energy"]
        unknown = [
            s
            for s in signatures
            if s not in mine and s not in features and s not in known and not (latency_t and s in latency_t.cols)
        ]
        if unknown and (reported := self._storage.measured_by_any(unknown)):
            self.notify()  # reported since the last fit (without features): the next fit has them
            raise Busy(
                f"{len(reported)} signature(s) reported moments ago, e.g. {next(iter(reported))[:16]!r}, are not in "
                "the model yet: the server is refitting; retry shortly",
                REFIT_RETRY_AFTER_S,
            )
        if unknown:
            raise NotFound(
                f"{len(unknown)} signature(s) unknown to the server, e.g. {unknown[0][:16]!r}; send their features"
            )
        for target in (latency_t, energy_t):  # every column the query lacks, in one engine call per matrix
            if target is not None:
                blocks = [features.get(s) or known.get(s) for s in signatures if s not in target.cols]
                try:
                    target.add_cold([f for f in blocks if f is not None])
                except Busy:  # the refit drops the queried columns: at once, the query's retry waits for it
                    self._urgent.set()
                    self.notify()
                    raise
        out = []
        for sig in signatures:
            f = features.get(sig) or known.get(sig)
            m = mine.get(sig)
            if m is not None:
                latency, latency_p = m.latency_ms, MEASURED
            else:
                latency, latency_p = _estimate(latency_t, node_id, sig, f)
            if m is not None and m.energy_mj is not None:
                energy, energy_p, source = m.energy_mj, MEASURED, m.energy_source
            elif node_id in self._sources:  # it reports energy: predicted from its readings and the fleet's
                energy, energy_p = _estimate(energy_t, node_id, sig, f)
                source = self._sources[node_id] if energy_p != UNKNOWN else ""
            else:  # it reports none: another device's joules are not its own; the edge uses its power model
                energy, energy_p, source = 0.0, UNKNOWN, ""
            out.append(PredictionRecord(sig, latency, energy, latency_p, energy_p, source))
        if any(t is not None and len(t.cold) > MAX_COLD_COLUMNS for t in (latency_t, energy_t)):
            self.notify()  # the refit drops the queried columns
        return out

    def _await_fit(self, signatures: Sequence[str]) -> None:
        """Measurements of some of `signatures` stored since the last fit (a profile's reports, the server's timings
        of its blocks, moments ago): wait for the refit that takes them in, at most FRESH_WAIT_S. Without it a plan
        made right after `rr-edge profile` (vit_b_16, a second profile) read the fit from before that profile: the
        blocks it had just measured elsewhere in the model, and the blocks like them, stayed predicted from three
        tiny blocks, 350x too fast. Queries about other signatures do not wait for other nodes' reports."""
        if self._thread.is_alive() and self._storage.written_after(signatures, self._fitted_version):
            self.wait_fresh(FRESH_WAIT_S)


def idle_before_refit(last_end: float, last_duration_s: float, now: float) -> float:
    """Seconds to wait before the next refit: until `REFIT_IDLE_FACTOR` x the last one's duration has passed since
    it ended."""
    return max(0.0, last_end + REFIT_IDLE_FACTOR * last_duration_s - now)


def _estimate(target: _Target | None, node_id: str, signature: str, features: Features | None) -> tuple[float, str]:
    if target is None:
        return 0.0, UNKNOWN
    found = target.value(node_id, signature, features)
    return found if found is not None else (0.0, UNKNOWN)


def _only_new_rows(
    previous: _Target,
    col_names: list[str],
    by_node: dict[str, dict[str, float]],
    counts: dict[str, tuple[int, int]],
) -> bool:
    """True when the data differ from the previous fit only by whole new nodes that measured only signatures some
    fitted node measured (fold them in, no refit: a first measurement of a signature must reach the other nodes)."""
    if any(s not in previous.cols for s in col_names):
        return False
    if any(counts.get(node) != n for node, n in previous.row_counts.items()):
        return False
    new = set(counts) - set(previous.row_counts)
    if any(not previous.measured[previous.cols[s]] for node in new for s in by_node[node]):
        return False
    return bool(new)


def _edge_rows(rows: dict[str, int], cloud: set[str]) -> np.ndarray:
    return np.array(sorted(k for node, k in rows.items() if node not in cloud), dtype=np.int64)


def _energy_sources(values: list[LatestValue]) -> dict[str, str]:
    """Per node that reported energy, the source of most of its readings ("" when they name none)."""
    per_node: dict[str, Counter] = {}
    for v in values:
        if v.energy_mj is not None:
            counts = per_node.setdefault(v.node_id, Counter())
            if v.energy_source:
                counts[v.energy_source] += 1
    return {node: c.most_common(1)[0][0] if c else "" for node, c in per_node.items()}
