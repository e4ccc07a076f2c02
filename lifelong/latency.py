"""The latency model: the device's table sum, corrected by end-to-end measurements.

A sum of isolated block latencies misses what happens between blocks (fusion across block
borders, cache effects, the per-node cost of the executor), so the model fits, per batch
size, ``latency = a + b * table_sum`` by least squares on subnets measured end to end, then
reports its error on other subnets it was not fitted on (nn-Meter's check: the share of
subnets predicted within +-10%).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lifelong.profile import DeviceProfile, PairedTimer
from lifelong.progress import Progress
from lifelong.space import SearchSpace, SubnetConfig

__all__ = ["LatencyCheck", "calibrate", "check_model", "fit_correction"]


def fit_correction(table_sums: np.ndarray, measured: np.ndarray) -> list[float]:
    """``[a, b]`` minimising the squared relative error of ``a + b * sum`` against ``measured``."""
    w = 1.0 / measured  # relative error: heavy and light subnets count alike
    design = np.stack([np.ones_like(table_sums), table_sums], 1) * w[:, None]
    (a, b), *_ = np.linalg.lstsq(design, measured * w, rcond=None)
    return [float(a), float(b)]


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


def calibrate(
    profile: DeviceProfile,
    space: SearchSpace,
    *,
    fit_subnets: int = 30,
    check_subnets: int = 50,
    seed: int = 0,
    progress: bool = True,
) -> list[LatencyCheck]:
    """Fit the correction on ``fit_subnets`` random subnets, check it on ``check_subnets`` others.

    Updates ``profile.correction`` in place and returns the check per batch size.
    """
    rng = np.random.default_rng(seed)
    fit = [space.sample(rng) for _ in range(fit_subnets)]
    held = [space.sample(rng) for _ in range(check_subnets)]
    timer = PairedTimer(profile, space)
    bar = Progress(fit_subnets + check_subnets, phase="latency model", enabled=progress)
    m_fit = _measure_all(timer, fit, bar)
    for b in profile.batches:
        sums = np.asarray([profile.table_sum(space, c, b) for c in fit])
        profile.correction[str(b)] = fit_correction(sums, m_fit[b])
    m_held = _measure_all(timer, held, bar)
    bar.close()
    return check_model(profile, space, held, m_held)
