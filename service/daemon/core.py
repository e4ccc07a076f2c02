"""The resident daemon: one loop that owns every change, around the parts that serve.

Who does what, by thread:

- **the main thread runs the loop** (:class:`~service.daemon.loop.EventLoop`): it takes events from
  one queue and handles them one at a time: inbox files, policy edits, ``SIGHUP`` reloads,
  admin commands (deploy, rollback, prune) and the stop. Every model change therefore runs
  there, through the one validated path of :class:`~service.daemon.swap.Swapper`, and changes never
  interleave;
- **API threads** (a thread per connection, :mod:`service.api.http_server`) answer predict, feedback, status, health and metrics directly
  (the runtime swaps by one reference change, the store is thread-safe); the admin
  endpoints (:mod:`service.api.admin`) submit a command to the loop and wait for its result;
- **signal handlers, file watchers and scheduler jobs only enqueue** (the latency probe
  also runs predictions and writes metrics; retention submits a prune);
- torch work runs in worker processes (:mod:`service.workers.supervisor`); the serving process never
  imports torch.

Start-up: open the store and the registry, mark work left running by a dead daemon as
interrupted, reconcile the two, load the policy (:mod:`service.state.policy_state`: the file if
it exists, else the ``balanced`` preset; an invalid file is logged, shown in the status, and
the preset used), serve the registry's current model (or its rollback target if it does not
load), start the API, the watchers (``STATE/inbox`` and the policy file) and the scheduler,
then tell systemd ``READY=1`` with a ``STATUS=`` line that says what serves, or that nothing
is deployed yet (``/v1/health`` then answers 503 until ``lifelong deploy FILE``).

systemd: the loop sends ``WATCHDOG=1`` every ``watchdog_interval() / 2`` seconds, so a loop
stuck in a handler misses its pings and is restarted. ``SIGHUP`` sends ``RELOADING=1``,
re-reads the policy (an invalid one is rejected, the old one stays, the error shows in the
status), re-opens the model the registry names if it is not the one serving (through the
same validated swap as a deploy), then ``READY=1``. ``SIGTERM``/``SIGINT`` send
``STOPPING=1``, stop accepting, drain requests in flight, cancel workers, close the store,
and :meth:`Daemon.run` returns 0.

The daemon's answers are written in parts, mixins of :class:`~service.daemon.parts.DaemonParts`
that run on the same loop: the commands (deploy, rollback, prune: :mod:`service.daemon.commands`),
the canary watch (:mod:`service.daemon.canary_watch`), the answers
to drift (:mod:`service.daemon.drift_answers`), exports of front points
(:mod:`service.daemon.exports`), adaptations (:mod:`service.daemon.adaptations`) and policy
reloads (:mod:`service.daemon.policy_reload`), and what arrives while it serves
(:mod:`service.daemon.intake`); each
part's docstring says how it works. Test-only fault injection is in
:mod:`service.daemon.fault_injection`.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from policies import Policy
from service.api.admin import install_admin_routes
from service.api.app import ApiApp
from service.api.feedback import StoreFeedback
from service.api.server import ApiServer, ApiSettings
from service.daemon import documents as status_doc
from service.daemon.adaptations import AdaptationAnswers
from service.daemon.canary import (
    CanaryCheck,
    CanaryWatch,
)
from service.daemon.canary_watch import CanaryWatching
from service.daemon.commands import Commands
from service.daemon.drift_answers import DriftAnswers
from service.daemon.exports import ExportAnswers
from service.daemon.fault_injection import PAUSE_POINTS, arm_registry_pause, pause_for_tests
from service.daemon.intake import Intake
from service.daemon.loop import EventLoop, Reload, Stop
from service.daemon.memory_trim import IdleTrim, malloc_trim
from service.daemon.policy_reload import PolicyReload
from service.daemon.profile_status import ProfileStatus
from service.daemon.sdnotify import Notifier
from service.daemon.settings import DaemonSettings
from service.daemon.status import DaemonStatus
from service.daemon.swap import Swapper
from service.daemon.watch import InboxFile, InboxWatcher, PolicyChanged, PolicyWatcher, WatchSettings
from service.drift.check import DRIFT_CHECK_JOB, DriftCheck, DriftDetected
from service.drift.feed import DriftFeed, TappedFeedback
from service.drift.preference import FrontCache
from service.jobs import JobSpec, Scheduler
from service.serving.ingest import RecentInputs
from service.serving.live import LiveMonitor
from service.serving.ort_runtime import OrtRuntime
from service.serving.probe import probe_latency
from service.serving.runtime import RuntimeSettings
from service.serving.task_check import task_check
from service.state.paths import default_front, default_profile
from service.state.policy_state import PolicyState
from service.state.registry import Registry
from service.state.store import Store
from service.workers.adaptation import (
    ADAPT_TICK_S,
    Adaptation,
    AdaptationDone,
    AdaptationTick,
)
from service.workers.front_export import ExportDone, FrontExport, ResumeExport
from service.workers.supervisor import WorkerSupervisor

__all__ = ["CANARY_CHECK_JOB", "CANARY_CHECK_S", "DRIFT_CHECK_JOB", "Daemon", "DaemonSettings", "PAUSE_POINTS"]

logger = logging.getLogger(__name__)
_LIBC_TRIM = malloc_trim()  # glibc's malloc_trim(0), None elsewhere

CANARY_CHECK_JOB = "canary-check"
ADAPT_JOB = "adaptation"
CANARY_CHECK_S = 0.5
"""Seconds between canary checks while a watch runs (a check is a few numpy operations)."""
MEMORY_TRIM_S = 5.0
"""Seconds between looks of the idle heap trim (:mod:`service.daemon.memory_trim`)."""


class Daemon(Commands, Intake, CanaryWatching, DriftAnswers, ExportAnswers, AdaptationAnswers, PolicyReload):
    """The service: serves the deployed model and owns every change to it.

    Args:
        settings: Where and how.
        jobs: Extra periodic jobs; one named :data:`DRIFT_CHECK_JOB` replaces the built-in drift check.
        notifier: sd_notify target; default ``$NOTIFY_SOCKET`` (a no-op outside systemd).
    """

    def __init__(
        self, settings: DaemonSettings, *, jobs: Sequence[JobSpec] = (), notifier: Notifier | None = None
    ) -> None:
        self.settings = settings
        self.notifier = notifier or Notifier()
        self.loop = EventLoop(
            self.notifier, heartbeat_s=settings.heartbeat_s, command_timeout_s=settings.command_timeout_s
        )
        for kind, handler in ((InboxFile, self._on_inbox_file), (PolicyChanged, self._on_policy_changed)):
            self.loop.on(kind, handler)
        self.loop.on(Reload, self._reload)
        self.loop.on(CanaryCheck, self._check_canary)
        self.loop.on(
            DriftDetected, lambda event: self._on_drift(event.model_id, list(event.decisions), event.class_mix)
        )
        self.loop.on(AdaptationTick, lambda event: self._worker_tick())
        self.loop.on(AdaptationDone, self._on_adaptation_done)
        self.loop.on(ExportDone, self._on_export_done)
        self.loop.on(ResumeExport, self._resume_export)
        commands = (("deploy", self._deploy), ("rollback", self._rollback), ("prune", self._prune),
                    ("export", self._export_command))  # fmt: skip
        for name, command in commands:
            self.loop.command(name, command)
        assert settings.policy_path is not None
        self.policy_state = PolicyState(settings.policy_path)
        self.state = "created"
        self.started_at: float | None = None
        self.recent_events: deque[dict[str, Any]] = deque(maxlen=50)
        self._events_lock = threading.Lock()  # appended on the loop, read by API threads
        self.inbox_counts = {"files": 0, "samples": 0, "rejected": 0}
        self.last_probe: dict[str, Any] | None = None
        self.recent_inputs = RecentInputs(settings.warmup_samples)
        self.live = LiveMonitor()
        self.memory_trim = IdleTrim(self._activity, trim=self._trim_memory)
        self.canary: CanaryWatch | None = None  # set and cleared on the loop; read by API threads
        self._canary_check_queued = False
        self._recall_watch: tuple[str, int, int] | None = None
        self._extra_jobs = list(jobs)
        self.drift_feed = DriftFeed(on_due=self._drift_due)
        self.fronts = FrontCache(default_front(settings.state_dir))
        self.status_view = DaemonStatus(self, ProfileStatus(default_profile(settings.state_dir)))
        self.drift: DriftCheck | None = None
        self.store: Store | None = None
        self.registry: Registry | None = None
        self.runtime: OrtRuntime | None = None
        self.swapper: Swapper | None = None
        self.api: ApiServer | None = None
        self.admin_api: ApiServer | None = None
        self.scheduler: Scheduler | None = None
        self.adaptation: Adaptation | None = None
        self.exporter: FrontExport | None = None
        self.supervisor: WorkerSupervisor | None = None
        self.watchers: list[InboxWatcher | PolicyWatcher] = []
        self.feedback: StoreFeedback | None = None

    @property
    def policy(self) -> Policy:
        return self.policy_state.policy

    # -- life cycle ----------------------------------------------------------------------------

    def run(self) -> int:
        """Start, loop until SIGTERM/SIGINT, stop; returns the exit code (0)."""
        put = self.loop.put
        handlers = {
            signal.SIGTERM: lambda signum, frame: put(Stop("SIGTERM")),
            signal.SIGINT: lambda signum, frame: put(Stop("SIGINT")),
            signal.SIGHUP: lambda signum, frame: put(Reload("SIGHUP")),
        }
        previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
        try:
            self.start()
            self.loop.run(on_error=self._on_loop_error)
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 0

    def start(self) -> None:
        """Bring everything up and send READY=1; on failure, take down what started and raise."""
        s = self.settings
        self.state, self.started_at = "starting", time.time()
        try:
            arm_registry_pause(s.state_dir)
            self._open_state()
            self._start_parts()
            self._start_api()
            self.loop.accepting = True
            self._start_watchers()
            self.scheduler = Scheduler(self._jobs(), max_workers=2)
            logging.getLogger("apscheduler.executors.default").setLevel(logging.WARNING)
            self.scheduler.start()
        except BaseException as exc:
            logger.error("the daemon failed to start: %s", exc)
            self.notifier.status(f"failed to start: {exc}")
            self.stop()
            raise
        self.state = "ready"
        self.notifier.ready(self.status_line())
        logger.info("ready: %s", self.status_line())

    def _open_state(self) -> None:
        """The store and the registry (reconciled after a crash), the policy, and the model the
        registry names, serving in a runtime (with its canary watch resumed)."""
        s = self.settings
        s.state_dir.mkdir(parents=True, exist_ok=True)
        self._make_inbox()
        self.store = Store.open(s.state_dir)
        self.registry = Registry(s.state_dir)
        self.store.recover_after_restart()
        report = self.registry.reconcile(self.store)
        if not report.clean:
            self._event("reconcile", f"registry and store reconciled after a crash: {report}")
        if self.policy_state.path.exists() and self.policy_state.reload() is None:
            self._event("policy-rejected", f"start: {self._first_line(self.policy_state.error)}; using the preset")
        self.runtime = OrtRuntime(
            RuntimeSettings(intra_op_threads=s.threads or self.policy.target.threads, batch=self.policy.target.batch)
        )
        self.runtime.observer = self._observe_request
        self.swapper = Swapper(
            self.store, self.registry, self.runtime, samples=self.recent_inputs.array, pause=pause_for_tests
        )
        serving = self.swapper.serve_current()  # deployed before: checked then, trusted now
        self.runtime.task = task_check(
            s.state_dir, lambda: self.policy.swap.min_task_accuracy, lambda: self.policy.swap.rollback_accuracy_drop
        )
        self._event("start", f"serving {serving}" if serving else "no model deployed")
        if serving is not None:
            self.live.begin(serving)
            self._resume_canary(serving)

    def _start_parts(self) -> None:
        """The worker supervisor with adaptation and exports, the feedback sink, the drift check."""
        s = self.settings
        assert self.store is not None and self.runtime is not None
        self.supervisor = WorkerSupervisor(s.state_dir / "logs" / "workers")
        self.adaptation = Adaptation(s.state_dir, self.store, self.supervisor, self.loop.put)
        self.exporter = FrontExport(s.state_dir, self.store, self.supervisor, self.loop.put)
        self.loop.put(ResumeExport())  # an export wished or running before a restart
        self.feedback = StoreFeedback(
            self.store,
            s.state_dir / "samples" / "feedback",
            on_samples=self.recent_inputs.add,
            on_outcomes=self._on_outcomes,
            on_corrected=self._on_corrected_outcomes,
        )
        self.drift = DriftCheck(
            self.store,
            self.runtime,
            lambda: self.policy,
            feed=self.drift_feed,
            reference_dir=s.state_dir / "drift",
            fronts=self.fronts,
            on_detected=self.loop.put,
        )

    def _start_api(self) -> None:
        """The public API socket (every predict's embedding tapped for the drift feed) and the
        admin socket (deploy, rollback, history: mode 0600)."""
        s = self.settings
        assert self.runtime is not None and self.feedback is not None and self.drift is not None
        tapped = TappedFeedback(self.feedback, self.drift_feed)
        app = ApiApp(
            self.runtime, tapped, self.status_extra, max_body_bytes=s.max_body_bytes,
            admin_socket=str(s.admin_socket_path),
        )  # fmt: skip
        app.metric_sources.append(self.drift.metrics_text)
        app.metric_sources.append(self.status_view.worker_metrics)
        admin = ApiApp(self.runtime, None, self.status_extra, max_body_bytes=s.max_body_bytes, public=False)
        install_admin_routes(admin, self.loop, history=self.history, max_upload_bytes=s.max_upload_bytes,
                             deploy_roots=s.deploy_roots)  # fmt: skip
        api_settings = ApiSettings(
            socket_path=s.socket_path, tcp_port=s.tcp_port, threads=s.api_threads, max_body_bytes=s.max_body_bytes
        )
        admin_settings = ApiSettings(
            socket_path=s.admin_socket_path,
            socket_mode=0o600,
            threads=2,
            max_body_bytes=s.max_body_bytes,
            max_upload_bytes=s.max_upload_bytes,
        )
        self.admin_api = ApiServer(admin, admin_settings)
        self.admin_api.start()
        self.api = ApiServer(app, api_settings)
        self.api.start()

    def stop(self) -> None:
        """Stop accepting, drain requests in flight, cancel workers, close the store. Idempotent."""
        if self.state in ("stopped", "created"):
            return
        s = self.settings
        self.state = "stopping"
        self.notifier.stopping("stopping: draining requests in flight")
        self.loop.close("the daemon is stopping")
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
        for watcher in self.watchers:
            watcher.stop()
        for server in (self.api, self.admin_api):
            if server is not None:
                server.stop(timeout=s.drain_timeout_s)
        if self.supervisor is not None:
            self.supervisor.cancel_all(timeout=s.drain_timeout_s)
        if self.scheduler is not None:  # a job half-way through a store write finishes it first
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline and any(j.running for j in self.scheduler.stats().values()):
                time.sleep(0.02)
        self.loop.close("the daemon is stopping")
        if self.store is not None:
            self.store.close()
        self.state = "stopped"
        logger.info("stopped")

    def request_stop(self, reason: str = "requested") -> None:
        """Ask the loop to end (thread-safe)."""
        self.loop.put(Stop(reason))

    def history(self, limit: int = 20) -> dict[str, Any]:
        """Deployments, newest first, with their models' measured values (read on the caller's thread)."""
        assert self.store is not None and self.registry is not None and self.runtime is not None
        return status_doc.history(self.store, self.registry.current_id(), self.runtime.current_id, limit)

    # -- the loop's own ----------------------------------------------------------------------------

    def _on_loop_error(self, event: object, exc: Exception) -> None:
        self._event("error", f"handling {type(event).__name__} failed: {type(exc).__name__}: {exc}")

    # -- jobs (on the scheduler's threads) -----------------------------------------------------

    def _jobs(self) -> list[JobSpec]:
        s = self.settings
        drift = (
            [] if self.drift is None or any(j.name == DRIFT_CHECK_JOB for j in self._extra_jobs) else [self.drift.job()]
        )
        return [
            JobSpec("latency-probe", self._probe, s.probe_interval_s),
            JobSpec("memory-trim", self.memory_trim.tick, MEMORY_TRIM_S),
            JobSpec("retention", lambda: self.loop.submit("prune"), s.retention_interval_s, run_at_start=True),
            JobSpec(CANARY_CHECK_JOB, self._request_canary_check, CANARY_CHECK_S),
            JobSpec(ADAPT_JOB, lambda: self.loop.put(AdaptationTick()), ADAPT_TICK_S),
            *drift,
            *self._extra_jobs,
        ]

    def _trim_memory(self) -> None:
        """Idle: the serving model's arena shrunk, then glibc's free heap pages given back."""
        if self.runtime is not None:
            self.runtime.release_memory()
        if _LIBC_TRIM is not None:
            _LIBC_TRIM()

    def _activity(self) -> tuple[int, int]:
        """What changes while the service works: predictions and swaps served."""
        if self.runtime is None:
            return (0, 0)
        stats = self.runtime.stats()
        return (stats.predictions, stats.swaps)

    def _probe(self) -> None:
        if self.runtime is not None and self.store is not None:
            result = probe_latency(self.runtime, self.store, self.policy.target.batch, self.settings.probe_runs)
            if result is not None:
                self.last_probe = {"at": time.time(), **result}

    # -- status --------------------------------------------------------------------------------

    @staticmethod
    def _first_line(text: str | None) -> str:
        lines = (text or "").splitlines()
        return lines[0] if len(lines) <= 1 else f"{lines[0]} {lines[1].strip()}"

    def events_newest_first(self) -> list[dict[str, Any]]:
        """The recent events (a copy), the newest first."""
        with self._events_lock:
            return list(reversed(self.recent_events))

    def _event(self, kind: str, message: str) -> None:
        with self._events_lock:
            self.recent_events.append({"at": time.time(), "kind": kind, "message": message})
        log = logger.warning if kind.endswith(("refused", "rejected")) or kind == "error" else logger.info
        log("%s: %s", kind, message)

    def status_line(self) -> str:
        """The one line systemd shows (``STATUS=``)."""
        model = None if self.runtime is None else self.runtime.current_id
        line = "no model deployed; run lifelong deploy FILE" if model is None else f"serving {model}"
        line += f"; policy {self.policy.name}"
        if self.policy_state.error:
            line += " (policy file rejected: see lifelong status)"
        return line

    def status_extra(self) -> dict[str, Any]:
        """What ``/v1/status`` adds to the runtime's own status (:mod:`service.daemon.status`)."""
        return self.status_view.extra()

    # -- helpers -------------------------------------------------------------------------------

    def _make_inbox(self) -> None:
        inbox = self.settings.inbox
        if not inbox.is_dir():
            inbox.mkdir(parents=True)
            try:  # group-writable and setgid: applications in the service's group drop files here
                os.chmod(inbox, 0o2770)
            except OSError as exc:
                logger.warning("cannot make %s group-writable: %s", inbox, exc)

    def _start_watchers(self) -> None:
        s = self.settings
        ws = WatchSettings(settle_ms=s.settle_ms, force_polling=s.force_polling)
        events: Any = self.loop.events  # a SimpleQueue: put_nowait as the watchers expect, never full
        self.watchers = [InboxWatcher(s.inbox, events, ws)]
        assert s.policy_path is not None
        if s.policy_path.parent.is_dir():
            self.watchers.append(PolicyWatcher(s.policy_path, events, ws))
        else:
            self._event("policy-rejected", f"{s.policy_path.parent} does not exist: the policy file is not watched")
        for watcher in self.watchers:
            watcher.start()
