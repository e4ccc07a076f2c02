"""Class-mix (label) shift: estimate the new class priors from a model's outputs, and correct for them.

When the mix of classes changes but each class looks as before, the model is not wrong per
class; the prior built into its outputs is. Retraining is the wrong tool: the Bayes-optimal
answer for the new mix is the old posterior re-weighted by ``q / p`` (new over training
priors), which is a constant added to the logits. The new priors are not known, but they can
be estimated from unlabelled outputs alone with the EM of Saerens, Latinne and Decaestecker
(2002): alternate re-weighting the posteriors with the current estimate and averaging them.
Alexandari, Kundaje and Shrikumar (2020) show that EM is as good as the confusion-matrix
methods (BBSE) once the model's probabilities are calibrated with bias-corrected temperature
scaling (BCTS: one temperature and one bias per class, fitted on held-out labelled data);
:func:`fit_bcts` does that fit.

Whether a drift *is* a change of class mix, before any label arrives: under pure label shift
``p(x | y)`` is unchanged, so the live embeddings follow the reference's, re-weighted per class
by the live over the reference class frequency. :func:`class_mix_test` re-weights the
reference by predicted class and runs the data drift test's per-dimension Kolmogorov-Smirnov
tests (weighted empirical CDF, Kish's effective sample size) combined by Simes. A large
p-value says the class mix explains what the data test saw; noise, contrast or rotation
leave a small one, because no re-weighting of clean images looks like them.

numpy only: the serving process applies the correction without torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from lifelong.drift.stats import kolmogorov_sf, simes_p

__all__ = [
    "Calibration",
    "ClassMixTest",
    "PriorEstimate",
    "adjust_logits",
    "class_mix_test",
    "em_priors",
    "fit_bcts",
    "softmax",
    "total_variation",
]

_EPS = 1e-12


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``(N, K)`` logits, computed stably."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class Calibration:
    """``softmax(logits / temperature + bias)`` are calibrated probabilities."""

    temperature: float
    bias: np.ndarray  # (K,)
    nll_before: float
    nll_after: float

    def apply(self, logits: np.ndarray) -> np.ndarray:
        return logits / self.temperature + self.bias


def total_variation(p: Any, q: Any) -> float:
    """Total variation distance between two class mixes (half the L1 distance): 0 the same, 1 disjoint."""
    return 0.5 * float(np.abs(np.asarray(p, np.float64) - np.asarray(q, np.float64)).sum())


def fit_bcts(logits: np.ndarray, labels: np.ndarray, iterations: int = 500, lr: float = 0.5) -> Calibration:
    """Bias-corrected temperature scaling fitted on held-out ``logits (N, K)`` and ``labels (N,)``.

    Minimises the mean negative log-likelihood over ``log T`` and the biases by gradient
    descent (the problem is smooth and small: K + 1 parameters); a step that raises the loss
    is halved and retried.
    """
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels)
    n, k = logits.shape
    if labels.shape != (n,) or n == 0:
        raise ValueError(f"expected labels of shape ({n},) for logits {logits.shape}, got {labels.shape}")
    if labels.min() < 0 or labels.max() >= k:
        raise ValueError(f"labels must be in 0..{k - 1}, got {labels.min()}..{labels.max()}")
    onehot = np.eye(k)[labels]  # (N, K)

    def nll(u: float, b: np.ndarray) -> tuple[float, float, np.ndarray]:
        t = np.exp(u)
        z = logits / t + b
        z = z - z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        loss = -float((onehot * logp).sum(axis=1).mean())
        g = np.exp(logp) - onehot  # dL/dz per sample, (N, K)
        grad_u = float((g * (-logits / t)).sum(axis=1).mean())
        return loss, grad_u, g.mean(axis=0)

    u, b = 0.0, np.zeros(k)
    loss, gu, gb = nll(u, b)
    before = loss
    step = lr
    for _ in range(iterations):
        nu, nb = u - step * gu, b - step * gb
        new, ngu, ngb = nll(nu, nb)
        if new > loss:
            step /= 2
            if step < 1e-8:
                break
            continue
        converged = loss - new < 1e-10
        u, b, loss, gu, gb = nu, nb, new, ngu, ngb
        if converged:
            break
    b = b - b.mean()  # a constant on every logit changes nothing
    return Calibration(float(np.exp(u)), b, before, loss)


@dataclass(frozen=True)
class PriorEstimate:
    priors: np.ndarray  # (K,) the estimated class mix of the new data
    iterations: int
    converged: bool
    shift: float  # total variation distance from the training priors, in [0, 1]


def em_priors(probs: np.ndarray, train_priors: np.ndarray, max_iter: int = 200, tol: float = 1e-6) -> PriorEstimate:
    """The class priors of the data behind ``probs (N, K)``, the model's (calibrated) posteriors
    under ``train_priors (K,)``; Saerens et al. (2002).

    Each iteration re-weights every posterior by ``q / p`` with the current estimate ``q``,
    renormalises it and takes the mean as the next ``q``.
    """
    probs = np.asarray(probs, np.float64)
    p = np.asarray(train_priors, np.float64)
    if probs.ndim != 2 or probs.shape[1] != p.shape[0] or len(probs) == 0:
        raise ValueError(f"expected probabilities (N, {p.shape[0]}) with N > 0, got {probs.shape}")
    if (p <= 0).any() or abs(p.sum() - 1) > 1e-6:
        raise ValueError(f"training priors must be positive and sum to 1, got {p}")
    q = p.copy()
    converged, iterations = False, 0
    while not converged and iterations < max_iter:
        w = probs * (q / p)
        w /= w.sum(axis=1, keepdims=True) + _EPS
        new = w.mean(axis=0)
        converged = float(np.abs(new - q).max()) < tol
        q, iterations = new, iterations + 1
    q = np.clip(q, _EPS, None)
    q /= q.sum()
    return PriorEstimate(q, iterations, converged, total_variation(q, p))


def adjust_logits(logits: np.ndarray, train_priors: np.ndarray, new_priors: np.ndarray) -> np.ndarray:
    """``logits (N, K)`` moved to the new class mix: ``+ log(q / p)`` per class."""
    q = np.clip(np.asarray(new_priors, np.float64), _EPS, None)
    p = np.clip(np.asarray(train_priors, np.float64), _EPS, None)
    return logits + np.log(q / p).astype(logits.dtype)


@dataclass(frozen=True)
class ClassMixTest:
    """:func:`class_mix_test`'s answer."""

    p_value: float  # Simes-combined p of the re-weighted per-dimension KS tests
    unweighted_p: float  # the same test without re-weighting (what the data drift test sees)
    effective_reference: float  # Kish's effective size of the re-weighted reference
    live_mix: np.ndarray  # (K,) predicted-class shares of the live window
    reference_mix: np.ndarray  # (K,) predicted-class shares of the reference

    def explains(self, level: float = 0.01) -> bool:
        """Whether the class mix explains the live window at ``level``: no evidence left of a
        change beyond it, where there was some without re-weighting."""
        return self.p_value >= level


