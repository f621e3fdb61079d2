"""Durable state in SQLite (WAL, synchronous=FULL): nodes, signatures with features, measurements, network profiles.

Every write commits before it returns, so a caller that acknowledges after a write survives `kill -9`.
Measurements are appended (history kept); readers see the latest one per (node, signature).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from rr_server.records import Features, Measurement, ModelRun, NodeRecord

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
CREATE TABLE IF NOT EXISTS network_profiles (
    node_id TEXT PRIMARY KEY REFERENCES nodes(node_id),
    profile TEXT NOT NULL,
    updated_at REAL NOT NULL
);
"""

_LATEST = """
SELECT m.* FROM measurements m
JOIN (SELECT MAX(id) AS id FROM measurements {where} GROUP BY node_id, signature) last ON m.id = last.id
ORDER BY m.node_id, m.signature
"""


class Storage:
    """Thread-safe access to the server's SQLite database under `data_dir`."""

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / "roadrunner.sqlite3"
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)
        self.version = 0  # bumped on every measurement write; the predictor compares it

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _write(self, statements: Iterable[tuple[str, tuple]]) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for sql, args in statements:
                    self._db.execute(sql, args)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _read(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # -- nodes -----------------------------------------------------------------------------------------------------

    def upsert_node(self, node_id: str, role: str, device: dict) -> tuple[NodeRecord, bool]:
        """Create or update a node; returns the stored record and whether it was created."""
        now = time.time()
        existing = self.get_node(node_id)
        registered_at = existing.registered_at if existing else now
        self._write(
            [
                (
                    "INSERT INTO nodes(node_id, role, device, registered_at, updated_at) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT(node_id) DO UPDATE SET role=excluded.role, device=excluded.device, "
                    "updated_at=excluded.updated_at",
                    (node_id, role, json.dumps(device, sort_keys=True), registered_at, now),
                )
            ]
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
    ) -> None:
        """Store a batch of measurements, their signatures' features and model runs in one transaction."""
        statements: list[tuple[str, tuple]] = []
        for signature, f in features.items():
            statements.append(_upsert_signature(signature, f, slice_ids.get(signature, "")))
        for signature, slice_id in slice_ids.items():
            if signature not in features:
                statements.append(("UPDATE signatures SET slice_id = ? WHERE signature = ?", (slice_id, signature)))
        for m in measurements:
            statements.append(
                (
                    "INSERT INTO measurements(node_id, signature, latency_ms, p10_ms, p90_ms, cv, samples, energy_mj, "
                    "energy_source, source, settings, measured_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                    ),
                )
            )
        for r in runs:
            statements.append(
                (
                    "INSERT INTO model_runs(node_id, model, latency_ms, sum_of_blocks_ms, energy_mj, energy_source, "
                    "measured_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        r.node_id,
                        r.model,
                        r.latency_ms,
                        r.sum_of_blocks_ms,
                        r.energy_mj,
                        r.energy_source,
                        r.measured_at or time.time(),
                    ),
                )
            )
        if statements:
            self._write(statements)
            self.version += 1

    def upsert_features(self, features: dict[str, Features]) -> None:
        """Remember features of signatures (e.g. sent along with a prediction query) without measurements."""
        known = self.signatures()
        new = {s: f for s, f in features.items() if s not in known or known[s].is_empty()}
        if new:
            self._write([_upsert_signature(s, f, "") for s, f in new.items()])

    def signatures(self) -> dict[str, Features]:
        return {r["signature"]: _features(r) for r in self._read("SELECT * FROM signatures")}

    def slice_of(self, signature: str) -> str:
        rows = self._read("SELECT slice_id FROM signatures WHERE signature = ?", (signature,))
        return rows[0]["slice_id"] if rows else ""

    def latest_measurements(self, node_id: str | None = None) -> list[Measurement]:
        """Latest measurement per (node, signature), for one node or all."""
        if node_id is None:
            rows = self._read(_LATEST.format(where=""))
        else:
            rows = self._read(_LATEST.format(where="WHERE node_id = ?"), (node_id,))
        return [_measurement(r) for r in rows]

    def measured_signatures(self, node_id: str) -> list[str]:
        rows = self._read(
            "SELECT DISTINCT signature FROM measurements WHERE node_id = ? ORDER BY signature", (node_id,)
        )
        return [r["signature"] for r in rows]

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


def _upsert_signature(signature: str, f: Features, slice_id: str) -> tuple[str, tuple]:
    return (
        "INSERT INTO signatures(signature, ops, flops, param_bytes, input_bytes, output_bytes, slice_id) "
        "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(signature) DO UPDATE SET ops=excluded.ops, flops=excluded.flops, "
        "param_bytes=excluded.param_bytes, input_bytes=excluded.input_bytes, output_bytes=excluded.output_bytes, "
        "slice_id=CASE WHEN excluded.slice_id != '' THEN excluded.slice_id ELSE signatures.slice_id END",
        (signature, json.dumps(list(f.ops)), f.flops, f.param_bytes, f.input_bytes, f.output_bytes, slice_id),
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
        energy_mj=row["energy_mj"],
        energy_source=row["energy_source"],
        source=row["source"],
        settings=json.loads(row["settings"]),
        measured_at=row["measured_at"],
    )
