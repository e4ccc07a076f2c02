"""Periodic jobs of the daemon (drift check, latency probe, retention) on APScheduler 3.

A thin layer over :class:`~apscheduler.schedulers.background.BackgroundScheduler` that fixes
the choices every job of a resident service needs, so they cannot be forgotten one job at a
time:

- ``max_instances=1``: a slow run is never overlapped by the next one; the run that finds
  its predecessor still busy is skipped and logged.
- ``coalesce=True``: after a stall (a suspended VM, a clock jump, a busy pool) a job runs
  once, not once per missed tick.
- ``misfire_grace_time``: a run that could not start within the grace time is dropped and
  logged as missed (default: one interval, since the next run is due by then anyway).
- Every error is logged with its traceback and counted; APScheduler already catches
  whatever a job raises (``BaseException`` included), so a failing job runs again at its
  next tick and the scheduler lives on. Listener failures are caught as well.

The daemon passes the work in as plain callables; they run on the scheduler's thread pool,
must return soon, and should do nothing heavier than a numpy computation or a store write.
Long work (training, adaptation, export) belongs in :mod:`service.workers.supervisor` processes, which
a job may start but must not wait for. :attr:`Scheduler.stopping` is set by
:meth:`Scheduler.shutdown` for jobs that loop.

Note that APScheduler logs each run at INFO under ``apscheduler.executors.default``; the
daemon may raise that logger to WARNING to keep the journal quiet.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime

from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_EXECUTED,
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    JobEvent,
    JobExecutionEvent,
)
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from service.errors import SettingsError

__all__ = ["JobSpec", "JobStats", "Scheduler"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobSpec:
    """One periodic job.

    Attributes:
        name: Unique id, used in logs and :meth:`Scheduler.stats` (``"drift-check"``).
        func: Called with no arguments on a pool thread.
        interval_s: Seconds between scheduled runs.
        misfire_grace_s: A run starting later than this is dropped as missed; whole
            seconds (APScheduler 3 takes nothing finer); ``None`` means one interval,
            rounded up.
        run_at_start: Run once right after :meth:`Scheduler.start` instead of waiting one
            interval (a retention pass at boot, say).
    """

    name: str
    func: Callable[[], object]
    interval_s: float
    misfire_grace_s: int | None = None
    run_at_start: bool = False

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise SettingsError(f"job name {self.name!r}: expected a non-empty string")
        if not callable(self.func):
            raise SettingsError(f"job {self.name!r}: func {self.func!r} is not callable")
        if not self.interval_s > 0:
            raise SettingsError(f"job {self.name!r}: interval_s={self.interval_s!r}, expected seconds > 0")
        grace = self.misfire_grace_s
        if grace is not None and (not isinstance(grace, int) or isinstance(grace, bool) or grace < 1):
            raise SettingsError(f"job {self.name!r}: misfire_grace_s={grace!r}, expected whole seconds >= 1")

    @property
    def grace_s(self) -> int:
        """The misfire grace time in force, in whole seconds."""
        return max(1, math.ceil(self.interval_s)) if self.misfire_grace_s is None else self.misfire_grace_s


@dataclass(frozen=True)
class JobStats:
    """What a job has done since the scheduler started; for logs and ``lifelong status``."""

    name: str
    interval_s: float
    runs: int = 0
    errors: int = 0
    missed: int = 0
    skipped: int = 0
    running: bool = False
    last_finished_at: float | None = None  # time.time()
    last_duration_s: float | None = None
    last_error: str | None = None  # of the latest run; None once a run succeeds
    next_run_at: float | None = None  # time.time(); None when paused or stopped

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict."""
        return asdict(self)


@dataclass
class _Counters:
    spec: JobSpec
    runs: int = 0
    errors: int = 0
    missed: int = 0
    skipped: int = 0
    running: int = 0
    last_finished_at: float | None = None
    last_duration_s: float | None = None
    last_error: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


_LISTENED = EVENT_JOB_EXECUTED | EVENT_JOB_ERROR | EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES


