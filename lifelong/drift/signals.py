"""Drift signals from outside the inputs: feedback accuracy, live latency, the policy.

The companions of the input-distribution tests of :mod:`lifelong.drift.detectors`, answering with
the same :class:`~lifelong.drift.detectors.DriftDecision`:

* :class:`AccuracyDrift`: ADWIN on the error bits of labelled feedback;
* :class:`LatencyDrift`: the live p95 latency against the budget and the profiled latency;
* :func:`preference_drift`: which sections of the policy changed (and :func:`policy_digest`).

Numpy only: the serving process runs these checks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from lifelong.drift.adwin import Adwin
from lifelong.drift.detectors import DriftDecision, _jsonable, _Rows, _Stream, check_cadence
from lifelong.drift.stats import quantile_lower_bound
from lifelong.errors import DataError, DriftError

if TYPE_CHECKING:
    from policies.schema import Policy

__all__ = ["AccuracyDrift", "LatencyDrift", "policy_digest", "preference_drift"]

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- accuracy drift


class AccuracyDrift:
    """Accuracy drift: ADWIN over the error bits of labelled feedback (1 = the model was wrong).

    ADWIN (:class:`~lifelong.drift.adwin.Adwin`) cuts its window where the error rate
    changed significantly, with ``delta = clock / arl`` so that false cuts come at most
    once per ``arl`` bits. A cut is drift when the error rate after it exceeds the
    *baseline* (the rate before the first cut) by at least ``accuracy_drop``; the baseline
    then moves to the new rate, so one drop is reported once and a further drop again.
    Measured on Bernoulli streams: no false cut in 20 x 20,000 bits at error 0.1 and ARL
    20,000; a jump from 0.1 to 0.3 is detected after 56 to 248 bits (median 152).

    Besides drift, a routine decision (not drifted) comes every ``check_every`` bits.

    Args:
        accuracy_drop: Absolute accuracy drop that counts as drift.
        arl: Expected feedback bits between two false alarms.
        check_every: Bits between two routine decisions.
        max_window: Most bits ADWIN keeps.
        clock: Bits between two ADWIN checks.
    """

    def __init__(
        self,
        *,
        accuracy_drop: float = 0.05,
        arl: float = 20_000,
        check_every: int = 100,
        max_window: int = 10_000,
        clock: int = 32,
    ) -> None:
        if not 0 < accuracy_drop < 1:
            raise DriftError(f"accuracy_drop must be in (0, 1), got {accuracy_drop!r}")
        check_cadence(max_window, check_every, arl)
        if not arl > clock:
            raise DriftError(f"arl must be > clock ({clock}), got {arl!r}")
        self.accuracy_drop = accuracy_drop
        self.check_every = check_every
        self._adwin = Adwin(clock / arl, clock=clock, max_window=max_window)
        self._baseline: float | None = None
        self.seen = 0
        self._since = 0

    def __len__(self) -> int:
        """Bits in ADWIN's window."""
        return len(self._adwin)

    @property
    def baseline_error(self) -> float | None:
        """The error rate drops are measured from (``None`` before ADWIN's first cut)."""
        return self._baseline

    def update(self, correct: np.ndarray) -> DriftDecision | None:
        """Feed ``(N,)`` feedback bits (1/True = correct); the first drift, a routine decision, or None."""
        c = np.asarray(correct)
        if c.ndim != 1 or (c.size and not np.isin(c, (0, 1)).all()):
            raise DataError(f"correct: feedback must be a 1-D array of 0/1 or booleans, got {c.dtype} {c.shape}")
        errors = 1.0 - c.astype(np.float64)
        start = self.seen
        self.seen += len(c)
        self._since += len(c)
        drift = None
        for index, cut in self._adwin.update(errors):
            if self._baseline is None:
                self._baseline = cut.old_mean
            drop = cut.new_mean - self._baseline
            logger.debug("accuracy: ADWIN cut %.3f -> %.3f (eps %.3f)", cut.old_mean, cut.new_mean, cut.epsilon)
            if drift is None and drop >= self.accuracy_drop:
                detail = self._detail(start + index + 1, cut.old_mean, cut.new_mean, cut.epsilon)
                drift = DriftDecision(
                    "accuracy", drop, self.accuracy_drop, None, cut.new_size, cut.old_size, True, detail
                )
                self._baseline = cut.new_mean
        if drift is not None:
            self._since = 0
            return drift
        if self._since < self.check_every:
            return None
        self._since = 0
        mean = self._adwin.mean
        drop = mean - self._baseline if self._baseline is not None else 0.0
        detail = self._detail(self.seen, self._baseline, mean, None)
        return DriftDecision("accuracy", drop, self.accuracy_drop, None, len(self._adwin), 0, False, detail)

    def _detail(self, sample: int, before: float | None, now: float, epsilon: float | None) -> dict[str, Any]:
        return {
            "detector": "adwin",
            "delta": self._adwin.delta,
            "error_before": before,
            "error_now": now,
            "epsilon": epsilon,
            "sample": sample,
        }


# --------------------------------------------------------------------------- environment drift


