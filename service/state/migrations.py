"""Versioned schema migrations for the state database, applied when the store opens.

In the spirit of ``simonw/sqlite-migrate``: each migration is a plain function of a
``sqlite_utils.Database``, registered in order under an integer version with a decorator::

    MIGRATIONS = Migrations("lifelong")

    @MIGRATIONS(1, "initial schema")
    def _m001(db: Database) -> None:
        db.create_table("models", {...}, pk="id")

The versions applied are recorded in ``_migrations`` (version, name, applied_at as unix
seconds). Each migration runs in its own ``BEGIN IMMEDIATE`` transaction together with its
``_migrations`` row, so a crash (or an exception) in the middle leaves the database at the
previous version, never half-migrated; SQLite's DDL is transactional. Two processes that open
the database at once serialise on that lock and the second finds nothing left to do.

A migration must not commit: use ``db.create_table``, ``db[t].create_index``, ``db.execute``,
never ``db[t].create``/``insert``/``transform``, which wrap themselves in ``with conn:`` and
would commit half a migration (the runner detects that and raises).

A database whose schema is newer than this code raises :class:`~service.errors.MigrationError`
rather than being written by code that does not know its tables.

To change the schema, append a migration with the next version; never edit one that shipped.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlite_utils import Database

from service.errors import MigrationError

__all__ = ["MIGRATIONS", "Migration", "Migrations", "SCHEMA_VERSION"]

logger = logging.getLogger(__name__)

MigrationFn = Callable[[Database], None]


@dataclass(frozen=True)
class Migration:
    """One schema step: ``fn`` turns schema ``version - 1`` into ``version``."""

    version: int
    name: str
    fn: MigrationFn

    def __post_init__(self) -> None:
        if not isinstance(self.version, int) or self.version < 1:
            raise ValueError(f"migration version must be an integer >= 1, got {self.version!r}")
        if not self.name:
            raise ValueError(f"migration {self.version} needs a name")


class Migrations:
    """An ordered set of migrations and the runner that applies them.

    Args:
        name: label used in log lines and error messages.
        table: the bookkeeping table; one per database.
    """

    def __init__(self, name: str, table: str = "_migrations") -> None:
        self.name = name
        self.table = table
        self._migrations: list[Migration] = []

    def __call__(self, version: int, name: str) -> Callable[[MigrationFn], MigrationFn]:
        """Decorator registering ``fn`` as migration ``version`` (must be the next integer)."""

        def register(fn: MigrationFn) -> MigrationFn:
            expected = self.latest + 1
            if version != expected:
                raise ValueError(f"{self.name}: migration {name!r} has version {version}, expected {expected}")
            self._migrations.append(Migration(version, name, fn))
            return fn

        return register

    @property
    def migrations(self) -> tuple[Migration, ...]:
        return tuple(self._migrations)

    @property
    def latest(self) -> int:
        """The schema version this code writes (0 when nothing is registered)."""
        return self._migrations[-1].version if self._migrations else 0

    def _ensure_table(self, db: Database) -> None:
        db.execute(
            f"CREATE TABLE IF NOT EXISTS [{self.table}] "
            "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
        )

    def applied(self, db: Database) -> list[int]:
        """Versions recorded as applied, ascending; empty for a fresh database."""
        if not db[self.table].exists():
            return []
        return [row[0] for row in db.execute(f"SELECT version FROM [{self.table}] ORDER BY version")]

    def version(self, db: Database) -> int:
        """The database's schema version: the highest applied migration, 0 when none."""
        applied = self.applied(db)
        return applied[-1] if applied else 0

    def check_not_newer(self, db: Database) -> None:
        """Raise :class:`MigrationError` if ``db`` was written by a newer schema than this code's."""
        found = self.version(db)
        if found > self.latest:
            raise MigrationError(
                f"{_describe(db)} has schema version {found} but this version of lifelong knows "
                f"versions up to {self.latest}; upgrade lifelong, or move the database aside to start afresh "
                "(it is not modified)"
            )

    def pending(self, db: Database) -> list[Migration]:
        self.check_not_newer(db)
        done = set(self.applied(db))
        return [m for m in self._migrations if m.version not in done]

    def apply(self, db: Database) -> list[int]:
        """Apply every pending migration in order; return the versions applied now.

        ``db.conn`` must be in autocommit mode (``isolation_level=None``) so that the explicit
        transactions here are the only ones.

        Raises:
            MigrationError: the database is newer than this code, or a migration failed (it is
                rolled back and the database stays at the version before it).
        """
        if db.conn.isolation_level is not None:
            raise MigrationError(
                f"{self.name}: the connection must be in autocommit mode (isolation_level=None), "
                f"got {db.conn.isolation_level!r}"
            )
        self.check_not_newer(db)
        done: list[int] = []
        for migration in self._migrations:
            try:
                db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise MigrationError(f"{_describe(db)}: cannot lock the database to migrate: {exc}") from exc
            try:
                self._ensure_table(db)
                # Re-read inside the lock: another process may have migrated meanwhile.
                self.check_not_newer(db)
                if migration.version in self.applied(db):
                    db.execute("COMMIT")
                    continue
                logger.info("%s: applying migration %d (%s)", self.name, migration.version, migration.name)
                migration.fn(db)
                if not db.conn.in_transaction:
                    raise MigrationError(
                        f"migration {migration.version} ({migration.name}) committed on its own, so it is not "
                        "atomic: use db.create_table / db.execute, not sqlite-utils helpers that commit"
                    )
                db.execute(
                    f"INSERT INTO [{self.table}] (version, name, applied_at) VALUES (?, ?, ?)",
                    (migration.version, migration.name, time.time()),
                )
                db.execute("COMMIT")
            except BaseException as exc:
                if db.conn.in_transaction:
                    db.execute("ROLLBACK")
                if isinstance(exc, MigrationError) or not isinstance(exc, Exception):
                    raise
                raise MigrationError(
                    f"{_describe(db)}: migration {migration.version} ({migration.name}) failed and was "
                    f"rolled back: {exc}"
                ) from exc
            done.append(migration.version)
        return done


