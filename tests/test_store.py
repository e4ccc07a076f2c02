"""The state database: migrations, records, WAL concurrency, the status summary."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlite_utils import Database

import service.state.store as store_module
from service.errors import MigrationError, RecordNotFound, StoreError
from service.state.migrations import MIGRATIONS, SCHEMA_VERSION, Migrations
from service.state.store import Metric, ModelRecord, Sample, Store, StoreSettings

TABLES = {"models", "deployments", "searches", "drift_events", "samples", "metrics", "jobs", "_migrations"}


def model(i: int, **kw: object) -> ModelRecord:
    return ModelRecord(id=f"{i:016x}", sha256=f"{i:064x}", bytes=1000 + i, created=1000.0 + i, source="import", **kw)


@pytest.fixture(params=["memory", "file"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    s = Store(":memory:" if request.param == "memory" else tmp_path / "state.db")
    yield s
    s.close()


# -- migrations ------------------------------------------------------------------------------


def test_all_is_the_public_api() -> None:
    assert sorted(store_module.__all__) == store_module.__all__
    assert all(hasattr(store_module, n) for n in store_module.__all__)


def test_migrations_apply_in_memory_and_on_a_file(tmp_path: Path) -> None:
    with Store(":memory:") as mem:
        assert mem.applied_now == list(range(1, SCHEMA_VERSION + 1))
        assert mem.schema_version == SCHEMA_VERSION
        assert set(mem._db.table_names()) == TABLES

    path = tmp_path / "sub" / "state.db"
    with Store(path) as first:
        assert first.applied_now == [1]
        assert first._db.journal_mode == "wal"
        assert first._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert first._db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    with Store(path, StoreSettings(synchronous="NORMAL")) as again:
        assert again.applied_now == []
        assert again._db.execute("PRAGMA synchronous").fetchone()[0] == 1
        rows = list(again._db.query("SELECT version, name FROM _migrations"))
        assert rows == [{"version": 1, "name": "initial schema"}]


def test_a_newer_schema_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    Store(path).close()
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO _migrations VALUES (99, 'from the future', 0)")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(MigrationError, match=r"schema version 99 .* knows versions up to 1; upgrade lifelong"):
        Store(path)
    assert path.read_bytes() == before


def test_a_failing_migration_is_rolled_back_and_names_itself() -> None:
    migrations = Migrations("test")

    @migrations(1, "create a")
    def _one(db: Database) -> None:
        db.create_table("a", {"x": int})

    @migrations(2, "half done")
    def _two(db: Database) -> None:
        db.create_table("b", {"y": int})
        raise RuntimeError("disk on fire")

    db = Database(sqlite3.connect(":memory:", isolation_level=None))
    with pytest.raises(MigrationError, match=r"migration 2 \(half done\) failed and was rolled back: disk on fire"):
        migrations.apply(db)
    assert migrations.version(db) == 1
    assert db["a"].exists() and not db["b"].exists()


def test_migrations_must_be_registered_in_order() -> None:
    migrations = Migrations("test")
    with pytest.raises(ValueError, match="has version 2, expected 1"):
        migrations(2, "skips one")(lambda db: None)
    assert MIGRATIONS.latest == SCHEMA_VERSION == len(MIGRATIONS.migrations)


def test_migrate_refuses_a_connection_with_implicit_transactions() -> None:
    with pytest.raises(MigrationError, match="autocommit"):
        MIGRATIONS.apply(Database(sqlite3.connect(":memory:")))


def test_two_processes_opening_a_fresh_file_at_once(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    code = f"from service.state.store import Store; s = Store({str(path)!r}); print(s.applied_now); s.close()"
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(outs) == ["[1]", "[]", "[]"]


def test_garbage_file_and_closed_store(tmp_path: Path) -> None:
    bad = tmp_path / "state.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="cannot open the state database"):
        Store(bad)
    s = Store(":memory:")
    s.close()
    with pytest.raises(StoreError, match="is closed"):
        s.list_models()
    with pytest.raises(ValueError, match="synchronous"):
        StoreSettings(synchronous="OFF")  # type: ignore[arg-type]


# -- records ---------------------------------------------------------------------------------


def test_models_round_trip_and_upsert(store: Store) -> None:
    m = model(1, subnet="s16w8a8", precision_map={"stem": "int8"}, metadata={"k": 1}, latency_p50_ms=2.0)
    assert store.record_model(m) == m
    assert store.get_model(m.id) == m
    assert store.get_model("nope") is None
    again = store.record_model(model(1, accuracy=0.9))  # re-adding keeps what was known, adds the new
    assert (again.accuracy, again.latency_p50_ms, again.subnet) == (0.9, 2.0, "s16w8a8")
    updated = store.update_model(m.id, latency_p95_ms=3.5, metadata={"j": 2})
    assert updated.latency_p95_ms == 3.5 and updated.metadata == {"k": 1, "j": 2}
    with pytest.raises(RecordNotFound, match="no row 'x' in models"):
        store.update_model("x", accuracy=1.0)
    store.record_model(model(2))
    assert [r.id for r in store.list_models()] == [model(2).id, m.id]
    assert store.mark_models_removed([m.id]) == 1
    assert [r.id for r in store.list_models()] == [model(2).id]
    assert len(store.list_models(include_removed=True)) == 2
    assert store.record_model(model(1)).removed is None  # added again: present again


def test_deployments_supersede_and_rollback_target(store: Store) -> None:
    a, b, c = (store.record_model(model(i)).id for i in (1, 2, 3))
    with pytest.raises(RecordNotFound, match="not recorded"):
        store.record_deployment("ffff", reason="x")
    assert store.current_deployment() is None and store.previous_model() is None
    store.record_deployment(a, reason="first")
    d_b = store.record_deployment(b, reason="search 1", state="canary")
    assert d_b.previous_model_id == a
    assert store.current_deployment().id == d_b.id
    assert [d.state for d in store.deployment_history()] == ["canary", "superseded"]
    assert store.previous_model() == a
    store.update_deployment(d_b.id, "active")
    d_c = store.record_deployment(c, reason="search 2", state="canary")
    assert store.previous_model() == b
    store.update_deployment(d_c.id, "rolled-back", "p95 latency 2x worse")
    assert store.current_deployment() is None  # until the rollback deployment is recorded
    store.record_deployment(b, reason="rollback", state="active")
    assert store.current_deployment().model_id == b
    assert store.previous_model() == a  # c was rolled back: never a rollback target
    store.record_deployment(c, reason="manual")  # c serves well for a while ...
    store.record_deployment(a, reason="manual")
    assert store.previous_model() == c
    d_c2 = store.record_deployment(c, reason="search 3", state="canary")  # ... then is rolled back
    store.update_deployment(d_c2.id, "rolled-back")
    store.record_deployment(a, reason="rollback")
    assert store.previous_model() == b  # c was good once, but its last deployment was rolled back
    store.mark_models_removed([b])
    assert store.previous_model() is None  # a pruned model cannot be rolled back to
    assert sum(d.state in ("canary", "active") for d in store.deployment_history(100)) == 1
    with pytest.raises(ValueError, match="deployment state must be one of"):
        store.update_deployment(d_c.id, "great")


def test_search_lifecycle(store: Store) -> None:
    s = store.start_search("drift 4", at=10.0)
    assert (s.state, s.progress, s.phase, s.finished) == ("running", 0.0, "starting", None)
    store.update_search(s.id, phase="evolve", progress=0.5, front=[{"acc": 0.9, "ms": 1.2}])
    with pytest.raises(ValueError, match=r"progress must be within \[0, 1\], got 1.5"):
        store.update_search(s.id, progress=1.5)
    with pytest.raises(RecordNotFound):
        store.update_search(999, phase="x")
    done = store.finish_search(s.id, result={"model": "abc"})
    assert (done.state, done.progress, done.front, done.result) == (
        "done",
        1.0,
        [{"acc": 0.9, "ms": 1.2}],
        {"model": "abc"},
    )
    failed = store.finish_search(store.start_search("policy").id, state="failed", error="boom")
    assert failed.error == "boom"
    assert [x.id for x in store.recent_searches()] == [failed.id, s.id]
    assert store.recent_searches(state="running") == []


def test_drift_events(store: Store) -> None:
    store.record_drift("mmd", decision=False, statistic=0.01, threshold=0.05, p_value=0.4, window=256, at=1.0)
    e = store.record_drift("mmd", decision=True, statistic=0.2, threshold=0.05, p_value=0.001, window=256, at=2.0,
                           detail={"classes": [3, 4]})  # fmt: skip
    store.record_drift("accuracy", decision=True, statistic=0.8, at=3.0)
    assert e.decision is True and e.detail == {"classes": [3, 4]}
    assert [x.at for x in store.recent_drift()] == [3.0, 2.0, 1.0]
    assert [x.at for x in store.recent_drift(detector="mmd", decision=True)] == [2.0]
    assert [x.at for x in store.recent_drift(since=2.0, limit=1)] == [3.0]


def test_samples_and_feedback_labels(store: Store) -> None:
    ids = store.add_samples(
        [
            Sample("inbox/3/a.png", "inbox", label=3, at=1.0),
            Sample("blob:r1", "request", predicted=5, model_id="m", request_id="r1", at=2.0),
            Sample("blob:r2", "request", predicted=1, model_id="m", request_id="r2", at=3.0),
        ]
    )
    assert len(ids) == 3
    assert store.sample_counts() == {
        "total": 3,
        "labelled": 1,
        "by_source": {"inbox": {"total": 1, "labelled": 1}, "request": {"total": 2, "labelled": 0}},
    }
    assert store.label_sample("r1", 7, at=10.0) == 1
    assert store.label_sample("unknown", 7) == 0
    labelled = store.labelled_samples(10)
    assert [(s.ref, s.label, s.predicted) for s in labelled] == [("blob:r1", 7, 5), ("inbox/3/a.png", 3, None)]
    assert [s.ref for s in store.labelled_samples(10, source="inbox")] == ["inbox/3/a.png"]
    assert [s.ref for s in store.recent_samples(2)] == ["blob:r2", "blob:r1"]
    with pytest.raises(ValueError, match="sample source must be one of"):
        store.add_samples([Sample("x", "email")])
    assert store.sample_counts()["total"] == 3  # the bad batch was rolled back entirely


def test_metrics_batches_and_retention(store: Store) -> None:
    store.record_metrics(Metric("latency_ms", float(i), {"model": "a"}, at=float(i)) for i in range(10))
    store.record_metric("requests", 1.0, at=5.0)
    last = store.recent_metrics("latency_ms", limit=3)
    assert [m.value for m in last] == [7.0, 8.0, 9.0] and last[0].labels == {"model": "a"}
    assert len(store.recent_metrics("latency_ms", since=5.0)) == 5
    assert store.delete_older_than(5.0, ["metrics"]) == {"metrics": 5}
    assert len(store.recent_metrics("latency_ms")) == 5
    with pytest.raises(ValueError, match="retention applies to"):
        store.delete_older_than(5.0, ["models"])


def test_jobs_and_recovery_after_restart(store: Store) -> None:
    j = store.start_job("adapt", pid=1234, message="bn recalibration")
    store.update_job(j.id, progress=0.3, message="fine-tuning")
    assert store.get_job(j.id).progress == 0.3
    assert store.finish_job(j.id).state == "done"
    running = store.start_job("export")
    search = store.start_search("manual")
    assert store.recover_after_restart() == {"searches": 1, "jobs": 1}
    assert store.get_job(running.id).state == "interrupted"
    assert store.get_search(search.id).error == "the daemon restarted"
    assert store.recent_jobs(active=True) == []
    with pytest.raises(ValueError, match="job state must be one of"):
        store.update_job(j.id, state="sleeping")


def test_status_summary_is_json_ready(store: Store) -> None:
    assert store.status_summary()["deployment"] is None
    a = store.record_model(model(1, subnet="s16w8a8")).id
    store.record_deployment(a, reason="first")
    store.record_drift("mmd", decision=True, statistic=0.3)
    store.start_search("drift 1")
    store.add_samples([Sample("x", "inbox", label=1)])
    status = json.loads(json.dumps(store.status_summary()))
    assert status["model"]["subnet"] == "s16w8a8" and status["deployment"]["state"] == "active"
    assert status["drift_24h"]["detections"] == 1 and status["last_search"]["state"] == "running"
    assert status["samples"]["labelled"] == 1 and status["counts"]["models"] == 1
    assert status["schema_version"] == SCHEMA_VERSION and status["rollback_target"] is None


# -- concurrency (WAL) -----------------------------------------------------------------------


def test_reads_do_not_wait_for_an_open_write_transaction(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with Store(path) as s:
        s.record_metric("x", 1.0)
        other = sqlite3.connect(path, isolation_level=None)  # another process's writer, say
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO metrics (at, name, value, labels) VALUES (?, 'x', 2, '{}')", [time.time() + 1])
        t0 = time.perf_counter()
        assert [m.value for m in s.recent_metrics("x")] == [1.0]  # the committed snapshot only
        assert time.perf_counter() - t0 < 1.0
        other.execute("COMMIT")
        other.close()
        assert [m.value for m in s.recent_metrics("x")] == [1.0, 2.0]


def test_concurrent_readers_while_writing(tmp_path: Path) -> None:
    with Store(tmp_path / "state.db", StoreSettings(synchronous="NORMAL")) as s:
        errors: list[BaseException] = []
        stop = threading.Event()
        seen: list[list[int]] = [[] for _ in range(3)]

        def read(k: int) -> None:
            try:
                while not stop.is_set():
                    counts = s.sample_counts()
                    status = s.status_summary()
                    # every batch is one transaction: a reader sees all of it or none
                    assert counts["total"] % 5 == 0 and status["samples"]["total"] % 5 == 0
                    seen[k] += [counts["total"], status["samples"]["total"]]
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        readers = [threading.Thread(target=read, args=(k,)) for k in range(3)]
        for t in readers:
            t.start()
        for i in range(100):
            s.add_samples([Sample(f"r{i}-{j}", "request", request_id=f"r{i}") for j in range(5)])
        stop.set()
        for t in readers:
            t.join(10)
        assert not errors, errors
        for counts in seen:
            assert counts and counts == sorted(counts), "a reader saw the count go backwards"
        assert s.sample_counts()["total"] == 500


def test_a_worker_process_writes_while_the_daemon_reads(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    Store(path).close()
    code = (
        f"from service.state.store import Store; s = Store({str(path)!r})\n"
        "j = s.start_job('adapt')\n"
        "for i in range(50): s.update_job(j.id, progress=i / 50)\n"
        "s.finish_job(j.id)\n"
    )
    with Store(path) as s:
        worker = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
        progress = []
        while worker.poll() is None:
            progress += [j.progress for j in s.recent_jobs()]
        assert worker.returncode == 0, worker.stderr.read()
        assert progress == sorted(progress)
        assert s.recent_jobs()[0].state == "done"
