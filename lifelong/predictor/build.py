"""Building the accuracy predictor from collected evaluations, and the report on its quality.

:func:`build_predictor` follows APQ (Wang et al., CVPR 2020): an MLP is trained on the
full-precision evaluations, then transferred (fine-tuned from those weights, see
:meth:`AccuracyPredictor.transfer`) to the quantized evaluations. The last ``holdout``
quantized samples are never trained on; the report gives Kendall tau and RMSE (in accuracy
points) on them, and what the data cost to collect.

Corner samples (the sandwich extremes and neighbours of the largest subnet, see
:mod:`lifelong.predictor.samples`) join the quantized training: uniform draws never reach the
accurate end of the space, where the front's best points are. They stay out of the held-out
quantized subnets, whose figures remain comparable with reports built without corners; the
last ``corner_holdout`` share of them is held out instead and reported on apart, which says
whether the accurate corner is predicted well.

It also tests APQ's claim on this supernet instead of assuming it: at the same numbers of
quantized samples, the transferred predictor is compared with one trained on the quantized
samples alone, and with the full-precision predictor used as it is. The report shows what was
measured; the saved predictor is the transferred one either way (choosing by the held-out
figures would make them a biased estimate).

Numpy only: the service can build and reload predictors without torch.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from lifelong.errors import DataError
from lifelong.predictor.features import SubnetFeatures
from lifelong.predictor.mlp import AccuracyPredictor, PredictorConfig, kendall_tau, rmse
from lifelong.predictor.samples import PredictorData, label_noise
from lifelong.space.config import SearchSpace

__all__ = [
    "MIN_CORNER_HOLDOUT",
    "TARGET_TAU",
    "BuildReport",
    "BuildSettings",
    "CornerQuality",
    "Quality",
    "build_predictor",
]

logger = logging.getLogger(__name__)

TARGET_TAU = 0.85
"""Issue 4's target: Kendall tau on 200 held-out quantized subnets."""
MIN_CORNER_HOLDOUT = 5
"""Fewest held-out corner samples worth a figure; with fewer, every corner sample is trained on."""


@dataclass(frozen=True)
class BuildSettings:
    """How the predictor is built.

    Attributes:
        holdout: The last quantized samples, kept out of training for the report.
        corner_holdout: Share of the corner samples kept out of training and reported on
            apart: the last ones in stream order, so neighbours of the largest subnet while
            the extremes that open the stream are trained on. None are held out when that
            share is fewer than :data:`MIN_CORNER_HOLDOUT`.
        analytic: Add the analytic cost features to the one-hot encoding (:mod:`lifelong.predictor.features`).
        compare_at: Numbers of quantized training samples at which transfer and training from
            scratch are also compared (those above what the data holds are skipped; the full
            count is always compared).
        config: The MLP's shape and training settings (the FP training; transfer scales them).
    """

    holdout: int = 200
    corner_holdout: float = 0.2
    analytic: bool = True
    compare_at: tuple[int, ...] = (25, 50, 100)
    config: PredictorConfig = field(default_factory=PredictorConfig)

    def __post_init__(self) -> None:
        if self.holdout < 2:
            raise DataError(f"holdout must be >= 2 samples (Kendall tau needs pairs), got {self.holdout}")
        if not 0 <= self.corner_holdout < 1:
            raise DataError(
                f"corner_holdout must be a share in [0, 1) of the corner samples, got {self.corner_holdout}"
            )
        if any(n < 2 for n in self.compare_at):
            raise DataError(f"compare_at must hold sample counts >= 2, got {self.compare_at}")


@dataclass(frozen=True)
class Quality:
    """A predictor's figures on the held-out quantized subnets."""

    kendall_tau: float
    rmse_pt: float
    n: int

    @classmethod
    def of(cls, predicted: np.ndarray, truth: np.ndarray) -> Quality:
        return cls(kendall_tau(predicted, truth), 100.0 * rmse(predicted, truth), len(truth))


@dataclass(frozen=True)
class CornerQuality:
    """The predictors on the held-out corner samples.

    Attributes:
        top1_mean_pt: Mean measured top-1 of the held-out corner subnets (points).
        top1_std_pt: Their spread (points).
        bias_pt: Mean of the saved predictor's prediction minus the measured top-1 (points):
            below zero, the search underrates the accurate corner.
        transfer: The saved predictor.
        scratch: The one trained on quantized (and corner) samples alone.
        fp_only: The FP-trained predictor before transfer.
    """

    top1_mean_pt: float
    top1_std_pt: float
    bias_pt: float
    transfer: Quality
    scratch: Quality
    fp_only: Quality


