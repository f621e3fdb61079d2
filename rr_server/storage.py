"""Durable state in SQLite (WAL, synchronous=FULL): nodes, signatures with features, measurements, network profiles.

Every write commits before it returns, so a caller that acknowledges after a write survives `kill -9`. Writes go
through one connection, one at a time; reads use read-only connections of their own, so that (WAL) they see the last
commit and wait neither for a write nor for another read (the predictor's refit reads every measurement).
Measurements are appended; readers see the latest latency per (node, signature) and the latest energy (a newer
report without a meter does not hide the measured energy). A write keeps the last MEASUREMENTS_KEPT measurements of each
(node, signature) it touches, and the newest with an energy, and the last RUNS_KEPT runs of each (node, model): a
node that profiles the same model every day does not grow the database, or the refit's read of it, without end.
Beyond that, only the server's own row loses measurements: those of another execution provider, when it starts on a
new one (`forget_other_providers`).
A write that meets a full disk stores nothing and raises ResourceExhausted; the next one works once there is room.

A signature's features and uploaded slice are set by its first report: later features that differ are kept out
(logged), and a later report naming another slice keeps the first one (blocks with the same structure and other
weights share a signature, not a slice). The
slices named for blocks and whole models are kept here, so the cloud profiler finds the ones it has not timed yet
after a restart.

The schema only grows by `CREATE ... IF NOT EXISTS` (a new table or index reaches an existing database when it is
opened); there is no schema version.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from rr_server.errors import ResourceExhausted
from rr_server.records import Features, LatestValue, Measurement, ModelRun, NodeRecord

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    node_id TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    device TEXT NOT NULL,
    registered_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS signatures (
    signature TEXT PRIMARY KEY,
    ops TEXT NOT NULL,
    flops INTEGER NOT NULL,
    param_bytes INTEGER NOT NULL,
    input_bytes INTEGER NOT NULL,
    output_bytes INTEGER NOT NULL,
    slice_id TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS measurements (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    node_id TEXT NOT NULL REFERENCES nodes(node_id),
    signature TEXT NOT NULL,
    latency_ms REAL NOT NULL,
    p10_ms REAL NOT NULL,
    p90_ms REAL NOT NULL,
    cv REAL NOT NULL,
    samples INTEGER NOT NULL,
    energy_mj REAL,
    energy_source TEXT NOT NULL,
    source TEXT NOT NULL,
    settings TEXT NOT NULL,
    measured_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS measurements_by_node ON measurements(node_id, signature);
CREATE TABLE IF NOT EXISTS model_runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    node_id TEXT NOT NULL REFERENCES nodes(node_id),
    model TEXT NOT NULL,
    latency_ms REAL NOT NULL,
    sum_of_blocks_ms REAL NOT NULL,
    energy_mj REAL,
    energy_source TEXT NOT NULL,
    measured_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS model_slices (
    model TEXT PRIMARY KEY,
    slice_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS network_profiles (
    node_id TEXT PRIMARY KEY REFERENCES nodes(node_id),
    profile TEXT NOT NULL,
    updated_at REAL NOT NULL
);
"""

MEASUREMENTS_KEPT = 8  # per (node, signature); older ones go when the next is stored
RUNS_KEPT = 16  # whole-model runs per (node, model): the end-to-end correction is their mean

# Rows beyond the newest {kept} of each (node, {key}) of one node and the keys of a JSON array, except the newest row
# with an energy (measurements).
_PRUNE = """
DELETE FROM {table} WHERE id IN (
    SELECT id FROM (
        SELECT id, ROW_NUMBER() OVER newest_first AS k, {keep_also} AS keep_also
        FROM {table} WHERE node_id = ? AND {key} IN (SELECT value FROM json_each(?))
        WINDOW newest_first AS (PARTITION BY {key} ORDER BY id DESC)
    ) WHERE k > {kept} AND id != COALESCE(keep_also, -1)
)
"""
_PRUNE_MEASUREMENTS = _PRUNE.format(
    table="measurements",
    key="signature",
    kept=MEASUREMENTS_KEPT,
    keep_also="MAX(CASE WHEN energy_mj IS NOT NULL THEN id END) OVER (PARTITION BY signature)",
)
_PRUNE_RUNS = _PRUNE.format(table="model_runs", key="model", kept=RUNS_KEPT, keep_also="NULL")

