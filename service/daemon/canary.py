"""The canary watch: after a swap, keep the new model, promote it, or roll it back, by the swap rules.

A model deployed over another one goes live as a ``canary`` deployment. The daemon compares
its live figures (:class:`~service.serving.live.LiveFigures`, counted since it started serving) with
the *baseline*, the figures of the model it replaced taken just before the swap, and
:func:`decide` returns one of three verdicts:

- **roll back** as soon as one figure is worse by the policy's :class:`~policies.SwapRules`,
  with a reason that names the figure, its value and the threshold;
- **promote** (the deployment becomes ``active``) once the canary window is complete:
  ``canary_window`` requests served (latency probes and inbox files included) or as many
  feedback labels, with nothing worse;
- **keep watching** otherwise.

The three rules, each conservative so that noise does not roll a good model back:

- *Inference errors*: a canary that fails predictions (NaN outputs, onnxruntime errors;
  answered 5xx) at a higher rate than the baseline did is rolled back at once.
- *Latency*: canary p95 > ``rollback_latency_factor`` x baseline p95, judged at one batch
  size (the baseline's batch size the canary served most), once the canary has served
  ``min(canary_window, 50)`` requests there. Latency tails are heavy on a shared CPU (a
  thread waiting for the GIL or a core adds milliseconds to a 0.1 ms model), so both sides
  use distribution-free confidence bounds from order statistics: the rule fires when the
  canary's 95% *lower* bound of its p95 exceeds the factor times the baseline's 95% *upper*
  bound of its p95. A live baseline therefore needs at least 59 requests at that batch size
  (:data:`MIN_BASELINE_REQUESTS`; fewer cannot bound a p95 at 95%). When it has fewer, the
  replaced model is timed beside the new one right after the swap, interleaved, under the
  traffic of that moment (:func:`paired_baseline`): an idle probe once stood in and rolled a
  good model back, its p95 taken on a quiet machine and compared with one under load. Only
  where that timing fails does the latest probe's p95 from the store stand in.
- *Accuracy*: canary accuracy on feedback labels < baseline accuracy -
  ``rollback_accuracy_drop``, once both have at least :data:`MIN_LABELS` labels (10), and
  only if the drop is significant: a one-sided two-proportion z-test against that margin at
  alpha 0.05, with Laplace-smoothed variances so that 10/10 is not taken as certain. 20
  labels at 75% against a 90% baseline of 200 labels do not roll back (z = 1.3); 20 at 60% do
  (z = 2.5).
  The baseline's accuracy is read from the store (its last feedback labels), the canary's
  is counted live. Labels may never arrive: a canary without enough labels is promoted on
  its other figures.

A check is repeated while the window fills, so the chance of a false alarm over a whole
watch is somewhat above the 5% of one check; the confidence bounds keep it small in
practice. :class:`CanaryWatch` holds one watch; the daemon runs :func:`decide` on its loop
(the :class:`CanaryCheck` event, enqueued by a scheduler job) and acts on the verdict.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from policies import SwapRules
from service.serving.live import LiveFigures
from service.state.store import Sample, Store

__all__ = [
    "ALPHA",
    "Baseline",
    "CanaryCheck",
    "CanaryWatch",
    "Check",
    "Decision",
    "LatencyRef",
    "MIN_BASELINE_REQUESTS",
    "MIN_LABELS",
    "MIN_LATENCY_REQUESTS",
    "PROMOTE",
    "ROLLBACK",
    "WATCH",
    "binom_cdf",
    "decide",
    "make_baseline",
    "quantile_bounds",
    "store_accuracy",
    "paired_baseline",
    "store_probe_p95",
]

WATCH, PROMOTE, ROLLBACK = "watch", "promote", "rollback"
OK, DEGRADED, WAITING, SKIPPED = "ok", "degraded", "waiting", "skipped"

ALPHA = 0.05
"""One-sided error rate of every test and confidence bound here."""
QUANTILE = 0.95
MIN_LATENCY_REQUESTS = 50
"""Canary requests at the compared batch size before latency is judged (or the window, if smaller)."""
MIN_BASELINE_REQUESTS = 59
"""Requests a live baseline needs at one batch size: the fewest whose maximum bounds a p95 at 95%."""
MIN_LABELS = 10
"""Feedback labels both models need before accuracy is judged."""
_Z_ALPHA = 1.6448536269514722  # the standard normal's 95th percentile


@dataclass(frozen=True)
class CanaryCheck:
    """Loop event: evaluate the canary watch now (enqueued by the daemon's scheduler job)."""


# -- statistics ------------------------------------------------------------------------------


def binom_cdf(k: int, n: int, p: float) -> float:
    """``P(X <= k)`` for ``X ~ Binomial(n, p)``, summed in log space (no scipy in the serving process)."""
    if k < 0:
        return 0.0
    if k >= n or p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    lp, lq, lc = math.log(p), math.log1p(-p), math.lgamma(n + 1)
    total = sum(
        math.exp(lc - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq) for i in range(k + 1)
    )
    return min(1.0, total)


def quantile_bounds(
    values: Sequence[float], q: float = QUANTILE, alpha: float = ALPHA
) -> tuple[float | None, float | None]:
    """Distribution-free one-sided ``1 - alpha`` confidence bounds of the ``q`` quantile.

    The ``r``-th smallest of ``n`` values lies below the true quantile with probability
    ``P(Binomial(n, q) >= r)``; the lower bound is the highest order statistic for which that
    is at least ``1 - alpha``, the upper bound the lowest one that lies above it with that
    probability. Either is None when ``n`` is too small to give one (an upper bound of the
    p95 at 95% needs 59 values).
    """
    xs = sorted(values)
    n = len(xs)
    if n == 0:
        return None, None
    lower = upper = None
    lp, lq, lc = math.log(q), math.log1p(-q), math.lgamma(n + 1)
    cdf = 0.0
    for i in range(n):  # cdf = P(Binomial(n, q) <= i), accumulated term by term
        cdf += math.exp(lc - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq)
        if cdf <= alpha:
            lower = xs[i]  # x_(i+1): P(Binomial >= i + 1) = 1 - cdf >= 1 - alpha
        if cdf >= 1.0 - alpha:
            upper = xs[i]  # x_(i+1) lies above the quantile with probability cdf
            break
    return lower, upper


def _normal_sf(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2.0))


