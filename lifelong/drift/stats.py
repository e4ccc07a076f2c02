"""Numeric helpers of the drift tests, in numpy and the standard library (no scipy).

The serving process runs the drift tests, so nothing here may pull in torch or scipy. What
scipy would give is written out and tested against known values:

* :func:`gammaincc` (the regularized upper incomplete gamma function ``Q(a, x)``) and
  :func:`chi2_sf` built on it, by the series / continued fraction split of Numerical
  Recipes (2nd ed., section 6.2);
* :func:`kolmogorov_sf`, the asymptotic Kolmogorov distribution, and :func:`ks_2samp`, the
  two-sample Kolmogorov-Smirnov test of every column at once, with the effective-size
  correction of Stephens (1970) that Numerical Recipes uses (``probks``);
* :func:`simes_p` and :func:`bonferroni_p`, which turn per-dimension p-values into one for
  the hypothesis that no dimension changed (Simes' test is the global-null form of
  Benjamini-Hochberg);
* :func:`chi2_two_sample`, the 2 x K contingency chi-square test of two class histograms;
* :func:`median_bandwidth` and :func:`mmd_permutation`, the kernel two-sample test of
  Gretton et al. (JMLR 2012) with an RBF kernel and a permutation null;
* :func:`quantile_lower_bound`, a distribution-free confidence bound of a quantile (a
  latency p95) from order statistics, on :func:`binom_cdf`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "ChiSquareResult",
    "MmdResult",
    "KsTest",
    "binom_cdf",
    "bonferroni_p",
    "chi2_sf",
    "chi2_two_sample",
    "gammaincc",
    "kolmogorov_sf",
    "ks_2samp",
    "median_bandwidth",
    "mmd_permutation",
    "quantile_lower_bound",
    "simes_p",
]

_EPS = 1e-15
_TINY = 1e-300
_MAX_TERMS = 10_000


# --------------------------------------------------------------------------- chi-square


def gammaincc(a: float, x: float) -> float:
    """The regularized upper incomplete gamma function ``Q(a, x) = Gamma(a, x) / Gamma(a)``.

    Below ``x = a + 1`` the series of ``P = 1 - Q`` converges fast, above it the continued
    fraction of ``Q`` does (Numerical Recipes ``gammq``); each is used where it converges.
    Accurate to about 1e-14 relative, which a p-value compared with a threshold of 1e-2 to
    1e-6 does not need but a test can check.
    """
    if not a > 0:
        raise ValueError(f"gammaincc needs a > 0, got a={a!r}")
    if math.isnan(x):
        return math.nan
    if x <= 0.0:
        return 1.0
    if math.isinf(x):
        return 0.0
    log_front = -x + a * math.log(x) - math.lgamma(a)
    if x < a + 1.0:
        term = total = 1.0 / a
        ap = a
        for _ in range(_MAX_TERMS):
            ap += 1.0
            term *= x / ap
            total += term
            if abs(term) < abs(total) * _EPS:
                break
        return max(0.0, 1.0 - total * math.exp(log_front))
    # Modified Lentz for the continued fraction of Q.
    b = x + 1.0 - a
    c = 1.0 / _TINY
    d = 1.0 / b
    h = d
    for i in range(1, _MAX_TERMS):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = _TINY if abs(d) < _TINY else d
        c = b + an / c
        c = _TINY if abs(c) < _TINY else c
        d = 1.0 / d
        step = d * c
        h *= step
        if abs(step - 1.0) < _EPS:
            break
    return min(1.0, math.exp(log_front) * h)


def chi2_sf(x: float, dof: float) -> float:
    """The chi-square survival function ``P(X > x)`` for ``dof`` degrees of freedom."""
    if not dof > 0:
        raise ValueError(f"chi2_sf needs dof > 0, got dof={dof!r}")
    return gammaincc(dof / 2.0, x / 2.0)


@dataclass(frozen=True)
class ChiSquareResult:
    """A 2 x K contingency chi-square test of two class histograms.

    Attributes:
        statistic: Pearson's chi-square over the kept bins.
        dof: Degrees of freedom (kept bins - 1); 0 when fewer than two bins remain.
        p_value: ``chi2_sf(statistic, dof)``; 1.0 when ``dof`` is 0 (nothing to compare).
        bins: The classes of each kept bin; a merged bin lists several.
    """

    statistic: float
    dof: int
    p_value: float
    bins: tuple[tuple[int, ...], ...]


def chi2_two_sample(reference: np.ndarray, live: np.ndarray, min_expected: float = 5.0) -> ChiSquareResult:
    """Do two class histograms come from one distribution? (2 x K contingency chi-square)

    The reference is a sample too, not the truth, so the test is the contingency form
    (both rows estimate the pooled proportions), not goodness of fit against fixed ones.

    Empty and rare classes: a class empty in both histograms carries no information and is
    dropped. Classes whose expected count (under the pooled proportions) is below
    ``min_expected`` in either row are merged into one bin, and that bin is merged into the
    rarest remaining class if it is rare itself: Cochran's rule keeps the chi-square
    approximation valid. Merging is chosen over add-one smoothing because smoothing adds
    counts the data does not have and, on a window of a few hundred samples, moves the
    statistic by more than the effects we look for.

    Args:
        reference: ``(K,)`` counts of the reference window.
        live: ``(K,)`` counts of the live window.
        min_expected: Smallest expected count a bin may keep on its own.
    """
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(live, dtype=np.float64)
    if ref.ndim != 1 or ref.shape != cur.shape:
        raise ValueError(f"two (K,) histograms expected, got shapes {ref.shape} and {cur.shape}")
    if (ref < 0).any() or (cur < 0).any() or not (np.isfinite(ref).all() and np.isfinite(cur).all()):
        raise ValueError("histograms must hold finite counts >= 0")
    n_ref, n_cur = ref.sum(), cur.sum()
    if n_ref == 0 or n_cur == 0:
        return ChiSquareResult(0.0, 0, 1.0, ())
    total = ref + cur
    share = total / total.sum()
    rare_min = np.minimum(share * n_ref, share * n_cur)  # smaller expected count of each class
    present = np.flatnonzero(total > 0)
    keep = [int(k) for k in present if rare_min[k] >= min_expected]
    rare = [int(k) for k in present if rare_min[k] < min_expected]
    bins = [(k,) for k in keep]
    if rare:
        pooled = tuple(rare)
        if min(share[list(pooled)].sum() * n_ref, share[list(pooled)].sum() * n_cur) < min_expected and bins:
            j = min(range(len(bins)), key=lambda i: share[list(bins[i])].sum())
            pooled = tuple(sorted(bins.pop(j) + pooled))
        bins.append(pooled)
    if len(bins) < 2:
        return ChiSquareResult(0.0, 0, 1.0, tuple(bins))
    obs = np.array([[ref[list(b)].sum(), cur[list(b)].sum()] for b in bins])  # (bins, 2)
    expected = obs.sum(axis=1, keepdims=True) * np.array([n_ref, n_cur]) / (n_ref + n_cur)
    statistic = float(((obs - expected) ** 2 / expected).sum())
    dof = len(bins) - 1
    return ChiSquareResult(statistic, dof, chi2_sf(statistic, dof), tuple(bins))


# --------------------------------------------------------------------------- Kolmogorov-Smirnov


def kolmogorov_sf(lam: np.ndarray | float) -> np.ndarray:
    """The asymptotic Kolmogorov survival function ``P(sqrt(n) D > lam)``, element-wise.

    ``Q(lam) = 2 sum_j (-1)^(j-1) exp(-2 j^2 lam^2)`` converges in a few terms for
    ``lam >= 1``; below, its Jacobi-theta dual ``1 - sqrt(2 pi) / lam sum_j
    exp(-(2j-1)^2 pi^2 / (8 lam^2))`` does. Each is used where it converges fast.
    """
    lam = np.atleast_1d(np.asarray(lam, dtype=np.float64))
    out = np.ones_like(lam)
    j = np.arange(1, 101, dtype=np.float64)[:, None]  # (terms, 1)
    big = lam >= 1.0
    if big.any():
        x = lam[big][None, :]
        signs = np.where(j % 2 == 1, 1.0, -1.0)
        out[big] = 2.0 * (signs * np.exp(-2.0 * j**2 * x**2)).sum(axis=0)
    small = (lam > 0.05) & ~big  # below 0.05 Q is 1 to double precision
    if small.any():
        x = lam[small][None, :]
        out[small] = 1.0 - math.sqrt(2.0 * math.pi) / x[0] * np.exp(-((2 * j - 1) ** 2) * math.pi**2 / (8 * x**2)).sum(
            axis=0
        )
    return np.clip(out, 0.0, 1.0)


class KsTest:
    """Two-sample Kolmogorov-Smirnov tests of every column against a fixed reference.

    The reference's columns are sorted once; a test then sorts the live sample and reads
    both empirical CDFs at every data point of both samples (the sup of their difference is
    reached at one) with ``searchsorted(..., side="right")``, which also handles ties. One
    pass per column: at 64 columns, 2000 reference and 500 live rows, about 6 ms.
    P-values are asymptotic, with Stephens' correction ``lam = (sqrt(ne) + 0.12 + 0.11 /
    sqrt(ne)) D``, ``ne = m n / (m + n)``, accurate to a few percent from ``ne`` of about 4
    up; with ties (discrete features) they are conservative.

    Args:
        reference: ``(m, D)`` reference sample.
    """

    def __init__(self, reference: np.ndarray) -> None:
        ref = np.asarray(reference, dtype=np.float64)
        if ref.ndim != 2 or len(ref) == 0:
            raise ValueError(f"a non-empty (m, D) reference expected, got shape {ref.shape}")
        self.m, self.dims = ref.shape
        self._sorted = np.sort(ref.T, axis=1)  # (D, m)
        self._cdf_at_ref = np.stack([np.searchsorted(r, r, side="right") for r in self._sorted]) / self.m  # (D, m)

    def __call__(self, live: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Statistics ``D`` and p-values ``(D,)`` of each column of ``(n, D)`` ``live``."""
        cur = np.asarray(live, dtype=np.float64)
        if cur.ndim != 2 or cur.shape[1] != self.dims or len(cur) == 0:
            raise ValueError(f"a non-empty (n, {self.dims}) sample expected, got shape {cur.shape}")
        n = len(cur)
        live_sorted = np.sort(cur.T, axis=1)  # (D, n)
        stat = np.empty(self.dims)
        for d, (r, w) in enumerate(zip(self._sorted, live_sorted, strict=True)):
            at_live = np.searchsorted(r, w, side="right") / self.m - np.searchsorted(w, w, side="right") / n
            at_ref = self._cdf_at_ref[d] - np.searchsorted(w, r, side="right") / n
            stat[d] = max(np.abs(at_live).max(), np.abs(at_ref).max())
        ne = self.m * n / (self.m + n)
        lam = (math.sqrt(ne) + 0.12 + 0.11 / math.sqrt(ne)) * stat
        return stat, kolmogorov_sf(lam)