def _describe(db: Database) -> str:
    row = db.execute("PRAGMA database_list").fetchone()
    return f"database {row[2]!r}" if row and row[2] else "in-memory database"


# --- the lifelong schema ------------------------------------------------------------------

MIGRATIONS = Migrations("lifelong")
"""The state database's migrations. Timestamps are unix seconds (REAL, UTC); JSON as TEXT."""


@MIGRATIONS(1, "initial schema")
def _m001_initial(db: Database) -> None:
    db.create_table(
        "models",
        {
            "id": str,  # sha256[:16] of model.onnx: the registry folder name
            "sha256": str,
            "subnet": str,
            "checkpoint_sha": str,
            "format_version": int,
            "bytes": int,
            "created": float,
            "accuracy": float,
            "latency_p50_ms": float,  # batch 1, measured on this device
            "latency_p95_ms": float,
            "precision_map": str,  # JSON {layer: "int8" | "fp32" | ...}
            "source": str,  # "search 12", "import", ...
            "metadata": str,  # JSON
            "removed": float,  # when prune deleted its folder; NULL while on disk
        },
        pk="id",
        not_null={"sha256", "bytes", "created", "source"},
    )
    db["models"].create_index(["created"])
    db.create_table(
        "deployments",
        {
            "id": int,
            "model_id": str,
            "previous_model_id": str,
            "reason": str,
            "at": float,
            "state": str,  # pending, canary, active, superseded, rolled-back, failed
            "detail": str,
        },
        pk="id",
        not_null={"model_id", "reason", "at", "state"},
        foreign_keys=[("model_id", "models", "id"), ("previous_model_id", "models", "id")],
    )
    db["deployments"].create_index(["state"])
    db["deployments"].create_index(["model_id"])
    db.create_table(
        "searches",
        {
            "id": int,
            "trigger": str,
            "started": float,
            "finished": float,
            "state": str,  # running, done, failed, cancelled, interrupted
            "phase": str,
            "progress": float,
            "front": str,  # JSON
            "result": str,  # JSON
            "error": str,
        },
        pk="id",
        not_null={"trigger", "started", "state"},
    )
    db["searches"].create_index(["state"])
    db.create_table(
        "drift_events",
        {
            "id": int,
            "at": float,
            "detector": str,
            "statistic": float,
            "threshold": float,
            "p_value": float,
            "window": int,
            "decision": int,  # 0/1
            "detail": str,  # JSON
        },
        pk="id",
        not_null={"at", "detector", "decision"},
    )
    db["drift_events"].create_index(["at"])
    db["drift_events"].create_index(["detector", "at"])
    db.create_table(
        "samples",
        {
            "id": int,
            "ref": str,  # file path or blob reference
            "source": str,  # inbox, feedback, request
            "label": int,
            "predicted": int,
            "model_id": str,
            "request_id": str,
            "at": float,
            "labelled_at": float,
        },
        pk="id",
        not_null={"ref", "source", "at"},
    )
    db["samples"].create_index(["request_id"])
    db["samples"].create_index(["at"])
    db.execute("CREATE INDEX idx_samples_labelled ON samples (labelled_at) WHERE label IS NOT NULL")
    db.create_table(
        "metrics",
        {"id": int, "at": float, "name": str, "value": float, "labels": str},
        pk="id",
        not_null={"at", "name", "value"},
    )
    db["metrics"].create_index(["name", "at"])
    db["metrics"].create_index(["at"])
    db.create_table(
        "jobs",
        {
            "id": int,
            "kind": str,
            "state": str,  # pending, running, done, failed, killed, interrupted
            "pid": int,
            "started": float,
            "finished": float,
            "progress": float,
            "message": str,
            "error": str,
        },
        pk="id",
        not_null={"kind", "state", "started"},
    )
    db["jobs"].create_index(["state"])


SCHEMA_VERSION = MIGRATIONS.latest
"""The schema version this code writes."""
