"""Inbox and policy watchers on real folders, with inotify and with polling."""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from watchdog.observers.inotify import InotifyEmitter

from service.daemon.watch import InboxFile, InboxWatcher, PolicyChanged, PolicyWatcher, WatchSettings
from service.errors import SettingsError, WatchError

SETTLE_MS = 120
MODES = {
    "inotify": WatchSettings(settle_ms=SETTLE_MS),
    "polling": WatchSettings(settle_ms=SETTLE_MS, force_polling=True, poll_interval_s=0.05),
}


def _collect(q: queue.Queue[object], seconds: float) -> list[object]:
    """Everything that arrives on ``q`` within ``seconds``."""
    out: list[object] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            out.append(q.get(timeout=left))
        except queue.Empty:
            break
    return out


def _wait_for(q: queue.Queue[object], n: int, timeout: float = 5.0) -> list[object]:
    out = [q.get(timeout=timeout) for _ in range(n)]
    return out + _collect(q, 2 * SETTLE_MS / 1000)  # and nothing more shows up


@pytest.fixture(params=sorted(MODES))
def settings(request: pytest.FixtureRequest) -> WatchSettings:
    return MODES[request.param]


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    path = tmp_path / "inbox"
    path.mkdir()
    return path


@pytest.fixture
def watcher(inbox: Path, settings: WatchSettings) -> Iterator[tuple[InboxWatcher, queue.Queue[object]]]:
    q: queue.Queue[object] = queue.Queue()
    w = InboxWatcher(inbox, q, settings)
    yield w, q
    w.stop()


def test_existing_files_are_reported_once_and_junk_is_ignored(inbox: Path, settings: WatchSettings) -> None:
    (inbox / "shirt").mkdir()
    (inbox / ".hidden").mkdir()
    wanted = [inbox / "batch.npz", inbox / "shirt" / "a.png", inbox / "shirt" / "b.JPG", inbox / "c.jpeg"]
    junk = [inbox / "d.png.part", inbox / "e.tmp", inbox / ".f.png", inbox / "notes.txt", inbox / ".hidden" / "g.png"]
    for path in wanted + junk:
        path.write_bytes(b"x" * 10)
    q: queue.Queue[object] = queue.Queue()
    with InboxWatcher(inbox, q, settings) as w:
        assert w.polling == settings.force_polling
        got = _wait_for(q, len(wanted))
    assert sorted(got, key=str) == sorted((InboxFile(p, 10) for p in wanted), key=str)


def test_a_file_written_slowly_in_chunks_is_reported_once_complete(inbox: Path, settings: WatchSettings) -> None:
    settle_ms = 400  # generous: a pause the scheduler stretches past it would be a false alarm
    q: queue.Queue[object] = queue.Queue()
    w = InboxWatcher(inbox, q, dataclasses.replace(settings, settle_ms=settle_ms))
    w.start()
    path = inbox / "slow.npz"
    chunk = b"\x01" * 4096
    pause = settle_ms / 1000 / 4  # pauses shorter than the settle time
    with path.open("wb") as f:
        for _ in range(8):
            f.write(chunk)
            f.flush()
            assert q.empty(), "reported while still being written"
            time.sleep(pause)
    finished = time.monotonic()
    try:
        got = [q.get(timeout=5)] + _collect(q, 2 * settle_ms / 1000)
    finally:
        w.stop()
    assert got == [InboxFile(path, 8 * len(chunk))]
    assert time.monotonic() - finished < 3.0


def test_rename_from_part_class_folders_rewrites_and_deletes(
    watcher: tuple[InboxWatcher, queue.Queue[object]], inbox: Path, tmp_path: Path
) -> None:
    w, q = watcher
    w.start()
    part = inbox / "img.png.part"
    part.write_bytes(b"p" * 5)
    assert _collect(q, 2 * SETTLE_MS / 1000) == []
    part.rename(inbox / "img.png")
    assert _wait_for(q, 1) == [InboxFile(inbox / "img.png", 5)]

    # a whole class folder moved in at once
    staged = tmp_path / "sneaker"
    staged.mkdir()
    for i in range(3):
        (staged / f"{i}.png").write_bytes(b"s" * (i + 1))
    staged.rename(inbox / "sneaker")
    got = _wait_for(q, 3)
    assert sorted(got, key=str) == [InboxFile(inbox / "sneaker" / f"{i}.png", i + 1) for i in range(3)]

    # rewritten with new content: reported again; deleted and re-created: reported again
    time.sleep(0.01)
    (inbox / "img.png").write_bytes(b"q" * 7)
    assert _wait_for(q, 1) == [InboxFile(inbox / "img.png", 7)]
    (inbox / "img.png").unlink()
    time.sleep(2 * SETTLE_MS / 1000)
    (inbox / "img.png").write_bytes(b"r" * 7)
    assert _wait_for(q, 1) == [InboxFile(inbox / "img.png", 7)]

    # the daemon moving an ingested file into a dot-folder of the inbox is not a new sample
    (inbox / ".done").mkdir()
    (inbox / "img.png").rename(inbox / ".done" / "img.png")
    assert _collect(q, 2 * SETTLE_MS / 1000) == []


