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

numpy only: the serving process applies the correction without torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Calibration", "PriorEstimate", "adjust_logits", "em_priors", "fit_bcts", "softmax"]

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
    return PriorEstimate(q, iterations, converged, float(0.5 * np.abs(q - p).sum()))


def adjust_logits(logits: np.ndarray, train_priors: np.ndarray, new_priors: np.ndarray) -> np.ndarray:
    """``logits (N, K)`` moved to the new class mix: ``+ log(q / p)`` per class."""
    q = np.clip(np.asarray(new_priors, np.float64), _EPS, None)
    p = np.clip(np.asarray(train_priors, np.float64), _EPS, None)
    return logits + np.log(q / p).astype(logits.dtype)
