"""Drift detectors: has the deployed model's world changed since it was deployed?

Five kinds of drift, one detector each, every check answered by a :class:`DriftDecision`
(statistic, threshold, p-value, window sizes, decision) that the store keeps as a drift
event:

- ``data``: :class:`EmbeddingDrift`, the deployed model's embeddings, per-dimension KS
  tests combined by Simes' test (default) or an RBF-kernel MMD with a permutation test;
- ``label``: :class:`LabelShift`, the class histogram of predictions, 2 x K chi-square;
- ``accuracy``: :class:`~lifelong.drift.signals.AccuracyDrift`, ADWIN on feedback errors;
- ``environment``: :class:`~lifelong.drift.signals.LatencyDrift`, live p95 latency
  against the budget and the profiled latency;
- ``preference``: :func:`~lifelong.drift.signals.preference_drift`, the policy changed.

**Sensitivity as a false-alarm rate.** A policy says how many samples should pass, on
average, between two false alarms (``DriftSettings.false_alarm_samples``, the ARL). A
detector that tests once ``check_every`` new samples have come (a batch may bring more)
uses the level ``alpha = check_every / ARL`` per check, so by the union bound false alarms
come at most once per ARL samples on average, whatever the cadence; overlapping windows
make the real rate lower still. A check forced with ``check()`` spends the same alpha.

**References.** A detector either gets its reference (embeddings or predictions of data
the model is known to handle) or takes the first ``reference_size`` samples it is fed as
the reference, and checks nothing until then. References and live windows are bounded
arrays. After a new model is deployed, or a drift has been answered, build new detectors
(or call :meth:`DriftMonitor.reset`): a detector with a fixed reference keeps reporting
drift for as long as the live window differs.

This module holds the decision and the tests of the input distribution (data and label
drift); :mod:`lifelong.drift.signals` the other three; :mod:`lifelong.drift.stats` the
numeric parts; :class:`~lifelong.drift.monitor.DriftMonitor` one detector of each kind,
configured from a policy. Numpy only: the serving process runs these checks.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lifelong.drift.stats import (
    KsTest,
    chi2_two_sample,
    median_bandwidth,
    mmd_permutation,
    simes_p,
)
from lifelong.errors import DataError, DriftError

__all__ = [
    "DRIFT_KINDS",
    "EMBEDDING_METHODS",
    "DriftDecision",
    "EmbeddingDrift",
    "LabelShift",
    "check_cadence",
]

logger = logging.getLogger(__name__)

DRIFT_KINDS = ("data", "label", "accuracy", "environment", "preference")
"""The kinds of drift a :class:`DriftDecision` reports."""

EMBEDDING_METHODS = ("ks", "mmd")
"""Tests :class:`EmbeddingDrift` can run on embeddings."""

_WORST_DIMS = 5  # dimensions named in a data-drift decision's detail


def _jsonable(value: Any) -> Any:
    """Plain JSON data: numpy scalars and arrays to Python, tuples to lists, NaN/inf to None."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclass(frozen=True)
class DriftDecision:
    """The outcome of one drift check, stored as a drift event.

    Attributes:
        kind: One of :data:`DRIFT_KINDS`.
        statistic: The test statistic (KS ``D`` or MMD^2, chi-square, accuracy drop, p95 ms,
            changed policy keys).
        threshold: What decides. For a test with a p-value, the level of this check (alpha),
            and ``drifted`` means ``p_value <= threshold``; otherwise the limit on
            ``statistic`` (accuracy drop; latency ms, crossed with confidence ``1 - alpha``,
            see :class:`~lifelong.drift.signals.LatencyDrift`; 0 changed policy keys).
        p_value: The test's p-value; ``None`` for tests without one.
        window: Samples in the live window.
        reference: Samples in the reference (0 when compared with a fixed figure).
        drifted: The decision.
        detail: Test-specific figures (JSON-ready), such as the method, the dimensions that
            moved most, the classes merged, the budget; ``sample`` is the number of samples
            the detector had seen when it decided.
    """

    kind: str
    statistic: float
    threshold: float
    p_value: float | None
    window: int
    reference: int
    drifted: bool
    detail: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in DRIFT_KINDS:
            raise DriftError(f"drift kind must be one of {DRIFT_KINDS}, got {self.kind!r}")

    def to_dict(self) -> dict[str, Any]:
        """The decision as plain JSON data (non-finite numbers become ``None``)."""
        return _jsonable(dataclasses.asdict(self))