# -- inputs and verdicts ----------------------------------------------------------------------


@dataclass(frozen=True)
class LatencyRef:
    """The replaced model's latency at one batch size.

    Attributes:
        p95_ms: Its p95.
        upper_ms: What the canary is held against: the 95% upper bound of that p95 for a
            live window, the p95 itself for a latency probe read from the store.
        requests: Requests the figure rests on (0 for a probe).
        source: ``"live"``, ``"paired"`` (timed beside the new model after the swap) or ``"probe"``.
    """

    p95_ms: float
    upper_ms: float
    requests: int
    source: str = "live"


@dataclass(frozen=True)
class Baseline:
    """The replaced model's figures, taken just before the swap.

    Attributes:
        model_id: The model (None: nothing served before).
        latency: Its p95 by batch size, where known.
        labelled: Feedback labels of its predictions (its last ones).
        correct: How many of those it got right.
        requests: Requests it served in its last serving period.
        errors: How many of those failed.
        at: When the figures were taken.
    """

    model_id: str | None
    latency: Mapping[int, LatencyRef] = field(default_factory=dict)
    labelled: int = 0
    correct: int = 0
    requests: int = 0
    errors: int = 0
    at: float = field(default_factory=time.time)

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["latency"] = {str(b): asdict(r) for b, r in sorted(self.latency.items())}
        out["accuracy"] = self.accuracy
        return out


