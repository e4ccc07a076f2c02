"""What reaches the daemon while it serves: inbox files of new samples (ingested on the loop),
and, from API threads, every request's latency and every feedback outcome (into the live
figures and the drift feed). New samples bring the drift check forward.
"""

from __future__ import annotations

import logging

from lifelong.errors import LifelongError
from service.daemon.parts import DaemonParts
from service.daemon.watch import InboxFile
from service.drift.check import DRIFT_CHECK_JOB
from service.serving.ingest import ingest_file

__all__ = ["Intake"]

logger = logging.getLogger(__name__)


class Intake(DaemonParts):
    """Inbox files, request observations and feedback outcomes."""

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
                own = pred.uncorrected_classes()
                if own is not None and self.drift is not None:
                    rows = zip(
                        got.labels[known].tolist(), pred.classes[known].tolist(), own[known].tolist(), strict=True
                    )
                    self.drift.class_mix.add_verdicts([(pred.model_id, y, p, o) for y, p, o in rows])
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

    def _on_corrected_outcomes(self, rows: list[tuple[str, int, int, int]]) -> None:
        """Feedback labels of predictions served under a class-mix correction (API threads):
        the correction's judge (:meth:`service.serving.class_mix.ClassMix.add_verdicts`)."""
        if self.drift is not None:
            self.drift.class_mix.add_verdicts(rows)