# The newest row per (node, signature), with the energy of the newest row that has one.
_LATEST = """
SELECT {columns} FROM measurements m
JOIN (
    SELECT MAX(id) AS id, MAX(CASE WHEN energy_mj IS NOT NULL THEN id END) AS energy_id
    FROM measurements {where} GROUP BY node_id, signature
) last ON m.id = last.id
LEFT JOIN measurements e ON e.id = last.energy_id
ORDER BY m.node_id, m.signature
"""
_RECORD_COLUMNS = "m.*, e.energy_mj AS last_energy_mj, e.energy_source AS last_energy_source"
_VALUE_COLUMNS = "m.node_id, m.signature, m.latency_ms, e.energy_mj, e.energy_source"  # a LatestValue


class _Readers:
    """Read-only connections to the database, one lent per query and kept for the next (WAL: a reader sees the last
    commit and waits for no writer). `close` waits for the queries running on them, then closes them all."""

    def __init__(self, path: Path) -> None:
        self._uri = f"{path.as_uri()}?mode=ro"
        self._idle: list[sqlite3.Connection] = []
        self._lent = 0
        self._closed = False
        self._changed = threading.Condition()

    @contextmanager
    def lend(self) -> Iterator[sqlite3.Connection]:
        with self._changed:
            if self._closed:
                raise sqlite3.ProgrammingError("Cannot operate on a closed database.")
            db = self._idle.pop() if self._idle else None
            self._lent += 1
        try:
            if db is None:
                db = sqlite3.connect(self._uri, uri=True, check_same_thread=False, isolation_level=None)
                db.row_factory = sqlite3.Row
            yield db
        finally:
            with self._changed:
                self._lent -= 1
                if db is not None:
                    self._idle.append(db)
                self._changed.notify_all()

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.wait_for(lambda: self._lent == 0)
            for db in self._idle:
                db.close()
            self._idle.clear()


