"""Runs the real daemon as a subprocess for tests: a real socket, a real notify socket, a real state dir.

:class:`DaemonProcess` starts ``python -m service.cli.main serve`` (or the installed ``lifelong``
script) with ``$NOTIFY_SOCKET`` bound by a :class:`NotifyListener` (an AF_UNIX datagram
socket, as systemd binds it) and ``$WATCHDOG_USEC`` set, waits for ``READY=1``, and keeps the
daemon's log in the state directory. :func:`commit_model` prepares a state directory offline
(registry + store) so a test can start from a committed model without a deploy.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from service.api.client import Client
from service.state.paths import admin_socket_for
from service.state.registry import Registry
from service.state.store import Store

REPO = Path(__file__).resolve().parents[1]


def short_dir(prefix: str = "lld") -> Path:
    """A fresh folder under /tmp: Unix socket paths must stay under ~100 bytes."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


class NotifyListener:
    """Collects sd_notify datagrams on a real socket, in a thread; messages are dicts with an ``_at`` time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.messages: list[dict[str, Any]] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.settimeout(0.2)
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            msg: dict[str, Any] = dict(line.split("=", 1) for line in data.decode().split("\n") if "=" in line)
            msg["_at"] = time.monotonic()
            with self._cond:
                self.messages.append(msg)
                self._cond.notify_all()

    def wait_for(self, key: str, value: str | None = None, *, since: int = 0, timeout: float = 30.0) -> dict[str, Any]:
        """The first message from index ``since`` on that has ``key`` (= ``value``)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for msg in self.messages[since:]:
                    if key in msg and (value is None or msg[key] == value):
                        return msg
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {key}={value} notification within {timeout} s; got {self.messages}")
                self._cond.wait(left)

    def count(self, key: str, *, since: int = 0) -> int:
        with self._cond:
            return sum(1 for m in self.messages[since:] if key in m)

    def __len__(self) -> int:
        with self._cond:
            return len(self.messages)

    def close(self) -> None:
        self._stop.set()
        self._sock.close()
        self._thread.join(2)


class DaemonProcess:
    """The daemon in a subprocess.

    Args:
        state_dir: Its state directory.
        run_dir: A short folder for the API and notify sockets.
        policy: The policy file (default ``STATE/policy.toml``).
        env: Extra environment (a fault-injection point, say).
        args: Extra ``serve`` options.
        script: Run the installed ``lifelong`` script instead of ``python -m service.cli.main``.
        systemd_dirs: Pass no paths on the command line; set STATE_/RUNTIME_/CONFIGURATION_DIRECTORY.
        watchdog_s: ``$WATCHDOG_USEC`` in seconds (None: no watchdog).
    """

    def __init__(
        self,
        state_dir: Path,
        run_dir: Path,
        *,
        policy: Path | None = None,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
        script: bool = False,
        systemd_dirs: Path | None = None,
        watchdog_s: float | None = 1.0,
    ) -> None:
        self.state_dir, self.run_dir = state_dir, run_dir
        self.socket = run_dir / "api.sock"
        self.policy = policy or state_dir / "policy.toml"
        self.extra_env, self.args, self.script, self.systemd_dirs = env or {}, args, script, systemd_dirs
        self.watchdog_s = watchdog_s
        self.notify: NotifyListener | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = run_dir / f"daemon-{time.monotonic_ns()}.log"

    def start(self, *, wait: bool = True) -> DaemonProcess:
        notify_path = self.run_dir / f"notify-{time.monotonic_ns()}.sock"
        self.notify = NotifyListener(notify_path)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LIFELONG_", "WATCHDOG_"))}
        env |= {"NOTIFY_SOCKET": str(notify_path), "PYTHONUNBUFFERED": "1", **self.extra_env}
        if self.watchdog_s is not None:
            env["WATCHDOG_USEC"] = str(int(self.watchdog_s * 1e6))
        for var in ("STATE_DIRECTORY", "RUNTIME_DIRECTORY", "CONFIGURATION_DIRECTORY"):
            env.pop(var, None)
        exe = (
            [str(Path(sys.executable).parent / "lifelong")]
            if self.script
            else [sys.executable, "-m", "service.cli.main"]
        )
        if self.systemd_dirs is not None:
            env |= {
                "STATE_DIRECTORY": str(self.state_dir),
                "RUNTIME_DIRECTORY": str(self.run_dir),
                "CONFIGURATION_DIRECTORY": str(self.systemd_dirs),
            }
            cmd = [*exe, "serve", *self.args]
            self.socket = self.run_dir / "lifelong.sock"
            self.policy = self.systemd_dirs / "policy.toml"
        else:
            cmd = [*exe, "serve", "--state-dir", str(self.state_dir), "--socket", str(self.socket)]
            cmd += ["--policy", str(self.policy), "--settle-ms", "100", *self.args]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 60.0) -> dict[str, Any]:
        assert self.notify is not None and self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the daemon exited with {self.proc.returncode}:\n{self.log()}")
            try:
                return self.notify.wait_for("READY", "1", timeout=0.2)
            except AssertionError:
                continue
        raise AssertionError(f"the daemon sent no READY=1 within {timeout} s:\n{self.log()}")

    def client(self, timeout: float = 60.0) -> Client:
        return Client(self.socket, timeout=timeout)

    @property
    def admin_socket(self) -> Path:
        """The daemon's owner-only admin socket, beside its API socket."""
        return admin_socket_for(self.socket)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.close()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(10) == -signal.SIGKILL
        self.close()

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self.notify is not None:
            self.notify.close()

    def __enter__(self) -> DaemonProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def commit_model(state_dir: Path, model: Path) -> str:
    """Add ``model`` to the state's registry and make it current, as a deploy would; returns its id."""
    store = Store.open(state_dir)
    try:
        registry = Registry(state_dir)
        record = registry.add(model, {"source": "test setup"})
        registry.deploy(store, record.id, reason="test setup")
        return record.id
    finally:
        store.close()


def wait_until(predicate: Any, timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        time.sleep(0.05)


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