def check_cadence(window: int, check_every: int, arl: float) -> None:
    """Raise :class:`DriftError` naming every bad value of a detector's window and cadence."""
    problems = []
    if isinstance(window, bool) or not isinstance(window, int) or window < 2:
        problems.append(f"window must be an integer >= 2, got {window!r}")
    if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1:
        problems.append(f"check_every must be an integer >= 1, got {check_every!r}")
    elif not (isinstance(arl, int | float) and arl > check_every):
        problems.append(f"arl (samples between false alarms) must be > check_every ({check_every}), got {arl!r}")
    if problems:
        raise DriftError("; ".join(problems))


class _Stream:
    """Cadence shared by the detectors: count samples, say when a check is due, give alpha."""

    def __init__(self, window: int, check_every: int, arl: float) -> None:
        check_cadence(window, check_every, arl)
        self.window, self.check_every, self.arl = window, check_every, float(arl)
        self.seen = 0  # samples fed in all, the reference included
        self.since = 0  # samples fed since the last check

    def due(self) -> bool:
        return self.since >= self.check_every

    def alpha(self) -> float:
        """The level of one check: its samples' share of the false-alarm budget."""
        return self.check_every / self.arl

    def checked(self) -> None:
        self.since = 0


class _Rows:
    """A bounded FIFO of the newest ``capacity`` rows of a 2-D array (a ring buffer)."""

    def __init__(self, capacity: int, dims: int, dtype: Any = np.float64) -> None:
        self._buf = np.zeros((capacity, dims), dtype=dtype)
        self._pos = 0
        self.size = 0

    def extend(self, rows: np.ndarray) -> None:
        cap = len(self._buf)
        rows = rows[-cap:]
        first = min(len(rows), cap - self._pos)
        self._buf[self._pos : self._pos + first] = rows[:first]
        self._buf[: len(rows) - first] = rows[first:]
        self._pos = (self._pos + len(rows)) % cap
        self.size = min(cap, self.size + len(rows))

    def rows(self) -> np.ndarray:
        """The rows held (order not kept: the tests here do not depend on it)."""
        return self._buf[: self.size]


# --------------------------------------------------------------------------- data drift