class LatencyDrift:
    """Environment drift: live p95 latency against the policy's budget and the profiled latency.

    Drift when the p95 over the live window is above the budget, or above ``factor`` times
    the latency the device profile predicted for this model (contention, throttling). The
    decision uses a distribution-free lower confidence bound of the p95 (order statistics,
    :func:`~lifelong.drift.stats.quantile_lower_bound`) at level ``1 - alpha``, ``alpha =
    check_every / arl`` as for the other detectors: latency tails are heavy, and a p95
    estimated from a few hundred requests would cross a limit it sits near by chance.

    Args:
        budget_ms: The policy's p95 latency budget (``None``: no budget).
        profiled_ms: The latency the profile predicts for the deployed model (``None``: unknown).
        factor: How far above the profiled latency the p95 may go.
        window: Latency samples in the live window.
        check_every: Samples fed between two checks.
        arl: Expected samples between two false alarms.
        min_samples: Samples needed before the first check (at most ``window``).
    """

    def __init__(
        self,
        *,
        budget_ms: float | None,
        profiled_ms: float | None,
        factor: float = 1.3,
        window: int = 500,
        check_every: int = 100,
        arl: float = 20_000,
        min_samples: int = 100,
    ) -> None:
        problems = [
            f"{name} must be a number > 0 or None, got {v!r}"
            for name, v in (("budget_ms", budget_ms), ("profiled_ms", profiled_ms))
            if v is not None and not (isinstance(v, int | float) and math.isfinite(v) and v > 0)
        ]
        if not (isinstance(factor, int | float) and factor >= 1):
            problems.append(f"factor must be a number >= 1, got {factor!r}")
        if problems:
            raise DriftError("; ".join(problems))
        self._stream = _Stream(window, check_every, arl)
        self.budget_ms, self.profiled_ms, self.factor = budget_ms, profiled_ms, float(factor)
        self.min_samples = max(1, min(min_samples, window))
        self._live = _Rows(window, 1)

    @property
    def seen(self) -> int:
        """Latency samples fed in all."""
        return self._stream.seen

    @property
    def limit_ms(self) -> float | None:
        """The lowest latency that is drift; ``None`` when neither budget nor profile is known."""
        limits = [v for v in (self.budget_ms, self.profiled_ms and self.profiled_ms * self.factor) if v]
        return min(limits) if limits else None

    def update(self, latency_ms: np.ndarray | float) -> DriftDecision | None:
        """Feed latencies in milliseconds; a decision when a check was due, else None."""
        x = np.asarray(latency_ms, dtype=np.float64).ravel()
        if not (np.isfinite(x).all() and (x >= 0).all()):
            raise DataError(
                f"latency_ms: latencies must be finite and >= 0 ms, got {x[~(np.isfinite(x) & (x >= 0))][:3]}"
            )
        self._live.extend(x[:, None])
        self._stream.seen += len(x)
        self._stream.since += len(x)
        if not self._stream.due() or self._live.size < self.min_samples or self.limit_ms is None:
            return None
        return self.check()

    def check(self) -> DriftDecision | None:
        """Compare the live window with the limits now; None without a limit or a latency sample."""
        limit = self.limit_ms
        if limit is None or self._live.size == 0:
            return None
        alpha = self._stream.alpha()
        self._stream.checked()
        live = self._live.rows()[:, 0]
        p95 = float(np.percentile(live, 95))
        lower = quantile_lower_bound(live, 0.95, alpha)
        over = lower is not None and lower > limit
        reasons = []
        if over and self.budget_ms is not None and lower > self.budget_ms:
            reasons.append("budget")
        if over and self.profiled_ms is not None and lower > self.profiled_ms * self.factor:
            reasons.append("profile")
        detail = {
            "p95_lower_ms": lower,
            "confidence": 1.0 - alpha,
            "p50_ms": float(np.percentile(live, 50)),
            "budget_ms": self.budget_ms,
            "profiled_ms": self.profiled_ms,
            "factor": self.factor,
            "over": reasons,
            "sample": self._stream.seen,
        }
        return DriftDecision("environment", p95, limit, None, len(live), 0, over, detail)


# --------------------------------------------------------------------------- preference drift


def _policy_sections(policy: Policy) -> dict[str, Any]:
    """Each section of a policy as plain data (``to_table`` of the section types)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(policy):
        value = getattr(policy, f.name)
        out[f.name] = value.to_table() if hasattr(value, "to_table") else value
    return _jsonable(out)


def policy_digest(policy: Policy) -> str:
    """A stable SHA-256 of a policy's content (sorted JSON of every section)."""
    text = json.dumps(_policy_sections(policy), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def preference_drift(old: Policy, new: Policy) -> DriftDecision:
    """Preference drift: which sections and keys of the policy changed.

    A change of the policy's ``name`` alone is listed but is not drift: it changes nothing
    the service aims for. ``statistic`` is the number of changed keys (a whole changed
    non-table value counts once), ``threshold`` 0.
    """
    before, after = _policy_sections(old), _policy_sections(new)
    changes: dict[str, dict[str, Any]] = {}
    for section in sorted(set(before) | set(after)):
        a, b = before.get(section), after.get(section)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            changes[section] = {k: [a.get(k), b.get(k)] for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
        else:
            changes[section] = {"": [a, b]}
    counted = {s: c for s, c in changes.items() if s not in ("name",)}
    n_changed = sum(len(c) for c in counted.values())
    detail = {
        "sections": sorted(counted),
        "changes": changes,
        "digest_before": policy_digest(old),
        "digest_after": policy_digest(new),
    }
    return DriftDecision("preference", float(n_changed), 0.0, None, 0, 0, n_changed > 0, detail)