class Scheduler:
    """Runs :class:`JobSpec` callables at fixed intervals on a background thread pool.

    Args:
        jobs: Jobs to add now; more may be added with :meth:`add`, before or after start.
        max_workers: Pool threads. Each job runs at most once at a time, so more threads
            than jobs buys nothing; fewer makes jobs queue behind each other (and miss).
    """

    def __init__(self, jobs: Iterable[JobSpec] = (), *, max_workers: int = 2) -> None:
        if not isinstance(max_workers, int) or max_workers < 1:
            raise SettingsError(f"max_workers={max_workers!r}: expected an integer >= 1")
        self.stopping = threading.Event()
        self._counters: dict[str, _Counters] = {}
        self._scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(max_workers)},
            job_defaults={"max_instances": 1, "coalesce": True},
            timezone=UTC,  # intervals need no local time; avoids reading /etc/localtime
            logger=logging.getLogger(f"{__name__}.apscheduler"),
        )
        self._scheduler.add_listener(self._on_event, _LISTENED)
        for spec in jobs:
            self.add(spec)

    @property
    def running(self) -> bool:
        """Whether the scheduler thread is running."""
        return bool(self._scheduler.running)

    def add(self, spec: JobSpec) -> None:
        """Schedule ``spec``; its name must be new."""
        if spec.name in self._counters:
            raise SettingsError(f"job {spec.name!r} is already scheduled; job names must be unique")
        counters = _Counters(spec)
        self._counters[spec.name] = counters
        extra: dict[str, object] = {}
        if spec.run_at_start:  # an explicit next_run_time=None would add the job paused
            extra["next_run_time"] = datetime.now(UTC)
        self._scheduler.add_job(
            self._wrap(counters),
            IntervalTrigger(seconds=spec.interval_s),
            id=spec.name,
            name=spec.name,
            misfire_grace_time=spec.grace_s,
            max_instances=1,
            coalesce=True,
            **extra,
        )

    def start(self) -> None:
        """Start the scheduler thread; jobs run from now on."""
        self.stopping.clear()
        self._scheduler.start()
        logger.info(
            "scheduler started: %s", ", ".join(f"{n} every {c.spec.interval_s:g} s" for n, c in self._counters.items())
        )

    def shutdown(self, wait: bool = False) -> None:
        """Stop scheduling. With ``wait=False`` runs in progress finish on their own threads.

        Args:
            wait: Block until running jobs return. The daemon passes ``False`` so that a
                hung job cannot hold up the stop; systemd's ``TimeoutStopSec`` is the backstop.
        """
        self.stopping.set()
        if self._scheduler.running:
            self._scheduler.shutdown(wait=wait)
            logger.info("scheduler stopped")

    def run_now(self, name: str) -> None:
        """Bring job ``name``'s next run forward to now (a drift check after new samples).

        If the job is running at that moment this run is skipped, like any overlapping run.
        """
        try:
            self._scheduler.modify_job(name, next_run_time=datetime.now(UTC))
        except JobLookupError:
            raise SettingsError(f"no job named {name!r}; scheduled jobs: {sorted(self._counters)}") from None

    def reschedule(self, name: str, interval_s: float, misfire_grace_s: int | None = None) -> None:
        """Give job ``name`` a new interval (a policy reload); the next run is one interval away."""
        c = self._counters.get(name)
        if c is None:
            raise SettingsError(f"no job named {name!r}; scheduled jobs: {sorted(self._counters)}")
        spec = replace(c.spec, interval_s=interval_s, misfire_grace_s=misfire_grace_s)  # validated here
        self._scheduler.modify_job(name, misfire_grace_time=spec.grace_s)
        self._scheduler.reschedule_job(name, trigger=IntervalTrigger(seconds=spec.interval_s))
        with c.lock:
            c.spec = spec
        logger.info("job %s now runs every %g s", name, interval_s)

    def stats(self) -> dict[str, JobStats]:
        """A snapshot of every job's counters, by name."""
        out = {}
        for name, c in self._counters.items():
            job = self._scheduler.get_job(name)
            next_run = job.next_run_time if job is not None and self._scheduler.running else None
            with c.lock:
                out[name] = JobStats(
                    name=name,
                    interval_s=c.spec.interval_s,
                    runs=c.runs,
                    errors=c.errors,
                    missed=c.missed,
                    skipped=c.skipped,
                    running=c.running > 0,
                    last_finished_at=c.last_finished_at,
                    last_duration_s=c.last_duration_s,
                    last_error=c.last_error,
                    next_run_at=next_run.timestamp() if next_run is not None else None,
                )
        return out

    @staticmethod
    def _wrap(c: _Counters) -> Callable[[], object]:
        def run() -> object:
            with c.lock:
                c.running += 1
            started = time.monotonic()
            try:
                return c.spec.func()
            finally:
                with c.lock:
                    c.running -= 1
                    c.runs += 1
                    c.last_duration_s = time.monotonic() - started
                    c.last_finished_at = time.time()

        run.__name__ = run.__qualname__ = c.spec.name
        return run

    def _on_event(self, event: JobEvent) -> None:
        try:
            c = self._counters.get(event.job_id)
            if c is None:
                return
            if event.code == EVENT_JOB_ERROR:
                assert isinstance(event, JobExecutionEvent)
                exc = event.exception
                # Each line is written before its counter moves, so a reader who sees the count
                # also finds the line in the log.
                logger.error(
                    "job %s failed (run scheduled at %s); it runs again in %g s",
                    event.job_id, event.scheduled_run_time, c.spec.interval_s,
                    exc_info=(type(exc), exc, exc.__traceback__),
                )  # fmt: skip
                with c.lock:
                    c.errors += 1
                    c.last_error = f"{type(exc).__name__}: {exc}"
            elif event.code == EVENT_JOB_MISSED:
                assert isinstance(event, JobExecutionEvent)
                logger.warning(
                    "job %s missed its run scheduled at %s: not started within the %g s grace time",
                    event.job_id, event.scheduled_run_time, c.spec.grace_s,
                )  # fmt: skip
                with c.lock:
                    c.missed += 1
            elif event.code == EVENT_JOB_MAX_INSTANCES:
                logger.warning("job %s is still running; skipped the next run", event.job_id)
                with c.lock:
                    c.skipped += 1
            elif event.code == EVENT_JOB_EXECUTED:
                with c.lock:
                    c.last_error = None
        except Exception:
            logger.exception("job listener failed on %r", event)

    def __repr__(self) -> str:
        return f"Scheduler(jobs={sorted(self._counters)}, running={self.running})"