@dataclass(frozen=True)
class BuildReport:
    """What :func:`build_predictor` did and measured; stored in the predictor's meta.

    Attributes:
        features: Name of the predictor's inputs.
        fp_samples: Full-precision evaluations trained on.
        quant_train: Uniform quantized evaluations the transfer was trained on.
        holdout: Uniform quantized evaluations held out (corner samples are never among them).
        holdout_top1_std_pt: Spread of the held-out accuracies (points): an RMSE is small
            only next to it.
        label_noise_pt: Estimated noise of one measured accuracy from the finite validation
            set (points, :func:`~lifelong.predictor.samples.label_noise`); ``None`` without halves.
        tau_ceiling: The Kendall tau a perfect predictor would reach against labels this
            noisy, ``(2 / pi) * arcsin(sqrt(1 - noise^2 / spread^2))`` (Gaussian truth and
            noise): the held-out tau cannot be expected above it. ``None`` without halves.
        transfer: The saved predictor (FP-trained, transferred) on the holdout.
        scratch: A predictor trained on the same quantized samples alone.
        fp_only: The FP-trained predictor before transfer.
        comparison: Transfer against scratch at each compared count of quantized samples.
        fits: Training records (:class:`~lifelong.predictor.mlp.FitReport` as dicts) by name.
        data_cost: Evaluations and seconds spent collecting the data (:meth:`PredictorData.cost`).
        provenance: What the accuracies were measured with.
        seconds: Time to build (all fits, comparisons included).
        corner_train: Corner evaluations the transfer (and every compared fit) was also trained on.
        corner_holdout: Corner evaluations held out.
        corner: The predictors on the held-out corner samples; ``None`` when none are held out.
    """

    features: str
    fp_samples: int
    quant_train: int
    holdout: int
    holdout_top1_std_pt: float
    label_noise_pt: float | None
    tau_ceiling: float | None
    transfer: Quality
    scratch: Quality
    fp_only: Quality
    comparison: tuple[dict[str, Any], ...]
    fits: dict[str, dict[str, Any]]
    data_cost: dict[str, Any]
    provenance: dict[str, Any]
    seconds: float
    target_tau: float = TARGET_TAU
    corner_train: int = 0
    corner_holdout: int = 0
    corner: CornerQuality | None = None

    @property
    def meets_target(self) -> bool:
        return self.transfer.kendall_tau >= self.target_tau

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["comparison"] = list(self.comparison)
        d["meets_target"] = self.meets_target
        return d


