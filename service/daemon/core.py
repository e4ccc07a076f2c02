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

**The canary watch** (:mod:`service.daemon.canary`): a model deployed over a serving one is
committed as a ``canary`` deployment, with a baseline of the replaced model's live figures
taken just before the swap (its latency per batch size from :class:`~service.serving.live.LiveMonitor`,
its accuracy on its last feedback labels from the store). A scheduler job enqueues a
:class:`~service.daemon.canary.CanaryCheck` every :data:`CANARY_CHECK_S` while a watch runs; the
loop evaluates it and promotes the deployment to ``active``, or rolls back through the same
path as ``lifelong rollback`` with the reason ``auto-rollback: ...``, or keeps watching. A
first deploy (nothing served before) and a rollback go ``active`` at once. A canary found
live at start (a crash between switch and promotion) is watched again against the replaced
model's figures in the store. The runtime reports every request to the monitor, the
feedback sink every label, both from API threads; serving never waits for a check.

**Drift** (:mod:`service.drift.check`): API threads (every predict's embedding and classes),
the runtime's request observer (latencies) and the feedback sink (right or wrong) append to a
bounded :class:`~service.drift.feed.DriftFeed`; the scheduler job :data:`DRIFT_CHECK_JOB`,
every ``drift.check_interval_s`` of the policy and brought forward when inbox samples arrive
or the feed fills, feeds the serving model's drift monitor, stores the drift events and
enqueues a :class:`~service.drift.check.DriftDetected` when a drift begins; the loop answers
it in :meth:`Daemon._on_drift`. **Data, label and accuracy drift** make an adaptation pending
(:mod:`service.workers.adaptation`): once ``adaptation.min_samples`` labels of the new data are in,
a worker fine-tunes the supernet on them with replay, re-searches and exports a candidate;
when it ends, the loop swaps through the same validated deploy (and canary watch) if the
candidate beats the serving model on held-out local samples by ``swap.min_improvement``,
and makes the adapted supernet the version in use; else it records why the model stays. A
:class:`~service.jobs.JobSpec` named :data:`DRIFT_CHECK_JOB` passed in ``jobs=`` replaces the
built-in one. **Preference drift**: a new valid policy is compared with the old one; if it
changed what the service aims for, the cached front is asked which model the new policy
wants (:mod:`service.drift.preference`). One already exported is deployed at once through the
same validated swap as ``lifelong deploy`` (its canary watch judges errors only: a slower or
less accurate model is what the new policy asked for); one never exported is recorded as
"export needed" and exported by a worker (:mod:`service.workers.front_export`), from the supernet
version in use, while the current model serves on; when the export ends, the front is asked
again with the policy then in force and, if it still chooses that subnet, the file is
deployed through the same validated swap.

**Test-only fault injection.** ``LIFELONG_TEST_PAUSE_AT=POINT`` makes the daemon, on
reaching ``POINT``, write the point's name into ``$LIFELONG_TEST_PAUSE_MARKER`` (default
``STATE/test-paused``) and sleep for an hour, so that a test can ``kill -9`` it exactly
there. Points: ``swap`` (the new model serves in memory, the registry not yet switched),
``registry-write`` (the model's bytes partly written in the registry's temporary folder),
``registry-rename`` (complete, not yet renamed into place), ``deploy-pending`` (the pending
deployment row written, the pointer not switched), ``pointer`` (the pointer switched, the
link and the row not). The registry points set the registry's own hook
(``LIFELONG_REGISTRY_PAUSE``). Never set these outside tests.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from lifelong.data.calibration import domain_calibration, save_calibration
from lifelong.drift.detectors import DriftDecision
from lifelong.drift.signals import preference_drift
from lifelong.errors import LifelongError
from lifelong.persist.supernet_versions import adapted_in_use, find_version, sha_in_use
from lifelong.persist.supernet_versions import set_current as set_current_supernet
from lifelong.search.front import Front
from policies import Policy
from service.api.admin import install_admin_routes
from service.api.app import ApiApp
from service.api.feedback import StoreFeedback
from service.api.server import ApiServer, ApiSettings
from service.daemon import documents as status_doc
from service.daemon.canary import (
    PROMOTE,
    ROLLBACK,
    Baseline,
    CanaryCheck,
    CanaryWatch,
    make_baseline,
    paired_baseline,
    store_accuracy,
    store_probe_p95,
)
from service.daemon.loop import EventLoop, Reload, Stop
from service.daemon.memory_trim import IdleTrim
from service.daemon.profile_status import ProfileStatus
from service.daemon.sdnotify import Notifier
from service.daemon.settings import DaemonSettings
from service.daemon.status import BASELINE_LABELS, DaemonStatus
from service.daemon.swap import Swapper
from service.daemon.watch import InboxFile, InboxWatcher, PolicyChanged, PolicyWatcher, WatchSettings
from service.drift.check import DRIFT_CHECK_JOB, DriftCheck, DriftDetected
from service.drift.feed import DriftFeed, TappedFeedback
from service.drift.preference import FrontCache, PreferenceAnswer, answer_preference, slowed_policy
from service.errors import ModelLoadError, SettingsError
from service.jobs import JobSpec, Scheduler
from service.serving.ingest import RecentInputs, ingest_file
from service.serving.live import LiveMonitor
from service.serving.probe import probe_latency
from service.serving.runtime import OrtRuntime, RuntimeSettings
from service.serving.task_check import task_check
from service.state.paths import default_front, default_profile
from service.state.policy_state import PolicyState
from service.state.registry import Registry
from service.state.store import Store
from service.workers.adaptation import (
    ADAPT_TICK_S,
    LABEL_FREE_SAMPLES,
    Adaptation,
    AdaptationDone,
    AdaptationTick,
    LabelFree,
)
from service.workers.front_export import OPERATOR, ExportDone, FrontExport, ResumeExport, prune_job_folders
from service.workers.supervisor import WorkerSupervisor

