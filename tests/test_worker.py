"""The worker supervisor with real child processes: results, crashes, hangs, cancel, priority."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.errors import SettingsError, WorkerError
from service.workers.supervisor import WorkerHandle, WorkerProgress, WorkerSettings, WorkerState, WorkerSupervisor
from service.workers.worker_io import REPORT_FD_ENV

FAST = WorkerSettings(time_limit_s=30, kill_grace_s=0.5, orphan_check_s=0.2)

MODULES = {
    "wk_success": """
        import os, sys
        from service.workers.worker_io import report_progress, report_result
        for i in range(3):
            report_progress((i + 1) / 3, phase="train", message=f"step {i + 1}")
        print("stdout noise goes to the log, not the channel")
        report_result({
            "args": sys.argv[1:],
            "nice": os.getpriority(os.PRIO_PROCESS, 0),
            "policy": os.sched_getscheduler(0),
            "oom_score_adj": int(open("/proc/self/oom_score_adj").read()),
            "notify_socket": os.environ.get("NOTIFY_SOCKET"),
        })
    """,
    "wk_crash": """
        import sys
        sys.stderr.write("boom: the data folder is empty\\n")
        sys.exit(3)
    """,
    "wk_raise": """
        raise ValueError("no samples in /srv/inbox")
    """,
    "wk_no_result": """
        print("done, but forgot to report")
    """,
    "wk_hang": """
        import signal, subprocess, sys, time
        from service.workers.worker_io import report_progress
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # inherited by the grandchild too
        g = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        report_progress(0.1, "hang", str(g.pid))
        time.sleep(120)
    """,
    "wk_sleep": """
        import sys, time
        from service.workers.worker_io import report_progress
        try:
            report_progress(0.0, "waiting", "ready")
            time.sleep(120)
        finally:
            open(sys.argv[1], "w").write("cleaned up")
    """,
    "wk_garbage": """
        import os
        from service.workers.worker_io import report_result
        fd = int(os.environ["LIFELONG_WORKER_FD"])
        os.write(fd, b'not json\\n{"v": 99, "progress": 0.5}\\n{"v": 1, "progress": 7}\\n[1, 2]\\n')
        report_result({"ok": True})
    """,
}


@pytest.fixture
def workers(tmp_path: Path) -> Path:
    mods = tmp_path / "mods"
    mods.mkdir()
    for name, code in MODULES.items():
        (mods / f"{name}.py").write_text(textwrap.dedent(code))
    return mods


@pytest.fixture
def sup(tmp_path: Path) -> Iterator[WorkerSupervisor]:
    s = WorkerSupervisor(tmp_path / "logs", FAST)
    yield s
    s.cancel_all(timeout=10)  # nothing outlives a failed test


def _env(mods: Path) -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join([str(mods), *sys.path])}


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is not running


def _wait_progress(h: WorkerHandle, timeout: float = 10.0) -> WorkerProgress:
    deadline = time.monotonic() + timeout
    while h.progress is None:
        assert time.monotonic() < deadline and not h.done, f"no progress from {h}: {h.error} {h.output_tail}"
        time.sleep(0.02)
    return h.progress


def test_success_reports_progress_then_result(
    sup: WorkerSupervisor, workers: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")  # must not reach the child
    seen: list[tuple[float, str, str]] = []
    finished: list[WorkerHandle] = []
    h = sup.start(
        "wk_success",
        ["--epochs", "3", "--", "x y"],
        job_id="adapt-1",
        env=_env(workers),
        on_progress=lambda h, p: seen.append((p.fraction, p.phase, p.message)),
        on_done=finished.append,
    )
    assert h.wait(20) is WorkerState.SUCCEEDED, h.output_tail
    assert finished == [h]
    assert seen == [(1 / 3, "train", "step 1"), (2 / 3, "train", "step 2"), (1.0, "train", "step 3")]
    assert h.exit_code == 0 and h.error is None
    result = h.check()
    assert result["args"] == ["--epochs", "3", "--", "x y"]
    assert result["notify_socket"] is None
    assert result["nice"] == min(19, os.getpriority(os.PRIO_PROCESS, 0) + FAST.nice)
    assert result["policy"] == os.SCHED_IDLE
    assert result["oom_score_adj"] == FAST.oom_score_adj
    log = h.log_path.read_text()
    assert h.log_path == sup.log_dir / "adapt-1.log" and "stdout noise goes to the log" in log
    assert "stdout noise" not in json.dumps(h.to_dict()["result"])
    assert h.to_dict()["state"] == "succeeded" and h.to_dict()["progress"]["fraction"] == 1.0


def test_the_child_runs_at_lower_priority_while_it_works(sup: WorkerSupervisor, workers: Path, tmp_path: Path) -> None:
    h = sup.start("wk_sleep", [str(tmp_path / "marker")], env=_env(workers))
    _wait_progress(h)
    fields = Path(f"/proc/{h.pid}/stat").read_text().rsplit(")", 1)[1].split()  # from field 3 on
    nice, policy = int(fields[19 - 3]), int(fields[41 - 3])
    assert nice == min(19, os.getpriority(os.PRIO_PROCESS, 0) + FAST.nice)
    assert policy == os.SCHED_IDLE
    assert os.getpgid(h.pid) == h.pid != os.getpgid(0)  # its own process group
    h.cancel()
    h.wait(10)


def test_a_crash_keeps_the_exit_code_and_the_stderr_tail(sup: WorkerSupervisor, workers: Path) -> None:
    h = sup.start("wk_crash", env=_env(workers))
    assert h.wait(20) is WorkerState.FAILED
    assert h.exit_code == 3
    assert h.error == "exited with code 3"
    assert "boom: the data folder is empty" in h.output_tail
    with pytest.raises(WorkerError, match=r"is failed: exited with code 3"):
        h.check()


def test_an_exception_is_reported_by_type_and_message(sup: WorkerSupervisor, workers: Path) -> None:
    h = sup.start("wk_raise", env=_env(workers))
    assert h.wait(20) is WorkerState.FAILED
    assert h.exit_code == 1
    assert h.error == "ValueError: no samples in /srv/inbox"
    assert "Traceback" in h.output_tail

    missing = sup.start("wk_does_not_exist", env=_env(workers))
    assert missing.wait(20) is WorkerState.FAILED
    assert missing.error is not None and "wk_does_not_exist" in missing.error


def test_exit_zero_without_a_result_is_a_failure(sup: WorkerSupervisor, workers: Path, tmp_path: Path) -> None:
    h = sup.start("wk_no_result", env=_env(workers))
    assert h.wait(20) is WorkerState.FAILED
    assert h.error == "exited 0 without reporting a result"
    lenient = WorkerSupervisor(tmp_path / "logs2", WorkerSettings(require_result=False))
    assert lenient.start("wk_no_result", env=_env(workers)).wait(20) is WorkerState.SUCCEEDED


def test_a_hung_worker_and_its_grandchild_are_killed_at_the_time_limit(sup: WorkerSupervisor, workers: Path) -> None:
    started = time.monotonic()
    h = sup.start("wk_hang", env=_env(workers), time_limit_s=1.5)
    grandchild = int(_wait_progress(h).message)
    assert _alive(grandchild) and _alive(h.pid)  # type: ignore[arg-type]
    assert h.wait(20) is WorkerState.TIMED_OUT
    elapsed = time.monotonic() - started
    assert 1.5 <= elapsed < 1.5 + FAST.kill_grace_s + 3
    assert h.exit_code == -9  # it ignored SIGTERM, so SIGKILL after the grace time
    assert h.error == "ran past its time limit of 1.5 s"
    deadline = time.monotonic() + 5
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(grandchild):
        os.kill(grandchild, signal.SIGKILL)
        pytest.fail("the grandchild outlived the job")
    assert not _alive(h.pid)  # type: ignore[arg-type]


def test_cancel_ends_the_job_gracefully_without_blocking_the_caller(
    sup: WorkerSupervisor, workers: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    t0 = time.monotonic()
    h = sup.start("wk_sleep", [str(marker)], env=_env(workers))
    assert time.monotonic() - t0 < 1.0  # start returns while the job runs
    assert h.state is WorkerState.RUNNING and sup.active() == [h] and sup.get(h.job_id) is h
    _wait_progress(h)
    t1 = time.monotonic()
    assert h.cancel()
    assert h.wait(10) is WorkerState.CANCELLED
    assert time.monotonic() - t1 < 2.0
    assert h.exit_code == 128 + 15  # SIGTERM became SystemExit in the child ...
    assert marker.read_text() == "cleaned up"  # ... so its finally block ran
    assert not h.cancel() and sup.active() == []
    with pytest.raises(WorkerError, match="is cancelled"):
        h.check()


def test_cancel_all_for_shutdown(sup: WorkerSupervisor, workers: Path, tmp_path: Path) -> None:
    hs = [sup.start("wk_sleep", [str(tmp_path / f"m{i}")], env=_env(workers)) for i in range(2)]
    for h in hs:
        _wait_progress(h)
    sup.cancel_all(timeout=10)
    assert [h.state for h in hs] == [WorkerState.CANCELLED] * 2


def test_garbage_on_the_channel_and_broken_callbacks_are_survived(
    sup: WorkerSupervisor, workers: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def bad_callback(h: WorkerHandle, *rest: object) -> None:
        raise RuntimeError("daemon bug")

    with caplog.at_level(logging.WARNING, logger="service.workers.supervisor"):
        h = sup.start("wk_garbage", env=_env(workers), on_progress=bad_callback, on_done=bad_callback)
        assert h.wait(20) is WorkerState.SUCCEEDED
        time.sleep(0.1)  # on_done runs right after the state is final
    assert h.result == {"ok": True} and h.progress is None
    assert "(not JSON)" in caplog.text and "(protocol version 99, expected 1)" in caplog.text
    assert (
        "(progress 7, expected a number from 0 to 1)" in caplog.text
        and "(a JSON list, expected an object)" in caplog.text
    )
    assert "on_done callback of worker" in caplog.text

    h2 = sup.start("wk_success", env=_env(workers), on_progress=bad_callback)
    assert h2.wait(20) is WorkerState.SUCCEEDED
    assert "on_progress callback of worker" in caplog.text


def test_a_worker_whose_supervisor_died_ends_itself(workers: Path, tmp_path: Path) -> None:
    code = textwrap.dedent(f"""
        import os, sys, time
        from service.workers.supervisor import WorkerSettings, WorkerSupervisor
        sup = WorkerSupervisor({str(tmp_path / "logs")!r}, WorkerSettings(orphan_check_s=0.2, kill_grace_s=0.5))
        h = sup.start("wk_sleep", [{str(tmp_path / "marker")!r}], env={{"PYTHONPATH": {str(workers)!r} + os.pathsep + os.pathsep.join(sys.path)}})
        while h.progress is None:
            time.sleep(0.02)
        print(h.pid, flush=True)
        os._exit(0)  # the daemon crashes without cancelling anything
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    pid = int(out.stdout.strip())
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pid):
        os.killpg(pid, signal.SIGKILL)
        pytest.fail("the orphaned worker kept running")
    assert (tmp_path / "marker").read_text() == "cleaned up"


