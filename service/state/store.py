"""The service's state database: models, deployments, searches, drift, samples, metrics, jobs.

SQLite through sqlite-utils, in WAL mode so that the API's readers never wait for the
daemon's writer. One :class:`Store` per process holds one writer connection behind a lock
(every write is one ``BEGIN IMMEDIATE`` transaction, so a crash leaves each operation done or
not done); reads take a connection from a small pool and see one consistent snapshot each.
Worker processes may open their own ``Store`` on the same file: SQLite's lock and the busy
timeout serialise them.

Conventions: timestamps are unix seconds (float, UTC) everywhere; JSON columns are decoded
into Python objects in the records; ``get_*`` return ``None`` for an unknown id while
``update_*``/``finish_*`` raise :class:`~service.errors.RecordNotFound`.

``synchronous=FULL`` by default: a gateway loses power, and in WAL mode ``NORMAL`` may lose the
last commits on power loss (never on a process crash). A deployment row lost that way while
the registry's fsynced pointer survived would make the two disagree. FULL costs one fsync
per commit (0.3 ms measured here, a few ms on eMMC), negligible at the daemon's write rate of
tens of commits a minute; :class:`StoreSettings` can choose ``NORMAL`` for busy SD cards.

Deployment states: ``pending`` (intent written, pointer not yet switched), ``canary`` and
``active`` (live: at most one row is live, a new live row supersedes the old), ``superseded``,
``rolled-back``, ``failed``. The rollback target is the newest other model that was live and
not rolled back or failed the last time (:meth:`Store.previous_model`).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Literal

from sqlite_utils import Database

from service.errors import RecordNotFound, StoreError
from service.state.migrations import MIGRATIONS, SCHEMA_VERSION

__all__ = [
    "DEPLOYMENT_STATES",
    "Deployment",
    "DriftEvent",
    "Job",
    "LIVE_STATES",
    "Metric",
    "ModelRecord",
    "Sample",
    "Search",
    "Store",
    "StoreSettings",
]

logger = logging.getLogger(__name__)

DEPLOYMENT_STATES = ("pending", "canary", "active", "superseded", "rolled-back", "failed")
LIVE_STATES = ("canary", "active")
SEARCH_END_STATES = ("done", "failed", "cancelled", "interrupted")
JOB_STATES = ("pending", "running", "done", "failed", "killed", "interrupted")
SAMPLE_SOURCES = ("inbox", "feedback", "request")


class _Unset:
    """Default of update arguments: "leave as is", distinct from ``None`` ("set NULL")."""

    def __repr__(self) -> str:
        return "UNSET"


_UNSET: Any = _Unset()


@dataclass(frozen=True)
class StoreSettings:
    """How the database is opened. ``busy_timeout_s``: how long a write waits for another process."""

    synchronous: Literal["NORMAL", "FULL"] = "FULL"
    busy_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if self.synchronous not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be 'NORMAL' or 'FULL', got {self.synchronous!r}")
        if not self.busy_timeout_s > 0:
            raise ValueError(f"busy_timeout_s must be > 0, got {self.busy_timeout_s!r}")


@dataclass(frozen=True)
class ModelRecord:
    """A model in the registry; ``id`` is ``sha256[:16]`` of its ONNX file."""

    id: str
    sha256: str
    bytes: int
    created: float
    source: str  # "search 12", "import", ...
    subnet: str | None = None
    checkpoint_sha: str | None = None
    format_version: int | None = None
    accuracy: float | None = None
    latency_p50_ms: float | None = None  # batch 1, on this device
    latency_p95_ms: float | None = None
    precision_map: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    removed: float | None = None  # set when prune deleted its folder
    _json: ClassVar = ("precision_map", "metadata")


@dataclass(frozen=True)
class Deployment:
    id: int
    model_id: str
    previous_model_id: str | None
    reason: str
    at: float
    state: str
    detail: str | None
    _json: ClassVar = ()


@dataclass(frozen=True)
class Search:
    id: int
    trigger: str
    started: float
    finished: float | None
    state: str  # running, done, failed, cancelled, interrupted
    phase: str | None
    progress: float
    front: Any
    result: Any
    error: str | None
    _json: ClassVar = ("front", "result")


@dataclass(frozen=True)
class DriftEvent:
    id: int
    at: float
    detector: str
    statistic: float | None
    threshold: float | None
    p_value: float | None
    window: int | None
    decision: bool
    detail: Any
    _json: ClassVar = ("detail",)


@dataclass(frozen=True)
class Sample:
    """A local sample. Build one with ``ref`` and ``source`` to :meth:`Store.add_samples`."""

    ref: str  # file path or blob reference
    source: str  # inbox, feedback, request
    label: int | None = None
    predicted: int | None = None
    model_id: str | None = None
    request_id: str | None = None  # lets feedback label an earlier prediction
    at: float | None = None
    labelled_at: float | None = None
    id: int | None = None
    _json: ClassVar = ()


@dataclass(frozen=True)
class Metric:
    name: str
    value: float
    labels: dict[str, Any] = field(default_factory=dict)
    at: float | None = None
    _json: ClassVar = ("labels",)


@dataclass(frozen=True)
class Job:
    id: int
    kind: str
    state: str
    pid: int | None
    started: float
    finished: float | None
    progress: float | None
    message: str | None
    error: str | None
    _json: ClassVar = ()


def _dumps(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True, separators=(",", ":"))


def _record(cls: type, row: dict[str, Any]) -> Any:
    kw = {f.name: row.get(f.name) for f in fields(cls)}
    for name in cls._json:
        kw[name] = json.loads(kw[name]) if kw[name] is not None else ({} if name in ("labels", "metadata") else None)
    if cls is ModelRecord:
        kw["precision_map"] = kw["precision_map"] or {}
    if cls is DriftEvent:
        kw["decision"] = bool(kw["decision"])
    return cls(**kw)


def _check_progress(progress: float | None) -> None:
    if progress is not None and not 0.0 <= progress <= 1.0:
        raise ValueError(f"progress must be within [0, 1], got {progress!r}")


class Store:
    """The state database. Thread-safe; one per process; close it (or use ``with``).

    Args:
        path: a database file (created with its folder), or ``":memory:"`` for tests.
        settings: durability and lock waiting.

    Raises:
        StoreError: the file is not a usable SQLite database.
        MigrationError: its schema is newer than this code, or a migration failed.
    """

    def __init__(self, path: str | os.PathLike[str], settings: StoreSettings | None = None) -> None:
        self.settings = settings or StoreSettings()
        self.memory = str(path) == ":memory:"
        self.path = str(path) if self.memory else str(Path(path))
        if not self.memory:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._pool: queue.SimpleQueue[Database] = queue.SimpleQueue()
        self._closed = False
        try:
            self._db = self._connect(reader=False)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the state database {self.path!r}: {exc}") from exc
        try:
            if not self.memory:
                self._db.enable_wal()
            self.applied_now = MIGRATIONS.apply(self._db)
        except BaseException as exc:
            self._db.close()
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"cannot open the state database {self.path!r}: {exc}") from exc
            raise
        if self.applied_now:
            logger.info("state database %s migrated to schema version %d", self.path, SCHEMA_VERSION)

    @classmethod
    def open(cls, state_dir: str | os.PathLike[str], settings: StoreSettings | None = None) -> Store:
        """The store of a state directory: ``STATE/state.db``."""
        return cls(Path(state_dir) / "state.db", settings)

    def _connect(self, reader: bool) -> Database:
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=self.settings.busy_timeout_s
        )
        conn.execute(f"PRAGMA busy_timeout = {int(self.settings.busy_timeout_s * 1000)}")
        conn.execute(f"PRAGMA synchronous = {self.settings.synchronous}")
        conn.execute("PRAGMA foreign_keys = ON")
        if reader:
            conn.execute("PRAGMA query_only = ON")
        return Database(conn, execute_plugins=False)

    def close(self) -> None:
        """Close every connection; the WAL is checkpointed by SQLite when the last one closes."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            while True:
                try:
                    self._pool.get_nowait().close()
                except queue.Empty:
                    break
            self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.path!r})"

    # -- plumbing ------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"the store {self.path!r} is closed")

    @contextmanager
    def _tx(self) -> Iterator[Database]:
        """One write transaction, serialised with this process's other writes."""
        with self._lock:
            self._check_open()
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreError(f"cannot lock the state database {self.path!r} for writing: {exc}") from exc
            try:
                yield self._db
            except sqlite3.Error as exc:
                self._db.execute("ROLLBACK")
                raise StoreError(f"write to {self.path!r} failed and was rolled back: {exc}") from exc
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            try:
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:  # disk full, I/O error: leave no transaction open
                if self._db.conn.in_transaction:
                    self._db.execute("ROLLBACK")
                raise StoreError(f"commit to {self.path!r} failed and was rolled back: {exc}") from exc

    @contextmanager
    def _read(self) -> Iterator[Database]:
        """A connection in a read transaction: one snapshot, never blocked by the writer."""
        if self.memory:  # other connections would see another, empty database
            with self._lock:
                self._check_open()
                yield self._db
            return
        self._check_open()
        try:
            db = self._pool.get_nowait()
        except queue.Empty:
            db = self._connect(reader=True)
        try:
            db.execute("BEGIN")
            try:
                yield db
            finally:
                db.execute("COMMIT")
        finally:
            if self._closed:
                db.close()
            else:
                self._pool.put(db)

    def _rows(self, sql: str, params: Iterable[Any] | dict[str, Any] = ()) -> list[dict[str, Any]]:
        with self._read() as db:
            return list(db.query(sql, params))

    def _one(self, cls: type, table: str, row_id: Any, db: Database | None = None) -> Any:
        sql, params = f"SELECT * FROM [{table}] WHERE id = ?", [row_id]
        rows = list(db.query(sql, params)) if db is not None else self._rows(sql, params)
        return _record(cls, rows[0]) if rows else None

    def _update(self, db: Database, table: str, row_id: Any, values: dict[str, Any]) -> None:
        values = {k: v for k, v in values.items() if v is not _UNSET}
        if values:
            sets = ", ".join(f"[{k}] = ?" for k in values)
            found = db.execute(f"UPDATE [{table}] SET {sets} WHERE id = ?", [*values.values(), row_id]).rowcount > 0
        else:
            found = db.execute(f"SELECT 1 FROM [{table}] WHERE id = ?", [row_id]).fetchone() is not None
        if not found:
            raise RecordNotFound(f"no row {row_id!r} in {table}")

    @staticmethod
    def _insert(db: Database, table: str, row: dict[str, Any]) -> int:
        cols = ", ".join(f"[{k}]" for k in row)
        marks = ", ".join("?" for _ in row)
        return db.execute(f"INSERT INTO [{table}] ({cols}) VALUES ({marks})", list(row.values())).lastrowid

    @property
    def schema_version(self) -> int:
        with self._read() as db:
            return MIGRATIONS.version(db)

    # -- models --------------------------------------------------------------------------

    def record_model(self, model: ModelRecord) -> ModelRecord:
        """Insert a model, or refresh one recorded before (the registry adds content once, so
        this is idempotent): of subnet, checkpoint, format and the measured values, those
        given now win and ``None`` keeps the stored one; source, created, precision map and
        metadata stay as first recorded; a model pruned earlier is marked present again."""
        row = asdict(model)
        row["precision_map"], row["metadata"] = _dumps(model.precision_map), _dumps(model.metadata)
        row["removed"] = None
        keep = ("subnet", "checkpoint_sha", "format_version", "accuracy", "latency_p50_ms", "latency_p95_ms")
        sets = ", ".join(f"{k} = COALESCE(excluded.{k}, {k})" for k in keep)
        cols = ", ".join(row)
        with self._tx() as db:
            db.execute(
                f"INSERT INTO models ({cols}) VALUES ({', '.join('?' for _ in row)}) "
                f"ON CONFLICT(id) DO UPDATE SET {sets}, removed = NULL",
                list(row.values()),
            )
            return self._one(ModelRecord, "models", model.id, db)

    def update_model(
        self,
        model_id: str,
        *,
        accuracy: float | None = _UNSET,
        latency_p50_ms: float | None = _UNSET,
        latency_p95_ms: float | None = _UNSET,
        metadata: dict[str, Any] | None = None,
    ) -> ModelRecord:
        """Set measured values of a recorded model; ``metadata`` is merged into the stored one."""
        with self._tx() as db:
            values = {"accuracy": accuracy, "latency_p50_ms": latency_p50_ms, "latency_p95_ms": latency_p95_ms}
            if metadata:
                current = self._one(ModelRecord, "models", model_id, db)
                if current is None:
                    raise RecordNotFound(f"no model {model_id!r} in the store")
                values["metadata"] = _dumps({**current.metadata, **metadata})
            self._update(db, "models", model_id, values)
            return self._one(ModelRecord, "models", model_id, db)

    def get_model(self, model_id: str) -> ModelRecord | None:
        return self._one(ModelRecord, "models", model_id)

    def list_models(self, *, include_removed: bool = False, limit: int | None = None) -> list[ModelRecord]:
        """Models, newest first; pruned ones only with ``include_removed``."""
        where = "" if include_removed else "WHERE removed IS NULL"
        rows = self._rows(
            f"SELECT * FROM models {where} ORDER BY created DESC, id LIMIT ?", [-1 if limit is None else limit]
        )
        return [_record(ModelRecord, r) for r in rows]

    def mark_models_removed(self, model_ids: Iterable[str], at: float | None = None) -> int:
        """Record that these models' folders are gone (pruned); their history stays."""
        at = time.time() if at is None else at
        with self._tx() as db:
            return sum(
                db.execute("UPDATE models SET removed = ? WHERE id = ? AND removed IS NULL", [at, m]).rowcount
                for m in model_ids
            )

    # -- deployments ---------------------------------------------------------------------

    def record_deployment(
        self,
        model_id: str,
        *,
        reason: str,
        state: str = "active",
        previous_model_id: str | None = _UNSET,
        detail: str | None = None,
        at: float | None = None,
    ) -> Deployment:
        """Record a deployment. ``previous_model_id`` defaults to the model live now; a live
        ``state`` (canary, active) supersedes the live row in the same transaction."""
        if state not in DEPLOYMENT_STATES:
            raise ValueError(f"deployment state must be one of {DEPLOYMENT_STATES}, got {state!r}")
        with self._tx() as db:
            if db.execute("SELECT 1 FROM models WHERE id = ?", [model_id]).fetchone() is None:
                raise RecordNotFound(f"cannot deploy model {model_id!r}: it is not recorded; record_model it first")
            if previous_model_id is _UNSET:
                live = self._live(db)
                previous_model_id = live.model_id if live else None
            row = {"model_id": model_id, "previous_model_id": previous_model_id, "reason": reason}
            row |= {"at": time.time() if at is None else at, "state": state, "detail": detail}
            dep_id = self._insert(db, "deployments", row)
            self._supersede(db, dep_id, state)
            return self._one(Deployment, "deployments", dep_id, db)

    def update_deployment(self, deployment_id: int, state: str, detail: str | None = _UNSET) -> Deployment:
        """Move a deployment to ``state`` (e.g. pending -> canary -> active, or -> rolled-back)."""
        if state not in DEPLOYMENT_STATES:
            raise ValueError(f"deployment state must be one of {DEPLOYMENT_STATES}, got {state!r}")
        with self._tx() as db:
            self._update(db, "deployments", deployment_id, {"state": state, "detail": detail})
            self._supersede(db, deployment_id, state)
            return self._one(Deployment, "deployments", deployment_id, db)

    @staticmethod
    def _supersede(db: Database, deployment_id: int, state: str) -> None:
        if state in LIVE_STATES:
            db.execute(
                "UPDATE deployments SET state = 'superseded' WHERE state IN ('canary', 'active') AND id != ?",
                [deployment_id],
            )

    @staticmethod
    def _live(db: Database) -> Deployment | None:
        rows = list(db.query("SELECT * FROM deployments WHERE state IN ('canary', 'active') ORDER BY id DESC LIMIT 1"))
        return _record(Deployment, rows[0]) if rows else None

    def current_deployment(self) -> Deployment | None:
        """The live (canary or active) deployment, ``None`` before the first one."""
        with self._read() as db:
            return self._live(db)

    def previous_model(self) -> str | None:
        """The rollback target: the model other than the live one that was live most recently,
        whose latest deployment was not rolled back or failed, and whose folder was not pruned."""
        with self._read() as db:
            return self._previous_model(db)

    def _previous_model(self, db: Database) -> str | None:
        live = self._live(db)
        row = db.execute(
            "SELECT d.model_id FROM deployments d JOIN models m ON m.id = d.model_id "
            "WHERE d.state IN ('canary', 'active', 'superseded') AND d.model_id != ? AND m.removed IS NULL "
            "AND d.id = (SELECT MAX(id) FROM deployments x WHERE x.model_id = d.model_id AND x.state != 'pending') "
            "ORDER BY d.id DESC LIMIT 1",
            [live.model_id if live else ""],
        ).fetchone()
        return row[0] if row else None

    def deployment_history(self, limit: int = 20) -> list[Deployment]:
        """Deployments, newest first."""
        return [
            _record(Deployment, r) for r in self._rows("SELECT * FROM deployments ORDER BY id DESC LIMIT ?", [limit])
        ]

    def pending_deployments(self) -> list[Deployment]:
        rows = self._rows("SELECT * FROM deployments WHERE state = 'pending' ORDER BY id")
        return [_record(Deployment, r) for r in rows]

    # -- searches ------------------------------------------------------------------------

    def start_search(self, trigger: str, *, phase: str = "starting", at: float | None = None) -> Search:
        """Record a search that starts now (``trigger``: "drift 41", "policy", "manual", ...)."""
        row = {"trigger": trigger, "started": time.time() if at is None else at, "state": "running"}
        with self._tx() as db:
            search_id = self._insert(db, "searches", row | {"phase": phase, "progress": 0.0})
            return self._one(Search, "searches", search_id, db)

    def update_search(
        self, search_id: int, *, phase: str | None = _UNSET, progress: float | None = _UNSET, front: Any = _UNSET
    ) -> None:
        _check_progress(None if progress is _UNSET else progress)
        with self._tx() as db:
            front = front if front is _UNSET else _dumps(front)
            self._update(db, "searches", search_id, {"phase": phase, "progress": progress, "front": front})

    def finish_search(
        self, search_id: int, *, state: str = "done", result: Any = None, error: str | None = None, front: Any = _UNSET
    ) -> Search:
        if state not in SEARCH_END_STATES:
            raise ValueError(f"a finished search's state must be one of {SEARCH_END_STATES}, got {state!r}")
        values = {"state": state, "finished": time.time(), "result": _dumps(result), "error": error}
        values |= {"front": front if front is _UNSET else _dumps(front)}
        if state == "done":
            values["progress"] = 1.0
        with self._tx() as db:
            self._update(db, "searches", search_id, values)
            return self._one(Search, "searches", search_id, db)

    def get_search(self, search_id: int) -> Search | None:
        return self._one(Search, "searches", search_id)

    def recent_searches(self, limit: int = 10, *, state: str | None = None) -> list[Search]:
        """Searches, newest first, optionally only those in ``state`` (e.g. "running")."""
        rows = self._rows(
            "SELECT * FROM searches WHERE (? IS NULL OR state = ?) ORDER BY id DESC LIMIT ?", [state, state, limit]
        )
        return [_record(Search, r) for r in rows]

    # -- drift ---------------------------------------------------------------------------

    def record_drift(
        self,
        detector: str,
        *,
        decision: bool,
        statistic: float | None = None,
        threshold: float | None = None,
        p_value: float | None = None,
        window: int | None = None,
        detail: Any = None,
        at: float | None = None,
    ) -> DriftEvent:
        """Record one detector's verdict (drift or not: both are kept, to show why nothing ran)."""
        row = {"at": time.time() if at is None else at, "detector": detector, "statistic": statistic}
        row |= {"threshold": threshold, "p_value": p_value, "window": window, "decision": int(bool(decision))}
        with self._tx() as db:
            event_id = self._insert(db, "drift_events", row | {"detail": _dumps(detail)})
            return self._one(DriftEvent, "drift_events", event_id, db)

    def recent_drift(
        self, limit: int = 50, *, since: float | None = None, detector: str | None = None, decision: bool | None = None
    ) -> list[DriftEvent]:
        """Drift events, newest first, filtered by time, detector and verdict when given."""
        rows = self._rows(
            "SELECT * FROM drift_events WHERE (:since IS NULL OR at >= :since) "
            "AND (:det IS NULL OR detector = :det) AND (:dec IS NULL OR decision = :dec) "
            "ORDER BY at DESC, id DESC LIMIT :limit",
            {"since": since, "det": detector, "dec": None if decision is None else int(decision), "limit": limit},
        )
        return [_record(DriftEvent, r) for r in rows]

    # -- samples -------------------------------------------------------------------------

    def add_samples(self, samples: Iterable[Sample]) -> list[int]:
        """Insert samples in one transaction; returns their ids. ``at`` defaults to now, and a
        sample that arrives with a label counts as labelled at its ``at``."""
        now = time.time()
        ids = []
        with self._tx() as db:
            for s in samples:
                if s.source not in SAMPLE_SOURCES:
                    raise ValueError(f"sample source must be one of {SAMPLE_SOURCES}, got {s.source!r} for {s.ref!r}")
                row = asdict(s)
                del row["id"]
                row["at"] = now if s.at is None else s.at
                if s.label is not None and s.labelled_at is None:
                    row["labelled_at"] = row["at"]
                ids.append(self._insert(db, "samples", row))
        return ids

    def label_sample(self, request_id: str, label: int, at: float | None = None) -> int:
        """Attach a feedback label to the samples of an earlier request; returns how many
        rows were labelled (0: unknown request id, e.g. already pruned)."""
        with self._tx() as db:
            return db.execute(
                "UPDATE samples SET label = ?, labelled_at = ? WHERE request_id = ?",
                [int(label), time.time() if at is None else at, request_id],
            ).rowcount

    def labelled_samples(
        self, n: int, *, source: str | None = None, model_id: str | None = None, since: float | None = None
    ) -> list[Sample]:
        """The ``n`` most recently labelled samples (labelled at or after ``since``), newest first."""
        rows = self._rows(
            "SELECT * FROM samples WHERE label IS NOT NULL AND (:src IS NULL OR source = :src) "
            "AND (:m IS NULL OR model_id = :m) AND (:since IS NULL OR labelled_at >= :since) "
            "ORDER BY labelled_at DESC, id DESC LIMIT :n",
            {"src": source, "m": model_id, "n": n, "since": since},
        )
        return [_record(Sample, r) for r in rows]

    def recent_samples(self, n: int, *, source: str | None = None) -> list[Sample]:
        """The ``n`` newest samples, labelled or not, newest first (a drift window)."""
        rows = self._rows(
            "SELECT * FROM samples WHERE (:src IS NULL OR source = :src) ORDER BY at DESC, id DESC LIMIT :n",
            {"src": source, "n": n},
        )
        return [_record(Sample, r) for r in rows]

    def count_labelled(self, since: float | None = None) -> int:
        """How many samples were labelled at or after ``since`` (all labelled ones without it)."""
        rows = self._rows(
            "SELECT COUNT(*) AS n FROM samples WHERE label IS NOT NULL AND (:since IS NULL OR labelled_at >= :since)",
            {"since": since},
        )
        return int(rows[0]["n"])

    def sample_counts(self) -> dict[str, Any]:
        """``{"total", "labelled", "by_source": {source: {"total", "labelled"}}}``."""
        with self._read() as db:
            return self._sample_counts(db)

    @staticmethod
    def _sample_counts(db: Database) -> dict[str, Any]:
        rows = db.query("SELECT source, COUNT(*) AS n, COUNT(label) AS labelled FROM samples GROUP BY source")
        by_source = {r["source"]: {"total": r["n"], "labelled": r["labelled"]} for r in rows}
        total = sum(v["total"] for v in by_source.values())
        return {"total": total, "labelled": sum(v["labelled"] for v in by_source.values()), "by_source": by_source}

    # -- metrics -------------------------------------------------------------------------

    def record_metric(
        self, name: str, value: float, labels: dict[str, Any] | None = None, at: float | None = None
    ) -> None:
        self.record_metrics([Metric(name, value, labels or {}, at)])

    def record_metrics(self, metrics: Iterable[Metric]) -> int:
        """Insert a batch of metrics in one transaction (one fsync, not one per value)."""
        now = time.time()
        rows = [(now if m.at is None else m.at, m.name, float(m.value), _dumps(m.labels or {})) for m in metrics]
        with self._tx() as db:
            db.conn.executemany("INSERT INTO metrics (at, name, value, labels) VALUES (?, ?, ?, ?)", rows)
        return len(rows)

    def recent_metrics(self, name: str, *, since: float | None = None, limit: int = 1000) -> list[Metric]:
        """The newest ``limit`` values of ``name`` (since ``since``), oldest first."""
        rows = self._rows(
            "SELECT * FROM (SELECT * FROM metrics WHERE name = :name AND (:since IS NULL OR at >= :since) "
            "ORDER BY at DESC, id DESC LIMIT :limit) ORDER BY at, id",
            {"name": name, "since": since, "limit": limit},
        )
        return [_record(Metric, r) for r in rows]

    def delete_older_than(self, before: float, tables: Iterable[str] = ("metrics",)) -> dict[str, int]:
        """Retention: delete rows of ``metrics``, ``samples`` or ``drift_events`` older than ``before``."""
        allowed = {"metrics", "samples", "drift_events"}
        with self._tx() as db:
            out = {}
            for table in tables:
                if table not in allowed:
                    raise ValueError(f"retention applies to {sorted(allowed)}, got {table!r}")
                out[table] = db.execute(f"DELETE FROM [{table}] WHERE at < ?", [before]).rowcount
            return out

    # -- jobs ----------------------------------------------------------------------------

    def start_job(
        self, kind: str, *, pid: int | None = None, message: str | None = None, state: str = "running"
    ) -> Job:
        """Record a worker job (``kind``: "adapt", "export", "profile", ...)."""
        if state not in ("pending", "running"):
            raise ValueError(f"a job starts 'pending' or 'running', got {state!r}")
        row = {"kind": kind, "state": state, "pid": pid, "started": time.time(), "progress": 0.0, "message": message}
        with self._tx() as db:
            return self._one(Job, "jobs", self._insert(db, "jobs", row), db)

    def update_job(
        self,
        job_id: int,
        *,
        state: str | None = _UNSET,
        pid: int | None = _UNSET,
        progress: float | None = _UNSET,
        message: str | None = _UNSET,
    ) -> None:
        if state is not _UNSET and state not in JOB_STATES:
            raise ValueError(f"job state must be one of {JOB_STATES}, got {state!r}")
        _check_progress(None if progress is _UNSET else progress)
        with self._tx() as db:
            self._update(db, "jobs", job_id, {"state": state, "pid": pid, "progress": progress, "message": message})

    def finish_job(
        self, job_id: int, *, state: str = "done", error: str | None = None, message: str | None = _UNSET
    ) -> Job:
        if state not in ("done", "failed", "killed", "interrupted"):
            raise ValueError(f"a finished job's state must be done, failed, killed or interrupted, got {state!r}")
        values = {"state": state, "finished": time.time(), "error": error, "message": message}
        if state == "done":
            values["progress"] = 1.0
        with self._tx() as db:
            self._update(db, "jobs", job_id, values)
            return self._one(Job, "jobs", job_id, db)

    def get_job(self, job_id: int) -> Job | None:
        return self._one(Job, "jobs", job_id)

    def recent_jobs(self, limit: int = 20, *, active: bool = False) -> list[Job]:
        """Jobs newest first; ``active``: only pending or running ones."""
        where = "WHERE state IN ('pending', 'running')" if active else ""
        return [_record(Job, r) for r in self._rows(f"SELECT * FROM jobs {where} ORDER BY id DESC LIMIT ?", [limit])]

    def recover_after_restart(self, reason: str = "the daemon restarted") -> dict[str, int]:
        """Mark searches and jobs left running by a previous daemon as ``interrupted``.

        Call once at daemon start, before starting new work; pending deployments are
        resolved by :meth:`service.state.registry.Registry.reconcile`, which also needs the disk.
        """
        now = time.time()
        with self._tx() as db:
            searches = db.execute(
                "UPDATE searches SET state = 'interrupted', finished = ?, error = ? WHERE state = 'running'",
                [now, reason],
            ).rowcount
            jobs = db.execute(
                "UPDATE jobs SET state = 'interrupted', finished = ?, error = ? WHERE state IN ('pending', 'running')",
                [now, reason],
            ).rowcount
        if searches or jobs:
            logger.warning("marked %d searches and %d jobs interrupted: %s", searches, jobs, reason)
        return {"searches": searches, "jobs": jobs}

    # -- status --------------------------------------------------------------------------

    def status_summary(self, *, now: float | None = None) -> dict[str, Any]:
        """Everything ``lifelong status`` shows, as JSON-ready data, from one snapshot."""
        now = time.time() if now is None else now
        with self._read() as db:
            live = self._live(db)
            model = self._one(ModelRecord, "models", live.model_id, db) if live else None
            search = list(db.query("SELECT * FROM searches ORDER BY id DESC LIMIT 1"))
            jobs = [_record(Job, r) for r in db.query("SELECT * FROM jobs WHERE state IN ('pending', 'running')")]
            drift = list(db.query("SELECT * FROM drift_events WHERE at >= ? ORDER BY at DESC", [now - 86400]))
            counts = {t: db.execute(f"SELECT COUNT(*) FROM [{t}]").fetchone()[0] for t in ("searches", "deployments")}
            counts["models"] = db.execute("SELECT COUNT(*) FROM models WHERE removed IS NULL").fetchone()[0]
            history = [_record(Deployment, r) for r in db.query("SELECT * FROM deployments ORDER BY id DESC LIMIT 5")]
            rollback, samples = self._previous_model(db), self._sample_counts(db)
        return {
            "schema_version": SCHEMA_VERSION,
            "database": self.path,
            "at": now,
            "deployment": asdict(live) if live else None,
            "model": asdict(model) if model else None,
            "rollback_target": rollback,
            "last_search": asdict(_record(Search, search[0])) if search else None,
            "active_jobs": [asdict(j) for j in jobs],
            "drift_24h": {
                "events": len(drift),
                "detections": sum(1 for r in drift if r["decision"]),
                "last": asdict(_record(DriftEvent, drift[0])) if drift else None,
            },
            "samples": samples,
            "counts": counts,
            "recent_deployments": [asdict(d) for d in history],
        }


def registered_subnets(state_dir: str | os.PathLike[str]) -> dict[str, list[str]]:
    """Subnet -> ids of the models registered for it (not pruned), newest first, read from ``STATE/state.db``
    without writing (for commands run beside a live daemon, maybe as another user); ``{}``
    when there is no store or it cannot be read."""
    path = Path(state_dir) / "state.db"
    if not path.is_file():
        return {}
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=2.0)
        try:
            rows = conn.execute("SELECT id, subnet FROM models WHERE removed IS NULL ORDER BY created DESC").fetchall()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        logger.debug("cannot read the models of %s: %s", path, exc)
        return {}
    out: dict[str, list[str]] = {}
    for model_id, subnet in rows:
        if subnet:
            out.setdefault(str(subnet), []).append(str(model_id))
    return out