@dataclass(frozen=True)
class Check:
    """One rule's finding.

    Attributes:
        figure: ``"errors"`` (a rate), ``"latency"`` (p95 in ms) or ``"accuracy"`` (a fraction).
        state: ``ok``, ``degraded`` (rolls back), ``waiting`` (too little data yet) or
            ``skipped`` (nothing to compare with).
        detail: The finding in words, with the figure, its value and the threshold.
        value: The canary's figure.
        threshold: Where it rolls back.
        reference: The baseline's figure.
        n: Requests or labels the canary's figure rests on.
        batch: The batch size latency is compared at.
    """

    figure: str
    state: str
    detail: str
    value: float | None = None
    threshold: float | None = None
    reference: float | None = None
    n: int | None = None
    batch: int | None = None


@dataclass(frozen=True)
class Decision:
    """The verdict of one evaluation, with every rule's finding for the status."""

    action: str  # WATCH, PROMOTE, ROLLBACK
    reason: str
    requests: int
    labelled: int
    window: int
    progress: float
    checks: tuple[Check, ...]

    def check(self, figure: str) -> Check | None:
        return next((c for c in self.checks if c.figure == figure), None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"checks": [asdict(c) for c in self.checks]}


def make_baseline(
    model_id: str | None,
    live: LiveFigures | None = None,
    *,
    accuracy: tuple[int, int] | None = None,
    probes: Mapping[int, float] | None = None,
) -> Baseline:
    """The baseline of the model about to be replaced.

    Args:
        model_id: The model serving now.
        live: Its live figures: latencies (a batch size needs :data:`MIN_BASELINE_REQUESTS`),
            requests, errors, and feedback outcomes unless ``accuracy`` is given.
        accuracy: ``(labelled, correct)`` of its last feedback labels, from the store.
        probes: Its latest latency-probe p95 by batch size, used where the live window is short.
    """
    refs: dict[int, LatencyRef] = {}
    if live is not None:
        for batch, values in live.latencies_ms.items():
            if len(values) >= MIN_BASELINE_REQUESTS:
                _, upper = quantile_bounds(values)
                if upper is not None:
                    refs[batch] = LatencyRef(float(np.percentile(values, 95)), float(upper), len(values))
    for batch, p95 in (probes or {}).items():
        if batch not in refs and p95 > 0:
            refs[batch] = LatencyRef(float(p95), float(p95), 0, "probe")
    labelled, correct = accuracy if accuracy is not None else ((live.labelled, live.correct) if live else (0, 0))
    return Baseline(
        model_id,
        refs,
        labelled=labelled,
        correct=correct,
        requests=live.requests if live else 0,
        errors=live.errors if live else 0,
    )


def paired_baseline(baseline: Baseline, batch: int, old_ms: Sequence[float]) -> Baseline:
    """``baseline`` with its latency at ``batch`` replaced by the replaced model's timings taken
    beside the new one (``old_ms``), where it had no live figure there; unchanged otherwise."""
    ref = baseline.latency.get(batch)
    if (ref is not None and ref.source == "live") or len(old_ms) < MIN_BASELINE_REQUESTS:
        return baseline
    _, upper = quantile_bounds(old_ms)
    if upper is None:
        return baseline
    paired = LatencyRef(float(np.percentile(old_ms, 95)), float(upper), len(old_ms), "paired")
    return replace(baseline, latency={**baseline.latency, batch: paired})


def feedback_rows(store: Store, model_id: str, limit: int) -> list[Sample]:
    """The model's last ``limit`` feedback labels in the store (those of its own predictions)."""
    return [s for s in store.labelled_samples(limit, source="feedback", model_id=model_id) if s.predicted is not None]


def tally(rows: Iterable[Sample]) -> tuple[int, int]:
    """``(labelled, correct)`` of feedback rows."""
    rows = list(rows)
    return len(rows), sum(int(s.label == s.predicted) for s in rows)


