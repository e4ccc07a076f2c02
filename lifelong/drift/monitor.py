"""The drift monitor: one detector of each kind, configured from a policy's drift settings.

The service feeds it what it sees while serving (embeddings and predictions of each
request, feedback correctness bits, latencies) and gets back the decisions of the checks
that came due::

    monitor = DriftMonitor.from_policy(policy, num_classes=10, profiled_latency_ms=3.2)
    for decision in monitor.observe(embeddings=emb, predictions=pred, latency_ms=lat):
        store.record_drift(decision.to_dict())      # the caller decides what to act on
    decision = monitor.update_policy(new_policy)      # preference drift

How :class:`~policies.schema.DriftSettings` maps onto the detectors:

- ``window``: live window of every detector (embeddings, predictions, latencies);
- ``reference_window``: reference size of the data and label tests (the first samples
  after a deploy, unless references are given);
- ``false_alarm_samples``: the ARL of the monitor as a whole; each of its
  :data:`SHARED_DETECTORS` detectors gets an equal share of the false-alarm budget (an ARL
  of ``4 x false_alarm_samples``), so that by the union bound the monitor raises a false
  alarm at most once per ``false_alarm_samples`` samples, not once per detector;
- ``accuracy_drop``: the accuracy drop that is accuracy drift;
- ``latency_factor``: how far the live p95 may exceed the profiled latency;
- ``check_interval_s``: not used here; how often the service calls :meth:`observe`.

Checks run every ``window // CHECKS_PER_WINDOW`` samples (100 for a window of 500): often
enough that a shift is seen within a fifth of a window of its start, rarely enough that a
check (a few milliseconds) costs little per sample. The alpha of a check follows from the
ARL, so the cadence changes detection delay, not the false-alarm rate.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from lifelong.drift.detectors import EmbeddingDrift, LabelShift
from lifelong.drift.signals import AccuracyDrift, LatencyDrift, preference_drift
from lifelong.errors import DriftError

if TYPE_CHECKING:
    from lifelong.drift.detectors import DriftDecision
    from policies.schema import DriftSettings, Policy

__all__ = ["CHECKS_PER_WINDOW", "SHARED_DETECTORS", "DriftMonitor"]

logger = logging.getLogger(__name__)

CHECKS_PER_WINDOW = 5
"""Checks per window length of samples."""

SHARED_DETECTORS = 4
"""Detectors that share the policy's false-alarm budget: data, label, accuracy, environment."""


