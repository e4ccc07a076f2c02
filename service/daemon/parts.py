"""What the daemon's parts share: the attributes :class:`~service.daemon.core.Daemon` sets
up, and the few of its methods every part calls.

The daemon is one object with one loop (:mod:`service.daemon.core`); its answers are written
in parts, one concept each, as mixins of this base: the commands (:mod:`service.daemon.commands`),
the canary watch
(:mod:`service.daemon.canary_watch`), the answers to drift (:mod:`service.daemon.drift_answers`),
exports of front points (:mod:`service.daemon.exports`) and adaptations
(:mod:`service.daemon.adaptations`), policy reloads (:mod:`service.daemon.policy_reload`), and what arrives while it serves
(:mod:`service.daemon.intake`).
Every method of a part runs on the loop unless it says
otherwise, as the daemon's own do.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from policies import Policy
    from service.api.feedback import StoreFeedback
    from service.daemon.canary import Baseline, CanaryWatch
    from service.daemon.loop import EventLoop
    from service.daemon.sdnotify import Notifier
    from service.daemon.settings import DaemonSettings
    from service.daemon.swap import Swapper
    from service.drift.check import DriftCheck
    from service.drift.feed import DriftFeed
    from service.drift.preference import FrontCache, PreferenceAnswer
    from service.jobs import Scheduler
    from service.serving.ingest import RecentInputs
    from service.serving.live import LiveMonitor
    from service.serving.runtime import OrtRuntime
    from service.state.policy_state import PolicyState
    from service.state.registry import Registry
    from service.state.store import Store
    from service.workers.adaptation import Adaptation
    from service.workers.front_export import FrontExport
    from service.workers.supervisor import WorkerSupervisor

__all__ = ["DaemonParts"]


class DaemonParts:
    """The daemon's shared state, as its parts see it (set by ``Daemon.__init__`` and ``start``)."""

    settings: DaemonSettings
    notifier: Notifier
    loop: EventLoop
    store: Store | None
    registry: Registry | None
    runtime: OrtRuntime | None
    drift: DriftCheck | None
    drift_feed: DriftFeed
    fronts: FrontCache
    live: LiveMonitor
    recent_inputs: RecentInputs
    feedback: StoreFeedback | None
    scheduler: Scheduler | None
    adaptation: Adaptation | None
    exporter: FrontExport | None
    canary: CanaryWatch | None
    supervisor: WorkerSupervisor | None
    swapper: Swapper | None
    state: str
    policy_state: PolicyState
    _canary_check_queued: bool
    inbox_counts: dict[str, int]
    _recall_watch: tuple[str, int, int] | None  # the domain memory's watch: (model, samples served at its drift, tries)
    recent_events: deque[dict[str, Any]]
    _events_lock: threading.Lock

    @property
    def policy(self) -> Policy:
        raise NotImplementedError

    def _event(self, kind: str, message: str) -> None:
        raise NotImplementedError

    def _deploy(
        self,
        model: str | None = None,
        path: str | None = None,
        data: bytes | None = None,
        name: str | None = None,
        reason: str | None = None,
        judge: str = "all",
    ) -> dict[str, Any]:
        raise NotImplementedError

    def _roll_back(self, reason: str, *, kind: str) -> dict[str, Any]:
        raise NotImplementedError

    def status_line(self) -> str:
        raise NotImplementedError

    @staticmethod
    def _first_line(text: str | None) -> str:
        raise NotImplementedError

    # one part calls another through these (each is written in the part named)
    def _baseline(self) -> Baseline | None:  # canary_watch
        raise NotImplementedError

    def _paired(self, baseline: Baseline) -> Baseline:  # canary_watch
        raise NotImplementedError

    def _ask_front(self, policy: Policy) -> PreferenceAnswer:  # drift_answers
        raise NotImplementedError

    def _answer_from_front(
        self, kind: str, policy: Policy, answer: PreferenceAnswer, message: str, *, event: str
    ) -> PreferenceAnswer:  # drift_answers
        raise NotImplementedError

    def _recall(self, images: np.ndarray) -> str | None:  # drift_answers
        raise NotImplementedError

    def _recall_tick(self) -> str | None:  # drift_answers
        raise NotImplementedError

    def _want_export(self, kind: str, subnet: str | None, policy: Policy, reason: str) -> str:  # exports
        raise NotImplementedError

    def _export_moot(self, kind: str) -> None:  # exports
        raise NotImplementedError

    def _adaptation_tick(self) -> None:  # adaptations
        raise NotImplementedError

    def _install_front(self, path: str | None, sha: str | None, parent_sha: str | None) -> None:  # adaptations
        raise NotImplementedError

    def _follow_serving(self, model_id: str) -> None:  # adaptations
        raise NotImplementedError

    def _preference_changed(self, old: Policy, new: Policy) -> None:  # drift_answers
        raise NotImplementedError