def store_accuracy(store: Store, model_id: str, limit: int) -> tuple[int, int]:
    """``(labelled, correct)`` over the model's last ``limit`` feedback labels in the store."""
    return tally(feedback_rows(store, model_id, limit))


def store_probe_p95(store: Store, model_id: str, limit: int = 500) -> dict[int, float]:
    """The model's newest latency-probe p95 by batch size, from the store's metrics."""
    out: dict[int, float] = {}
    for m in store.recent_metrics("latency_probe_p95_ms", limit=limit):  # oldest first: the newest wins
        if m.labels.get("model") == model_id and isinstance(m.labels.get("batch"), int):
            out[m.labels["batch"]] = m.value
    return out


# -- the decision --------------------------------------------------------------------------------


def _errors(baseline: Baseline, canary: LiveFigures) -> Check:
    base = baseline.errors / baseline.requests if baseline.requests else 0.0
    if canary.errors == 0:
        return Check("errors", OK, "0 inference errors", 0.0, base, base, canary.requests)
    rate = canary.errors / max(canary.requests, 1)
    detail = (
        f"{canary.errors} inference errors in {canary.requests} requests ({rate:.1%}) "
        f"vs {base:.1%} for the previous model"
    )
    if rate > base:
        last = f" (last: {canary.last_error})" if canary.last_error else ""
        return Check("errors", DEGRADED, detail + last, rate, base, base, canary.requests)
    return Check("errors", OK, detail, rate, base, base, canary.requests)


def _latency(rules: SwapRules, baseline: Baseline, canary: LiveFigures) -> Check:
    refs = baseline.latency
    if not refs:
        return Check(
            "latency", SKIPPED, "latency not compared: no baseline (the previous model served too few requests)"
        )
    batch = max(refs, key=lambda b: (len(canary.latencies_ms.get(b, ())), refs[b].requests, -b))
    ref, values = refs[batch], canary.latencies_ms.get(batch, ())
    need = min(rules.canary_window, MIN_LATENCY_REQUESTS)
    threshold = rules.rollback_latency_factor * ref.upper_ms
    if len(values) < need:
        if canary.requests >= 2 * rules.canary_window:
            detail = f"latency not compared: {len(values)} requests at batch {batch}"
            return Check("latency", SKIPPED, detail, None, threshold, ref.p95_ms, len(values), batch)
        detail = f"latency: {len(values)}/{need} requests at batch {batch}"
        return Check("latency", WAITING, detail, None, threshold, ref.p95_ms, len(values), batch)
    p95 = float(np.percentile(values, 95))
    lower, _ = quantile_bounds(values)
    assert lower is not None, "a lower bound of the p95 exists from one value on"
    base = f"baseline p95 {ref.p95_ms:.3g} ms" + (
        f", bound {ref.upper_ms:.3g} ms" + ("" if ref.source == "live" else f" ({ref.source})")
        if ref.source != "probe"
        else " (probe)"
    )
    if lower > threshold:
        return Check(
            "latency",
            DEGRADED,
            f"latency p95 {p95:.3g} ms > threshold {threshold:.3g} ms = {rules.rollback_latency_factor:g} x {base} "
            f"(batch {batch}, {len(values)} requests, 95% lower bound {lower:.3g} ms)",
            p95,
            threshold,
            ref.p95_ms,
            len(values),
            batch,
        )
    return Check(
        "latency",
        OK,
        f"latency p95 {p95:.3g} ms vs {base} (batch {batch}, {len(values)} requests; rollback above {threshold:.3g} ms)",
        p95,
        threshold,
        ref.p95_ms,
        len(values),
        batch,
    )


