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
    from collections.abc import Callable

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
    from service.serving.ort_runtime import OrtRuntime
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

    policy: Policy  # the daemon's property: the policy in force

    # the methods one part calls on another, each written once in the module named
    _event: Callable[[str, str], None]  # core
    status_line: Callable[[], str]  # core
    _first_line: Callable[[str | None], str]  # core
    _deploy: Callable[..., dict[str, Any]]  # commands
    _roll_back: Callable[..., dict[str, Any]]  # commands
    _baseline: Callable[[], Baseline | None]  # canary_watch
    _paired: Callable[[Baseline], Baseline]  # canary_watch
    _ask_front: Callable[[Policy], PreferenceAnswer]  # drift_answers
    _answer_from_front: Callable[..., PreferenceAnswer]  # drift_answers
    _recall: Callable[[np.ndarray], str | None]  # drift_answers
    _recall_tick: Callable[[], str | None]  # drift_answers
    _preference_changed: Callable[[Policy, Policy], None]  # drift_answers
    _want_export: Callable[[str, str | None, Policy, str], str]  # exports
    _export_moot: Callable[[str], None]  # exports
    _adaptation_tick: Callable[[], None]  # adaptations
    _install_front: Callable[[str | None, str | None, str | None], None]  # adaptations
    _follow_serving: Callable[[str], None]  # adaptations
