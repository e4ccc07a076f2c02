"""The daemon's canary watch: the serving model's figures taken before a swap, the watch
resumed at start, and each check that keeps, promotes or rolls back the new model
(:mod:`service.daemon.canary` holds the rules).

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
"""

from __future__ import annotations

import logging

import numpy as np

from lifelong.errors import LifelongError
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
from service.daemon.parts import DaemonParts
from service.daemon.status import BASELINE_LABELS

logger = logging.getLogger(__name__)


__all__ = ["CanaryWatching"]


class CanaryWatching(DaemonParts):
    """The canary watch of a model deployed over a serving one."""

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