class DriftMonitor:
    """Data, label, accuracy and environment detectors, plus the policy for preference drift.

    Not thread-safe: feed it from one thread (the daemon's loop), as the checks it runs
    read the windows that feeding writes.

    Args:
        settings: The policy's drift settings.
        num_classes: Classes the model predicts.
        latency_budget_ms: The policy's p95 latency budget (``None``: no budget).
        profiled_latency_ms: The latency the device profile predicts for the deployed model.
        embedding_reference: ``(m, D)`` reference embeddings; ``None``: the first
            ``reference_window`` observed.
        prediction_reference: ``(m,)`` reference predictions; ``None``: the first observed.
        embedding_method: Test of :class:`~lifelong.drift.detectors.EmbeddingDrift`.
        seed: Seed of the data-drift test's random choices.
        policy: The policy the settings came from (needed by :meth:`update_policy`).
    """

    def __init__(
        self,
        settings: DriftSettings,
        *,
        num_classes: int,
        latency_budget_ms: float | None = None,
        profiled_latency_ms: float | None = None,
        embedding_reference: np.ndarray | None = None,
        prediction_reference: np.ndarray | None = None,
        embedding_method: str = "ks",
        seed: int = 0,
        policy: Policy | None = None,
    ) -> None:
        self.settings = settings
        self.num_classes = num_classes
        self.latency_budget_ms = latency_budget_ms
        self.profiled_latency_ms = profiled_latency_ms
        self.policy = policy
        self._references = (embedding_reference, prediction_reference)
        self._method = embedding_method
        self._seed = seed
        self._build()

    @classmethod
    def from_policy(cls, policy: Policy, *, num_classes: int, **kwargs: Any) -> DriftMonitor:
        """A monitor with the policy's drift settings and latency budget (other arguments as above)."""
        return cls(
            policy.drift,
            num_classes=num_classes,
            latency_budget_ms=policy.budgets.latency_ms_p95,
            policy=policy,
            **kwargs,
        )

    @property
    def check_every(self) -> int:
        """Samples between two checks of a detector."""
        return max(1, self.settings.window // CHECKS_PER_WINDOW)

    def _build(self) -> None:
        s, every = self.settings, self.check_every
        arl = float(s.false_alarm_samples) * SHARED_DETECTORS
        if not s.false_alarm_samples > every:
            raise DriftError(f"drift.false_alarm_samples ({s.false_alarm_samples}) must exceed checks' spacing {every}")
        embedding_ref, prediction_ref = self._references
        self.data = EmbeddingDrift(
            embedding_ref,
            window=s.window,
            check_every=every,
            arl=arl,
            seed=self._seed,
            reference_size=s.reference_window,
            method=self._method,
        )
        self.label = LabelShift(
            self.num_classes,
            prediction_ref,
            window=s.window,
            check_every=every,
            arl=arl,
            reference_size=s.reference_window,
        )
        self.accuracy = AccuracyDrift(accuracy_drop=s.accuracy_drop, arl=arl, check_every=every)
        self.environment = LatencyDrift(
            budget_ms=self.latency_budget_ms,
            profiled_ms=self.profiled_latency_ms,
            factor=s.latency_factor,
            window=s.window,
            check_every=every,
            arl=arl,
        )

    def reset(self, *, profiled_latency_ms: float | None = None, **references: np.ndarray | None) -> None:
        """Start over, as after a new model is deployed: new references, empty windows.

        Args:
            profiled_latency_ms: The new model's profiled latency (``None``: keep the old one).
            references: ``embedding_reference`` and/or ``prediction_reference`` of the new
                model; those not given are collected from the next samples again.
        """
        unknown = set(references) - {"embedding_reference", "prediction_reference"}
        if unknown:
            raise DriftError(f"reset takes embedding_reference and prediction_reference, got {sorted(unknown)}")
        self._references = (references.get("embedding_reference"), references.get("prediction_reference"))
        if profiled_latency_ms is not None:
            self.profiled_latency_ms = profiled_latency_ms
        self._build()

    def observe(
        self,
        *,
        embeddings: np.ndarray | None = None,
        predictions: np.ndarray | None = None,
        correct: np.ndarray | None = None,
        latency_ms: np.ndarray | float | None = None,
    ) -> list[DriftDecision]:
        """Feed what was served since the last call; the decisions of the checks that came due.

        Args:
            embeddings: ``(N, D)`` embeddings of the requests, in arrival order.
            predictions: ``(N,)`` predicted classes.
            correct: ``(M,)`` feedback bits, 1 where the model's answer was right.
            latency_ms: Latencies of requests (or batches), in milliseconds.
        """
        decisions = []
        fed = (
            (self.data, embeddings),
            (self.label, predictions),
            (self.accuracy, correct),
            (self.environment, latency_ms),
        )
        for detector, values in fed:
            if values is None:
                continue
            decision = detector.update(values)
            if decision is not None:
                decisions.append(decision)
                if decision.drifted:
                    logger.info(
                        "%s drift: statistic %.4g, threshold %.4g, p %s (window %d, reference %d)",
                        decision.kind,
                        decision.statistic,
                        decision.threshold,
                        "-" if decision.p_value is None else f"{decision.p_value:.3g}",
                        decision.window,
                        decision.reference,
                    )
        return decisions

    def update_policy(self, policy: Policy) -> DriftDecision:
        """Preference drift from the current policy to ``policy``, which becomes the current one.

        A new latency budget applies at once; new drift settings rebuild the detectors
        (references given to the monitor are kept, collected ones are collected again).
        """
        if self.policy is None:
            raise DriftError("update_policy needs the monitor's current policy: build it with DriftMonitor.from_policy")
        decision = preference_drift(self.policy, policy)
        old, self.policy = self.policy, policy
        self.latency_budget_ms = policy.budgets.latency_ms_p95
        self.environment.budget_ms = self.latency_budget_ms
        if policy.drift != old.drift:
            self.settings = policy.drift
            self._build()
        return decision

    def status(self) -> dict[str, Any]:
        """How full each detector is, for ``lifelong status``."""
        return {
            "check_every": self.check_every,
            "data": {"reference": self.data.reference_count, "seen": self.data.seen},
            "label": {"reference": self.label.reference_count, "seen": self.label.seen},
            "accuracy": {
                "window": len(self.accuracy),
                "seen": self.accuracy.seen,
                "baseline_error": self.accuracy.baseline_error,
            },
            "environment": {"limit_ms": self.environment.limit_ms, "seen": self.environment.seen},
        }
