"""The accuracy predictor: a small MLP over the subnet encoding, in numpy.

Evaluating a subnet of the supernet (BN re-calibration, a pass over validation data) takes
seconds; the search needs tens of thousands of accuracy estimates per second. As in OFA
(Cai et al., ICLR 2020) and APQ (Wang et al., CVPR 2020), a small MLP learns accuracy from
the one-hot encoding of the subnet (``SearchSpace.encode``, or ``SubnetCodec.encode`` for a
batch) on a few thousand evaluated subnets, and the search queries the MLP instead.

APQ's *predictor transfer*: evaluations of quantized subnets are dearer than those of
full-precision ones (their quantizers need calibration), so the predictor is first trained on
many full-precision evaluations and then fine-tuned, from those weights, with a lower learning
rate and fewer epochs, on a few quantized ones (:meth:`AccuracyPredictor.transfer`).

Numpy only, with no torch, so that the service can search in its own process. Training is
mini-batch Adam on the squared error of standardised targets, with early stopping on a
seeded validation split; the best epoch's weights are kept. Files are ``.npz`` holding only
arrays and a JSON header with a format version (read with ``allow_pickle=False``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from lifelong.errors import CheckpointError, DataError, FormatVersionError

__all__ = [
    "PREDICTOR_FORMAT",
    "AccuracyPredictor",
    "FitReport",
    "PredictorConfig",
    "kendall_tau",
    "limit_blas_threads",
    "rmse",
]

logger = logging.getLogger(__name__)

PREDICTOR_FORMAT = 1
_KIND = "lifelong-accuracy-predictor"


_controller: Any = None


@contextlib.contextmanager
def limit_blas_threads(threads: int | None = 1) -> Iterator[None]:
    """Run the block with at most ``threads`` BLAS threads (``None``: leave them as they are).

    The MLP multiplies small matrices (a batch of 64 to a few thousand rows by 400 x 400).
    OpenBLAS splits even those over every core, and on a gateway whose cores are busy
    (serving, a training job) its threads wait on each other: measured here, a 64-row product
    ran 25x slower on two busy cores with two threads than with one. Training and search
    therefore run single-threaded by default and leave the other core to serving. Needs
    ``threadpoolctl``; without it the block runs unchanged.
    """
    global _controller
    if threads is None:
        yield
        return
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - a declared dependency
        logger.debug("threadpoolctl is not installed: BLAS threads left as they are")
        yield
        return
    if _controller is None:
        _controller = ThreadpoolController()
    with _controller.limit(limits=threads, user_api="blas"):
        yield


def kendall_tau(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall's tau-b between two score vectors (ties counted as in scipy's default).

    ``sum sign(da) sign(db) / sqrt(untied pairs in a * untied pairs in b)`` over all pairs,
    computed in row chunks (O(n^2) time, O(n) memory per chunk): enough for the few hundred
    to few thousand held-out subnets it is used on.
    """
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.shape != b.shape:
        raise DataError(f"kendall_tau needs two vectors of one length, got {a.shape} and {b.shape}")
    if len(a) < 2:
        raise DataError(f"kendall_tau needs at least 2 values, got {len(a)}")
    concord, untied_a, untied_b = 0.0, 0.0, 0.0
    chunk = max(1, 2_000_000 // len(a))
    for start in range(0, len(a), chunk):
        sa = np.sign(a[start : start + chunk, None] - a[None, :])  # (chunk, n)
        sb = np.sign(b[start : start + chunk, None] - b[None, :])
        concord += float((sa * sb).sum())
        untied_a += float(np.abs(sa).sum())
        untied_b += float(np.abs(sb).sum())
    if untied_a == 0 or untied_b == 0:
        return float("nan")  # one of the vectors is constant
    return float(concord / np.sqrt(untied_a * untied_b))


def rmse(a: np.ndarray, b: np.ndarray) -> float:
    """Root mean squared error."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.shape != b.shape or not len(a):
        raise DataError(f"rmse needs two non-empty vectors of one length, got {a.shape} and {b.shape}")
    return float(np.sqrt(np.mean((a - b) ** 2)))


@dataclass(frozen=True)
class PredictorConfig:
    """How the MLP is shaped and trained. The shape is APQ's (two hidden layers of 400).

    The strong decoupled weight decay is measured, not folklore: on synthetic truths with
    1,000 subnets, decay 1e-4 overfit within 20 epochs (held-out tau 0.80) where decay 1.0
    reached 0.92; on a few hundred real evaluations a network this size needs the brake.

    Attributes:
        hidden: Widths of the hidden ReLU layers.
        lr: Adam learning rate.
        weight_decay: Decoupled (AdamW) decay of the weight matrices, against overfitting small sets.
        batch_size: Mini-batch size.
        max_epochs: Upper bound on passes over the training split.
        patience: Epochs without a better validation error before training stops.
        val_fraction: Share of the samples held out for early stopping (at least 2 of them).
        seed: Seeds the initial weights, the split and the batch order.
        blas_threads: BLAS threads while training (see :func:`limit_blas_threads`).
    """

    hidden: tuple[int, ...] = (400, 400)
    lr: float = 2e-3
    weight_decay: float = 1.0
    batch_size: int = 128
    max_epochs: int = 300
    patience: int = 30
    val_fraction: float = 0.2
    seed: int = 0
    blas_threads: int | None = 1

    def __post_init__(self) -> None:
        problems = []
        if not self.hidden or any(int(h) <= 0 for h in self.hidden):
            problems.append(f"hidden must be positive layer widths, got {self.hidden!r}")
        if not self.lr > 0:
            problems.append(f"lr must be > 0, got {self.lr!r}")
        if self.weight_decay < 0:
            problems.append(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.batch_size < 1 or self.max_epochs < 1 or self.patience < 1:
            problems.append("batch_size, max_epochs and patience must be >= 1")
        if not 0 <= self.val_fraction < 1:
            problems.append(f"val_fraction must be in [0, 1), got {self.val_fraction!r}")
        if problems:
            raise ValueError("invalid predictor config: " + "; ".join(problems))
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))


@dataclass(frozen=True)
class FitReport:
    """What one :meth:`AccuracyPredictor.fit` or ``transfer`` did."""

    n_train: int
    n_val: int
    epochs: int
    best_epoch: int
    train_rmse: float
    val_rmse: float | None
    val_tau: float | None
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Adam:
    lr: float
    weight_decay: float
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    t: int = 0
    m: list[np.ndarray] = field(default_factory=list)
    v: list[np.ndarray] = field(default_factory=list)

    def step(self, params: list[np.ndarray], grads: list[np.ndarray]) -> None:
        if not self.m:
            self.m = [np.zeros_like(p) for p in params]
            self.v = [np.zeros_like(p) for p in params]
        self.t += 1
        c1, c2 = 1 - self.b1**self.t, 1 - self.b2**self.t
        for p, g, m, v in zip(params, grads, self.m, self.v, strict=True):
            m *= self.b1
            m += (1 - self.b1) * g
            v *= self.b2
            v += (1 - self.b2) * g * g
            if p.ndim == 2 and self.weight_decay:
                p *= 1 - self.lr * self.weight_decay
            p -= self.lr * (m / c1) / (np.sqrt(v / c2) + self.eps)


class AccuracyPredictor:
    """An MLP ``encoding -> hidden... -> accuracy`` (ReLU), trained and run in numpy float32.

    Args:
        input_dim: Length of the subnet encoding (``SearchSpace.encoding_length()``).
        config: Shape and training settings.
        meta: JSON-able facts saved with the predictor (the space it encodes, what it was
            trained on); not used for prediction.
    """

    def __init__(self, input_dim: int, config: PredictorConfig | None = None, meta: dict[str, Any] | None = None):
        if input_dim < 1:
            raise ValueError(f"input_dim must be >= 1, got {input_dim!r}")
        self.input_dim, self.config, self.meta = int(input_dim), config or PredictorConfig(), dict(meta or {})
        rng = np.random.default_rng(self.config.seed)
        dims = (self.input_dim, *self.config.hidden, 1)
        self.weights: list[np.ndarray] = []  # W0, b0, W1, b1, ...
        for fan_in, fan_out in zip(dims[:-1], dims[1:], strict=True):
            self.weights.append((rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)).astype(np.float32))
            self.weights.append(np.zeros(fan_out, np.float32))
        self.y_mean, self.y_std = 0.0, 1.0
        self.fitted = False

    # -- inference ------------------------------------------------------------------------------
    def _check_x(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        if X.ndim == 1:
            X = X[None, :]
        if X.ndim != 2 or X.shape[1] != self.input_dim:
            raise DataError(f"expected encodings of shape (N, {self.input_dim}), got {X.shape}")
        return X

    def _forward(self, X: np.ndarray, keep: bool = False) -> tuple[np.ndarray, list[np.ndarray]]:
        acts, h = [X], X
        n_layers = len(self.weights) // 2
        for i in range(n_layers):
            h = h @ self.weights[2 * i] + self.weights[2 * i + 1]  # (N, width)
            if i < n_layers - 1:
                np.maximum(h, 0.0, out=h)
                if keep:
                    acts.append(h)
        return h[:, 0], acts  # (N,) standardised

    def predict(self, X: np.ndarray) -> np.ndarray:
        """``(N,)`` predicted accuracy in ``[0, 1]`` for ``(N, input_dim)`` encodings (float64).

        Clipped: a predictor refreshed on a handful of low local accuracies was seen to
        extrapolate to -0.03, which no front point may hold (the adaptation's search failed)."""
        if not self.fitted:
            raise DataError("the predictor has not been fitted: call fit() or load() first")
        out, _ = self._forward(self._check_x(X))
        return np.clip(out.astype(np.float64) * self.y_std + self.y_mean, 0.0, 1.0)

    def evaluate(self, X: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """Kendall tau and RMSE of the predictions on ``(X, y)``: the figures the issue reports."""
        p = self.predict(X)
        return {"kendall_tau": kendall_tau(p, y), "rmse": rmse(p, y), "n": float(len(p))}

    # -- training -------------------------------------------------------------------------------
    def fit(self, X: np.ndarray, y: np.ndarray) -> FitReport:
        """Train from the current weights (fresh after ``__init__``) on ``(X, y)``.

        Sets the target standardisation from ``y`` when the predictor is not yet fitted.
        """
        X, y = self._check_xy(X, y)
        if not self.fitted:
            self.y_mean, self.y_std = float(y.mean()), float(y.std()) or 1.0
        with limit_blas_threads(self.config.blas_threads):
            return self._train(X, y, self.config)

    def transfer(
        self,
        X: np.ndarray,
        y: np.ndarray,
        *,
        lr_scale: float = 0.3,
        max_epochs: int = 150,
        patience: int = 20,
        seed: int | None = None,
        meta: dict[str, Any] | None = None,
    ) -> tuple[AccuracyPredictor, FitReport]:
        """APQ's predictor transfer: a copy of this (full-precision) predictor fine-tuned on a
        few quantized evaluations ``(X, y)``, with a lower learning rate and fewer epochs.

        This predictor is left unchanged; the target standardisation is kept, so that the
        copy starts from the source's predictions.
        """
        if not self.fitted:
            raise DataError("transfer() needs a fitted source predictor")
        X, y = self._check_xy(X, y)
        cfg = replace(
            self.config,
            lr=self.config.lr * lr_scale,
            max_epochs=max_epochs,
            patience=patience,
            seed=self.config.seed if seed is None else seed,
        )
        new = AccuracyPredictor(self.input_dim, cfg, {**self.meta, **(meta or {})})
        new.weights = [w.copy() for w in self.weights]
        new.y_mean, new.y_std, new.fitted = self.y_mean, self.y_std, True
        with limit_blas_threads(cfg.blas_threads):
            return new, new._train(X, y, cfg)

    def _check_xy(self, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        X = self._check_x(X)
        y = np.asarray(y, np.float64).ravel()
        if len(y) != len(X):
            raise DataError(f"{len(X)} encodings but {len(y)} accuracies")
        if len(y) < 2 or not np.isfinite(y).all():
            raise DataError(f"need at least 2 finite accuracies, got {len(y)} (finite: {np.isfinite(y).sum()})")
        return X, y

    def _train(self, X: np.ndarray, y: np.ndarray, cfg: PredictorConfig) -> FitReport:
        t0 = time.perf_counter()
        rng = np.random.default_rng(cfg.seed + 1)
        order = rng.permutation(len(X))
        n_val = int(round(len(X) * cfg.val_fraction)) if len(X) >= 10 else 0
        val, train = order[:n_val], order[n_val:]
        t = ((y - self.y_mean) / self.y_std).astype(np.float32)
        opt = _Adam(cfg.lr, cfg.weight_decay)
        best = (np.inf, [w.copy() for w in self.weights], 0)
        epoch = 0
        for epoch in range(1, cfg.max_epochs + 1):
            perm = train[rng.permutation(len(train))]
            for start in range(0, len(perm), cfg.batch_size):
                idx = perm[start : start + cfg.batch_size]
                opt.step(self.weights, self._grads(X[idx], t[idx]))
            if n_val:
                out, _ = self._forward(X[val])
                err = float(np.mean((out - t[val]) ** 2))
                if err < best[0]:
                    best = (err, [w.copy() for w in self.weights], epoch)
                elif epoch - best[2] >= cfg.patience:
                    break
        if n_val:
            self.weights = best[1]
        self.fitted = True
        p_train = self.predict(X[train])
        p_val = self.predict(X[val]) if n_val else None
        report = FitReport(
            n_train=len(train),
            n_val=n_val,
            epochs=epoch,
            best_epoch=best[2] if n_val else epoch,
            train_rmse=rmse(p_train, y[train]),
            val_rmse=rmse(p_val, y[val]) if p_val is not None else None,
            val_tau=kendall_tau(p_val, y[val]) if p_val is not None and n_val >= 2 else None,
            seconds=time.perf_counter() - t0,
        )
        logger.info(
            "predictor trained on %d (+%d val) in %d epochs (best %d): val rmse %s, tau %s, %.1f s",
            report.n_train, n_val, report.epochs, report.best_epoch, report.val_rmse, report.val_tau, report.seconds,
        )  # fmt: skip
        return report

    def _grads(self, X: np.ndarray, t: np.ndarray) -> list[np.ndarray]:
        out, acts = self._forward(X, keep=True)
        n_layers = len(self.weights) // 2
        delta = (2.0 / len(X)) * (out - t)[:, None]  # d mean squared error / d output, (B, 1)
        grads: list[np.ndarray] = [np.empty(0)] * len(self.weights)
        for i in range(n_layers - 1, -1, -1):
            grads[2 * i] = acts[i].T @ delta
            grads[2 * i + 1] = delta.sum(0)
            if i:
                delta = (delta @ self.weights[2 * i].T) * (acts[i] > 0)
        return grads

    # -- persistence ----------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the predictor as ``.npz`` (arrays and a JSON header), atomically."""
        if not self.fitted:
            raise DataError("refusing to save a predictor that has not been fitted")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        header = {
            "kind": _KIND,
            "format_version": PREDICTOR_FORMAT,
            "input_dim": self.input_dim,
            "config": asdict(self.config),
            "y_mean": self.y_mean,
            "y_std": self.y_std,
            "meta": self.meta,
        }
        arrays = {f"p{i}": w for i, w in enumerate(self.weights)}
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        with open(tmp, "wb") as f:
            np.savez(f, header=np.array(json.dumps(header)), **arrays)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> AccuracyPredictor:
        """Read a predictor written by :meth:`save`; never unpickles anything."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                header = json.loads(str(z["header"]))
                arrays = {k: z[k] for k in z.files if k != "header"}
        except FileNotFoundError as exc:
            raise CheckpointError(f"no accuracy predictor at {path}") from exc
        except (OSError, ValueError, KeyError) as exc:
            raise CheckpointError(f"{path} is not a readable accuracy predictor ({exc})") from exc
        if not isinstance(header, dict) or header.get("kind") != _KIND:
            raise CheckpointError(f"{path} is not an accuracy predictor (expected kind {_KIND!r})")
        if header.get("format_version") != PREDICTOR_FORMAT:
            raise FormatVersionError(
                f"accuracy predictor {path}", header.get("format_version"), PREDICTOR_FORMAT, "Train it again."
            )
        try:
            config = PredictorConfig(**{**header["config"], "hidden": tuple(header["config"]["hidden"])})
            new = cls(int(header["input_dim"]), config, header.get("meta") or {})
            weights = [arrays[f"p{i}"].astype(np.float32) for i in range(len(new.weights))]
            if len(arrays) != len(weights) or any(
                w.shape != ref.shape for w, ref in zip(weights, new.weights, strict=True)
            ):
                raise ValueError("weight shapes do not match the header")
            new.weights, new.y_mean, new.y_std = weights, float(header["y_mean"]), float(header["y_std"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"accuracy predictor {path} is malformed: {exc}") from exc
        new.fitted = True
        return new
