"""The daemon's one loop: events from one queue, handled one at a time, the watchdog pinged between them.

As in gunicorn's arbiter, everything that wants a change (signal handlers, file watchers,
API requests, scheduler jobs) only puts an event on the queue; the loop, on the main thread,
is the only code that changes what serves. The queue is a :class:`queue.SimpleQueue`, whose
``put`` is reentrant and so safe inside a signal handler (``queue.Queue`` takes a lock that
the interrupted thread may hold).

A :class:`Command` carries a future: :meth:`EventLoop.submit` enqueues one and waits for the
loop's result, with a time limit, so an API request can ask for a deploy and answer with
its outcome while the deploy itself runs on the loop.

``WATCHDOG=1`` is sent from :meth:`EventLoop.run` itself, every ``watchdog_interval() / 2``
seconds, never from a thread of its own: a loop stuck in a handler misses its pings, and
systemd restarts the service.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from service.daemon.sdnotify import Notifier, watchdog_interval
from service.errors import DaemonBusy, SettingsError

__all__ = ["Command", "EventLoop", "Reload", "Stop"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stop:
    """End the loop (SIGTERM, SIGINT, or a caller)."""

    reason: str


@dataclass(frozen=True)
class Reload:
    """Re-read the configuration (SIGHUP)."""

    reason: str


@dataclass(eq=False)
class Command:
    """A named command for the loop; the caller waits on ``future``."""

    name: str
    args: dict[str, Any]
    future: concurrent.futures.Future[Any] = field(default_factory=concurrent.futures.Future)


class EventLoop:
    """One queue, one consumer.

    Args:
        notifier: Where the watchdog pings go.
        heartbeat_s: Longest wait for an event when idle (the watchdog may ask for less).
        command_timeout_s: Default time :meth:`submit` waits for a result.
    """

    def __init__(self, notifier: Notifier, *, heartbeat_s: float = 1.0, command_timeout_s: float = 120.0) -> None:
        self.notifier = notifier
        self.heartbeat_s = heartbeat_s
        self.command_timeout_s = command_timeout_s
        self.events: queue.SimpleQueue[object] = queue.SimpleQueue()
        self.accepting = False  # whether submit() takes commands
        self._handlers: dict[type, Callable[[Any], None]] = {}
        self._commands: dict[str, Callable[..., Any]] = {}
        self._stop_reason: str | None = None

    def on(self, kind: type, handler: Callable[[Any], None]) -> None:
        """Handle events of type ``kind`` with ``handler`` (on the loop)."""
        self._handlers[kind] = handler

    def command(self, name: str, handler: Callable[..., Any]) -> None:
        """Run ``handler(**args)`` for :meth:`submit` ``(name, args)`` (on the loop)."""
        self._commands[name] = handler

    def put(self, event: object) -> None:
        """Enqueue an event; safe from any thread and from signal handlers."""
        self.events.put(event)

    # -- the loop --------------------------------------------------------------------------------

    def run(self, on_error: Callable[[object, Exception], None] | None = None) -> str:
        """Handle events until a :class:`Stop`; returns its reason. A failing handler is logged
        (and passed to ``on_error``); the loop goes on."""
        interval = watchdog_interval()
        ping_every = None if interval is None else interval / 2
        tick = self.heartbeat_s if ping_every is None else min(self.heartbeat_s, ping_every / 2)
        last_ping = -float("inf")
        self._stop_reason = None
        while self._stop_reason is None:
            now = time.monotonic()
            if ping_every is not None and now - last_ping >= ping_every * 0.9:
                self.notifier.watchdog()
                last_ping = now
            try:
                event = self.events.get(timeout=tick)
            except queue.Empty:
                continue
            try:
                self._dispatch(event)
            except Exception as exc:  # the loop outlives any one event
                logger.exception("handling %r failed", event)
                if on_error is not None:
                    on_error(event, exc)
        logger.info("loop ended: %s", self._stop_reason)
        return self._stop_reason

    def _dispatch(self, event: object) -> None:
        if isinstance(event, Stop):
            self._stop_reason = event.reason
        elif isinstance(event, Command):
            self._run_command(event)
        else:
            handler = next((h for kind, h in self._handlers.items() if isinstance(event, kind)), None)
            if handler is None:
                logger.warning("ignoring an event nobody handles: %r", event)
            else:
                handler(event)

    def _run_command(self, cmd: Command) -> None:
        if not cmd.future.set_running_or_notify_cancel():
            return  # the caller gave up before the loop got to it
        try:
            handler = self._commands.get(cmd.name)
            if handler is None:
                raise SettingsError(f"unknown command {cmd.name!r}; known: {', '.join(sorted(self._commands))}")
            cmd.future.set_result(handler(**cmd.args))
        except Exception as exc:
            cmd.future.set_exception(exc)

    # -- producers -------------------------------------------------------------------------------

    def submit(self, name: str, args: dict[str, Any] | None = None, timeout: float | None = None) -> Any:
        """Run command ``name`` on the loop; return its result or raise its error.

        Raises:
            DaemonBusy: the loop is not taking commands (stopping), or did not finish in time.
        """
        if not self.accepting:
            raise DaemonBusy(f"the daemon is not taking commands now (stopping or starting); {name} was not run")
        cmd = Command(name, dict(args or {}))
        self.events.put(cmd)
        limit = self.command_timeout_s if timeout is None else timeout
        deadline = time.monotonic() + limit
        while True:
            done, _ = concurrent.futures.wait([cmd.future], timeout=0.1)
            # a command put after close() drained the queue is cancelled here, not left waiting
            if cmd.future.cancelled() or (not self.accepting and cmd.future.cancel()):
                raise DaemonBusy(f"the daemon is stopping; {name} was not run")
            if done:
                return cmd.future.result()
            if time.monotonic() >= deadline:
                if cmd.future.cancel():
                    raise DaemonBusy(f"the daemon's loop did not take up {name} within {limit:g} s; it was not run")
                raise DaemonBusy(
                    f"{name} did not finish within {limit:g} s; it may still complete: see `lifelong history`"
                )

    def close(self, why: str) -> None:
        """Stop taking commands and cancel those queued (their callers get DaemonBusy); drop other events."""
        self.accepting = False
        while True:
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                return
            if isinstance(event, Command) and event.future.cancel():
                logger.info("command %s not run: %s", event.name, why)
