"""Worker processes: torch jobs (training, adaptation, export) outside the serving process.

The serving process never imports torch; it starts each job as
``python -m service.workers.worker_io [priority options] -- MODULE ARGS...`` (see
:mod:`service.workers.worker_io` for the bootstrap and the progress protocol) and supervises it
from a thread, so a crashed or hung worker never blocks the daemon:

- **Own session and process group** (``start_new_session=True``, done by ``subprocess``
  in C between fork and exec): the time limit and :meth:`WorkerHandle.cancel` end the job
  with ``SIGTERM`` to the whole group, then ``SIGKILL`` after ``kill_grace_s``, so helper
  processes the job forked (data loaders) go with it. Leftovers of a job that exited are
  killed too, while the exited leader is still a zombie (``waitid(WNOWAIT)``), so the
  group id cannot have been reused by then.
- **Lower priority, set by the child itself** before the job's code runs: ``nice``,
  ``SCHED_IDLE`` and a higher OOM score, refused steps logged, not fatal. Not through
  ``preexec_fn``: the daemon has threads (watchers, scheduler, API), and Python code run
  between fork and exec in a threaded process can deadlock on a lock (logging, import,
  malloc) that another thread held at the fork. Not through ``os.setpriority(pid)`` from
  the parent after start either: on Linux that changes one thread, and races the child.
- **Progress over a pipe** of its own (``pass_fds``), not stdout: a library printing to
  stdout cannot corrupt the channel. The worker's stdout and stderr go to
  ``LOG_DIR/JOB_ID.log``; the tail of that file is kept on the handle for error reports.
- **Callbacks** (``on_progress``, ``on_done``) run on the supervision thread: the daemon's
  should only put the update on its queue. A callback that raises is logged and ignored.

The child's environment drops ``$NOTIFY_SOCKET`` and the watchdog variables (only the
daemon talks to systemd) and sets ``PYTHONUNBUFFERED`` so the log is current.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from service.errors import SettingsError, WorkerError
from service.workers.worker_io import REPORT_FD_ENV, ReportReader, parse_report

__all__ = ["WorkerHandle", "WorkerProgress", "WorkerSettings", "WorkerState", "WorkerSupervisor"]

logger = logging.getLogger(__name__)

_DROPPED_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")
_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_MODULE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_TICK_S = 0.1
_KEEP_FINISHED = 50  # finished handles kept for get(); the store keeps the history


class WorkerState(StrEnum):
    """Where a job is; every state but ``running`` is final."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed-out"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class WorkerSettings:
    """How workers are started and bounded.

    Attributes:
        time_limit_s: Wall-clock limit of a job (``start`` may override it per job).
        kill_grace_s: Between ``SIGTERM`` and ``SIGKILL`` of the job's process group.
        nice: Added to the worker's nice value (0-19).
        sched_idle: Run workers under ``SCHED_IDLE``: CPU only when nothing else wants it.
        oom_score_adj: Worker's OOM score adjustment (0-1000): under memory pressure the
            kernel kills a worker before the serving process.
        require_result: A worker that exits 0 without reporting a result has failed.
        tail_bytes: How much of the end of the log a handle keeps.
        orphan_check_s: How often a worker checks that its supervisor lives (0: never).
    """

    time_limit_s: float = 3600.0
    kill_grace_s: float = 10.0
    nice: int = 10
    sched_idle: bool = True
    oom_score_adj: int = 500
    require_result: bool = True
    tail_bytes: int = 4000
    orphan_check_s: float = 2.0

    def __post_init__(self) -> None:
        for name in ("time_limit_s", "kill_grace_s"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise SettingsError(f"{name}={value!r}: expected a finite number of seconds > 0")
        if not (isinstance(self.nice, int) and 0 <= self.nice <= 19):
            raise SettingsError(f"nice={self.nice!r}: expected an integer from 0 to 19 (workers only go lower)")
        if not (isinstance(self.oom_score_adj, int) and 0 <= self.oom_score_adj <= 1000):
            raise SettingsError(f"oom_score_adj={self.oom_score_adj!r}: expected an integer from 0 to 1000")
        if not (isinstance(self.tail_bytes, int) and self.tail_bytes >= 0):
            raise SettingsError(f"tail_bytes={self.tail_bytes!r}: expected an integer >= 0")
        if not self.orphan_check_s >= 0:
            raise SettingsError(f"orphan_check_s={self.orphan_check_s!r}: expected seconds >= 0")


@dataclass(frozen=True)
class WorkerProgress:
    """One progress report of a worker."""

    fraction: float
    phase: str
    message: str
    at: float  # time.time() when the supervisor read it


ProgressCallback = Callable[["WorkerHandle", WorkerProgress], None]
DoneCallback = Callable[["WorkerHandle"], None]


class WorkerHandle:
    """A started job: its state, progress, result, and the means to wait for or cancel it.

    Read from any thread; only the supervision thread writes.
    """

    def __init__(self, job_id: str, module: str, args: Sequence[str], log_path: Path, time_limit_s: float) -> None:
        self.job_id = job_id
        self.module = module
        self.args = tuple(args)
        self.log_path = log_path
        self.time_limit_s = time_limit_s
        self.pid: int | None = None
        self.started_at = time.time()
        self.ended_at: float | None = None
        self.state = WorkerState.RUNNING
        self.exit_code: int | None = None
        self.result: dict[str, object] | None = None
        self.error: str | None = None
        self.output_tail = ""
        self.progress: WorkerProgress | None = None
        self._done = threading.Event()
        self._cancel = threading.Event()

    @property
    def done(self) -> bool:
        """Whether the job has reached a final state."""
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> WorkerState:
        """Block up to ``timeout`` seconds for the job to end; returns the state either way."""
        self._done.wait(timeout)
        return self.state

    def cancel(self) -> bool:
        """Ask for the job to be ended (``SIGTERM``, then ``SIGKILL``); ``False`` if already over."""
        if self.done:
            return False
        self._cancel.set()
        return True

    def check(self) -> dict[str, object]:
        """The result of a job that succeeded.

        Raises:
            WorkerError: The job is still running, or failed, timed out or was cancelled.
        """
        if self.state is WorkerState.SUCCEEDED:
            return self.result or {}
        raise WorkerError(f"worker job {self.job_id} ({self.module}) is {self.state}: {self.error or 'not finished'}")

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready summary for the store and ``lifelong status``."""
        p = self.progress
        return {
            "job_id": self.job_id,
            "module": self.module,
            "args": list(self.args),
            "pid": self.pid,
            "state": str(self.state),
            "exit_code": self.exit_code,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "progress": None if p is None else {"fraction": p.fraction, "phase": p.phase, "message": p.message},
            "result": self.result,
            "error": self.error,
            "log": str(self.log_path),
        }

    def __repr__(self) -> str:
        return f"WorkerHandle({self.job_id!r}, {self.module!r}, state={self.state}, pid={self.pid})"


class WorkerSupervisor:
    """Starts worker jobs and supervises each from its own thread.

    Args:
        log_dir: Where each job's ``JOB_ID.log`` goes (``STATE/logs/workers``); created.
        settings: Limits and priorities.
    """

    def __init__(self, log_dir: str | os.PathLike[str], settings: WorkerSettings | None = None) -> None:
        self.log_dir = Path(log_dir)
        self.settings = settings or WorkerSettings()
        self._handles: dict[str, WorkerHandle] = {}
        self._lock = threading.Lock()

    def start(
        self,
        module: str,
        args: Sequence[str] = (),
        *,
        job_id: str | None = None,
        time_limit_s: float | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        on_progress: ProgressCallback | None = None,
        on_done: DoneCallback | None = None,
        nice: int | None = None,
        sched_idle: bool | None = None,
    ) -> WorkerHandle:
        """Start ``python -m MODULE ARGS`` as a worker; returns as soon as it is running.

        Args:
            module: The worker module, run as ``__main__``.
            args: Its command-line arguments.
            job_id: A file-name-safe id (also the log's name); generated when omitted.
            time_limit_s: This job's limit instead of the settings'.
            env: Variables added to (or replacing) the daemon's environment.
            cwd: Working directory of the worker.
            on_progress: Called with each progress report.
            on_done: Called once the job is final, before `wait` returns; it must not `wait` itself.
            nice: This job's nice increment (0-19) instead of the settings' (a policy's priority).
            sched_idle: Whether this job runs under ``SCHED_IDLE``, instead of the settings'.

        Raises:
            SettingsError: A bad module name, job id or time limit.
            WorkerError: The process could not be started.
        """
        if not _MODULE.fullmatch(module):
            raise SettingsError(f"worker module {module!r}: expected a dotted module name such as service.adapt")
        job_id = job_id or f"{module.rsplit('.', 1)[-1]}-{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(3)}"
        if not _JOB_ID.fullmatch(job_id):
            raise SettingsError(f"job id {job_id!r}: expected 1-100 of A-Z a-z 0-9 . _ - (it names the log file)")
        limit = self.settings.time_limit_s if time_limit_s is None else time_limit_s
        if not (isinstance(limit, int | float) and math.isfinite(limit) and limit > 0):
            raise SettingsError(f"time_limit_s={limit!r}: expected a finite number of seconds > 0")
        s = self.settings
        if nice is not None and not (isinstance(nice, int) and 0 <= nice <= 19):
            raise SettingsError(f"nice={nice!r}: expected an integer from 0 to 19 (workers only go lower)")
        handle = WorkerHandle(job_id, module, args, self.log_dir / f"{job_id}.log", float(limit))
        with self._lock:
            if job_id in self._handles and not self._handles[job_id].done:
                raise SettingsError(f"job id {job_id!r} is already running")
            self._handles[job_id] = handle  # reserved before the start, so the id cannot be taken twice
            for old in [k for k, h in self._handles.items() if h.done][:-_KEEP_FINISHED]:
                del self._handles[old]
        opts = [
            "--nice",
            str(s.nice if nice is None else nice),
            "--oom-score-adj",
            str(s.oom_score_adj),
            "--orphan-check",
            str(s.orphan_check_s),
        ]
        opts += ["--sched-idle"] if (s.sched_idle if sched_idle is None else sched_idle) else []
        argv = [sys.executable, "-m", "service.workers.worker_io", *opts, "--", module, *args]
        child_env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV}
        child_env.update({"PYTHONUNBUFFERED": "1", **(env or {})})

        read_fd, write_fd = os.pipe()
        child_env[REPORT_FD_ENV] = str(write_fd)
        try:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            with open(handle.log_path, "ab") as log:
                log.write(f"=== {job_id} started {time.strftime('%Y-%m-%d %H:%M:%S')}: {argv!r}\n".encode())
                log.flush()
                proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, pass_fds=(write_fd,),
                    env=child_env, cwd=cwd, start_new_session=True,
                )  # fmt: skip
        except OSError as exc:
            os.close(read_fd)
            with self._lock:
                del self._handles[job_id]
            raise WorkerError(f"cannot start worker {job_id} ({module}): {exc}") from exc
        finally:
            os.close(write_fd)
        handle.pid = proc.pid
        logger.info(
            "worker %s started: pid %d, %s %s (limit %g s, log %s)",
            job_id, proc.pid, module, " ".join(args), limit, handle.log_path,
        )  # fmt: skip
        threading.Thread(
            target=self._supervise,
            args=(handle, proc, read_fd, on_progress, on_done),
            name=f"worker-{job_id}",
            daemon=True,
        ).start()
        return handle

    def active(self) -> list[WorkerHandle]:
        """Jobs still running."""
        with self._lock:
            return [h for h in self._handles.values() if not h.done]

    def get(self, job_id: str) -> WorkerHandle | None:
        """The handle of job ``job_id`` started by this supervisor, if any."""
        with self._lock:
            return self._handles.get(job_id)

    def cancel_all(self, timeout: float | None = None) -> None:
        """Cancel every running job and wait for them (up to ``timeout`` in total); for shutdown."""
        handles = self.active()
        for h in handles:
            h.cancel()
        deadline = None if timeout is None else time.monotonic() + timeout
        for h in handles:
            h.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))

    # -- supervision thread ---------------------------------------------------------------

    def _supervise(
        self,
        h: WorkerHandle,
        proc: subprocess.Popen[bytes],
        read_fd: int,
        on_progress: ProgressCallback | None,
        on_done: DoneCallback | None,
    ) -> None:
        reader = ReportReader(read_fd, lambda raw: self._on_line(h, raw, on_progress))
        ending: WorkerState | None = None
        try:
            deadline = time.monotonic() + h.time_limit_s
            while not _exited(proc.pid):
                reader.poll(_TICK_S)
                if h._cancel.is_set():
                    ending = WorkerState.CANCELLED
                elif time.monotonic() >= deadline:
                    ending = WorkerState.TIMED_OUT
                if ending is not None:
                    logger.warning(
                        "worker %s %s; ending its process group",
                        h.job_id,
                        "cancelled" if ending is WorkerState.CANCELLED else f"ran past {h.time_limit_s:g} s",
                    )
                    self._terminate_group(proc.pid, reader)
                    break
            _killpg(proc.pid, signal.SIGKILL)  # leftovers; the zombie leader keeps the group id ours
            proc.wait()
            reader.drain(1.0)
        except Exception as exc:  # never leave a handle running because supervision broke
            logger.exception("supervising worker %s failed", h.job_id)
            with contextlib.suppress(Exception):
                _killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
            h.error = f"supervision failed: {exc!r}"
            ending = ending or WorkerState.FAILED
        finally:
            reader.close()
        self._finish(h, proc.returncode, ending)
        try:
            if on_done is not None:
                on_done(h)
        except Exception:
            logger.exception("on_done callback of worker %s failed", h.job_id)
        finally:
            h._done.set()  # after on_done: whoever waits sees the job final and its callback run

    def _terminate_group(self, pgid: int, reader: ReportReader) -> None:
        _killpg(pgid, signal.SIGTERM)
        grace_end = time.monotonic() + self.settings.kill_grace_s
        while time.monotonic() < grace_end and not _exited(pgid):
            reader.poll(_TICK_S)

    def _on_line(self, h: WorkerHandle, raw: bytes, on_progress: ProgressCallback | None) -> None:
        try:
            report = parse_report(raw)
        except ValueError as exc:
            logger.warning("worker %s: ignoring a report (%s): %.200r", h.job_id, exc, raw)
            return
        if "result" in report:
            h.result = report["result"]  # type: ignore[assignment]
        if "error" in report:
            h.error = str(report["error"])
        if "progress" in report:
            fraction, phase, message = report["progress"]  # type: ignore[misc]
            p = WorkerProgress(fraction, phase, message, time.time())
            h.progress = p
            if on_progress is not None:
                try:
                    on_progress(h, p)
                except Exception:
                    logger.exception("on_progress callback of worker %s failed", h.job_id)

    def _finish(self, h: WorkerHandle, code: int | None, ending: WorkerState | None) -> None:
        h.exit_code = code
        h.ended_at = time.time()
        h.output_tail = _tail(h.log_path, self.settings.tail_bytes)
        if ending is WorkerState.TIMED_OUT:
            h.error = f"ran past its time limit of {h.time_limit_s:g} s"
        elif ending is WorkerState.CANCELLED:
            h.error = h.error or "cancelled"
        elif ending is None and code == 0:
            if h.result is None and self.settings.require_result:
                ending, h.error = WorkerState.FAILED, "exited 0 without reporting a result"
            else:
                ending = WorkerState.SUCCEEDED
        elif ending is None:
            ending = WorkerState.FAILED
            if h.error is None:
                h.error = _describe_exit(code)
        h.state = ending
        log = logger.info if ending is WorkerState.SUCCEEDED else logger.warning
        took = h.ended_at - h.started_at
        log("worker %s %s after %.1f s (exit %s)%s", h.job_id, ending, took, code, f": {h.error}" if h.error else "")


def _exited(pid: int) -> bool:
    """Whether ``pid`` (our child) has exited, without reaping it."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except OSError as exc:
        if exc.errno != errno.ESRCH:
            raise


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "exit status unknown"
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
        hint = " (out of memory? see the journal)" if -code == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exited with code {code}"


def _tail(path: Path, limit: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            data = f.read()
    except OSError:
        return ""
    if size > limit and b"\n" in data:
        data = data.split(b"\n", 1)[1]  # start at a line boundary
    return data.decode("utf-8", errors="replace")
