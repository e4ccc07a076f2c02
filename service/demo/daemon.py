"""The demo's daemon: ``lifelong serve`` in a state directory of its own, started and stopped cleanly.

The demo never runs in a service's state: :meth:`DemoDaemon.prepare` rebuilds
``STATE/demo/service`` for every run and seeds it from the demo's cache (the supernet linked,
the profile, predictor, front and replay buffer copied: the adaptation may rewrite them), so
each run starts from the same models and an empty store. The daemon runs in its own session,
so a Ctrl-C in the terminal reaches the demo, which then stops it with SIGTERM (the daemon's
graceful stop: drain, cancel workers, close the store).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from service.api.client import Client
from service.errors import DemoError, ServiceError

__all__ = ["SEEDED", "DemoDaemon", "atomic_write"]

SEEDED = ("profile", "predictor", "front", "replay")
"""Folders of the cache copied into the daemon's state directory."""


def _short_socket(folder: Path) -> tuple[Path, Path | None]:
    """The API socket's path, under ``/tmp`` when ``folder`` is too deep for a Unix socket name."""
    sock = folder / "api.sock"
    if len(os.fsencode(sock)) < 100:
        return sock, None
    tmp = Path(tempfile.mkdtemp(prefix="lldemo", dir="/tmp"))
    return tmp / "api.sock", tmp


def atomic_write(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` in one rename, so a watcher never reads half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class DemoDaemon:
    """``lifelong serve`` for the demo.

    Args:
        cache: The demo's state directory (supernet, profile, predictor, front).
        state_dir: The daemon's own state directory (``STATE/demo/service``), rebuilt.
        log: Where the daemon's output goes.
        env: Its environment.
    """

    def __init__(self, cache: Path, state_dir: Path, log: Path, env: Mapping[str, str]) -> None:
        self.cache, self.state_dir, self.log, self.env = cache, state_dir, log, dict(env)
        self.socket, self._tmp_dir = _short_socket(state_dir)
        self.policy = state_dir / "policy.toml"
        self.proc: subprocess.Popen[bytes] | None = None

    def prepare(self, checkpoint: Path, policy: str, register: Iterable[tuple[Path, Mapping[str, Any]]] = ()) -> None:
        """Rebuild the state directory: the supernet linked, the cache seeded, the policy written,
        and ``register``'s ONNX files (with their registry meta) in the registry: exported, not deployed.

        Raises:
            DemoError: A daemon of an earlier demo still answers on the socket.
        """
        self._refuse_running()
        shutil.rmtree(self.state_dir, ignore_errors=True)
        (self.state_dir / "supernet").mkdir(parents=True)
        (self.state_dir / "supernet" / "supernet.pt").symlink_to(checkpoint.resolve())
        for sub in SEEDED:
            if (self.cache / sub).is_dir():
                shutil.copytree(self.cache / sub, self.state_dir / sub)
        atomic_write(self.policy, policy)
        register = list(register)
        if register:
            from service.state.registry import Registry
            from service.state.store import Store

            store = Store.open(self.state_dir)
            try:
                registry = Registry(self.state_dir)
                for onnx, meta in register:
                    store.record_model(registry.add(onnx, meta))
            finally:
                store.close()

    def _refuse_running(self) -> None:
        if not self.socket.exists():
            return
        try:
            with Client(self.socket, timeout=3) as c:
                pid = (c.status().get("daemon") or {}).get("pid")
        except ServiceError:
            return  # a stale socket of a stopped daemon
        raise DemoError(
            f"a daemon of an earlier demo still serves at {self.socket} (pid {pid}): stop it (kill {pid}) and "
            "run the demo again"
        )

    def start(self, timeout: float = 60.0) -> dict[str, Any]:
        """Start it and wait until its API answers; returns its first status.

        Raises:
            DemoError: It exited, or did not answer within ``timeout`` seconds.
        """
        cmd = [sys.executable, "-m", "service.cli.main", "serve", "--state-dir", str(self.state_dir)]
        cmd += ["--socket", str(self.socket), "--policy", str(self.policy), "--settle-ms", "200"]
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        with Client(self.socket, timeout=10) as client:
            while True:
                self.check()
                with contextlib.suppress(ServiceError):
                    return client.status()
                if time.monotonic() > deadline:
                    raise DemoError(f"the daemon did not answer within {timeout:.0f} s (log: {self.log})")
                time.sleep(0.2)

    def check(self) -> None:
        """Raises DemoError with the end of its log if it exited."""
        if self.proc is not None and self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace").strip().splitlines()[-3:]
            raise DemoError(f"the daemon exited with code {self.proc.returncode}: " + " / ".join(tail))

    def stop(self, timeout: float = 30.0) -> tuple[int | None, float, bool]:
        """SIGTERM, wait, kill if it outlives ``timeout``; ``(exit code, seconds, killed)``.

        The replay buffer it built, if any, is kept in the cache for the next run.
        """
        proc, self.proc = self.proc, None
        t0, killed = time.time(), False
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                killed = True
        if self._tmp_dir is not None:
            shutil.rmtree(self._tmp_dir, ignore_errors=True)
        if (self.state_dir / "replay").is_dir() and not (self.cache / "replay").exists():
            shutil.copytree(self.state_dir / "replay", self.cache / "replay")  # built once from the training data
        return (None if proc is None else proc.returncode), time.time() - t0, killed