def _accuracy(rules: SwapRules, baseline: Baseline, canary: LiveFigures) -> Check:
    n0, n1 = baseline.labelled, canary.labelled
    if n0 < MIN_LABELS:
        return Check("accuracy", SKIPPED, f"accuracy not compared: the previous model has {n0} feedback labels")
    p0, drop = baseline.correct / n0, rules.rollback_accuracy_drop
    threshold = p0 - drop
    if n1 < MIN_LABELS:
        return Check("accuracy", WAITING, f"accuracy: {n1}/{MIN_LABELS} feedback labels", None, threshold, p0, n1)
    p1 = canary.correct / n1
    s0, s1 = (baseline.correct + 1) / (n0 + 2), (canary.correct + 1) / (n1 + 2)  # Laplace: 10/10 is not certainty
    z = (p0 - p1 - drop) / math.sqrt(s0 * (1 - s0) / n0 + s1 * (1 - s1) / n1)
    text = (
        f"accuracy {p1:.1%} on {n1} labels vs baseline {p0:.1%} on {n0} "
        f"(threshold {threshold:.1%} = baseline - {drop:.1%}; one-sided z = {z:.2f}, p = {_normal_sf(z):.3f})"
    )
    if p1 < threshold and z > _Z_ALPHA:
        return Check("accuracy", DEGRADED, text, p1, threshold, p0, n1)
    if p1 < threshold:
        return Check("accuracy", OK, text + ": below, but not significantly at 0.05", p1, threshold, p0, n1)
    return Check("accuracy", OK, text, p1, threshold, p0, n1)


def decide(rules: SwapRules, baseline: Baseline, canary: LiveFigures) -> Decision:
    """Keep watching, promote, or roll back ``canary`` against ``baseline`` by ``rules`` (pure)."""
    window = rules.canary_window
    checks = (_errors(baseline, canary), _latency(rules, baseline, canary), _accuracy(rules, baseline, canary))
    progress = min(1.0, max(canary.requests, canary.labelled) / window)
    args = (canary.requests, canary.labelled, window, progress, checks)
    bad = [c for c in checks if c.state == DEGRADED]
    if bad:
        return Decision(ROLLBACK, "; ".join(c.detail for c in bad), *args)
    latency_waits = checks[1].state == WAITING
    if progress >= 1.0 and not latency_waits:
        done = f"{canary.requests} requests, {canary.labelled} labels of a {window} window"
        return Decision(PROMOTE, f"no degradation over {done}: " + "; ".join(c.detail for c in checks), *args)
    left = f"{canary.requests}/{window} requests" + (
        ", waiting for latency at a comparable batch" if latency_waits else ""
    )
    return Decision(WATCH, f"watching: {left}", *args)


@dataclass
class CanaryWatch:
    """One canary under watch: its deployment, the baseline taken before the swap, the latest verdict.

    Attributes:
        deployment_id: The ``canary`` deployment row.
        model_id: The model watched.
        baseline: The replaced model's figures.
        started_at: When the watch began.
        resumed: True when it was resumed at a start, with a baseline read from the store.
        last: The latest decision.
    """

    deployment_id: int
    model_id: str
    baseline: Baseline
    started_at: float = field(default_factory=time.time)
    resumed: bool = False
    last: Decision | None = None

    def evaluate(self, rules: SwapRules, figures: LiveFigures) -> Decision:
        """Decide on the canary's current figures; remembered as :attr:`last`."""
        if figures.model_id != self.model_id:
            raise ValueError(f"figures of {figures.model_id!r} given to the watch of {self.model_id!r}")
        self.last = decide(rules, self.baseline, figures)
        return self.last

    def to_dict(self, decision: Decision | None = None) -> dict[str, Any]:
        """The watch for ``/v1/status``: ``decision`` (default: the latest) included."""
        decision = decision or self.last
        return {
            "deployment": self.deployment_id,
            "model": self.model_id,
            "previous": self.baseline.model_id,
            "started_at": self.started_at,
            "resumed": self.resumed,
            "baseline": self.baseline.to_dict(),
            "decision": None if decision is None else decision.to_dict(),
        }