__all__ = ["CANARY_CHECK_JOB", "CANARY_CHECK_S", "DRIFT_CHECK_JOB", "Daemon", "DaemonSettings", "PAUSE_POINTS"]

logger = logging.getLogger(__name__)

RECALL_MODELS = 3
"""Earlier models the domain memory compares the served data with (the newest deployed)."""
RECALL_LEVEL = 0.01
"""KS (Simes) p-value at or above which the served data matches an earlier model's reference."""

CANARY_CHECK_JOB = "canary-check"
ADAPT_JOB = "adaptation"
CANARY_CHECK_S = 0.5
"""Seconds between canary checks while a watch runs (a check is a few numpy operations)."""
MEMORY_TRIM_S = 5.0
"""Seconds between looks of the idle heap trim (:mod:`service.daemon.memory_trim`)."""

PAUSE_ENV, PAUSE_MARKER_ENV = "LIFELONG_TEST_PAUSE_AT", "LIFELONG_TEST_PAUSE_MARKER"
_REGISTRY_PAUSES = {
    "registry-write": "add:writing",
    "registry-rename": "add:before-rename",
    "deploy-pending": "deploy:pending",
    "pointer": "set_current:pointer",
}
PAUSE_POINTS = ("swap", *_REGISTRY_PAUSES)


def _pause_for_tests(point: str) -> None:
    """The fault-injection hook described in the module docstring."""
    if os.environ.get(PAUSE_ENV) != point:
        return
    marker = os.environ.get(PAUSE_MARKER_ENV)
    if marker:
        Path(marker).write_text(point)
    logger.warning("test pause at %r (%s): sleeping until killed", point, PAUSE_ENV)
    time.sleep(3600)


def _arm_registry_pause(state_dir: Path) -> None:
    point = os.environ.get(PAUSE_ENV)
    if not point:
        return
    if point not in PAUSE_POINTS:
        raise SettingsError(f"{PAUSE_ENV}={point!r}: expected one of {', '.join(PAUSE_POINTS)}")
    os.environ.setdefault(PAUSE_MARKER_ENV, str(state_dir / "test-paused"))
    if point in _REGISTRY_PAUSES:
        os.environ["LIFELONG_REGISTRY_PAUSE"] = _REGISTRY_PAUSES[point]
        os.environ["LIFELONG_REGISTRY_PAUSE_MARKER"] = os.environ[PAUSE_MARKER_ENV]
    logger.warning("test fault injection armed: the daemon will pause at %r", point)


