"""The daemon's event loop in-process: commands, time limits, closing, failing handlers."""

from __future__ import annotations

import threading
import time

import pytest

import service.api.admin
import service.api.feedback
import service.daemon.core
import service.daemon.documents
import service.daemon.loop
import service.daemon.settings
import service.daemon.swap
import service.serving.ingest
import service.serving.probe
import service.state.policy_state
from service.daemon.loop import EventLoop, Reload, Stop
from service.daemon.sdnotify import Notifier
from service.daemon.settings import DaemonSettings
from service.errors import DaemonBusy, RecordNotFound, SettingsError

NEW_MODULES = [
    service.api.admin,
    service.daemon.core,
    service.daemon.settings,
    service.api.feedback,
    service.serving.ingest,
    service.daemon.loop,
    service.state.policy_state,
    service.serving.probe,
    service.daemon.documents,
    service.daemon.swap,
]


@pytest.mark.parametrize("module", NEW_MODULES, ids=lambda m: m.__name__)
def test_all_is_sorted_and_exists(module) -> None:
    assert sorted(module.__all__) == module.__all__
    assert all(hasattr(module, name) for name in module.__all__)


@pytest.fixture
def loop():
    loop = EventLoop(Notifier(""), heartbeat_s=0.05, command_timeout_s=5)
    loop.accepting = True
    errors: list[tuple[object, Exception]] = []
    thread = threading.Thread(target=lambda: loop.run(on_error=lambda e, x: errors.append((e, x))))
    yield loop, thread, errors
    loop.put(Stop("test over"))
    if thread.is_alive():
        thread.join(5)


def test_commands_run_on_the_loop_thread_and_return_or_raise(loop) -> None:
    loop, thread, _ = loop
    seen = []
    loop.command("echo", lambda value: seen.append(threading.current_thread()) or value * 2)

    def missing() -> None:
        raise RecordNotFound("no such model")

    loop.command("missing", missing)
    thread.start()
    assert loop.submit("echo", {"value": 21}) == 42
    assert seen == [thread]
    with pytest.raises(RecordNotFound, match="no such model"):
        loop.submit("missing")
    with pytest.raises(SettingsError, match=r"unknown command 'nope'; known: echo, missing"):
        loop.submit("nope")


def test_a_failing_handler_is_reported_and_the_loop_goes_on(loop) -> None:
    loop, thread, errors = loop

    def boom(event: Reload) -> None:
        raise RuntimeError(f"cannot {event.reason}")

    loop.on(Reload, boom)
    loop.command("ping", lambda: "pong")
    thread.start()
    loop.put(Reload("reload"))
    assert loop.submit("ping") == "pong"
    assert [(type(e).__name__, str(x)) for e, x in errors] == [("Reload", "cannot reload")]


def test_a_command_the_loop_never_takes_up_times_out_and_is_not_run_later(loop) -> None:
    loop, thread, _ = loop
    ran = []
    loop.command("late", lambda: ran.append(1))
    started = time.monotonic()
    with pytest.raises(DaemonBusy, match=r"did not take up late within 0.3 s; it was not run"):
        loop.submit("late", timeout=0.3)  # the loop is not running yet
    assert 0.3 <= time.monotonic() - started < 2
    thread.start()
    loop.command("ping", lambda: "pong")
    assert loop.submit("ping") == "pong"
    assert ran == [], "a command given up by its caller must not run afterwards"


def test_a_slow_command_times_out_with_a_hint(loop) -> None:
    loop, thread, _ = loop
    release = threading.Event()
    loop.command("slow", lambda: release.wait(5))
    thread.start()
    with pytest.raises(DaemonBusy, match=r"slow did not finish within 0.2 s; it may still complete"):
        loop.submit("slow", timeout=0.2)
    release.set()


def test_closing_cancels_waiting_commands_and_refuses_new_ones(loop) -> None:
    loop, _, _ = loop  # not running: commands stay queued
    outcome: list[object] = []

    def waiter() -> None:
        try:
            outcome.append(loop.submit("deploy", timeout=10))
        except DaemonBusy as exc:
            outcome.append(exc)

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.2)
    loop.close("stopping")
    t.join(5)
    assert len(outcome) == 1 and isinstance(outcome[0], DaemonBusy) and "stopping" in str(outcome[0])
    with pytest.raises(DaemonBusy, match="not taking commands"):
        loop.submit("deploy")


def test_settings_are_validated(tmp_path) -> None:
    with pytest.raises(SettingsError, match="needs a socket path or a TCP port"):
        DaemonSettings(state_dir=tmp_path)
    with pytest.raises(SettingsError, match=r"probe_interval_s=0: expected a finite number of seconds > 0"):
        DaemonSettings(state_dir=tmp_path, tcp_port=0, probe_interval_s=0)
    with pytest.raises(SettingsError, match=r"threads=0: expected an integer >= 1"):
        DaemonSettings(state_dir=tmp_path, tcp_port=0, threads=0)
    s = DaemonSettings(state_dir=str(tmp_path), tcp_port=0)
    assert s.policy_path == tmp_path / "policy.toml" and s.inbox == tmp_path / "inbox"


def test_settings_follow_systemds_directories(tmp_path, monkeypatch) -> None:
    for var, sub in (("STATE_DIRECTORY", "var"), ("RUNTIME_DIRECTORY", "run"), ("CONFIGURATION_DIRECTORY", "etc")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    for var in ("LIFELONG_STATE_DIR", "LIFELONG_SOCKET", "LIFELONG_POLICY"):
        monkeypatch.delenv(var, raising=False)
    s = DaemonSettings.from_environment()
    assert (s.state_dir, s.socket_path, s.policy_path) == (
        tmp_path / "var",
        tmp_path / "run" / "lifelong.sock",
        tmp_path / "etc" / "policy.toml",
    )
    s = DaemonSettings.from_environment(socket_path=tmp_path / "x.sock", policy_path=tmp_path / "p.toml")
    assert (s.socket_path, s.policy_path) == (tmp_path / "x.sock", tmp_path / "p.toml")
