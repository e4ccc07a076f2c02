"""The daemon's answers to drift: each kind of drift the check reports, answered on the loop.

- ``data``, ``label`` explained by a change of class mix: recorded; the drift check already
  corrected the serving model's logits (:mod:`service.serving.class_mix`);
- ``data``, ``label``, ``accuracy``: an adaptation becomes pending (:mod:`service.workers.adaptation`),
  with the label-free BN answer first when the policy asks for it; before any worker starts,
  the **domain memory** (:meth:`DriftAnswers._recall`) deploys an earlier model whose kept
  drift reference the served data matches again;
- ``environment``: the cached front is asked with the budget tightened by the measured slowdown;
- ``preference`` (a new policy): the cached front is asked with the new policy.

Every answer from the cached front goes through :meth:`DriftAnswers._answer_from_front`.

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
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import numpy as np

from lifelong.data.calibration import domain_calibration
from lifelong.drift.detectors import DriftDecision
from lifelong.drift.signals import preference_drift
from lifelong.errors import LifelongError
from lifelong.persist.supernet_versions import adapted_in_use
from policies import Policy
from service.daemon.parts import DaemonParts
from service.drift.check import DRIFT_CHECK_JOB
from service.drift.preference import PreferenceAnswer, answer_preference, slowed_policy
from service.workers.adaptation import (
    LABEL_FREE_SAMPLES,
    LabelFree,
)

logger = logging.getLogger(__name__)

RECALL_MODELS = 3
"""Earlier models the domain memory compares the served data with (the newest deployed)."""
RECALL_LEVEL = 0.01
"""KS (Simes) p-value at or above which the served data matches an earlier model's reference."""
RECALL_IMAGES = 200
"""The newest served images the domain memory compares with earlier models' references."""
RECALL_AFTER = (50, 200)
"""Samples served after a data or label drift's detection at which the domain memory is asked
(the second time only if the first found nothing: a detection can come so early that the
newest images still hold the old data's tail); both before the label-free answer's wait ends."""


__all__ = ["DriftAnswers"]


class DriftAnswers(DaemonParts):
    """Answers to drift: adaptation, the domain memory, and the cached front's choice."""

    def _on_drift(self, model_id: str, decisions: list[DriftDecision], class_mix: dict[str, Any] | None = None) -> None:
        """Answer drift that began in a check of ``model_id`` (on the loop).

        - ``data``, ``label`` explained by a change of class mix (``class_mix["answered"]``: the
          drift check has judged it and corrected the serving model's logits,
          :mod:`service.serving.class_mix`): recorded, no adaptation; when feedback overrules the
          correction later, the drift check sends the same decisions again (``class_mix["overruled"]``)
          and they are answered below;
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
            self._watch_recall(model_id)
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
            again = (
                f"; {class_mix['reason']}, answered again"
                if class_mix is not None and class_mix.get("overruled")
                else ""
            )
            self._event("drift", f"{what} (window {d.window}){again}; {answer}")

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
        self._answer_from_front("environment", policy, answer, message, event="drift")

    def _watch_recall(self, model_id: str) -> None:
        """Ask the domain memory :data:`RECALL_AFTER` samples after this drift of ``model_id``
        (:meth:`_recall_tick`); a drift seen again at the next check keeps the watch's start.
        Nothing when the policy's ``adaptation.domain_memory`` is ``"off"``."""
        if self.policy.adaptation.domain_memory != "on":
            return
        if self._recall_watch is None or self._recall_watch[0] != model_id:
            self._recall_watch = (model_id, self.drift_feed.counts["samples"], 0)

    def _recall_tick(self) -> str | None:
        """The domain memory's turn (on the loop, every adaptation tick, before any worker
        starts): at each of :data:`RECALL_AFTER` samples after the drift, deploy the earlier
        model whose data the newest served images match, and cancel the adaptation, pending
        or running, that answered a drift the data has now left. Independent of the
        adaptation's cool-down and of a worker running: it trains nothing. An event message,
        or None."""
        watch, runtime = self._recall_watch, self.runtime
        if watch is None or runtime is None or self.feedback is None:
            return None
        model_id, since, tries = watch
        if runtime.current_id != model_id or tries >= len(RECALL_AFTER):
            self._recall_watch = None  # another answer came first, or every try is spent
            return None
        if self.drift_feed.counts["samples"] - since < RECALL_AFTER[tries]:
            return None
        self._recall_watch = (model_id, since, tries + 1)
        images = self.feedback.recent_images(RECALL_IMAGES, model_id)
        if images is None or len(images) < RECALL_IMAGES // 2:
            return None
        said = self._recall(images)
        if said is None or runtime.current_id == model_id:
            return said
        self._recall_watch = None
        dropped = []
        if self.adaptation is not None and self.adaptation.pending is not None:
            self.adaptation.cancel_pending()
            dropped.append("the pending adaptation is dropped")
        if self.adaptation is not None and self.adaptation.running:
            self.adaptation.cancel()
            dropped.append("the running adaptation is cancelled")
        return f"{said}; {' and '.join(dropped)}: the data it answered is gone" if dropped else said

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
                f"domain memory: the last {len(images)} samples served look like the data {mid} "
                f"served (KS on its embeddings, p {p:.2g})"
            )
            try:
                self._deploy(model=mid, reason=reason, judge="errors")
            except LifelongError as exc:
                return f"{reason}; its deploy was refused: {exc}"
            domain_calibration(self.settings.state_dir / "supernet").unlink(missing_ok=True)
            return f"{reason}: it serves again"
        return None

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
        answer = self._answer_from_front("preference", new, answer, message, event="preference")
        assert self.drift is not None
        self.drift.record_preference(decision, answer)

    def _answer_from_front(
        self, kind: str, policy: Policy, answer: PreferenceAnswer, message: str, *, event: str
    ) -> PreferenceAnswer:
        """Carry out the cached front's ``answer`` to ``kind`` drift: the one place it is done.

        - ``deploy``: the exported choice through the validated swap (its canary judges errors
          only: a slower or less accurate model is what the drift asked for); an earlier need
          or export wish of ``kind`` is moot;
        - ``serving``: the need and the wish are moot;
        - ``export-needed``: the need is recorded and a worker exports the choice;
        - anything else (no point within the budgets, no front): a re-search is needed.

        Unless a deploy happened (it has its own event), the event ``event`` says what the front
        answered and that the current model serves on. Returns ``answer``, with a failed deploy
        in its reason.
        """
        assert self.drift is not None and self.runtime is not None
        if answer.action == "deploy":
            assert answer.model_id is not None
            try:
                self._deploy(model=answer.model_id, reason=f"{kind} drift: {message}", judge="errors")
            except LifelongError as exc:  # _deploy recorded why; the current model serves on
                message = f"{message}; the deploy failed: {exc}"
                answer = replace(answer, reason=f"{answer.reason}; the deploy failed: {exc}")
            else:
                self.drift.clear_needed(kind)
                self._export_moot(kind)
                return answer
        elif answer.action == "serving":
            self.drift.clear_needed(kind)
            self._export_moot(kind)
        elif answer.action == "export-needed":
            self.drift.note_needed(kind, "export", message)
            message = f"{message}; {self._want_export(kind, answer.subnet, policy, message)}"
        else:
            self.drift.note_needed(kind, "re-search", message)
        self._event(event, f"{message}; {self.runtime.current_id} serves on")
        return answer

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