def build_predictor(
    data: PredictorData, settings: BuildSettings | None = None
) -> tuple[AccuracyPredictor, BuildReport]:
    """Train on the FP samples, transfer to the quantized and corner ones, report on the held-out ones.

    Raises:
        DataError: Too few samples of a kind (at least 10 FP ones, and more quantized ones
            than ``holdout`` plus 2), or samples outside the data's space.
    """
    settings = settings or BuildSettings()
    t0 = time.perf_counter()
    space = SearchSpace(data.space)
    features = SubnetFeatures(space, analytic=settings.analytic)
    fp_cfgs, y_fp = data.subnets("fp")
    q_cfgs, y_q = data.subnets("quant")
    c_cfgs, y_c = data.subnets("corner")
    if len(fp_cfgs) < 10:
        raise DataError(f"need at least 10 full-precision samples to train on, the data holds {len(fp_cfgs)}")
    if len(q_cfgs) < settings.holdout + 2:
        raise DataError(
            f"need more than holdout + 2 = {settings.holdout + 2} quantized samples, the data holds {len(q_cfgs)}: "
            "collect more (--quant) or hold out fewer (--holdout)"
        )
    X_fp, X_q = features(fp_cfgs), features(q_cfgs)
    n_train = len(q_cfgs) - settings.holdout
    X_tr, y_tr, X_ho, y_ho = X_q[:n_train], y_q[:n_train], X_q[n_train:], y_q[n_train:]
    n_c_ho = int(len(c_cfgs) * settings.corner_holdout)
    n_c_ho = n_c_ho if n_c_ho >= MIN_CORNER_HOLDOUT else 0
    n_c_tr = len(c_cfgs) - n_c_ho
    X_c = features(c_cfgs) if c_cfgs else np.zeros((0, features.length), np.float32)
    X_c_tr, y_c_tr, X_c_ho, y_c_ho = X_c[:n_c_tr], y_c[:n_c_tr], X_c[n_c_tr:], y_c[n_c_tr:]
    corners = f" + {n_c_tr} corner" if n_c_tr else ""
    meta = {
        "features": features.name,
        "space": data.space.to_dict(),
        "checkpoint_sha256": data.provenance.checkpoint_sha256,
    }

    fp = AccuracyPredictor(features.length, settings.config, {**meta, "trained_on": f"{len(fp_cfgs)} fp"})
    fits = {"fp": fp.fit(X_fp, y_fp).to_dict()}
    comparison, transferred, scratch = [], None, None
    for n in sorted({n for n in settings.compare_at if n < n_train} | {n_train}):
        X_n, y_n = np.concatenate([X_tr[:n], X_c_tr]), np.concatenate([y_tr[:n], y_c_tr])  # (n + n_c_tr, F)
        t, t_fit = fp.transfer(X_n, y_n, meta={"trained_on": f"{len(fp_cfgs)} fp, transferred to {n} quant{corners}"})
        s = AccuracyPredictor(features.length, settings.config, {**meta, "trained_on": f"{n} quant{corners}"})
        s_fit = s.fit(X_n, y_n)
        qt, qs = Quality.of(t.predict(X_ho), y_ho), Quality.of(s.predict(X_ho), y_ho)
        comparison.append({"quant_samples": n, "corner_samples": n_c_tr, "transfer": asdict(qt), "scratch": asdict(qs)})
        logger.info(
            "%d quantized + %d corner samples: transfer tau %.3f rmse %.2f pt; scratch tau %.3f rmse %.2f pt",
            n, n_c_tr, qt.kendall_tau, qt.rmse_pt, qs.kendall_tau, qs.rmse_pt,
        )  # fmt: skip
        if n == n_train:
            transferred, scratch = (t, qt), (s, qs)
            fits.update(transfer=t_fit.to_dict(), scratch=s_fit.to_dict())
    assert transferred is not None and scratch is not None, "the full count is always compared"

    noise = label_noise(data.of("quant"))
    report = BuildReport(
        features=features.name,
        fp_samples=len(fp_cfgs),
        quant_train=n_train,
        holdout=settings.holdout,
        holdout_top1_std_pt=100.0 * float(np.std(y_ho)),
        label_noise_pt=None if noise is None else 100.0 * noise,
        tau_ceiling=_tau_ceiling(noise, float(np.std(y_ho))),
        transfer=transferred[1],
        scratch=scratch[1],
        fp_only=Quality.of(fp.predict(X_ho), y_ho),
        comparison=tuple(comparison),
        fits=fits,
        data_cost=data.cost(),
        provenance=asdict(data.provenance),
        seconds=time.perf_counter() - t0,
        corner_train=n_c_tr,
        corner_holdout=n_c_ho,
        corner=_corner_quality(transferred[0], scratch[0], fp, X_c_ho, y_c_ho) if n_c_ho else None,
    )
    predictor = transferred[0]
    predictor.meta = {**predictor.meta, "report": report.to_dict()}
    logger.info(
        "predictor built in %.1f s: tau %.3f, rmse %.2f pt on %d held-out quantized subnets (target tau %.2f %s)",
        report.seconds, report.transfer.kendall_tau, report.transfer.rmse_pt, report.holdout, TARGET_TAU,
        "met" if report.meets_target else "missed",
    )  # fmt: skip
    if report.corner is not None:
        logger.info(
            "on %d held-out corner subnets (top-1 %.1f pt): tau %.3f, rmse %.2f pt, bias %+.2f pt",
            n_c_ho, report.corner.top1_mean_pt, report.corner.transfer.kendall_tau, report.corner.transfer.rmse_pt,
            report.corner.bias_pt,
        )  # fmt: skip
    return predictor, report


def _corner_quality(
    transfer: AccuracyPredictor, scratch: AccuracyPredictor, fp: AccuracyPredictor, X: np.ndarray, y: np.ndarray
) -> CornerQuality:
    predicted = transfer.predict(X)  # (n,)
    return CornerQuality(
        top1_mean_pt=100.0 * float(np.mean(y)),
        top1_std_pt=100.0 * float(np.std(y)),
        bias_pt=100.0 * float(np.mean(predicted - y)),
        transfer=Quality.of(predicted, y),
        scratch=Quality.of(scratch.predict(X), y),
        fp_only=Quality.of(fp.predict(X), y),
    )


def _tau_ceiling(noise: float | None, spread: float) -> float | None:
    if noise is None or spread <= 0:
        return None
    rho = np.sqrt(max(0.0, 1.0 - (noise / spread) ** 2))
    return float(2.0 / np.pi * np.arcsin(rho))