class Storage:
    """Thread-safe access to the server's SQLite database under `data_dir`."""

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = (data_dir / "roadrunner.sqlite3").resolve()
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)
        self._readers = _Readers(self.path)
        self.version = 0  # bumped after every measurement write commits; the predictor compares it
        self._written: dict[str, int] = {}  # per signature: the version of the last write that measured it

    def close(self) -> None:
        self._readers.close()
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction under the lock: reads inside it see what the writes will change.

        On an error it is rolled back only if it is still open: SQLite rolls a transaction back itself on some errors
        (a full disk), and a ROLLBACK then would raise in place of the real error. A full disk is ResourceExhausted
        (`_disk_full`), not an internal error: the client learns why, and the next write works once there is room."""
        with self._lock, _disk_full():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                # Inside the try: a COMMIT that fails (a full disk) must not leave the transaction open.
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def _write(self, statements: Iterable[tuple[str, tuple]]) -> None:
        with self._transaction() as db:
            for sql, args in statements:
                db.execute(sql, args)

    def _read(self, sql: str, args: tuple = (), plain: bool = False) -> list:
        """One query on a read connection of its own (the writer's lock is not taken). Rows are sqlite3.Row, or
        tuples when `plain`."""
        with self._readers.lend() as db:
            cursor = db.cursor()
            if plain:
                cursor.row_factory = None
            return cursor.execute(sql, args).fetchall()

    # -- nodes -----------------------------------------------------------------------------------------------------

    def upsert_node(self, node_id: str, role: str, device: dict) -> tuple[NodeRecord, bool]:
        """Create or update a node; returns the stored record and whether it was created."""
        now = time.time()
        with self._transaction() as db:
            existing = db.execute("SELECT registered_at FROM nodes WHERE node_id = ?", (node_id,)).fetchone()
            registered_at = existing["registered_at"] if existing else now
            db.execute(
                "INSERT INTO nodes(node_id, role, device, registered_at, updated_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(node_id) DO UPDATE SET role=excluded.role, device=excluded.device, "
                "updated_at=excluded.updated_at",
                (node_id, role, json.dumps(device, sort_keys=True), registered_at, now),
            )
        return NodeRecord(node_id, role, device, registered_at), existing is None

    def get_node(self, node_id: str) -> NodeRecord | None:
        rows = self._read("SELECT * FROM nodes WHERE node_id = ?", (node_id,))
        return _node(rows[0]) if rows else None

    def list_nodes(self) -> list[NodeRecord]:
        return [_node(r) for r in self._read("SELECT * FROM nodes ORDER BY node_id")]

    # -- signatures and measurements ---------------------------------------------------------------------------------

    def add_reports(
        self,
        measurements: list[Measurement],
        features: dict[str, Features],
        slice_ids: dict[str, str],
        runs: list[ModelRun],
        model_slices: dict[str, str] | None = None,
        lost: Iterable[str] = (),
    ) -> None:
        """Store a batch of measurements, their signatures' features and slices, model runs and the slices of whole
        models in one transaction. A signature's (or model's) first slice stays, unless it is in `lost` (the slice
        store no longer holds it): then the reported one replaces it."""
        lost = set(lost)
        model_slices = model_slices or {}
        if not (measurements or features or slice_ids or runs or model_slices):
            return
        with self._transaction() as db:
            for signature in features.keys() | slice_ids.keys():
                slice_id = slice_ids.get(signature, "")
                _store_signature(db, signature, features.get(signature), slice_id, signature in lost)
            for model, slice_id in model_slices.items():
                db.execute(
                    "INSERT INTO model_slices(model, slice_id) VALUES (?, ?) ON CONFLICT(model) DO UPDATE SET "
                    "slice_id = CASE WHEN ? THEN excluded.slice_id ELSE model_slices.slice_id END",
                    (model, slice_id, model in lost),
                )
            db.executemany(
                "INSERT INTO measurements(node_id, signature, latency_ms, p10_ms, p90_ms, cv, samples, energy_mj, "
                "energy_source, source, settings, measured_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        m.node_id,
                        m.signature,
                        m.latency_ms,
                        m.p10_ms,
                        m.p90_ms,
                        m.cv,
                        m.samples,
                        m.energy_mj,
                        m.energy_source,
                        m.source,
                        json.dumps(m.settings, sort_keys=True),
                        m.measured_at or time.time(),
                    )
                    for m in measurements
                ],
            )
            db.executemany(
                "INSERT INTO model_runs(node_id, model, latency_ms, sum_of_blocks_ms, energy_mj, energy_source, "
                "measured_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        r.node_id,
                        r.model,
                        r.latency_ms,
                        r.sum_of_blocks_ms,
                        r.energy_mj,
                        r.energy_source,
                        r.measured_at or time.time(),
                    )
                    for r in runs
                ],
            )
            _prune(db, _PRUNE_MEASUREMENTS, {(m.node_id, m.signature) for m in measurements})
            _prune(db, _PRUNE_RUNS, {(r.node_id, r.model) for r in runs})
        if not (measurements or features):  # whole-model runs and slices: nothing a fit reads
            return
        with self._lock:  # after the commit: a reader that sees this version sees the write
            self.version += 1
            self._written.update((m.signature, self.version) for m in measurements)

    def written_after(self, signatures: Iterable[str], version: int) -> bool:
        """Whether a write after `version` measured one of `signatures` (since this process started)."""
        with self._lock:
            return any(self._written.get(s, 0) > version for s in signatures)

    def signatures(self, only: Iterable[str] | None = None) -> dict[str, Features]:
        """Stored signatures' features: all, or those of `only` that are stored."""
        where: str = ""
        args: tuple[str, ...] = ()
        if only is not None:  # one parameter however many: a JSON array
            where, args = "WHERE signature IN (SELECT value FROM json_each(?))", (json.dumps(list(only)),)
        return {r["signature"]: _features(r) for r in self._read(f"SELECT * FROM signatures {where}", args)}

    def slice_of(self, signature: str) -> str:
        rows = self._read("SELECT slice_id FROM signatures WHERE signature = ?", (signature,))
        return rows[0]["slice_id"] if rows else ""

    def model_slice_of(self, model: str) -> str:
        rows = self._read("SELECT slice_id FROM model_slices WHERE model = ?", (model,))
        return rows[0]["slice_id"] if rows else ""

    def unmeasured_slices(self, node_id: str) -> dict[str, str]:
        """Signatures with a slice that `node_id` has not measured: signature -> slice id."""
        rows = self._read(
            "SELECT signature, slice_id FROM signatures s WHERE slice_id != '' AND NOT EXISTS "
            "(SELECT 1 FROM measurements m WHERE m.node_id = ? AND m.signature = s.signature) ORDER BY signature",
            (node_id,),
        )
        return {r["signature"]: r["slice_id"] for r in rows}

    def forget_other_providers(self, node_id: str, provider: str) -> int:
        """Delete `node_id`'s measurements taken on another execution provider than `provider` (their settings'
        `execution_provider`), and with any of them its whole-model runs, which record no provider (the same server
        timed them on the provider of its blocks); returns how many measurements went. For the server's own row when
        it starts on another provider (its GPU no longer loads, say): served as measured, the old timings hid the
        change until each block was timed again, and for good where its slice is no longer stored."""
        other = "node_id = ? AND COALESCE(json_extract(settings, '$.execution_provider'), '') != ?"
        with self._transaction() as db:  # no DELETE ... RETURNING: that needs SQLite 3.35
            gone = db.execute(f"SELECT signature FROM measurements WHERE {other}", (node_id, provider)).fetchall()
            db.execute(f"DELETE FROM measurements WHERE {other}", (node_id, provider))
            if gone:
                db.execute("DELETE FROM model_runs WHERE node_id = ?", (node_id,))
        if gone:
            with self._lock:  # as after a write: the refit drops them, a query about them waits for it
                self.version += 1
                self._written.update((r["signature"], self.version) for r in gone)
        return len(gone)

    def forget_model_runs(self, node_id: str) -> int:
        """Delete `node_id`'s whole-model runs; returns how many went. For the server's own row when it starts on
        another execution provider than it was registered with: the runs record no provider of their own."""
        with self._transaction() as db:
            return db.execute("DELETE FROM model_runs WHERE node_id = ?", (node_id,)).rowcount

    def untimed_models(self, node_id: str) -> dict[str, str]:
        """Models with a whole-model slice that `node_id` has no run of: model -> slice id."""
        rows = self._read(
            "SELECT model, slice_id FROM model_slices s WHERE NOT EXISTS "
            "(SELECT 1 FROM model_runs r WHERE r.node_id = ? AND r.model = s.model) ORDER BY model",
            (node_id,),
        )
        return {r["model"]: r["slice_id"] for r in rows}

    def latest_measurements(
        self, node_id: str | None = None, signatures: Iterable[str] | None = None
    ) -> list[Measurement]:
        """Latest measurement per (node, signature), for one node or all and of `signatures` or all, with the latest
        energy any of them had."""
        clauses, args = [], []
        if node_id is not None:
            clauses.append("node_id = ?")
            args.append(node_id)
        if signatures is not None:  # one parameter however many: a JSON array
            clauses.append("signature IN (SELECT value FROM json_each(?))")
            args.append(json.dumps(list(signatures)))
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        return [_measurement(r) for r in self._read(_LATEST.format(columns=_RECORD_COLUMNS, where=where), tuple(args))]

    def latest_values(self) -> list[LatestValue]:
        """Every node's latest latency per signature with its latest metered energy, as plain tuples: the refit
        reads all of them, and building full records took longer than the query."""
        return list(map(LatestValue._make, self._read(_LATEST.format(columns=_VALUE_COLUMNS, where=""), plain=True)))

    def measured_signatures(self, node_id: str) -> list[str]:
        rows = self._read(
            "SELECT DISTINCT signature FROM measurements WHERE node_id = ? ORDER BY signature", (node_id,)
        )
        return [r["signature"] for r in rows]

    def measured_by_any(self, signatures: Iterable[str], node_id: str | None = None) -> set[str]:
        """Those of `signatures` that some node (or `node_id`) has reported a measurement of."""
        where, args = ("node_id = ? AND ", (node_id,)) if node_id is not None else ("", ())
        rows = self._read(
            f"SELECT DISTINCT signature FROM measurements WHERE {where}signature IN (SELECT value FROM json_each(?))",
            (*args, json.dumps(list(signatures))),
        )
        return {r["signature"] for r in rows}

    def count_measurements(self) -> int:
        return int(self._read("SELECT COUNT(*) AS n FROM measurements")[0]["n"])

    def e2e_correction(self, node_id: str, model: str = "") -> float:
        """Mean end-to-end / sum-of-blocks latency ratio of a node's runs of `model` (the ratio varies from model to
        model), else of all its model runs; 1.0 when none."""
        base = (
            "SELECT AVG(latency_ms / sum_of_blocks_ms) AS r FROM model_runs WHERE node_id = ? AND sum_of_blocks_ms > 0"
        )
        if model:
            ratio = self._read(base + " AND model = ?", (node_id, model))[0]["r"]
            if ratio is not None:
                return float(ratio)
        ratio = self._read(base, (node_id,))[0]["r"]
        return float(ratio) if ratio is not None else 1.0

    def model_latency(self, node_id: str, model: str) -> float | None:
        """Mean whole-model latency (ms) of a node's runs of `model`; None when it has none."""
        row = self._read(
            "SELECT AVG(latency_ms) AS ms FROM model_runs WHERE node_id = ? AND model = ?", (node_id, model)
        )
        return float(row[0]["ms"]) if row[0]["ms"] is not None else None

    # -- network profiles ------------------------------------------------------------------------------------------

    def put_network_profile(self, node_id: str, profile: dict) -> None:
        self._write(
            [
                (
                    "INSERT INTO network_profiles(node_id, profile, updated_at) VALUES (?, ?, ?) "
                    "ON CONFLICT(node_id) DO UPDATE SET profile=excluded.profile, updated_at=excluded.updated_at",
                    (node_id, json.dumps(profile, sort_keys=True), time.time()),
                )
            ]
        )

    def get_network_profile(self, node_id: str) -> dict | None:
        rows = self._read("SELECT profile FROM network_profiles WHERE node_id = ?", (node_id,))
        return json.loads(rows[0]["profile"]) if rows else None