def _weighted_ks_p(ref: np.ndarray, w: np.ndarray, live: np.ndarray) -> np.ndarray:
    """Per-column KS p-values of ``live (n, D)`` against ``ref (m, D)`` weighted by ``w (m,)``."""
    n = len(live)
    w = w / w.sum()
    n_eff = 1.0 / float((w**2).sum())
    values = np.concatenate([ref, live])  # (m + n, D)
    signed = np.concatenate([w, np.full(n, -1.0 / n)])  # ECDF(ref) - ECDF(live) steps
    order = np.argsort(values, axis=0, kind="stable")
    diff = np.cumsum(signed[order], axis=0)  # (m + n, D)
    ordered = np.take_along_axis(values, order, axis=0)
    # read the difference only after the last of equal values (ReLU embeddings hold many zeros)
    block_end = np.ones_like(ordered, dtype=bool)
    block_end[:-1] = ordered[1:] != ordered[:-1]
    stat = np.abs(np.where(block_end, diff, 0.0)).max(axis=0)  # (D,)
    ne = n_eff * n / (n_eff + n)
    lam = (np.sqrt(ne) + 0.12 + 0.11 / np.sqrt(ne)) * stat
    return kolmogorov_sf(lam)


def class_mix_test(
    ref_embeddings: np.ndarray,
    ref_classes: np.ndarray,
    live_embeddings: np.ndarray,
    live_classes: np.ndarray,
    num_classes: int,
) -> ClassMixTest:
    """Does a change of class mix explain the live window? (See the module's docstring.)

    ``*_embeddings`` are ``(N, D)`` embeddings of the serving model and ``*_classes`` its
    ``(N,)`` predicted classes, of the reference it was deployed on and of the live window.
    A live class the reference never predicted cannot be re-weighted from it; its live rows
    are then left out, which the p-value does not hide: those classes show in ``live_mix``.
    """
    ref = np.asarray(ref_embeddings, np.float64)
    live = np.asarray(live_embeddings, np.float64)
    rc = np.asarray(ref_classes, np.int64)
    lc = np.asarray(live_classes, np.int64)
    if ref.ndim != 2 or live.ndim != 2 or ref.shape[1] != live.shape[1]:
        raise ValueError(f"expected (N, D) embeddings of one width, got {ref.shape} and {live.shape}")
    if len(rc) != len(ref) or len(lc) != len(live) or len(ref) < 2 or len(live) < 2:
        raise ValueError(
            f"expected one class per embedding and at least 2 rows each, got {len(ref)} reference "
            f"rows with {len(rc)} classes and {len(live)} live rows with {len(lc)} classes"
        )
    for name, c in (("reference", rc), ("live", lc)):
        if c.min() < 0 or c.max() >= num_classes:
            raise ValueError(f"{name} classes must be in 0..{num_classes - 1}, got {c.min()}..{c.max()}")
    ref_mix = np.bincount(rc, minlength=num_classes) / len(rc)
    live_mix = np.bincount(lc, minlength=num_classes) / len(lc)
    seen = ref_mix[lc] > 0
    live_kept = live[seen]
    per_class = np.divide(live_mix, ref_mix, out=np.zeros(num_classes), where=ref_mix > 0)
    w = per_class[rc]
    p_w = simes_p(_weighted_ks_p(ref, w, live_kept)) if len(live_kept) >= 2 else 0.0
    p_u = simes_p(_weighted_ks_p(ref, np.ones(len(ref)), live))
    n_eff = float(w.sum() ** 2 / (w**2).sum())
    return ClassMixTest(p_w, p_u, n_eff, live_mix, ref_mix)
