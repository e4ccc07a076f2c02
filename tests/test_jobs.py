"""The job scheduler with real short intervals on a real APScheduler thread pool."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import pytest

from service.errors import SettingsError
from service.jobs import JobSpec, Scheduler


@pytest.fixture
def sched() -> Iterator[list[Scheduler]]:
    made: list[Scheduler] = []
    yield made
    for s in made:
        s.shutdown(wait=True)


def _wait_until(predicate, timeout: float = 5.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_a_slow_job_never_runs_twice_at_once(sched: list[Scheduler], caplog: pytest.LogCaptureFixture) -> None:
    lock = threading.Lock()
    active, peak, runs = [0], [0], [0]

    def slow() -> None:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.35)
        with lock:
            active[0] -= 1
            runs[0] += 1

    s = Scheduler([JobSpec("slow", slow, interval_s=0.1)], max_workers=4)
    sched.append(s)
    with caplog.at_level(logging.WARNING, logger="service.jobs"):
        s.start()
        _wait_until(lambda: runs[0] >= 3)
    assert peak[0] == 1
    stats = s.stats()["slow"]
    assert stats.skipped >= 2 and stats.errors == 0 and stats.runs >= 3
    assert stats.last_duration_s is not None and stats.last_duration_s >= 0.35
    assert "job slow is still running; skipped" in caplog.text


def test_a_raising_job_is_logged_with_its_traceback_and_runs_again(
    sched: list[Scheduler], caplog: pytest.LogCaptureFixture
) -> None:
    calls = [0]

    def broken() -> None:
        calls[0] += 1
        raise ValueError(f"drift store unreadable #{calls[0]}")

    ticks = [0]
    s = Scheduler(
        [
            JobSpec("drift-check", broken, interval_s=0.1),
            JobSpec("probe", lambda: ticks.__setitem__(0, ticks[0] + 1), 0.1),
        ]
    )
    sched.append(s)
    with caplog.at_level(logging.ERROR, logger="service.jobs"):
        s.start()
        _wait_until(lambda: s.stats()["drift-check"].errors >= 3)
    assert s.running and ticks[0] >= 2  # the scheduler and the other job live on
    ours = [r for r in caplog.records if r.name == "service.jobs" and r.levelno == logging.ERROR]
    assert len(ours) >= 3
    assert ours[0].exc_info is not None and ours[0].exc_info[0] is ValueError
    assert "drift-check failed" in ours[0].getMessage()
    assert "in broken" in caplog.text  # the traceback names the failing function
    stats = s.stats()["drift-check"]
    assert stats.last_error is not None and stats.last_error.startswith("ValueError: drift store unreadable")


def test_even_system_exit_in_a_job_does_not_stop_the_scheduler(sched: list[Scheduler]) -> None:
    def bye() -> None:
        raise SystemExit(3)

    s = Scheduler([JobSpec("bye", bye, interval_s=0.1)])
    sched.append(s)
    s.start()
    _wait_until(lambda: s.stats()["bye"].errors >= 2)
    assert s.running


def test_a_run_that_cannot_start_in_its_grace_time_is_logged_as_missed(
    sched: list[Scheduler], caplog: pytest.LogCaptureFixture
) -> None:
    # One pool thread, held by a slow job: the probe's run waits in the pool queue past its grace.
    release = threading.Event()
    probe_runs = [0]
    s = Scheduler(
        [
            JobSpec("hog", lambda: release.wait(1.4), interval_s=0.05, run_at_start=True),
            JobSpec("probe", lambda: probe_runs.__setitem__(0, probe_runs[0] + 1), interval_s=0.1, misfire_grace_s=1),
        ],
        max_workers=1,
    )
    sched.append(s)
    with caplog.at_level(logging.WARNING, logger="service.jobs"):
        s.start()
        # The counter moves before the listener thread writes its line: wait for the line itself.
        _wait_until(lambda: "job probe missed its run scheduled at" in caplog.text)
        release.set()
    assert s.stats()["probe"].missed >= 1
    assert "1 s grace time" in caplog.text


def test_run_now_reschedule_and_stats(sched: list[Scheduler]) -> None:
    done = threading.Event()
    s = Scheduler([JobSpec("retention", done.set, interval_s=3600)])
    sched.append(s)
    s.start()
    before = s.stats()["retention"]
    assert before.runs == 0 and before.next_run_at is not None and before.next_run_at > time.time() + 3000
    s.run_now("retention")
    assert done.wait(3.0)
    _wait_until(lambda: s.stats()["retention"].runs == 1)
    s.reschedule("retention", 0.1)
    _wait_until(lambda: s.stats()["retention"].runs >= 3)
    assert s.stats()["retention"].interval_s == 0.1
    assert set(s.stats()["retention"].to_dict()) >= {"runs", "errors", "missed", "skipped", "next_run_at"}
    with pytest.raises(SettingsError, match="'nope'.*'retention'"):
        s.run_now("nope")
    s.shutdown()
    assert not s.running and s.stopping.is_set()
    assert s.stats()["retention"].next_run_at is None


def test_shutdown_without_wait_returns_while_a_job_still_runs(sched: list[Scheduler]) -> None:
    started, release = threading.Event(), threading.Event()

    def long_job() -> None:
        started.set()
        release.wait(5)

    s = Scheduler([JobSpec("long", long_job, interval_s=0.05, run_at_start=True)])
    started_at = time.monotonic()
    s.start()
    assert started.wait(3)
    s.shutdown(wait=False)
    assert time.monotonic() - started_at < 2.0
    assert s.stopping.is_set()
    release.set()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "", "func": print, "interval_s": 1}, "job name ''"),
        ({"name": "x", "func": 3, "interval_s": 1}, "func 3 is not callable"),
        ({"name": "x", "func": print, "interval_s": 0}, "interval_s=0"),
        ({"name": "x", "func": print, "interval_s": 1, "misfire_grace_s": -2}, "misfire_grace_s=-2"),
        (
            {"name": "x", "func": print, "interval_s": 1, "misfire_grace_s": 0.5},
            "misfire_grace_s=0.5, expected whole seconds",
        ),
    ],
)
def test_bad_job_specs_are_refused(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(SettingsError, match=match):
        JobSpec(**kwargs)  # type: ignore[arg-type]


def test_duplicate_names_and_bad_pools_are_refused() -> None:
    s = Scheduler([JobSpec("a", print, 1)])
    with pytest.raises(SettingsError, match="'a' is already scheduled"):
        s.add(JobSpec("a", print, 2))
    with pytest.raises(SettingsError, match="max_workers=0"):
        Scheduler(max_workers=0)
    assert (
        JobSpec("b", print, 0.1).grace_s == 1
        and JobSpec("b", print, 4.5).grace_s == 5
        and JobSpec("b", print, 4, misfire_grace_s=1).grace_s == 1
    )