@contextmanager
def _disk_full() -> Iterator[None]:
    """SQLITE_FULL (the disk or the database's page limit is full) -> ResourceExhausted, as a slice upload on a full
    disk is: nothing was stored, and the client is told why instead of "internal server error"."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_FULL:
            raise
        log.error("database write failed: %s", exc)
        raise ResourceExhausted(
            "the server's disk is full (its database could not be written); nothing was stored: retry once the "
            "server's operator has freed space"
        ) from None


def _prune(db: sqlite3.Connection, sql: str, pairs: set[tuple[str, str]]) -> None:
    """Run a _PRUNE statement for the (node, key) pairs a write touched: one statement per node."""
    keys: dict[str, list[str]] = {}
    for node_id, key in pairs:
        keys.setdefault(node_id, []).append(key)
    for node_id, node_keys in keys.items():
        db.execute(sql, (node_id, json.dumps(node_keys)))


def _store_signature(
    db: sqlite3.Connection, signature: str, f: Features | None, slice_id: str, replace_slice: bool = False
) -> None:
    """A reported signature's features and slice (inside the report's transaction): the first report that gives them
    sets them; later features that differ are kept out (logged), so no reporter rewrites what others measured."""
    row = db.execute("SELECT * FROM signatures WHERE signature = ?", (signature,)).fetchone()
    stored = _features(row) if row is not None else Features()
    if f is not None and not stored.is_empty() and f != stored:
        log.warning("signature %s: a report gave other features than its first one; the first are kept", signature)
    kept = f if stored.is_empty() and f is not None else stored
    db.execute(*_upsert_signature(signature, kept, slice_id, replace_slice and bool(slice_id)))


def _upsert_signature(signature: str, f: Features, slice_id: str, replace: bool = False) -> tuple[str, tuple]:
    """Set the features; the slice only while the signature has none, or with `replace`."""
    return (
        "INSERT INTO signatures(signature, ops, flops, param_bytes, input_bytes, output_bytes, slice_id) "
        "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(signature) DO UPDATE SET ops=excluded.ops, flops=excluded.flops, "
        "param_bytes=excluded.param_bytes, input_bytes=excluded.input_bytes, output_bytes=excluded.output_bytes, "
        "slice_id=CASE WHEN signatures.slice_id = '' OR ? THEN excluded.slice_id ELSE signatures.slice_id END",
        (signature, json.dumps(list(f.ops)), f.flops, f.param_bytes, f.input_bytes, f.output_bytes, slice_id, replace),
    )


def _node(row: sqlite3.Row) -> NodeRecord:
    return NodeRecord(row["node_id"], row["role"], json.loads(row["device"]), row["registered_at"])


def _features(row: sqlite3.Row) -> Features:
    return Features(
        tuple(json.loads(row["ops"])), row["flops"], row["param_bytes"], row["input_bytes"], row["output_bytes"]
    )


def _measurement(row: sqlite3.Row) -> Measurement:
    return Measurement(
        node_id=row["node_id"],
        signature=row["signature"],
        latency_ms=row["latency_ms"],
        p10_ms=row["p10_ms"],
        p90_ms=row["p90_ms"],
        cv=row["cv"],
        samples=row["samples"],
        energy_mj=row["last_energy_mj"],
        energy_source=row["last_energy_source"] if row["last_energy_mj"] is not None else row["energy_source"],
        source=row["source"],
        settings=json.loads(row["settings"]),
        measured_at=row["measured_at"],
    )