class EmbeddingDrift:
    """Data drift: the deployed model's embeddings, a live window against a reference.

    Default test, ``"ks"``: a two-sample Kolmogorov-Smirnov test per dimension, combined
    by Simes' test (Benjamini-Hochberg's global null). Chosen over ``"mmd"`` (an RBF-kernel
    MMD, median-heuristic bandwidth, permutation null) by measurement on real data
    (``benchmarks/drift_detectors.py``: Fashion-MNIST, windows of 500 against a reference
    of 2000, alpha 0.005, 10 windows a point). On the trained supernet's 128-dim
    penultimate embeddings, KS detected windows holding 50 shifted samples in 90 / 60 /
    10% of draws (contrast / brightness / noise) where MMD did in 70 / 30 / 0%, 100 noisy
    samples in 100% against 50%, 200 rotated ones in 100% against 40%; MMD was ahead only
    on 100 samples of a class-prior shift (30% against 10%; the label test catches that
    one). On a 64-dim random projection of the pixels the picture is the same. A KS check
    costs 11-13 ms on one busy core, an MMD check with 1000 permutations of a 1000-row
    reference subsample 125-190 ms. And KS p-values are analytic, so small levels (rare
    false alarms, frequent checks) cost nothing, where a permutation test needs more than
    ``1 / alpha`` permutations to reject at all. MMD stays available for embeddings whose
    marginals do not move while their joint distribution does.

    Args:
        reference: ``(m, D)`` embeddings of data the model is known to handle; ``None``
            takes the first ``reference_size`` embeddings fed.
        window: Embeddings in the live window.
        check_every: Embeddings fed between two checks.
        arl: Expected embeddings between two false alarms (sets alpha per check).
        seed: Seed of the reference subsample and the permutations.
        reference_size: Most reference rows kept (a larger reference is subsampled).
        method: One of :data:`EMBEDDING_METHODS`.
        mmd_reference: Reference rows an MMD check uses (a fresh subsample each check).
    """

    def __init__(
        self,
        reference: np.ndarray | None = None,
        *,
        window: int = 500,
        check_every: int = 100,
        arl: float = 20_000,
        seed: int = 0,
        reference_size: int = 2000,
        method: str = "ks",
        mmd_reference: int = 1000,
    ) -> None:
        if method not in EMBEDDING_METHODS:
            raise DriftError(f"method must be one of {EMBEDDING_METHODS}, got {method!r}")
        if isinstance(reference_size, bool) or not isinstance(reference_size, int) or reference_size < 2:
            raise DriftError(f"reference_size must be an integer >= 2, got {reference_size!r}")
        self._stream = _Stream(window, check_every, arl)
        self.method = method
        self.reference_size = reference_size
        self.mmd_reference = mmd_reference
        self._rng = np.random.default_rng(seed)
        self._reference: np.ndarray | None = None
        self._pending: _Rows | None = None  # the reference while it is being collected
        self._live: _Rows | None = None
        self._ks: KsTest | None = None
        self._bandwidth = math.nan
        if reference is not None:
            self._set_reference(self._validated(reference, "reference"))

    @property
    def dims(self) -> int | None:
        """Embedding width, once known."""
        if self._reference is not None:
            return self._reference.shape[1]
        return self._pending.rows().shape[1] if self._pending is not None else None

    @property
    def reference_count(self) -> int:
        """Embeddings in the reference (0 while it is being collected)."""
        return 0 if self._reference is None else len(self._reference)

    @property
    def seen(self) -> int:
        """Embeddings fed in all, the reference included."""
        return self._stream.seen

    def _validated(self, x: np.ndarray, what: str) -> np.ndarray:
        a = np.asarray(x, dtype=np.float64)
        dims = self.dims
        if a.ndim != 2 or (dims is not None and a.shape[1] != dims) or a.shape[1] == 0:
            want = f"(N, {dims})" if dims is not None else "(N, D)"
            raise DataError(f"{what}: embeddings must be a {want} float array, got shape {a.shape}")
        if not np.isfinite(a).all():
            raise DataError(f"{what}: embeddings hold {int((~np.isfinite(a)).sum())} NaN or infinite values")
        if what == "reference" and len(a) < 2:
            raise DataError(f"reference: at least 2 embeddings needed, got {len(a)}")
        return a

    def _set_reference(self, ref: np.ndarray) -> None:
        if len(ref) > self.reference_size:
            ref = ref[np.sort(self._rng.choice(len(ref), self.reference_size, replace=False))]
        self._reference = ref
        self._pending = None
        self._live = _Rows(self._stream.window, ref.shape[1])
        if self.method == "ks":
            self._ks = KsTest(ref)
        else:
            self._bandwidth = median_bandwidth(ref, seed=int(self._rng.integers(2**31)))

    def update(self, embeddings: np.ndarray) -> DriftDecision | None:
        """Feed ``(N, D)`` embeddings in arrival order; a decision when a check was due, else None."""
        x = self._validated(embeddings, "embeddings")
        self._stream.seen += len(x)
        if self._reference is None:
            if self._pending is None:
                self._pending = _Rows(self.reference_size, x.shape[1])
            take = min(len(x), self.reference_size - self._pending.size)
            self._pending.extend(x[:take])
            x = x[take:]
            if self._pending.size == self.reference_size:
                self._set_reference(self._pending.rows().copy())
                logger.debug("data drift: reference of %d embeddings collected", self.reference_size)
        if not len(x):
            return None
        assert self._live is not None, "a reference exists once samples reach the live window"
        self._live.extend(x)
        self._stream.since += len(x)
        if not self._stream.due() or self._live.size < self._stream.window:
            return None
        return self.check()

    def check(self) -> DriftDecision | None:
        """Test the live window now, full or not; None until the reference and two live rows exist."""
        if self._reference is None or self._live is None or self._live.size < 2:
            return None
        alpha = self._stream.alpha()
        self._stream.checked()
        live = self._live.rows()
        if self.method == "ks":
            assert self._ks is not None
            stats, pvals = self._ks(live)
            p = simes_p(pvals)
            worst = np.argsort(pvals, kind="stable")[:_WORST_DIMS]
            ranked = np.sort(pvals)
            passed = np.flatnonzero(ranked <= alpha * np.arange(1, len(ranked) + 1) / len(ranked))
            detail: dict[str, Any] = {
                "method": "ks",
                "correction": "simes",
                "dims": len(stats),
                "dims_flagged": int(passed[-1] + 1) if passed.size else 0,  # Benjamini-Hochberg discoveries
                "worst_dims": [{"dim": int(d), "ks": float(stats[d]), "p": float(pvals[d])} for d in worst],
            }
            statistic = float(stats.max())
        else:
            ref = self._reference
            if len(ref) > self.mmd_reference:
                ref = ref[self._rng.choice(len(ref), self.mmd_reference, replace=False)]
            permutations = int(min(2000, max(200, math.ceil(5.0 / alpha))))
            result = mmd_permutation(ref, live, self._bandwidth, permutations, self._rng)
            p, statistic = result.p_value, result.statistic
            detail = {
                "method": "mmd",
                "bandwidth": self._bandwidth,
                "permutations": permutations,
                "reference_used": len(ref),
            }
        detail["sample"] = self._stream.seen
        return DriftDecision("data", statistic, alpha, p, len(live), len(self._reference), p <= alpha, detail)