def ks_2samp(reference: np.ndarray, live: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two-sample Kolmogorov-Smirnov test of each column: statistics and p-values (see :class:`KsTest`)."""
    return KsTest(reference)(live)


def simes_p(p_values: np.ndarray) -> float:
    """Simes' combined p-value ``min_i K p_(i) / i`` of K tests under the global null.

    Rejecting when it is at most ``alpha`` is Benjamini-Hochberg at level ``alpha`` finding
    at least one discovery; under the global null that happens with probability at most
    ``alpha`` for independent or positively dependent tests (Sarkar 1998).
    """
    p = np.sort(np.asarray(p_values, dtype=np.float64).ravel())
    if p.size == 0:
        raise ValueError("simes_p needs at least one p-value")
    return float(min(1.0, (p * p.size / np.arange(1, p.size + 1)).min()))


def bonferroni_p(p_values: np.ndarray) -> float:
    """Bonferroni's combined p-value ``min(1, K min_i p_i)``: valid under any dependence."""
    p = np.asarray(p_values, dtype=np.float64).ravel()
    if p.size == 0:
        raise ValueError("bonferroni_p needs at least one p-value")
    return float(min(1.0, p.size * p.min()))


# --------------------------------------------------------------------------- MMD


def _sq_dists(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Squared euclidean distances ``(len(x), len(y))`` by the Gram-matrix expansion."""
    d = (x * x).sum(axis=1)[:, None] + (y * y).sum(axis=1)[None, :] - 2.0 * (x @ y.T)
    return np.maximum(d, 0.0)


def median_bandwidth(x: np.ndarray, max_points: int = 1000, seed: int = 0) -> float:
    """The median heuristic: the median distance between points of ``x`` (a subsample of it).

    Fixed from the reference alone, so that it neither depends on the live window nor has
    to be recomputed at every check.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"median_bandwidth needs (N >= 2, D) points, got shape {x.shape}")
    if len(x) > max_points:
        x = x[np.random.default_rng(seed).choice(len(x), max_points, replace=False)]
    d = _sq_dists(x, x)[np.triu_indices(len(x), k=1)]
    med = float(np.sqrt(np.median(d)))
    return med if med > 0 else 1.0


@dataclass(frozen=True)
class MmdResult:
    """A kernel two-sample test.

    Attributes:
        statistic: Biased (V-statistic) estimate of MMD^2 with the RBF kernel.
        p_value: Permutation p-value ``(1 + #{perm >= observed}) / (1 + permutations)``.
        permutations: Permutations drawn.
    """

    statistic: float
    p_value: float
    permutations: int


def mmd_permutation(
    reference: np.ndarray,
    live: np.ndarray,
    bandwidth: float,
    permutations: int,
    rng: np.random.Generator,
) -> MmdResult:
    """MMD^2 of two samples with an RBF kernel and its permutation p-value.

    MMD^2 (biased) is ``w^T K w`` with ``K`` the pooled kernel matrix and ``w`` equal to
    ``1/m`` on reference rows and ``-1/n`` on live ones; a relabelling permutes ``w``. All
    permutations are therefore one matrix product ``K @ W`` with ``W`` of shape
    ``(m + n, permutations)``: BLAS speed instead of a Python loop.

    Args:
        reference: ``(m, D)`` reference sample.
        live: ``(n, D)`` live sample.
        bandwidth: Kernel width ``s`` in ``exp(-|x - y|^2 / (2 s^2))``.
        permutations: Relabellings drawn for the null distribution.
        rng: Source of the permutations.
    """
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(live, dtype=np.float64)
    m, n = len(ref), len(cur)
    pooled = np.concatenate([ref, cur])  # (N, D)
    # float32 halves the cost of the product; the statistics keep 6 significant digits,
    # and observed and permuted values go through the same arithmetic.
    kernel = np.exp(_sq_dists(pooled, pooled) / (-2.0 * bandwidth**2)).astype(np.float32)  # (N, N)
    labels = np.concatenate([np.full(m, 1.0 / m), np.full(n, -1.0 / n)]).astype(np.float32)  # (N,)
    weights = np.repeat(labels[:, None], permutations + 1, axis=1)  # (N, 1 + P): column 0 unpermuted
    weights[:, 1:] = rng.permuted(weights[:, 1:], axis=0)
    stats = np.einsum("ip,ip->p", weights, kernel @ weights, dtype=np.float64)  # (1 + P,)
    observed, null = float(stats[0]), stats[1:]
    exceed = int((null >= observed - 1e-6 * abs(observed)).sum())
    return MmdResult(observed, (1 + exceed) / (1 + permutations), permutations)


# --------------------------------------------------------------------------- quantile bounds


def binom_cdf(k: np.ndarray | int, n: int, p: float) -> np.ndarray:
    """``P(Bin(n, p) <= k)``, element-wise, from log-probabilities (no overflow up to large n)."""
    if n < 0 or not 0.0 <= p <= 1.0:
        raise ValueError(f"binom_cdf needs n >= 0 and 0 <= p <= 1, got n={n}, p={p}")
    j = np.arange(n + 1)
    if p in (0.0, 1.0):
        pmf = (j == (0 if p == 0.0 else n)).astype(np.float64)
    else:
        lgam = np.array([math.lgamma(v + 1.0) for v in range(n + 1)])
        logpmf = lgam[n] - lgam - lgam[::-1] + j * math.log(p) + (n - j) * math.log1p(-p)
        pmf = np.exp(logpmf)
    cdf = np.minimum(np.cumsum(pmf), 1.0)
    k = np.asarray(k)
    return np.where(k < 0, 0.0, cdf[np.clip(k, 0, n).astype(np.int64)])


def quantile_lower_bound(values: np.ndarray, q: float, alpha: float) -> float | None:
    """A distribution-free lower confidence bound, at level ``1 - alpha``, of the ``q``-quantile.

    The ``k``-th smallest value is above the true quantile only if fewer than ``k`` values
    are at most it, which has probability ``P(Bin(n, q) <= k - 1)``; the bound is the
    largest order statistic for which that is at most ``alpha``. ``None`` when even the
    smallest value is not a bound at that level (too few values).
    """
    x = np.sort(np.asarray(values, dtype=np.float64).ravel())
    if x.size == 0:
        return None
    cdf = binom_cdf(np.arange(x.size), x.size, q)  # cdf[k - 1] = P(X_(k) > quantile)
    ok = np.flatnonzero(cdf <= alpha)
    return float(x[ok[-1]]) if ok.size else None
