"""ADWIN, the adaptive window of Bifet and Gavalda (SDM 2007) over a bit stream: the
accuracy detector's test (is the error rate of the feedback labels still what it was?), in
numpy and the standard library.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Adwin", "AdwinCut"]


@dataclass(frozen=True)
class AdwinCut:
    """Where ADWIN cut its window: the older part is dropped, the recent part kept.

    Attributes:
        old_mean: Mean of the dropped, older part.
        new_mean: Mean of the kept, recent part.
        old_size: Bits in the older part.
        new_size: Bits in the recent part.
        epsilon: The cut threshold ``|old_mean - new_mean|`` exceeded at that split.
    """

    old_mean: float
    new_mean: float
    old_size: int
    new_size: int
    epsilon: float


class Adwin:
    """ADWIN (Bifet and Gavalda, SDM 2007), exact over a bounded window.

    The window holds the most recent values in ``[0, 1]`` (at most ``max_window``). Every
    ``clock`` values it is split at every ``clock``-th position (counted from the newest
    value) into an older and a recent part of at least ``min_part`` values each; where the
    two means differ by more than

        eps = sqrt(2 / m * var * ln(2 / d')) + 2 / (3 m) * ln(2 / d'),
        m = 1 / (1 / n0 + 1 / n1),  d' = delta / splits,

    (the paper's Bernstein-style bound, ``var`` the variance of the whole window) the older
    part is dropped. ``delta`` bounds the chance of a false cut at one check, summed over
    its splits, so false cuts come at most ``delta / clock`` per value on average.

    The paper's exponential histogram keeps ``O(log W)`` buckets of an unbounded window. A
    bounded exact window (a byte per value when values are bits, every split tested in one
    vectorised pass over cumulative sums) is simpler, tests every split instead of bucket
    boundaries only, and costs tens of microseconds per check at 10,000 values.
    """

    def __init__(self, delta: float, *, clock: int = 32, max_window: int = 10_000, min_part: int = 32) -> None:
        if not 0 < delta < 1:
            raise ValueError(f"Adwin needs 0 < delta < 1, got delta={delta!r}")
        if clock < 1 or min_part < 1 or max_window < 2 * min_part:
            raise ValueError(
                f"Adwin needs clock >= 1, min_part >= 1 and max_window >= 2 * min_part, got "
                f"clock={clock}, min_part={min_part}, max_window={max_window}"
            )
        self.delta = delta
        self.clock = clock
        self.max_window = max_window
        self.min_part = min_part
        self._buf = np.empty(2 * max_window, dtype=np.float64)
        self._start = self._end = 0
        self._since_check = 0

    def __len__(self) -> int:
        return self._end - self._start

    @property
    def values(self) -> np.ndarray:
        """The current window, oldest first (a read-only view)."""
        view = self._buf[self._start : self._end]
        view.flags.writeable = False
        return view

    @property
    def mean(self) -> float:
        """Mean of the current window (NaN while it is empty)."""
        return float(self.values.mean()) if len(self) else math.nan

    def reset(self) -> None:
        """Forget every value."""
        self._start = self._end = self._since_check = 0

    def update(self, values: np.ndarray) -> list[tuple[int, AdwinCut]]:
        """Add values in order; return ``(index in values, cut)`` for each cut made, oldest first."""
        x = np.asarray(values, dtype=np.float64).ravel()
        cuts = []
        i = 0
        while i < len(x):
            take = min(self.clock - self._since_check, len(x) - i)
            self._append(x[i : i + take])
            self._since_check += take
            i += take
            if self._since_check == self.clock:
                self._since_check = 0
                cut = self._check()
                if cut is not None:
                    cuts.append((i - 1, cut))
        return cuts

    def _append(self, x: np.ndarray) -> None:
        if self._end + len(x) > len(self._buf):  # compact: keep the newest max_window - len(x)
            keep = self._buf[max(self._start, self._end - (self.max_window - len(x))) : self._end].copy()
            self._buf[: len(keep)] = keep
            self._start, self._end = 0, len(keep)
        self._buf[self._end : self._end + len(x)] = x
        self._end += len(x)
        self._start = max(self._start, self._end - self.max_window)

    def _check(self) -> AdwinCut | None:
        """Cut once, at the split of largest excess over its threshold, if any exceeds it."""
        x = self._buf[self._start : self._end]
        n = len(x)
        if n < 2 * self.min_part:
            return None
        n1 = np.arange(self.min_part, n - self.min_part + 1, self.clock)  # recent sizes
        n0 = n - n1
        csum = np.concatenate([[0.0], np.cumsum(x)])
        old_mean = csum[n0] / n0
        new_mean = (csum[n] - csum[n0]) / n1
        log_term = math.log(2.0 * len(n1) / self.delta)
        inv_m = 1.0 / n0 + 1.0 / n1
        eps = np.sqrt(2.0 * inv_m * float(x.var()) * log_term) + (2.0 / 3.0) * inv_m * log_term
        excess = np.abs(old_mean - new_mean) - eps
        i = int(np.argmax(excess))
        if excess[i] <= 0:
            return None
        self._start += int(n0[i])
        return AdwinCut(float(old_mean[i]), float(new_mean[i]), int(n0[i]), int(n1[i]), float(eps[i]))
