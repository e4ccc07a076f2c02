"""The latency model: the device's table rows, corrected by end-to-end measurements.

A sum of isolated part latencies misses what happens between parts: a chain of fused
integer layers stays in uint8 NHWC and pays its layout transposes and (de)quantization once,
while every row timed alone pays them; float rows lose their own per-graph costs. So the
model keeps the two families of rows apart and fits, per batch size,

    latency = a + b_int * integer_rows + b_float * float_rows + c * borders + w . work

where ``work`` sums what the subnet's parts do, per kernel family: MACs, output values and
layers, and the values its pools read (:func:`lifelong.device.profile.part_work`); a part timed
alone overstates its cost inside a fused graph by an amount that grows with these, which
the row sums cannot separate (:data:`lifelong.device.profile.CORRECTION_TERMS`). The fit is
least squares on the relative error of subnets measured end to end. The fit subnets span every share of integer layers, from none
to all, as the search meets them. The model's error is then reported on other subnets it
was not fitted on (nn-Meter's check: the share of subnets predicted within +-10%).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np

from lifelong.device.profile import BASE_TERMS, CORRECTION_TERMS, DeviceProfile, PairedTimer, runs_integer
from lifelong.progress import Progress
from lifelong.space.config import SearchSpace, SubnetConfig

__all__ = ["LatencyCheck", "calibrate", "check_model", "fit_correction", "sample_mixed"]

INTEGER_SHARES = (0.0, 0.25, 0.5, 0.75, 1.0, 1.0)  # all-integer subnets are what deploys most
MIN_WORK_FIT = 50
"""Fit subnets below which only the four row terms are fitted: the demo's quick profile fits on
16, and its eleven-term fit put the largest W8A8 subnet at -0.03 ms. With enough subnets the
work terms are kept only if, at the space's ends (the largest and smallest subnet at each
precision), they predict within half to twice what the row terms alone predict."""

logger = logging.getLogger(__name__)


def fit_correction(terms: np.ndarray, measured: np.ndarray) -> list[float]:
    """Coefficients minimising the squared relative error of ``terms @ c`` against ``measured``.

    Args:
        terms: ``(N, len(CORRECTION_TERMS))`` rows of :meth:`DeviceProfile.terms` (or their first
            ``BASE_TERMS`` columns).
        measured: ``(N,)`` end-to-end latencies (ms).
    """
    terms = np.asarray(terms, dtype=np.float64)
    if terms.ndim != 2 or terms.shape[1] not in (BASE_TERMS, len(CORRECTION_TERMS)):
        raise ValueError(
            f"expected terms of shape (N, {len(CORRECTION_TERMS)}) (or (N, {BASE_TERMS}): no work terms), got {terms.shape}"
        )
    w = 1.0 / measured  # relative error: heavy and light subnets count alike
    coef, *_ = np.linalg.lstsq(terms * w[:, None], measured * w, rcond=None)
    return [float(c) for c in coef]


def sample_mixed(space: SearchSpace, rng: np.random.Generator, integer_share: float) -> SubnetConfig:
    """A random architecture whose layers run integer kernels with probability ``integer_share``.

    Uniform sampling per gene gives few integer layers (one precision in six), while the
    subnets a search deploys are mostly integer: the latency model is fitted and checked on
    the whole range.
    """
    integer = [p for p in space.precisions if runs_integer(p)]
    other = [p for p in space.precisions if not runs_integer(p)]

    def pick():  # noqa: ANN202
        pool = integer if (rng.random() < integer_share and integer) or not other else other
        return pool[int(rng.integers(len(pool)))]

    cfg = space.sample(rng)
    stages = tuple(replace(s, convs=tuple(replace(c, prec=pick()) for c in s.convs)) for s in cfg.stages)
    h = cfg.head
    head = replace(h, hidden_prec=pick() if h.hidden else None, out_prec=pick())
    return SubnetConfig(stages, head)


@dataclass(frozen=True)
class LatencyCheck:
    """Prediction error of the latency model on subnets it was not fitted on, per batch size."""

    batch: int
    subnets: list[str]
    measured_ms: list[float]
    predicted_ms: list[float]

    @property
    def rel_errors(self) -> np.ndarray:
        m, p = np.asarray(self.measured_ms), np.asarray(self.predicted_ms)
        return (p - m) / m

    @property
    def within_10pct(self) -> float:
        return float((np.abs(self.rel_errors) <= 0.10).mean())

    def to_dict(self) -> dict[str, object]:
        e = np.abs(self.rel_errors)
        return {
            "batch": self.batch,
            "subnets": len(self.subnets),
            "within_10pct": self.within_10pct,
            "median_abs_rel_error": float(np.median(e)),
            "p90_abs_rel_error": float(np.quantile(e, 0.9)),
            "max_abs_rel_error": float(e.max()),
            "measured_ms": self.measured_ms,
            "predicted_ms": self.predicted_ms,
            "names": self.subnets,
        }


def _measure_all(timer: PairedTimer, cfgs: list[SubnetConfig], bar: Progress) -> dict[int, np.ndarray]:
    batches = timer.profile.batches
    out: dict[int, list[float]] = {b: [] for b in batches}
    for cfg in cfgs:
        m = timer.measure_subnet(cfg)
        for b in batches:
            out[b].append(m[b])
        bar.update(1)
    return {b: np.asarray(v) for b, v in out.items()}


def check_model(
    profile: DeviceProfile, space: SearchSpace, cfgs: list[SubnetConfig], measured: dict[int, np.ndarray]
) -> list[LatencyCheck]:
    return [
        LatencyCheck(b, [str(c) for c in cfgs], measured[b].tolist(), [profile.predict(space, c, b) for c in cfgs])
        for b in profile.batches
    ]


def _mixed(space: SearchSpace, rng: np.random.Generator, n: int) -> list[SubnetConfig]:
    return [sample_mixed(space, rng, INTEGER_SHARES[i % len(INTEGER_SHARES)]) for i in range(n)]


def calibrate(
    profile: DeviceProfile,
    space: SearchSpace,
    *,
    fit_subnets: int = 100,
    check_subnets: int = 50,
    seed: int = 0,
    progress: bool = True,
) -> list[LatencyCheck]:
    """Fit the correction on ``fit_subnets`` random subnets, check it on ``check_subnets`` others.

    Both sets span every share of integer layers (:func:`sample_mixed`). Updates
    ``profile.correction`` in place (the row terms alone below :data:`MIN_WORK_FIT` fit subnets or
    when the work terms go wild at the space's ends) and returns the check per batch size.
    """
    rng = np.random.default_rng(seed)
    fit = _mixed(space, rng, fit_subnets)
    held = _mixed(space, rng, check_subnets)
    timer = PairedTimer(profile, space)
    bar = Progress(fit_subnets + check_subnets, phase="latency model", enabled=progress)
    m_fit = _measure_all(timer, fit, bar)
    extremes = [space.largest(p) for p in space.precisions] + [space.smallest(p) for p in space.precisions]
    for b in profile.batches:
        terms = np.asarray([profile.terms(space, c, b) for c in fit])
        profile.correction[str(b)] = base = fit_correction(terms[:, :BASE_TERMS], m_fit[b])
        if len(fit) < MIN_WORK_FIT:
            continue
        full = fit_correction(terms, m_fit[b])
        at_ends = np.asarray([profile.terms(space, c, b) for c in extremes])
        ratio = (at_ends @ np.asarray(full)) / (at_ends[:, :BASE_TERMS] @ np.asarray(base))
        if np.all((ratio >= 0.5) & (ratio <= 2.0)):
            profile.correction[str(b)] = full
        else:
            logger.warning(
                "batch %d: the work terms predict %.2f-%.2fx the row model at the space's ends; kept the row model",
                b, float(ratio.min()), float(ratio.max()),
            )  # fmt: skip
    m_held = _measure_all(timer, held, bar)
    bar.close()
    return check_model(profile, space, held, m_held)