def test_reports_go_to_stdout_when_run_by_hand() -> None:
    env = {k: v for k, v in os.environ.items() if k != REPORT_FD_ENV}
    code = "from service.workers.worker_io import *; report_progress(0.5, 'p', 'm'); report_result({'a': 1}); report_error('e')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True, timeout=60)
    assert [json.loads(line) for line in out.stdout.splitlines()] == [
        {"v": 1, "progress": 0.5, "phase": "p", "message": "m"},
        {"v": 1, "result": {"a": 1}},
        {"v": 1, "error": {"type": "Error", "message": "e"}},
    ]


def test_bad_requests_are_refused(sup: WorkerSupervisor, workers: Path) -> None:
    from service.workers.worker_io import report_progress

    with pytest.raises(SettingsError, match="'not a module'"):
        sup.start("not a module")
    with pytest.raises(SettingsError, match="'../evil'"):
        sup.start("wk_success", job_id="../evil")
    with pytest.raises(SettingsError, match="time_limit_s=0"):
        sup.start("wk_success", time_limit_s=0)
    with pytest.raises(SettingsError, match="nice=-5"):
        WorkerSettings(nice=-5)
    with pytest.raises(SettingsError, match="kill_grace_s=inf"):
        WorkerSettings(kill_grace_s=float("inf"))
    with pytest.raises(ValueError, match="1.5"):
        report_progress(1.5)
    h = sup.start("wk_sleep", ["/dev/null"], job_id="same", env=_env(workers))
    with pytest.raises(SettingsError, match="'same' is already running"):
        sup.start("wk_sleep", job_id="same")
    h.cancel()
    h.wait(10)


def test_the_serving_side_does_not_import_torch() -> None:
    code = "import service.workers.supervisor, service.jobs, service.daemon.watch, service.daemon.sdnotify, sys; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "False"
