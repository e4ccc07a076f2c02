"""What the daemon shows: the ``/v1/status`` document beyond the runtime's own, and the worker
jobs' Prometheus families.

It reads the daemon's parts (its store, runtime, policy, watches, workers) and changes none
of them: a status request never disturbs the loop's own decisions (the canary's figures, for
one, are evaluated afresh here). No torch here.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from lifelong.deploy.model_format import META_SUBNET
from service.daemon import documents as status_doc
from service.daemon.canary import decide, feedback_rows, tally
from service.daemon.profile_status import ProfileStatus

if TYPE_CHECKING:
    from service.daemon.core import Daemon

__all__ = ["BASELINE_LABELS", "DaemonStatus"]

BASELINE_LABELS = 500
"""Feedback labels (the newest) a model's accuracy is measured on, as baseline and in the status."""


class DaemonStatus:
    """The status document of ``daemon``.

    Args:
        daemon: The daemon whose parts are read.
        profiles: The device profile as the status shows it.
    """

    def __init__(self, daemon: Daemon, profiles: ProfileStatus) -> None:
        self.daemon, self.profiles = daemon, profiles

    def task(self) -> dict[str, Any] | None:
        d = self.daemon
        task = None if d.runtime is None else d.runtime.task
        if task is None:
            return None
        return {"classes": task.num_classes, "images": task.source, "floor": d.policy.swap.min_task_accuracy,
                "serving_accuracy": d.runtime.task_accuracy() if d.runtime is not None else None}  # fmt: skip

    def extra(self) -> dict[str, Any]:
        """What ``/v1/status`` adds to the runtime's own status."""
        d = self.daemon
        assert d.store is not None
        api = d.api
        events = d.events_newest_first()
        return {
            "daemon": {
                "pid": os.getpid(),
                "state": d.state,
                "started_at": d.started_at,
                "uptime_s": None if d.started_at is None else time.time() - d.started_at,
                "state_dir": str(d.settings.state_dir),
                "addresses": [] if api is None else api.addresses,
                "admin_socket": str(d.settings.admin_socket_path),
                "status_line": d.status_line(),
                "torch_imported": "torch" in sys.modules,
                "threads": threading.active_count(),
            },
            "policy": d.policy_state.to_dict(),
            "store": d.store.status_summary(),
            "events": events,
            "inbox": {"folder": str(d.settings.inbox), **d.inbox_counts},
            "latency_probe": d.last_probe,
            "memory_trim": d.memory_trim.status(),
            "canary": self.canary(),
            "task_check": self.task(),
            "drift": None if d.drift is None else d.drift.status(),
            "live": self.live(),
            "precision": self.precision(),
            "profile": self.profile(),
            "jobs": {} if d.scheduler is None else {k: v.to_dict() for k, v in d.scheduler.stats().items()},
            "workers": [] if d.supervisor is None else [h.to_dict() for h in d.supervisor.active()],
            "adaptation": None if d.adaptation is None else d.adaptation.status(),
            "export": None if d.exporter is None else d.exporter.status(),
        }

    def worker_metrics(self) -> str:
        """Prometheus families of the worker jobs: how they ended, and what runs now (API threads)."""
        d = self.daemon
        parts = [("adapt", d.adaptation), ("export", d.exporter)]
        counts = [(kind, dict(part.outcomes)) for kind, part in parts if part is not None]  # the loop may add one
        ended = [(kind, outcome, n) for kind, c in counts for outcome, n in sorted(c.items())]
        lines = [
            "# HELP lifelong_worker_jobs_total Worker jobs (adaptations, exports) ended since the daemon started, by outcome.",
            "# TYPE lifelong_worker_jobs_total counter",
            *(f'lifelong_worker_jobs_total{{kind="{k}",outcome="{o}"}} {n}' for k, o, n in ended),
            "# HELP lifelong_worker_jobs_running Worker jobs running now.",
            "# TYPE lifelong_worker_jobs_running gauge",
            *(f'lifelong_worker_jobs_running{{kind="{k}"}} {int(p is not None and p.running)}' for k, p in parts),
        ]
        return "\n".join(lines) + "\n"

    def canary(self) -> dict[str, Any] | None:
        """The watch with a fresh evaluation (pure: the loop's own decision is not disturbed)."""
        d = self.daemon
        watch = d.canary
        if watch is None:
            return None
        decision = decide(d.policy.swap, watch.baseline, d.live.figures(watch.model_id))
        return watch.to_dict(decision)

    def live(self) -> dict[str, Any] | None:
        """The serving model's live figures since it serves, and its accuracy on its last feedback labels."""
        d = self.daemon
        serving = None if d.runtime is None else d.runtime.current_id
        if serving is None or d.store is None:
            return None
        rows = feedback_rows(d.store, serving, BASELINE_LABELS)
        labelled, correct = tally(rows)
        feedback: dict[str, Any] = {"labelled": labelled, "correct": correct,
                                    "accuracy": correct / labelled if labelled else None,
                                    "newest_at": max((s.labelled_at or 0.0 for s in rows), default=None)}  # fmt: skip
        since = None if d.drift is None else d.drift.episode_since()
        if since is not None:  # the labels from before the drift describe data the model no longer sees
            n, right = tally(s for s in rows if (s.labelled_at or 0.0) >= since)
            feedback["drift"] = {"since": since, "labelled": n, "correct": right,
                                 "accuracy": right / n if n else None, "stale": labelled - n}  # fmt: skip
        return d.live.figures(serving).to_dict() | {"feedback": feedback}

    def serving_subnet(self) -> str | None:
        d = self.daemon
        if d.runtime is None or d.runtime.current_id is None:
            return None
        assert d.store is not None
        record = d.store.get_model(d.runtime.current_id)
        return (record.subnet if record else None) or d.runtime.stats().model_metadata.get(META_SUBNET)

    def precision(self) -> dict[str, Any] | None:
        """The serving model's per-layer precisions, read from its subnet string (no torch needed)."""
        subnet = self.serving_subnet()
        return None if subnet is None else status_doc.precision_summary(subnet)

    def profile(self) -> dict[str, Any]:
        """The device profile's age, fit to this device, and its prediction for the serving model
        against the latency probe's p50 at the policy's batch (:mod:`service.daemon.profile_status`)."""
        d = self.daemon
        probe = d.last_probe or {}
        serving = None if d.runtime is None else d.runtime.current_id
        live = probe.get("p50_ms") if probe.get("model") == serving and probe.get("batch") == d.policy.target.batch else None  # fmt: skip
        threads = d.settings.threads or d.policy.target.fixed_threads  # profiles time at a fixed count
        return self.profiles.status(
            subnet=self.serving_subnet(), batch=d.policy.target.batch, threads=threads, live_p50_ms=live
        )
