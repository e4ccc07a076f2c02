"""Settings of the daemon: where it keeps its state and listens, and how often it does its chores.

One frozen dataclass, validated when built; :meth:`DaemonSettings.from_environment` fills in
what systemd hands the unit (``$STATE_DIRECTORY``, ``$RUNTIME_DIRECTORY``,
``$CONFIGURATION_DIRECTORY``) through :mod:`service.state.paths`, so ``lifelong serve`` needs no
options under the unit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.errors import SettingsError
from service.state.paths import SOCKET_NAME, admin_socket_for, default_policy, default_socket, resolve_state_dir

__all__ = ["DaemonSettings"]


@dataclass(frozen=True)
class DaemonSettings:
    """Where the daemon keeps its state and listens, and how often it does its chores.

    Attributes:
        state_dir: Store, registry, inbox, logs.
        socket_path: The API's Unix socket (None: TCP only).
        admin_socket_path: The admin commands' Unix socket, owner-only (mode 0600)
            [beside ``socket_path``, ``NAME-admin.sock``; ``STATE/lifelong-admin.sock`` with TCP only].
        deploy_dirs: Folders ``/v1/deploy {"path": FILE}`` may read from, besides ``STATE/inbox``
            (anything else is refused with the same answer whether or not the file exists).
        tcp_port: Loopback TCP port as well (None: none; 0: any free port).
        policy_path: The policy file, watched; missing means the ``balanced`` preset.
        threads: onnxruntime intra-op threads; None follows the policy's ``target.threads``.
        api_threads: Requests answered at once.
        max_body_bytes: Largest predict or feedback body.
        max_upload_bytes: Largest model upload to ``/v1/deploy``.
        command_timeout_s: How long an admin request waits for the loop.
        drain_timeout_s: How long a stop waits for requests in flight.
        probe_interval_s: Seconds between latency probes.
        probe_runs: Predictions per latency probe.
        retention_interval_s: Seconds between retention passes (one runs at start).
        heartbeat_s: Longest sleep of the loop when idle (the watchdog may ask for less).
        settle_ms: Quiet time before an inbox or policy file counts as written.
        force_polling: Watch files by polling instead of inotify.
        warmup_samples: Recent inputs a new model is validated and warmed up on.
    """

    state_dir: Path
    socket_path: Path | None = None
    admin_socket_path: Path | None = None
    deploy_dirs: tuple[Path, ...] = ()
    tcp_port: int | None = None
    policy_path: Path | None = None
    threads: int | None = None
    api_threads: int = 4
    max_body_bytes: int = 8 * 2**20
    max_upload_bytes: int = 64 * 2**20
    command_timeout_s: float = 120.0
    drain_timeout_s: float = 10.0
    probe_interval_s: float = 60.0
    probe_runs: int = 20
    retention_interval_s: float = 3600.0
    heartbeat_s: float = 1.0
    settle_ms: int = 500
    force_polling: bool = False
    warmup_samples: int = 32

    def __post_init__(self) -> None:
        object.__setattr__(self, "state_dir", Path(self.state_dir))
        if self.policy_path is None:
            object.__setattr__(self, "policy_path", self.state_dir / "policy.toml")
        object.__setattr__(self, "policy_path", Path(self.policy_path))
        if self.socket_path is not None:
            object.__setattr__(self, "socket_path", Path(self.socket_path))
        if self.socket_path is None and self.tcp_port is None:
            raise SettingsError("the daemon needs a socket path or a TCP port to listen on; both are None")
        if self.admin_socket_path is None:
            api = self.socket_path or self.state_dir / SOCKET_NAME
            object.__setattr__(self, "admin_socket_path", admin_socket_for(api))
        object.__setattr__(self, "admin_socket_path", Path(self.admin_socket_path))
        if self.admin_socket_path == self.socket_path:
            raise SettingsError(f"admin_socket_path is the API socket {self.socket_path}; expected another path")
        dirs = tuple(Path(d) for d in self.deploy_dirs)
        relative = [str(d) for d in dirs if not d.is_absolute()]
        if relative:
            raise SettingsError(f"deploy_dirs {relative} are relative; expected absolute folders")
        object.__setattr__(self, "deploy_dirs", dirs)
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise SettingsError(f"threads={self.threads!r}: expected an integer >= 1 (or None: the policy's)")
        for name in ("api_threads", "max_body_bytes", "max_upload_bytes", "probe_runs", "warmup_samples"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SettingsError(f"{name}={value!r}: expected an integer >= 1")
        for name in ("command_timeout_s", "drain_timeout_s", "probe_interval_s", "retention_interval_s", "heartbeat_s"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0 < value < float("inf")):
                raise SettingsError(f"{name}={value!r}: expected a finite number of seconds > 0")

    @classmethod
    def from_environment(
        cls,
        *,
        state_dir: str | os.PathLike[str] | None = None,
        socket_path: str | os.PathLike[str] | None = None,
        policy_path: str | os.PathLike[str] | None = None,
        **kwargs: Any,
    ) -> DaemonSettings:
        """Settings with systemd's directories filled in where not given (see :mod:`service.state.paths`)."""
        state = resolve_state_dir(state_dir)
        return cls(
            state_dir=state,
            socket_path=Path(socket_path) if socket_path else default_socket(state),
            policy_path=Path(policy_path) if policy_path else default_policy(state),
            **kwargs,
        )

    @property
    def inbox(self) -> Path:
        return self.state_dir / "inbox"

    @property
    def deploy_roots(self) -> tuple[Path, ...]:
        """Where a deploy by path may read: the inbox and ``deploy_dirs``."""
        return (self.inbox, *self.deploy_dirs)
