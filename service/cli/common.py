"""What the command modules share: logging to the state's log folder and the daemon client's options."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import click

from service.state.paths import resolve_state_dir

__all__ = ["client_options", "make_client", "setup_logging"]


def setup_logging(state_dir: Path, name: str, verbose: bool) -> Path:
    log_dir = state_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_file = log_dir / f"{name}.log"
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    fh = logging.FileHandler(log_file)
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(fh)
    sh = logging.StreamHandler(sys.stderr)
    sh.setLevel(logging.INFO if verbose else logging.WARNING)
    sh.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    root.addHandler(sh)
    return log_file


def client_options(fn: Any) -> Any:
    fn = click.option(
        "--socket",
        "socket_path",
        type=click.Path(path_type=Path),
        default=None,
        help="The daemon's socket [$LIFELONG_SOCKET, /run/lifelong/lifelong.sock, else STATE/lifelong.sock].",
    )(fn)
    fn = click.option(
        "--tcp", "tcp_port", type=click.IntRange(1, 65535), default=None, help="Talk to 127.0.0.1:PORT instead."
    )(fn)
    return click.option("--state-dir", type=click.Path(path_type=Path), default=None, help="State directory.")(fn)


def make_client(socket_path: Path | None, tcp_port: int | None, state_dir: Path | None, timeout: float = 30.0) -> Any:
    from service.api.client import Client
    from service.state.paths import admin_socket_for, default_socket

    if tcp_port is not None:  # the admin socket is where a TCP-only daemon puts it: STATE/lifelong-admin.sock
        admin = admin_socket_for(default_socket(resolve_state_dir(state_dir)))
        return Client(port=tcp_port, timeout=timeout, admin_socket_path=admin)
    return Client(socket_path or default_socket(resolve_state_dir(state_dir), client=True), timeout=timeout)
