"""sd_notify against real AF_UNIX datagram sockets, as systemd binds them."""

from __future__ import annotations

import logging
import os
import socket
import struct
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.daemon import sdnotify
from service.daemon.sdnotify import Notifier, watchdog_interval
from service.errors import SettingsError


def _short_dir(tmp_path: Path) -> Path:
    # sun_path holds 108 bytes; pytest's tmp_path can be longer on some machines.
    if len(str(tmp_path / "notify.sock")) < 100:
        return tmp_path
    return Path(tempfile.mkdtemp(prefix="sdn"))


def _receiver(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    # systemd checks the sender's pid (NotifyAccess=main) through SCM_CREDENTIALS.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    sock.settimeout(2.0)
    return sock


def _recv(sock: socket.socket) -> tuple[dict[str, str], int]:
    data, ancdata, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(struct.calcsize("3i")))
    pid = -1
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid, _uid, _gid = struct.unpack("3i", payload[: struct.calcsize("3i")])
    text = data.decode()
    return dict(line.split("=", 1) for line in text.split("\n")), pid


@pytest.fixture
def path_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    address = str(_short_dir(tmp_path) / "notify.sock")
    sock = _receiver(address)
    yield address, sock
    sock.close()


@pytest.fixture
def abstract_socket() -> Iterator[tuple[str, socket.socket]]:
    name = f"lifelong-test-{uuid.uuid4().hex}"
    sock = _receiver("\0" + name)
    yield "@" + name, sock
    sock.close()


@pytest.mark.parametrize("kind", ["path", "abstract"])
def test_every_notification_arrives_as_one_datagram_from_this_pid(kind: str, request: pytest.FixtureRequest) -> None:
    address, sock = request.getfixturevalue(f"{kind}_socket")
    n = Notifier(address)
    assert n.enabled
    assert n.ready("serving model abc")
    msg, pid = _recv(sock)
    assert msg == {"READY": "1", "STATUS": "serving model abc"}
    assert pid == os.getpid()

    assert n.status("3 jobs")
    assert _recv(sock)[0] == {"STATUS": "3 jobs"}
    assert n.watchdog()
    assert _recv(sock)[0] == {"WATCHDOG": "1"}

    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert n.reloading()
    msg, _ = _recv(sock)
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert msg["RELOADING"] == "1"
    assert before <= int(msg["MONOTONIC_USEC"]) <= after

    assert n.stopping("draining")
    assert _recv(sock)[0] == {"STOPPING": "1", "STATUS": "draining"}
    assert n.extend_timeout(2.5)
    assert _recv(sock)[0] == {"EXTEND_TIMEOUT_USEC": "2500000"}
    n.close()


def test_a_status_with_newlines_cannot_inject_assignments(path_socket: tuple[str, socket.socket]) -> None:
    address, sock = path_socket
    Notifier(address).status("line one\nREADY=1")
    assert _recv(sock)[0] == {"STATUS": "line one READY=1"}


def test_module_functions_follow_notify_socket_from_the_environment(
    path_socket: tuple[str, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    address, sock = path_socket
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    assert sdnotify.ready()
    assert _recv(sock)[0] == {"READY": "1"}
    assert sdnotify.watchdog() and sdnotify.status("x") and sdnotify.stopping() and sdnotify.reloading()
    assert [next(iter(_recv(sock)[0])) for _ in range(4)] == ["WATCHDOG", "STATUS", "STOPPING", "RELOADING"]
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert sdnotify.ready() is False  # outside systemd: a no-op
    sock.settimeout(0.2)
    with pytest.raises(TimeoutError):
        sock.recv(100)


def test_outside_systemd_everything_is_a_quiet_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier()
    assert not n.enabled
    assert n.ready() is False and n.watchdog() is False and n.reloading() is False


def test_a_relative_address_is_refused_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="service.daemon.sdnotify"):
        n = Notifier("run/notify")
    assert not n.enabled and n.ready() is False
    assert "run/notify" in caplog.text


def test_a_vanished_socket_is_logged_and_never_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    address = str(_short_dir(tmp_path) / "gone.sock")
    sock = _receiver(address)
    n = Notifier(address)
    assert n.watchdog()
    sock.close()
    os.unlink(address)
    with caplog.at_level(logging.WARNING, logger="service.daemon.sdnotify"):
        assert n.watchdog() is False
    assert "gone.sock" in caplog.text and "WATCHDOG=1" in caplog.text
    # and it recovers once systemd's socket is back
    sock = _receiver(address)
    assert n.watchdog()
    assert _recv(sock)[0] == {"WATCHDOG": "1"}
    sock.close()


def test_malformed_assignments_and_timeouts_are_refused(path_socket: tuple[str, socket.socket]) -> None:
    n = Notifier(path_socket[0])
    with pytest.raises(SettingsError, match="'READY'"):
        n.send("READY")
    with pytest.raises(SettingsError, match="KEY=VALUE"):
        n.send("A=1\nB=2")
    with pytest.raises(SettingsError, match="-1"):
        n.extend_timeout(-1)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "{pid}"}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "me"}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    env = {k: v.format(pid=os.getpid()) for k, v in env.items()}
    assert watchdog_interval(env) == expected


def test_watchdog_interval_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval() == 4.0
