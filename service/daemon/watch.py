"""File watchers: new samples in the inbox, and edits of the policy file.

Both put small frozen events on a :class:`queue.Queue` that the daemon's one loop drains;
nothing here reads a sample or parses a policy. Watchdog's callbacks run on its observer
thread, so they only record "this path changed" and a settle thread decides when a path
is done:

- A path is reported once it has been quiet (no event, and the same size, mtime and inode
  on ``stat``) for ``settle_ms``. A file still being written is therefore never handed over
  half-written, even when the writer pauses between chunks for less than ``settle_ms`` or
  when the polling observer misses an intermediate write. Writers that can should still
  write ``name.part`` and rename it: ``.part``/``.tmp`` files and dot-files are ignored.
- The inbox (images ``.png``/``.jpg``/``.jpeg``, possibly in class sub-folders, and
  ``.npz`` batches) is scanned once at start, so files that arrived while the daemon was
  down are reported too; each file is reported once per content (a rewrite with a new size
  or mtime is reported again). The daemon should move ingested files out of the inbox, or
  into a dot-folder inside it, which the watcher ignores.
- The policy file is watched through its parent folder, because editors save by writing a
  temporary file and renaming it over the original (a move or create event on the folder,
  never a modify event on the old inode). A burst of events becomes one
  :class:`PolicyChanged`; a file that is removed and not replaced is logged, not reported.

inotify is used where it can be; when the kernel's limits are reached at start (``ENOSPC``:
``fs.inotify.max_user_watches``; ``EMFILE``: ``max_user_instances``), the watcher falls back
to watchdog's :class:`~watchdog.observers.polling.PollingObserver` and logs a warning.
``WatchSettings(force_polling=True)`` chooses polling outright (network file systems).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import (
    EVENT_TYPE_CLOSED,
    EVENT_TYPE_CREATED,
    EVENT_TYPE_DELETED,
    EVENT_TYPE_MODIFIED,
    EVENT_TYPE_MOVED,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from service.errors import SettingsError, WatchError

__all__ = ["InboxFile", "InboxWatcher", "PolicyChanged", "PolicyWatcher", "WatchSettings", "start_observer"]

logger = logging.getLogger(__name__)

_INOTIFY_LIMIT_ERRNOS = frozenset({errno.ENOSPC, errno.EMFILE})
_Signature = tuple[int, int, int]  # (size, mtime_ns, inode): what "the file changed" means here


@dataclass(frozen=True)
class WatchSettings:
    """How the watchers observe and when they decide a file is complete.

    Attributes:
        settle_ms: A path is reported once unchanged for this long.
        force_polling: Use the polling observer even where inotify works.
        poll_interval_s: How often the polling observer rescans (also after a fallback).
        suffixes: Inbox files that are samples (lower case, with the dot).
        ignored_suffixes: Partial files that writers rename when done.
    """

    settle_ms: int = 500
    force_polling: bool = False
    poll_interval_s: float = 1.0
    suffixes: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".npz")
    ignored_suffixes: tuple[str, ...] = (".part", ".tmp")

    def __post_init__(self) -> None:
        if not isinstance(self.settle_ms, int) or self.settle_ms < 0:
            raise SettingsError(f"settle_ms={self.settle_ms!r}: expected an integer number of milliseconds >= 0")
        if not self.poll_interval_s > 0:
            raise SettingsError(f"poll_interval_s={self.poll_interval_s!r}: expected a positive number of seconds")
        for name in ("suffixes", "ignored_suffixes"):
            for suffix in getattr(self, name):
                if not (suffix.startswith(".") and suffix == suffix.lower()):
                    raise SettingsError(f"{name} entry {suffix!r}: expected a lower-case suffix with its dot")


@dataclass(frozen=True)
class InboxFile:
    """A sample file in the inbox that has stopped changing."""

    path: Path
    size: int


@dataclass(frozen=True)
class PolicyChanged:
    """The policy file has new content; the daemon re-reads and validates it."""

    path: Path


def start_observer(
    watches: Sequence[tuple[FileSystemEventHandler, Path, bool]],
    *,
    force_polling: bool = False,
    poll_interval_s: float = 1.0,
) -> BaseObserver:
    """Start an observer for ``(handler, path, recursive)`` watches, inotify first.

    Returns:
        The started observer: native, or polling when asked for or when inotify's limits
        are reached (logged as a warning naming the sysctl to raise).

    Raises:
        WatchError: A watch cannot be set up for another reason (a missing folder, EACCES).
    """
    where = ", ".join(str(path) for _, path, _ in watches)
    if not force_polling:
        observer = Observer()
        try:
            for handler, path, recursive in watches:
                observer.schedule(handler, str(path), recursive=recursive)
            observer.start()
            return observer
        except OSError as exc:
            with contextlib.suppress(Exception):
                observer.unschedule_all()
            if exc.errno not in _INOTIFY_LIMIT_ERRNOS:
                raise WatchError(f"cannot watch {where}: {exc}") from exc
            logger.warning(
                "inotify limit reached watching %s (%s); falling back to polling every %.1f s "
                "(raise fs.inotify.max_user_watches / max_user_instances to avoid it)",
                where, exc, poll_interval_s,
            )  # fmt: skip
    observer = PollingObserver(timeout=poll_interval_s)
    try:
        for handler, path, recursive in watches:
            observer.schedule(handler, str(path), recursive=recursive)
        observer.start()
    except OSError as exc:
        raise WatchError(f"cannot watch {where} even by polling: {exc}") from exc
    return observer


def _signature(path: Path) -> _Signature | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino)


class _Handler(FileSystemEventHandler):
    """Forwards events to a callback; an exception would otherwise kill watchdog's thread."""

    def __init__(self, callback: Callable[[FileSystemEvent], None]) -> None:
        self._callback = callback

    def dispatch(self, event: FileSystemEvent) -> None:
        try:
            self._callback(event)
        except Exception:
            logger.exception("file watcher failed on %r", event)


