"""A tiny ``sd_notify`` of our own: tell systemd we are ready, reloading, stopping, alive.

systemd passes ``$NOTIFY_SOCKET`` to a ``Type=notify`` service: a filesystem path, or an
abstract socket written with a leading ``@``. Each notification is one datagram of
``KEY=VALUE`` lines. Outside systemd the variable is unset and every call is a no-op that
returns ``False``, so the daemon calls these unconditionally (the same in tests, a terminal
or the unit). A notification that cannot be sent is logged, never raised: losing a status
line must not take the service down (a missed watchdog ping will, which is the point).

The protocol (``man sd_notify``) as the daemon uses it::

    ready()           after the model is loaded and the socket listens
    status(text)      a one-line status shown by ``systemctl status``
    watchdog()        from the main loop, every watchdog_interval() / 2 seconds
    reloading()       on SIGHUP, before re-reading the policy; ready() again when done
    stopping()        on SIGTERM, before draining
    extend_timeout(s) during a slow start or stop, to push systemd's timeout out

Written without the ``systemd`` Python binding so the service has no C dependency.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Mapping

from service.errors import SettingsError

__all__ = [
    "Notifier",
    "extend_timeout",
    "ready",
    "reloading",
    "status",
    "stopping",
    "watchdog",
    "watchdog_interval",
]

logger = logging.getLogger(__name__)


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """The watchdog timeout systemd enforces on this process, in seconds, or ``None``.

    ``None`` when no watchdog is configured (``WatchdogSec=`` unset, or not under systemd),
    when the value is malformed, or when ``$WATCHDOG_PID`` names another process (the
    variable leaked to a child). Ping at half this interval, as ``sd_watchdog_enabled(3)``
    recommends, so one late tick is not fatal.

    Args:
        env: The environment to read; ``os.environ`` by default.
    """
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC", "")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID", "")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            logger.warning("ignoring malformed WATCHDOG_PID=%r: expected a process id", pid)
            return None
    try:
        value = int(usec)
    except ValueError:
        logger.warning("ignoring malformed WATCHDOG_USEC=%r: expected microseconds as an integer", usec)
        return None
    return value / 1e6 if value > 0 else None


def _one_line(text: str) -> str:
    # A newline would start a new KEY=VALUE assignment inside the datagram.
    return " ".join(str(text).splitlines())


class Notifier:
    """Sends notifications to one systemd notification socket.

    Args:
        address: The socket address as systemd writes it (a path, or ``@name`` for an
            abstract socket). ``None`` reads ``$NOTIFY_SOCKET``; an empty value disables
            the notifier.

    The socket is opened on first use and kept, so the watchdog ping every few seconds
    costs one ``sendto``. Safe to call from several threads.
    """

    def __init__(self, address: str | None = None) -> None:
        if address is None:
            address = os.environ.get("NOTIFY_SOCKET", "")
        self.address = address
        self._target: str | bytes | None = None
        if address.startswith("@"):
            self._target = "\0" + address[1:]  # Linux abstract namespace
        elif address.startswith("/"):
            self._target = address
        elif address:
            logger.warning("ignoring NOTIFY_SOCKET=%r: expected an absolute path or @abstract name", address)
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        """Whether notifications go anywhere (a usable ``$NOTIFY_SOCKET`` was given)."""
        return self._target is not None

    def send(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` assignments in one datagram; ``True`` if it was sent.

        Args:
            assignments: Lines such as ``"READY=1"``; each must be a single line.
        """
        if self._target is None or not assignments:
            return False
        for line in assignments:
            if "\n" in line or "=" not in line:
                raise SettingsError(f"sd_notify assignment {line!r} is not one KEY=VALUE line")
        payload = "\n".join(assignments).encode("utf-8")
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.sendto(payload, self._target)
            except OSError as exc:
                logger.warning("sd_notify to %s failed (%s): %s", self.address, exc, payload.decode(errors="replace"))
                self._close_locked()
                return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Tell systemd start-up (or a reload) finished; optionally set the status line."""
        lines = ["READY=1"]
        if status is not None:
            lines.append(f"STATUS={_one_line(status)}")
        return self.send(*lines)

    def status(self, text: str) -> bool:
        """Set the free-form status line ``systemctl status`` shows."""
        return self.send(f"STATUS={_one_line(text)}")

    def watchdog(self) -> bool:
        """Ping the watchdog: the main loop is alive."""
        return self.send("WATCHDOG=1")

    def reloading(self, status: str | None = None) -> bool:
        """Tell systemd a reload started; send :meth:`ready` when it is done.

        ``MONOTONIC_USEC`` is the ``CLOCK_MONOTONIC`` time of the message, which
        ``Type=notify-reload`` (systemd 253+) requires to tell this reload from an older
        one; ``Type=notify`` accepts it as well.
        """
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        lines = ["RELOADING=1", f"MONOTONIC_USEC={usec}"]
        if status is not None:
            lines.append(f"STATUS={_one_line(status)}")
        return self.send(*lines)

    def stopping(self, status: str | None = None) -> bool:
        """Tell systemd the service is shutting down on its own accord or on SIGTERM."""
        lines = ["STOPPING=1"]
        if status is not None:
            lines.append(f"STATUS={_one_line(status)}")
        return self.send(*lines)

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for ``seconds`` more before systemd's start/stop/reload timeout fires.

        Args:
            seconds: Extra time from now; must be positive.
        """
        if not seconds > 0:
            raise SettingsError(f"extend_timeout needs a positive number of seconds, got {seconds!r}")
        return self.send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}")

    def close(self) -> None:
        """Close the socket; a later notification opens a new one."""
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __repr__(self) -> str:
        return f"Notifier(address={self.address!r})"


_default: Notifier | None = None
_default_lock = threading.Lock()


def _notifier() -> Notifier:
    # Read $NOTIFY_SOCKET on first use, not at import, so tests and the CLI can set it.
    global _default
    with _default_lock:
        if _default is None or _default.address != os.environ.get("NOTIFY_SOCKET", ""):
            if _default is not None:
                _default.close()
            _default = Notifier()
        return _default


def ready(status: str | None = None) -> bool:
    """:meth:`Notifier.ready` on ``$NOTIFY_SOCKET``."""
    return _notifier().ready(status)


def status(text: str) -> bool:
    """:meth:`Notifier.status` on ``$NOTIFY_SOCKET``."""
    return _notifier().status(text)


def watchdog() -> bool:
    """:meth:`Notifier.watchdog` on ``$NOTIFY_SOCKET``."""
    return _notifier().watchdog()


def reloading(status: str | None = None) -> bool:
    """:meth:`Notifier.reloading` on ``$NOTIFY_SOCKET``."""
    return _notifier().reloading(status)


def stopping(status: str | None = None) -> bool:
    """:meth:`Notifier.stopping` on ``$NOTIFY_SOCKET``."""
    return _notifier().stopping(status)


def extend_timeout(seconds: float) -> bool:
    """:meth:`Notifier.extend_timeout` on ``$NOTIFY_SOCKET``."""
    return _notifier().extend_timeout(seconds)