def test_a_missing_inbox_and_bad_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(WatchError, match="nowhere"):
        InboxWatcher(tmp_path / "nowhere", queue.Queue()).start()
    with pytest.raises(SettingsError, match="settle_ms=-1"):
        WatchSettings(settle_ms=-1)
    with pytest.raises(SettingsError, match="'PNG'"):
        WatchSettings(suffixes=("PNG",))
    with pytest.raises(SettingsError, match="poll_interval_s=0"):
        WatchSettings(poll_interval_s=0)


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EMFILE])
def test_inotify_limits_fall_back_to_polling_which_still_delivers(
    err: int, inbox: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Where watchdog calls inotify_init/inotify_add_watch: the emitter's start, on observer.start().
    def limit_reached(self: InotifyEmitter) -> None:
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(InotifyEmitter, "on_thread_start", limit_reached)
    q: queue.Queue[object] = queue.Queue()
    settings = WatchSettings(settle_ms=SETTLE_MS, poll_interval_s=0.05)
    with caplog.at_level(logging.WARNING, logger="service.daemon.watch"):
        w = InboxWatcher(inbox, q, settings)
        w.start()
    try:
        assert w.polling
        assert "falling back to polling" in caplog.text and str(inbox) in caplog.text
        (inbox / "new.npz").write_bytes(b"n" * 3)
        assert _wait_for(q, 1) == [InboxFile(inbox / "new.npz", 3)]
    finally:
        w.stop()

    policy = tmp_path / "policy.toml"
    policy.write_text("a = 1\n")
    p = PolicyWatcher(policy, q, settings)
    p.start()
    try:
        assert p.polling
        time.sleep(0.1)
        policy.write_text("a = 2\n")
        assert _wait_for(q, 1) == [PolicyChanged(policy)]
    finally:
        p.stop()


def test_other_watch_errors_are_not_hidden_by_the_fallback(inbox: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(self: InotifyEmitter) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(InotifyEmitter, "on_thread_start", denied)
    with pytest.raises(WatchError, match="Permission denied"):
        InboxWatcher(inbox, queue.Queue()).start()


@pytest.fixture
def policy(tmp_path: Path, settings: WatchSettings) -> Iterator[tuple[Path, queue.Queue[object]]]:
    etc = tmp_path / "etc"
    etc.mkdir()
    path = etc / "policy.toml"
    path.write_text("latency_ms = 10\n")
    q: queue.Queue[object] = queue.Queue()
    w = PolicyWatcher(path, q, settings)
    w.start()
    time.sleep(0.1)  # let the polling observer take its first snapshot
    yield path, q
    w.stop()


def test_policy_saved_in_place_by_rename_and_by_backup_rename(policy: tuple[Path, queue.Queue[object]]) -> None:
    path, q = policy
    assert _collect(q, 2 * SETTLE_MS / 1000) == []  # nothing at start

    path.write_text("latency_ms = 20\n")  # in place
    assert _wait_for(q, 1) == [PolicyChanged(path)]

    tmp = path.with_name(".policy.toml.swp")  # write a temp, rename over (most editors)
    tmp.write_text("latency_ms = 30\n")
    os.replace(tmp, path)
    assert _wait_for(q, 1) == [PolicyChanged(path)]

    path.rename(path.with_name("policy.toml~"))  # vim without backupcopy: move away, write anew
    path.write_text("latency_ms = 40\n")
    assert _wait_for(q, 1) == [PolicyChanged(path)]


def test_a_burst_of_writes_is_one_reload_and_reads_are_none(policy: tuple[Path, queue.Queue[object]]) -> None:
    path, q = policy
    with path.open("w") as f:
        for i in range(5):
            f.write(f"k{i} = {i}\n")
            f.flush()
            time.sleep(SETTLE_MS / 1000 / 4)
    assert _wait_for(q, 1) == [PolicyChanged(path)]
    path.read_text()  # the daemon reading it
    os.chmod(path, 0o600)
    (path.parent / "other.toml").write_text("x = 1\n")
    assert _collect(q, 3 * SETTLE_MS / 1000) == []


def test_a_removed_policy_is_logged_then_its_return_reported(
    policy: tuple[Path, queue.Queue[object]], caplog: pytest.LogCaptureFixture
) -> None:
    path, q = policy
    with caplog.at_level(logging.WARNING, logger="service.daemon.watch"):
        path.unlink()
        assert _collect(q, 4 * SETTLE_MS / 1000) == []
    assert "was removed" in caplog.text
    path.write_text("latency_ms = 50\n")
    assert _wait_for(q, 1) == [PolicyChanged(path)]


def test_a_full_queue_is_retried_not_lost(inbox: Path) -> None:
    q: queue.Queue[object] = queue.Queue(maxsize=1)
    for name in ("a.png", "b.png"):
        (inbox / name).write_bytes(b"z")
    with InboxWatcher(inbox, q, WatchSettings(settle_ms=50)):
        first = q.get(timeout=5)
        time.sleep(0.2)
        second = q.get(timeout=5)
    assert {first, second} == {InboxFile(inbox / "a.png", 1), InboxFile(inbox / "b.png", 1)}


def test_callbacks_never_run_long_on_the_observer_thread(watcher: tuple[InboxWatcher, queue.Queue[object]]) -> None:
    # The observer thread only records; the settle thread is the one putting on the queue.
    w, q = watcher
    w.start()
    names: list[str] = []
    original = q.put_nowait

    def record(item: object) -> None:
        names.append(threading.current_thread().name)
        original(item)

    q.put_nowait = record  # type: ignore[method-assign]
    (w.inbox / "t.png").write_bytes(b"t")
    q.get(timeout=5)
    assert names == ["settle-inbox"]