class _SettlingWatcher:
    """Shared machinery: an observer, a table of changed paths, a thread that settles them."""

    def __init__(self, folder: Path, recursive: bool, events: queue.Queue[object], settings: WatchSettings) -> None:
        self._folder = folder
        self._recursive = recursive
        self.events = events
        self.settings = settings
        self._pending: dict[Path, tuple[float, _Signature | None]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._observer: BaseObserver | None = None
        self._thread: threading.Thread | None = None

    @property
    def polling(self) -> bool:
        """Whether the watcher runs on the polling observer (forced or fallen back)."""
        return isinstance(self._observer, PollingObserver)

    def start(self) -> None:
        """Start watching; returns at once, events arrive on the queue."""
        if self._observer is not None:
            raise WatchError(f"{type(self).__name__} for {self._folder} is already started")
        if not self._folder.is_dir():
            raise WatchError(f"cannot watch {self._folder}: not an existing folder")
        self._observer = start_observer(
            [(_Handler(self._on_event), self._folder, self._recursive)],
            force_polling=self.settings.force_polling,
            poll_interval_s=self.settings.poll_interval_s,
        )
        self._on_started()
        self._thread = threading.Thread(target=self._run, name=f"settle-{self._folder.name}", daemon=True)
        self._thread.start()
        logger.info("watching %s (%s)", self._folder, "polling" if self.polling else "inotify")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the observer and the settle thread; pending paths are dropped."""
        self._stop.set()
        if self._observer is not None:
            self._observer.stop()
            with contextlib.suppress(RuntimeError):
                self._observer.join(timeout)
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> _SettlingWatcher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _touch(self, path: Path) -> None:
        sig = _signature(path)  # one stat on the observer thread: cheap, and it dates the change
        with self._lock:
            self._pending[path] = (time.monotonic(), sig)

    def _run(self) -> None:
        tick = max(0.01, min(0.1, self.settings.settle_ms / 4000))
        while not self._stop.wait(tick):
            try:
                self._settle()
            except Exception:
                logger.exception("file watcher of %s failed while settling", self._folder)

    def _settle(self) -> None:
        now = time.monotonic()
        settle = self.settings.settle_ms / 1000
        with self._lock:
            due = [(p, entry) for p, entry in self._pending.items() if now - entry[0] >= settle]
        for path, entry in due:
            sig = _signature(path)
            with self._lock:
                if self._pending.get(path) != entry:
                    continue  # a newer event arrived meanwhile
                if sig != entry[1]:
                    self._pending[path] = (now, sig)  # changed without an event: wait again
                    continue
                del self._pending[path]
            if not self._settled(path, sig):
                with self._lock:
                    self._pending.setdefault(path, (now, sig))

    def _put(self, event: object) -> bool:
        try:
            self.events.put_nowait(event)
        except queue.Full:
            logger.warning("event queue full; will retry %r", event)
            return False
        return True

    # hooks
    def _on_started(self) -> None: ...

    def _on_event(self, event: FileSystemEvent) -> None:
        raise NotImplementedError

    def _settled(self, path: Path, sig: _Signature | None) -> bool:
        raise NotImplementedError


class InboxWatcher(_SettlingWatcher):
    """Reports complete sample files arriving in ``inbox`` (recursively) as :class:`InboxFile`.

    Args:
        inbox: The folder local applications drop samples into; it must exist.
        events: The daemon's queue; an unbounded one is best (a full queue is retried).
        settings: Settle time, polling, which suffixes count as samples.
    """

    def __init__(
        self, inbox: str | os.PathLike[str], events: queue.Queue[object], settings: WatchSettings | None = None
    ) -> None:
        self.inbox = Path(inbox).absolute()
        super().__init__(self.inbox, True, events, settings or WatchSettings())
        self._reported: dict[Path, _Signature] = {}

    def wanted(self, path: Path) -> bool:
        """Whether ``path`` is a sample this watcher reports (suffix, not hidden, not partial)."""
        try:
            parts = path.relative_to(self.inbox).parts
        except ValueError:
            return False
        if not parts or any(part.startswith(".") for part in parts):
            return False
        suffix = path.suffix.lower()
        return suffix in self.settings.suffixes and suffix not in self.settings.ignored_suffixes

    def _on_started(self) -> None:
        self._scan(self.inbox)

    def _scan(self, folder: Path) -> None:
        for root, dirs, files in os.walk(folder):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for name in files:
                path = Path(root) / name
                if self.wanted(path):
                    self._touch(path)

    def _forget(self, path: Path) -> None:
        with self._lock:
            for table in (self._pending, self._reported):
                for known in [p for p in table if p == path or path in p.parents]:
                    del table[known]

    def _on_event(self, event: FileSystemEvent) -> None:
        kind = event.event_type
        src = Path(os.fsdecode(event.src_path))
        if kind == EVENT_TYPE_MOVED:
            self._forget(src)
            dest = Path(os.fsdecode(event.dest_path))
            if event.is_directory:
                self._scan(dest)
            elif self.wanted(dest):
                self._touch(dest)
        elif kind == EVENT_TYPE_DELETED:
            self._forget(src)
        elif event.is_directory:
            if kind == EVENT_TYPE_CREATED:  # a class folder moved in whole: its files came with it
                self._scan(src)
        elif kind in (EVENT_TYPE_CREATED, EVENT_TYPE_MODIFIED, EVENT_TYPE_CLOSED) and self.wanted(src):
            self._touch(src)

    def _settled(self, path: Path, sig: _Signature | None) -> bool:
        if sig is None:
            return True  # gone before it settled
        with self._lock:
            if self._reported.get(path) == sig:
                return True
        if not self._put(InboxFile(path, sig[0])):
            return False
        with self._lock:
            self._reported[path] = sig
        logger.debug("inbox file ready: %s (%d bytes)", path, sig[0])
        return True


class PolicyWatcher(_SettlingWatcher):
    """Reports edits of one policy file as :class:`PolicyChanged`, however the editor saves.

    Args:
        path: The policy file; its folder must exist, the file itself may appear later.
        events: The daemon's queue.
        settings: Settle time and polling; the suffix settings are not used.

    Nothing is reported at start: the daemon reads the policy it starts with itself.
    """

    def __init__(
        self, path: str | os.PathLike[str], events: queue.Queue[object], settings: WatchSettings | None = None
    ) -> None:
        self.path = Path(path).absolute()
        super().__init__(self.path.parent, False, events, settings or WatchSettings())
        self._last: _Signature | None = None

    def _on_started(self) -> None:
        self._last = _signature(self.path)
        if self._last is None:
            logger.warning("policy file %s does not exist yet; watching for it", self.path)

    def _on_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in (EVENT_TYPE_CREATED, EVENT_TYPE_MODIFIED, EVENT_TYPE_MOVED, EVENT_TYPE_DELETED):
            return  # opened/closed events: our own reads must not look like edits
        paths = {Path(os.fsdecode(event.src_path))}
        if event.event_type == EVENT_TYPE_MOVED:
            paths.add(Path(os.fsdecode(event.dest_path)))
        if self.path in paths:
            self._touch(self.path)

    def _settled(self, path: Path, sig: _Signature | None) -> bool:
        if sig == self._last:
            return True  # touched but not changed (a chmod, an event replayed by polling)
        if sig is None:
            logger.warning("policy file %s was removed; the policy in force stays until it reappears", path)
        elif not self._put(PolicyChanged(path)):
            return False
        self._last = sig
        return True