# --------------------------------------------------------------------------- label shift


class LabelShift:
    """Prediction (or label) shift: the class histogram of a live window against the reference.

    A 2 x K contingency chi-square (:func:`~lifelong.drift.stats.chi2_two_sample`): classes
    empty in both windows are dropped, classes expected fewer than 5 times are merged.

    Args:
        num_classes: Classes the predictions index.
        reference: ``(m,)`` class indexes of data the model is known to handle; ``None``
            takes the first ``reference_size`` fed.
        window: Predictions in the live window.
        check_every: Predictions fed between two checks.
        arl: Expected predictions between two false alarms (sets alpha per check).
        reference_size: Predictions collected as the reference when none is given.
    """

    def __init__(
        self,
        num_classes: int,
        reference: np.ndarray | None = None,
        *,
        window: int = 500,
        check_every: int = 100,
        arl: float = 20_000,
        reference_size: int = 2000,
    ) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise DriftError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        self._stream = _Stream(window, check_every, arl)
        self.num_classes = num_classes
        self.reference_size = reference_size
        self._ref_counts = np.zeros(num_classes, dtype=np.int64)
        self._ref_ready = False
        self._live = _Rows(window, 1, np.int64)
        if reference is not None:
            ref = self._validated(reference, "reference")
            if not len(ref):
                raise DataError("reference: at least one prediction needed, got none")
            self._ref_counts = np.bincount(ref, minlength=num_classes)
            self._ref_ready = True

    @property
    def reference_count(self) -> int:
        """Predictions in the reference (0 while it is being collected)."""
        return int(self._ref_counts.sum()) if self._ref_ready else 0

    @property
    def seen(self) -> int:
        """Predictions fed in all, the reference included."""
        return self._stream.seen

    def _validated(self, y: np.ndarray, what: str) -> np.ndarray:
        a = np.asarray(y)
        if a.ndim != 1 or (a.size and a.dtype.kind not in "iu"):
            raise DataError(f"{what}: predictions must be a 1-D array of class indexes, got {a.dtype} {a.shape}")
        a = a.astype(np.int64)
        if a.size and (a.min() < 0 or a.max() >= self.num_classes):
            raise DataError(f"{what}: class indexes must lie in 0..{self.num_classes - 1}, found {a.min()}..{a.max()}")
        return a

    def update(self, predictions: np.ndarray) -> DriftDecision | None:
        """Feed ``(N,)`` predicted (or true) classes; a decision when a check was due, else None."""
        y = self._validated(predictions, "predictions")
        self._stream.seen += len(y)
        if not self._ref_ready:
            take = min(len(y), self.reference_size - int(self._ref_counts.sum()))
            self._ref_counts += np.bincount(y[:take], minlength=self.num_classes)
            y = y[take:]
            self._ref_ready = int(self._ref_counts.sum()) >= self.reference_size
        if not len(y):
            return None
        self._live.extend(y[:, None])
        self._stream.since += len(y)
        if not self._stream.due() or self._live.size < self._stream.window:
            return None
        return self.check()

    def check(self) -> DriftDecision | None:
        """Test the live window now, full or not; None until the reference and one live prediction exist."""
        if not self._ref_ready or self._live.size == 0:
            return None
        alpha = self._stream.alpha()
        self._stream.checked()
        live = np.bincount(self._live.rows()[:, 0], minlength=self.num_classes)
        res = chi2_two_sample(self._ref_counts, live)
        n_ref, n_live = int(self._ref_counts.sum()), int(live.sum())
        detail = {
            "test": "chi2-contingency",
            "dof": res.dof,
            "merged": [list(b) for b in res.bins if len(b) > 1],
            "reference_share": (self._ref_counts / n_ref).round(4).tolist(),
            "live_share": (live / n_live).round(4).tolist(),
            "sample": self._stream.seen,
        }
        return DriftDecision("label", res.statistic, alpha, res.p_value, n_live, n_ref, res.p_value <= alpha, detail)