class Daemon:
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
        self.memory_trim = IdleTrim(self._activity)
        self.canary: CanaryWatch | None = None  # set and cleared on the loop; read by API threads
        self._canary_check_queued = False
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
            _arm_registry_pause(s.state_dir)
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
                RuntimeSettings(
                    intra_op_threads=s.threads or self.policy.target.threads, batch=self.policy.target.batch
                )
            )
            self.runtime.observer = self._observe_request
            self.swapper = Swapper(
                self.store, self.registry, self.runtime, samples=self.recent_inputs.array, pause=_pause_for_tests
            )
            serving = self.swapper.serve_current()  # deployed before: checked then, trusted now
            self.runtime.task = task_check(
                s.state_dir, lambda: self.policy.swap.min_task_accuracy, lambda: self.policy.swap.rollback_accuracy_drop
            )
            self._event("start", f"serving {serving}" if serving else "no model deployed")
            if serving is not None:
                self.live.begin(serving)
                self._resume_canary(serving)
            self.supervisor = WorkerSupervisor(s.state_dir / "logs" / "workers")
            self.adaptation = Adaptation(s.state_dir, self.store, self.supervisor, self.loop.put)
            self.exporter = FrontExport(s.state_dir, self.store, self.supervisor, self.loop.put)
            self.loop.put(ResumeExport())  # an export wished or running before a restart
            self.feedback = feedback = StoreFeedback(
                self.store,
                s.state_dir / "samples" / "feedback",
                on_samples=self.recent_inputs.add,
                on_outcomes=self._on_outcomes,
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
            tapped = TappedFeedback(feedback, self.drift_feed)  # every predict's embedding reaches the drift feed
            admin_path = str(s.admin_socket_path)
            app = ApiApp(
                self.runtime, tapped, self.status_extra, max_body_bytes=s.max_body_bytes, admin_socket=admin_path
            )
            app.metric_sources.append(self.drift.metrics_text)
            app.metric_sources.append(self.status_view.worker_metrics)
            admin = ApiApp(self.runtime, None, self.status_extra, max_body_bytes=s.max_body_bytes, public=False)
            install_admin_routes(admin, self.loop, history=self.history, max_upload_bytes=s.max_upload_bytes,
                                 deploy_roots=s.deploy_roots)  # fmt: skip
            api_settings = ApiSettings(
                socket_path=s.socket_path,
                tcp_port=s.tcp_port,
                threads=s.api_threads,
                max_body_bytes=s.max_body_bytes,
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

    # -- commands (on the loop) ----------------------------------------------------------------

    def _deploy(
        self,
        model: str | None = None,
        path: str | None = None,
        data: bytes | None = None,
        name: str | None = None,
        reason: str | None = None,
        judge: str = "all",
    ) -> dict[str, Any]:
        """Deploy through the validated swap.

        ``judge``: what the canary compares with the replaced model: ``"all"`` (errors,
        latency, accuracy), ``"accuracy"`` (errors and accuracy: an adapted model, slower by
        choice within the budget), ``"errors"`` (a preference change: slower or less accurate
        is what was asked for).
        """
        assert self.swapper is not None
        what = model or path or f"upload {name or 'model.onnx'}"
        reason = reason or f"deploy {what}"
        baseline = self._baseline()  # the serving model's figures, before the swap replaces it
        if baseline is not None and judge == "errors":  # slower or less accurate is what was asked for
            baseline = replace(baseline, latency={}, labelled=0, correct=0)
        elif baseline is not None and judge == "accuracy":  # slower within the budget was chosen
            baseline = replace(baseline, latency={})
        state = "active" if baseline is None else "canary"
        try:
            if model is not None:
                result = self.swapper.deploy_model(model, reason=reason, state=state)
            elif path is not None:
                result = self.swapper.deploy_file(path, reason=reason, meta={"source": f"file {path}"}, state=state)
            elif data is not None:
                meta = {"source": f"upload {name or '-'}"}
                result = self.swapper.deploy_file(data, reason=reason, meta=meta, state=state)
            else:
                raise SettingsError("deploy needs a model id, a path or the model's bytes")
        except LifelongError as exc:
            self._event("deploy-refused", f"{what}: {exc}")
            raise
        out = result.to_dict()
        if result.changed:
            self.live.begin(result.model_id)
            self.canary = None
            watched = ""
            if baseline is not None and result.deployment is not None and result.deployment.state == "canary":
                baseline = self._paired(baseline) if judge == "all" else baseline
                self.canary = CanaryWatch(result.deployment.id, result.model_id, baseline)
                window = self.policy.swap.canary_window
                out["canary"] = {"window": window, "baseline": baseline.model_id}
                watched = f"; canary for {window} requests against {baseline.model_id}"
            self._event("deploy", f"{result.model_id} serves (was {result.previous_id}): {reason}{watched}")
            self.notifier.status(self.status_line())
        return out

    def _paired(self, baseline: Baseline) -> Baseline:
        """The replaced model timed beside the new one now, where it had no live latency figure."""
        assert self.runtime is not None and self.registry is not None
        batch = self.policy.target.batch
        ref = baseline.latency.get(batch)
        if (
            baseline.model_id is None
            or (ref is not None and ref.source == "live")
            or baseline.model_id not in self.registry
        ):
            return baseline
        recent = self.recent_inputs.array()
        x = recent[-batch:] if recent is not None and len(recent) >= batch else np.random.default_rng(0).random((batch, 1, 28, 28), dtype=np.float32)  # fmt: skip
        try:
            old_ms, new_ms = self.runtime.paired_latency(self.registry.path(baseline.model_id), x)
        except Exception as exc:  # noqa: BLE001 - onnxruntime's own errors: the store's probe stands in
            logger.warning("the replaced model could not be timed beside the new one: %s", exc)
            return baseline
        logger.info(
            "canary baseline: %s p95 %.3g ms beside %s p95 %.3g ms (batch %d, %d rounds, same load)",
            baseline.model_id, float(np.percentile(old_ms, 95)), self.runtime.current_id,
            float(np.percentile(new_ms, 95)), batch, len(old_ms),
        )  # fmt: skip
        return paired_baseline(baseline, batch, old_ms)

    def _rollback(self, reason: str | None = None) -> dict[str, Any]:
        return self._roll_back(reason or "rollback by command", kind="rollback")

    def _roll_back(self, reason: str, *, kind: str) -> dict[str, Any]:
        """The one rollback path, for ``lifelong rollback`` (``kind`` "rollback") and the canary watch."""
        assert self.swapper is not None
        try:
            result = self.swapper.rollback(reason=reason)
        except LifelongError as exc:
            self._event("rollback-refused", f"{reason}: {exc}" if kind != "rollback" else str(exc))
            raise
        self.canary = None
        if result.changed:
            self.live.begin(result.model_id)
        self._event(kind, f"{result.model_id} serves again (was {result.previous_id}): {reason}")
        if result.changed:
            self._follow_serving(result.model_id)
        self.notifier.status(self.status_line())
        return result.to_dict()

    def _follow_serving(self, model_id: str) -> None:
        """After a rollback, the supernet in use and the cached front go back to the version the
        serving model was exported from: an adapted model rolled back takes its supernet with it,
        so later exports and fronts do not build on an adaptation that was undone."""
        assert self.store is not None
        folder = self.settings.state_dir / "supernet"
        record = self.store.get_model(model_id)
        sha = None if record is None else record.checkpoint_sha
        try:
            in_use = sha_in_use(folder)
            if not sha or in_use is None or in_use == sha:
                return
            path = find_version(folder, sha)
            if path is None:
                self._event("rollback", f"{model_id} came from supernet {sha[:12]}, not among the versions in {folder}: the supernet in use stays")  # fmt: skip
                return
            set_current_supernet(folder, path, reason=f"rollback: {model_id} serves again")
        except LifelongError as exc:
            self._event("rollback", f"the supernet in use could not follow {model_id}: {exc}")
            return
        front, said = default_front(self.settings.state_dir).parent / "versions" / f"{sha}.json", ""
        if front.is_file():
            try:
                Front.load(front).save(default_front(self.settings.state_dir))
                said = " with its front"
            except (LifelongError, OSError) as exc:
                said = f"; its front could not be restored: {exc}"
        self._event("rollback", f"the supernet in use is again {path.relative_to(folder)}{said}")

    # -- the canary watch (on the loop) --------------------------------------------------------

    def _baseline(self) -> Baseline | None:
        """The serving model's figures for a canary watch; None when nothing serves."""
        assert self.runtime is not None and self.store is not None
        serving = self.runtime.current_id
        if serving is None:
            return None
        return make_baseline(
            serving,
            self.live.figures(serving),
            accuracy=store_accuracy(self.store, serving, BASELINE_LABELS),
            probes=store_probe_p95(self.store, serving),
        )

    def _resume_canary(self, serving: str) -> None:
        """At start: a deployment left ``canary`` is watched again, against the store's figures."""
        assert self.store is not None
        live = self.store.current_deployment()
        if live is None or live.state != "canary" or live.model_id != serving:
            return
        previous = live.previous_model_id
        if previous is None:
            baseline = make_baseline(None)
        else:
            baseline = make_baseline(
                previous,
                accuracy=store_accuracy(self.store, previous, BASELINE_LABELS),
                probes=store_probe_p95(self.store, previous),
            )
        self.canary = CanaryWatch(live.id, serving, baseline, resumed=True)
        self._event("canary", f"watching {serving} again (deployment {live.id}) against {previous}'s stored figures")

    def _request_canary_check(self) -> None:
        """Scheduler job: enqueue a check while a watch runs (at most one queued)."""
        if self.canary is not None and not self._canary_check_queued:
            self._canary_check_queued = True
            self.loop.put(CanaryCheck())

    def _check_canary(self, event: CanaryCheck) -> None:
        assert self.store is not None and self.runtime is not None
        self._canary_check_queued = False
        watch = self.canary
        if watch is None:
            return
        live = self.store.current_deployment()
        if (
            live is None
            or live.id != watch.deployment_id
            or live.state != "canary"
            or (self.runtime.current_id != watch.model_id)
        ):
            logger.info("canary watch of %s ends: it is no longer the live canary", watch.model_id)
            self.canary = None
            return
        decision = watch.evaluate(self.policy.swap, self.live.figures(watch.model_id))
        if decision.action == PROMOTE:
            self.store.update_deployment(watch.deployment_id, "active", f"promoted: {decision.reason}")
            self.canary = None
            self._event("canary-promoted", f"{watch.model_id} is active: {decision.reason}")
            self.notifier.status(self.status_line())
        elif decision.action == ROLLBACK:
            self.canary = None
            try:
                self._roll_back(f"auto-rollback: {decision.reason}", kind="auto-rollback")
            except LifelongError:
                logger.error("the canary %s failed its watch but cannot be rolled back; it serves on", watch.model_id)

    def _prune(self) -> dict[str, Any]:
        assert self.store is not None and self.registry is not None
        keep = self.policy.retention
        removed = self.registry.prune(keep.keep_models, keep.keep_days, store=self.store)
        before = time.time() - keep.keep_days * 86400
        deleted = self.store.delete_older_than(before, ("metrics", "drift_events"))
        busy = {h.job_id for h in self.supervisor.active()} if self.supervisor is not None else set()
        folders = prune_job_folders(
            [self.settings.state_dir / "adapt", self.settings.state_dir / "export"], before, busy
        )
        if removed:
            self._event("retention", f"pruned models {', '.join(removed)}")
        if folders:
            self._event("retention", f"removed {len(folders)} worker job folders older than {keep.keep_days:g} days")
        return {"removed_models": removed, "deleted_rows": deleted, "removed_job_folders": folders}

    # -- events (on the loop) ------------------------------------------------------------------

    def _on_inbox_file(self, event: InboxFile) -> None:
        assert self.store is not None
        if not event.path.exists():
            return  # moved away or deleted before its turn
        try:
            got = ingest_file(self.settings.inbox, event.path, self.store, self.runtime)
        except LifelongError as exc:
            self.inbox_counts["rejected"] += 1
            self._event("inbox-rejected", str(exc))
            return
        self.inbox_counts["files"] += 1
        self.inbox_counts["samples"] += len(got.images)
        self.recent_inputs.add(got.images)
        pred = got.prediction
        if pred is not None:
            self.drift_feed.add_prediction(
                pred.model_id, pred.embedding, pred.classes, pred.probabilities, pred.logit_offset
            )
            if got.labels is not None:
                known = got.labels >= 0
                outcomes = zip(got.labels[known].tolist(), pred.classes[known].tolist(), strict=True)
                self.drift_feed.add_outcomes((pred.model_id, y, p) for y, p in outcomes)
        self._samples_arrived(len(got.images))

    def _samples_arrived(self, count: int) -> None:
        """Run the drift check soon: new inbox samples, or the drift feed filling up (any thread)."""
        scheduler = self.scheduler
        if scheduler is not None and scheduler.running and DRIFT_CHECK_JOB in scheduler.stats():
            scheduler.run_now(DRIFT_CHECK_JOB)

    def _drift_due(self) -> None:
        """The drift feed is half full (an API thread): bring the check forward, within its CPU share."""
        if self.drift is not None and self.drift.may_run_early():
            self._samples_arrived(0)

    def _observe_request(self, model_id: str, batch: int, latency_ms: float, error: str | None) -> None:
        """The runtime's request observer (API threads): per-model live figures, and latency for drift."""
        self.live.observe(model_id, batch, latency_ms, error)
        self.drift_feed.add_latency(model_id, batch, latency_ms, error)

    def _on_outcomes(self, outcomes: list[tuple[str, int, int]]) -> None:
        """Feedback labels of earlier predictions (API threads): live accuracy, and accuracy drift."""
        self.live.add_outcomes(outcomes)
        self.drift_feed.add_outcomes(outcomes)

    def _on_drift(self, model_id: str, decisions: list[DriftDecision], class_mix: dict[str, Any] | None = None) -> None:
        """Answer drift that began in a check of ``model_id`` (on the loop).

        - ``data``, ``label`` explained by a change of class mix (``class_mix["answered"]``: the
          drift check has judged it and corrected the serving model's logits,
          :mod:`service.serving.class_mix`): recorded, no adaptation; feedback still judges accuracy;
        - ``data``, ``label``, ``accuracy``: adaptation (:mod:`service.workers.adaptation`): pending
          until enough labelled samples of the new data arrived, then a worker adapts the
          supernet, re-searches and exports a candidate; :meth:`_on_adaptation_done` swaps or
          says why not;
        - ``environment`` (live p95 over the budget or the profile): answered from the cached
          front with the budget tightened by the measured slowdown (:meth:`_answer_environment`).

        A drift of a model that no longer serves is ignored: its successor has its own monitor.
        """
        assert self.drift is not None and self.runtime is not None and self.adaptation is not None
        if self.runtime.current_id != model_id:
            logger.info("drift of %s ignored: %s serves now", model_id, self.runtime.current_id)
            return
        for d in decisions:
            p = "" if d.p_value is None else f", p {d.p_value:.3g}"
            what = f"{d.kind} drift on {model_id}: statistic {d.statistic:.4g} vs threshold {d.threshold:.4g}{p}"
            if d.kind == "environment":
                self._answer_environment(d, f"{what} (window {d.window})")
                continue
            if d.kind in ("data", "label") and class_mix is not None and class_mix.get("answered"):
                self._event("drift", f"{what} (window {d.window}); answered without labels: {class_mix['reason']}")
                continue
            label_free = None
            if d.kind == "data" and self.policy.adaptation.label_free == "bn":  # the first answer, before labels
                n = max(self.policy.drift.window, LABEL_FREE_SAMPLES)
                label_free = LabelFree(model_id, self.drift_feed.counts["samples"], n, self.drift.reference_mix())
            answer = self.adaptation.request(
                f"{d.kind} drift on {model_id}", cooldown_s=self.policy.adaptation.max_seconds, label_free=label_free
            )
            self.drift.note_needed(d.kind, "adapt", f"{what}; {answer}")
            if self.adaptation.running or self.adaptation.pending is not None and answer.startswith("an adaptation"):
                # the drift the running (or pending) adaptation answers, seen again at every
                # check: logged, not an event, so it cannot push the adaptation's own events out
                # of the status's last 50 (a slow adaptation was seen to)
                logger.info("drift: %s (window %d); %s", what, d.window, answer)
                continue
            self._event("drift", f"{what} (window {d.window}); {answer}")

    def _answer_environment(self, d: DriftDecision, what: str) -> None:
        """Environment drift: choose from the cached front as if the budget were as much tighter
        as the device is now slower than profiled (live p95 over the profiled p95).

        The slowdown is measured on the serving model itself, so no re-profile is needed to
        answer: every point of the front is assumed slowed alike (contention and throttling
        slow all kernels). A faster model already exported is deployed at once; otherwise the
        need is recorded and the current model serves on.
        """
        assert self.drift is not None and self.store is not None and self.registry is not None
        assert self.runtime is not None
        budget = self.policy.budgets.latency_ms_p95
        profiled, live = d.detail.get("profiled_ms"), d.detail.get("p95_lower_ms") or d.statistic
        slowed = slowed_policy(self.policy, profiled, live)
        if slowed is None or budget is None:
            if budget is None:
                reason = "no latency budget"
            elif not profiled:
                reason = "no profiled latency of the serving model"
            else:  # over the budget at its usual speed: the front's figures do not describe this device
                reason = (
                    f"the device is not slower than profiled (p95 at least {live:.3g} ms vs {profiled:.3g} ms), "
                    f"the model is over the {budget:g} ms budget at its usual speed: re-profile the device "
                    "(`lifelong profile`) and search again"
                )
            self.drift.note_needed("environment", "re-search", f"{what}; cannot answer from the front: {reason}")
            self._event("drift", f"{what}; cannot answer from the cached front: {reason}")
            return
        policy, factor = slowed
        answer = self._ask_front(policy)
        message = (
            f"{what}: the device runs {factor:.2f}x slower than profiled, so the {budget:g} ms budget "
            f"allows {budget / factor:.3g} ms at profiled speed; {answer.reason}"
        )
        if answer.action == "deploy":
            assert answer.model_id is not None
            try:
                self._deploy(model=answer.model_id, reason=f"environment drift: {message}", judge="errors")
                self.drift.clear_needed("environment")
                self._export_moot("environment")
                return
            except LifelongError as exc:  # _deploy recorded why; the current model serves on
                message = f"{message}; the deploy failed: {exc}"
        if answer.action == "serving":
            self.drift.clear_needed("environment")
            self._export_moot("environment")
        else:
            self.drift.note_needed(
                "environment", "export" if answer.action == "export-needed" else "re-search", message
            )
            if answer.action == "export-needed":
                message = f"{message}; {self._want_export('environment', answer.subnet, policy, message)}"
        self._event("drift", f"{message}; {self.runtime.current_id} serves on")

    def _ask_front(self, policy: Policy) -> PreferenceAnswer:
        """What the cached front chooses for ``policy`` and whether it can be deployed now (on the loop)."""
        assert self.store is not None and self.registry is not None and self.runtime is not None
        return answer_preference(
            self.fronts.get(), policy, store=self.store, registry=self.registry,
            serving=self.runtime.current_id, front_error=self.fronts.error, adapted_sha=self._adapted_sha(),
            domain_since=self._domain_since(),
        )  # fmt: skip

    def _domain_since(self) -> float | None:
        """When a label-free answer kept the served data's images for exports, or None."""
        try:
            return domain_calibration(self.settings.state_dir / "supernet").stat().st_mtime
        except OSError:
            return None

    def _adapted_sha(self) -> str | None:
        """The adapted supernet in use (its content hash), or None while the original is."""
        try:
            version = adapted_in_use(self.settings.state_dir / "supernet")
        except LifelongError as exc:
            self._event("adapt", f"the supernet pointer cannot be read: {exc}")
            return None
        return None if version is None else version.sha256

    def _adaptation_tick(self) -> None:
        """Start a pending adaptation once its labels are in (on the loop, every ``ADAPT_TICK_S``)."""
        a, runtime = self.adaptation, self.runtime
        if a is None or a.pending is None or runtime is None or self.store is None or self.registry is None:
            return
        serving_id = runtime.current_id
        record = None if serving_id is None else self.store.get_model(serving_id)
        path = None
        if serving_id is not None and serving_id in self.registry:
            path = self.registry.path(serving_id)
        feedback = self.feedback
        message = a.tick(
            self.policy,
            record,
            path,
            served=self.drift_feed.counts["samples"],
            recent_images=None if feedback is None else lambda n: feedback.recent_images(n, serving_id),
            recall=self._recall,
        )
        if message is not None:
            self._event("adapt", message)

    def _on_adaptation_done(self, event: AdaptationDone) -> None:
        """The adaptation worker ended (on the loop): swap if the candidate is better, else say why not."""
        assert self.adaptation is not None and self.drift is not None
        decision, result = self.adaptation.finish(event, self.policy)
        outcome = "kept"
        if result is None:
            outcome = "failed" if "cancelled" not in decision.reason else "cancelled"
        reason = decision.reason
        if decision.swap and result is not None:
            cand = result["candidate"]
            try:
                self._deploy(path=cand["path"], reason=f"adaptation: {decision.reason}", judge="accuracy")
            except LifelongError as exc:
                outcome, reason = "kept", f"{decision.reason}; the deploy was refused: {exc}"
            else:
                outcome = "swapped"
                if cand.get("checkpoint"):  # a label-free answer has none: the supernet did not change
                    domain_calibration(self.adaptation.supernet_dir()).unlink(missing_ok=True)
                    self._use_adapted_supernet(cand["checkpoint"], reason, result)
                else:
                    self._keep_domain_images(result)
                for kind in ("data", "label", "accuracy"):
                    self.drift.clear_needed(kind)
        self.adaptation.record_outcome(outcome, reason, result)
        serving = "" if self.runtime is None else f"; {self.runtime.current_id} serves"
        self._event("adapt", f"adaptation {outcome}: {reason}{serving}")

    def _recall(self, images: np.ndarray) -> str | None:
        """Domain memory: deploy the newest earlier model whose kept drift reference the served
        images match (its own embeddings of them, per-dimension KS with Simes, p >= 0.01): the
        data went back to what it served. A message if one was deployed, else None."""
        assert self.store is not None and self.registry is not None and self.runtime is not None
        assert self.drift is not None
        serving = self.runtime.current_id
        seen: set[str] = {serving} if serving else set()
        for dep in self.store.deployment_history(30):
            mid = dep.model_id
            if mid in seen or len(seen) > RECALL_MODELS:
                continue
            seen.add(mid)
            kept = self.drift.references.load(mid, 2) if mid in self.registry else None
            if kept is None:
                continue
            try:
                p = self.runtime.embedding_match(self.registry.path(mid), images, kept[0])
            except LifelongError as exc:
                logger.warning("domain memory: %s cannot be compared: %s", mid, exc)
                continue
            if p < RECALL_LEVEL:
                continue
            reason = (
                f"domain memory: the {len(images)} samples served since the drift look like the data {mid} "
                f"served (KS on its embeddings, p {p:.2g})"
            )
            try:
                self._deploy(model=mid, reason=reason, judge="errors")
            except LifelongError as exc:
                return f"{reason}; its deploy was refused: {exc}"
            domain_calibration(self.settings.state_dir / "supernet").unlink(missing_ok=True)
            return f"{reason}: it serves again"
        return None

    def _keep_domain_images(self, result: dict[str, Any]) -> None:
        """A label-free answer swapped: later exports calibrate on the images it was made from."""
        assert self.adaptation is not None
        path = result.get("unlabelled")
        try:
            with np.load(str(path), allow_pickle=False) as z:
                x = z["x"][:, None].astype(np.float32) / np.float32(255.0)
            save_calibration(domain_calibration(self.adaptation.supernet_dir()), x, source=f"label-free answer: {path}")
        except (OSError, KeyError, ValueError, LifelongError) as exc:
            self._event("adapt", f"the label-free answer's images could not be kept for later exports: {exc}")

    def _use_adapted_supernet(self, checkpoint: str, reason: str, result: dict[str, Any]) -> None:
        """The adapted supernet is the one the service uses from now on, with its front."""
        assert self.adaptation is not None
        try:
            set_current_supernet(self.adaptation.supernet_dir(), checkpoint, reason=reason)
        except LifelongError as exc:
            self._event("adapt", f"the adapted supernet could not be made current: {exc}")
            return
        sn = result.get("supernet") or {}
        self._install_front(result.get("front"), sn.get("sha256"), sn.get("parent_sha256"))

    # -- exports of front points (the cached front chose a model never exported) ----------------

    def _want_export(self, kind: str, subnet: str | None, policy: Policy, reason: str) -> str:
        if self.exporter is None or subnet is None:
            return "no export possible"
        said = self.exporter.want(kind, subnet, policy, reason)
        self._worker_tick()  # start it now rather than at the next tick
        return said

    def _export_command(self, subnet: str, reason: str | None = None) -> dict[str, Any]:
        """``lifelong deploy SUBNET --export``: export it from the supernet in use, deploy it when done."""
        why = reason or f"operator: export and deploy {subnet}"
        said = self._want_export(OPERATOR, subnet, self.policy, why)
        self._event("export", f"{subnet} asked for by the operator: {said}")
        return {"subnet": subnet, "export": said, "status": None if self.exporter is None else self.exporter.status()}

    def _export_moot(self, kind: str) -> None:
        if self.exporter is not None:
            self.exporter.drop(kind)

    def _worker_tick(self) -> None:
        """Start a pending adaptation, or else a wished export (on the loop, every ``ADAPT_TICK_S``)."""
        self._adaptation_tick()
        if self.exporter is None:
            return
        busy = "an adaptation runs" if self.adaptation is not None and self.adaptation.running else None
        message = self.exporter.tick(busy=busy)
        if message is not None:
            self._event("export", message)

    def _resume_export(self, event: ResumeExport) -> None:
        """An export wished or running when the daemon last stopped: ask the front again (on the loop)."""
        assert self.exporter is not None and self.store is not None and self.registry is not None
        assert self.runtime is not None and self.drift is not None
        wish, error = self.exporter.resume()
        if error is not None:
            self._event("export", f"the export wished before the restart is dropped: {error}")
        if wish is None:
            return
        if wish.kind == OPERATOR:
            said = self._want_export(OPERATOR, wish.subnet, wish.policy, wish.reason)
            self._event("export", f"{wish.subnet}, asked for by the operator before the restart: {said}")
            return
        policy = self.policy if wish.kind == "preference" else wish.policy
        answer = self._ask_front(policy)
        message = f"an export of {wish.subnet} was wanted before the restart ({wish.kind} drift): {answer.reason}"
        if answer.action == "export-needed":
            self.drift.note_needed(wish.kind, "export", message)
            message = f"{message}; {self._want_export(wish.kind, answer.subnet, policy, wish.reason)}"
        elif answer.action == "deploy":
            assert answer.model_id is not None
            try:
                self._deploy(model=answer.model_id, reason=f"{wish.kind} drift: {message}", judge="errors")
                return
            except LifelongError as exc:  # _deploy recorded why; the current model serves on
                message = f"{message}; the deploy failed: {exc}"
        self._event("export", message)

    def _on_export_done(self, event: ExportDone) -> None:
        """The export worker ended (on the loop): deploy the model if the front still chooses it."""
        assert self.exporter is not None and self.store is not None and self.registry is not None
        assert self.runtime is not None and self.drift is not None
        wish, report, why = self.exporter.finish(event)
        if wish is None:
            self._event("export", why)
            return
        if report is None:
            self.exporter.record_outcome("failed", why)
            self._event("export", f"{why}; {self.runtime.current_id} serves on")
            return
        timed = self._record_export_timing(wish.subnet, report)
        if timed:
            why = f"{why}; {timed}"
        if wish.kind == OPERATOR:  # asked for by name: deployed as any model the operator deploys
            self._deploy_export(report, why, f"{wish.reason}: {why}", judge="all")
            return
        policy = self.policy if wish.kind == "preference" else wish.policy  # a newer policy may have come
        answer = self._ask_front(policy)  # on the export's own timing, when it was timed
        if answer.action != "export-needed" or answer.subnet != wish.subnet:
            outcome = f"not deployed: the cached front now answers {answer.action} ({answer.reason})"
            self.exporter.record_outcome("kept", f"{why}; {outcome}")
            self._event("export", f"{why}; {outcome}")
            if answer.action == "export-needed":
                self._want_export(wish.kind, answer.subnet, policy, answer.reason)
            return
        if self._deploy_export(report, why, f"{wish.kind} drift: the cached front's choice {why}", judge="errors"):
            self.drift.clear_needed(wish.kind)

    def _record_export_timing(self, subnet: str, report: dict[str, Any]) -> str | None:
        """Write the exported file's timing (the worker timed it at the profile's batch sizes)
        into the cached front as that point's measured latency, so the front is asked again on
        what the model takes here, not on the latency model; a note for the event, or None."""
        latency = report.get("latency_ms")
        front = self.fronts.get()
        if not isinstance(latency, dict) or not latency or front is None:
            return None
        try:
            point = front[subnet]
            ms = {int(b): float(v) for b, v in latency.items()}
            front.with_measurement(subnet, latency_ms=ms, latency_source="export").save(self.fronts.path)
        except KeyError:
            return None  # not a point of the cached front (an operator's export)
        except (LifelongError, OSError, TypeError, ValueError) as exc:
            logger.warning("the export's timing was not written into the front: %s", exc)
            return None
        b = self.policy.target.batch
        if b not in ms:
            return None
        return f"timed here at {ms[b]:.3f} ms at batch {b} (the latency model said {point.latency_at(b, measured=False):.3f})"

    def _deploy_export(self, report: dict[str, Any], why: str, reason: str, *, judge: str) -> bool:
        """Deploy an exported file through the validated swap and record how it went; True if it serves."""
        assert self.exporter is not None
        try:
            self._deploy(path=str(report["path"]), reason=reason, judge=judge)
        except LifelongError as exc:  # _deploy recorded why; the current model serves on
            self.exporter.record_outcome("refused", f"{why}; the deploy was refused: {exc}")
            return False
        self.exporter.record_outcome("deployed", why)
        Path(str(report["path"])).unlink(missing_ok=True)  # the registry holds its copy
        return True

    def _install_front(self, path: str | None, sha: str | None, parent_sha: str | None) -> None:
        """The adapted supernet's front becomes the cached front, so later policy changes choose
        by accuracy on the local data. Each supernet version's front is kept as
        ``front/versions/SHA.json`` (the replaced one under its parent's hash) for a rollback."""
        target = default_front(self.settings.state_dir)
        if not path:
            self._event(
                "adapt", f"no front was searched on the adapted supernet: {target} still describes the original"
            )
            return
        versions = target.parent / "versions"
        try:
            front = Front.load(path)  # it must read before it replaces anything
            if parent_sha and target.is_file() and not (versions / f"{parent_sha}.json").exists():
                Front.load(target).save(versions / f"{parent_sha}.json")
            if sha:
                front.save(versions / f"{sha}.json")
            front.save(target)
        except (LifelongError, OSError) as exc:
            self._event("adapt", f"the adapted supernet's front was not installed: {exc}")
            return
        self._event("adapt", f"the cached front is now the adapted supernet's: {len(front)} points, from {path}")

    def _on_policy_changed(self, event: PolicyChanged) -> None:
        self._reload_policy("the policy file changed")

    def _reload(self, event: Reload) -> None:
        assert self.swapper is not None and self.registry is not None and self.runtime is not None
        self.state = "reloading"
        self.notifier.reloading(f"reloading ({event.reason})")
        try:
            self._reload_policy(event.reason)
            if self.registry.current_id() != self.runtime.current_id:
                try:  # another process moved the pointer: serve what it names, validated as any model
                    self.swapper.reload(event.reason)
                    self._event("reload", f"now serving {self.runtime.current_id}, as the registry names")
                except ModelLoadError as exc:
                    self._event("reload-refused", str(exc))
        finally:
            self.state = "ready"
            self.notifier.ready(self.status_line())

    def _reload_policy(self, reason: str) -> None:
        """Apply the policy file whole, or keep the policy in force and show why not."""
        old = self.policy
        policy = self.policy_state.reload()
        if policy is None:
            if self.policy_state.error:
                error = self._first_line(self.policy_state.error)
                self._event("policy-rejected", f"{reason}: {error} (the policy in force stays)")
                self.notifier.status(self.status_line())
            return
        self._event("policy", f"{reason}: policy {policy.name!r} from {self.policy_state.source} in force")
        runtime = self.runtime
        threads, batch = self.settings.threads or policy.target.threads, policy.target.batch
        if runtime is not None and (threads, batch) != (runtime.settings.intra_op_threads, runtime.settings.batch):
            runtime.settings = replace(runtime.settings, intra_op_threads=threads, batch=batch)
            if runtime.current_id is not None and self.swapper is not None:
                try:  # new session options: re-open the model through the validated swap
                    what = f"{threads} onnxruntime threads" if threads else f"the model's own thread count at batch {batch}"  # fmt: skip
                    self.swapper.reload(f"policy: {what}")
                except ModelLoadError as exc:
                    self._event("reload-refused", str(exc))
        self._preference_changed(old, policy)
        self.notifier.status(self.status_line())

    def _preference_changed(self, old: Policy, new: Policy) -> None:
        """Preference drift: record what changed and answer it from the cached front (on the loop)."""
        if self.scheduler is not None and new.drift.check_interval_s != old.drift.check_interval_s:
            if DRIFT_CHECK_JOB in self.scheduler.stats():
                self.scheduler.reschedule(DRIFT_CHECK_JOB, new.drift.check_interval_s)
        decision = preference_drift(old, new)
        if not decision.drifted:
            return
        assert self.store is not None and self.registry is not None and self.runtime is not None
        sections = ", ".join(decision.detail["sections"])
        answer = self._ask_front(new)
        message = f"policy {new.name!r} changed {sections}: {answer.reason}"
        assert self.drift is not None
        if answer.action == "deploy":
            assert answer.model_id is not None
            try:
                self._deploy(model=answer.model_id, reason=f"preference drift: {message}", judge="errors")
                self.drift.clear_needed("preference")  # an earlier "export needed" is moot now
                self._export_moot("preference")
            except LifelongError as exc:  # _deploy recorded why; the current model serves on
                answer = replace(answer, reason=f"{answer.reason}; the deploy failed: {exc}")
        elif answer.action == "serving":
            self.drift.clear_needed("preference")
            self._export_moot("preference")
            self._event("preference", message)
        else:  # export-needed: a worker exports it; no-point, no-front: a re-search; serving goes on
            self.drift.note_needed("preference", "export" if answer.action == "export-needed" else "re-search", message)
            if answer.action == "export-needed":
                message = f"{message}; {self._want_export('preference', answer.subnet, new, message)}"
            self._event("preference", f"{message}; {self.runtime.current_id} serves on")
        self.drift.record_preference(decision, answer)

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
