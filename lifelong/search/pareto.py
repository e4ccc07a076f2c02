"""Pareto machinery: dominance, non-dominated filtering, NSGA-II's ranks and crowding, and
the hypervolume of a front.

All objectives are minimised (negate accuracy). The ranks and the crowding distance are
those of NSGA-II (Deb, Pratap, Agarwal and Meyarivan, IEEE TEVC 2002), the ranks with Deb's
constraint-domination: feasible candidates by non-dominated fronts, then the infeasible ones
by increasing violation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lifelong.errors import DataError

__all__ = [
    "crowding_by_rank",
    "crowding_distance",
    "dominance",
    "hypervolume",
    "non_dominated",
    "ranks_by_constraint_domination",
]


def dominance(F: np.ndarray) -> np.ndarray:
    """``(N, N)``: ``[i, j]`` when ``i`` dominates ``j`` (no worse anywhere, better somewhere)."""
    le = (F[:, None, :] <= F[None, :, :]).all(-1)
    lt = (F[:, None, :] < F[None, :, :]).any(-1)
    return le & lt


def non_dominated(F: np.ndarray) -> np.ndarray:
    """``(N,)`` mask of the rows of ``F`` (objectives to minimise) that no other row dominates.

    A sweep in lexicographic order: a row can only be dominated by one that sorts before it,
    and only the rows kept so far need checking (dominance is transitive), so archives of tens
    of thousands of candidates take milliseconds. Equal rows are all kept.
    """
    F = np.asarray(F, np.float64)
    keep = np.zeros(len(F), bool)
    if not len(F):
        return keep
    order = np.lexsort(F.T[::-1])  # by the first objective, then the second...
    kept = np.empty_like(F)
    n = 0
    for i in order:
        f = F[i]
        if n and ((kept[:n] <= f).all(1) & (kept[:n] < f).any(1)).any():
            continue
        kept[n] = f
        n += 1
        keep[i] = True
    return keep


def ranks_by_constraint_domination(F: np.ndarray, violation: np.ndarray) -> np.ndarray:
    """Constraint-dominated ranks: feasible rows by non-dominated fronts (0, 1, ...), then
    infeasible rows one rank each in order of increasing violation."""
    ranks = np.empty(len(F), np.int64)
    feasible = np.flatnonzero(violation <= 0)
    r = 0
    if len(feasible):
        dom = dominance(F[feasible])
        count = dom.sum(0)  # how many rows dominate each row
        left = np.ones(len(feasible), bool)
        while left.any():
            front = left & (count == 0)
            ranks[feasible[front]] = r
            count = count - dom[front].sum(0)
            left &= ~front
            r += 1
    infeasible = np.flatnonzero(violation > 0)
    order = infeasible[np.argsort(violation[infeasible], kind="stable")]
    ranks[order] = r + np.arange(len(order))
    return ranks


def crowding_distance(F: np.ndarray) -> np.ndarray:
    """Deb's crowding distance of the rows of one front: larger means a lonelier point."""
    n, m = F.shape
    d = np.zeros(n)
    if n <= 2:
        return np.full(n, np.inf)
    for k in range(m):
        order = np.argsort(F[:, k], kind="stable")
        col = F[order, k]
        span = col[-1] - col[0]
        d[order[0]] = d[order[-1]] = np.inf
        if span > 0:
            d[order[1:-1]] += (col[2:] - col[:-2]) / span
    return d


def crowding_by_rank(F: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """Crowding distance of every row within its own rank."""
    crowd = np.zeros(len(F))
    for r in np.unique(ranks):
        members = np.flatnonzero(ranks == r)
        crowd[members] = crowding_distance(F[members])
    return crowd


def hypervolume(accuracy: Sequence[float], latency_ms: Sequence[float], ref: tuple[float, float]) -> float:
    """Exact area (accuracy x ms) dominated by the points and bounded by ``ref``.

    ``ref = (accuracy, latency_ms)`` is the worst corner: only points more accurate and faster
    than it count. Comparisons must share one reference; :meth:`SearchResult.hypervolume`'s
    callers use the lowest accuracy and the highest latency over all the fronts compared (or
    the policy's latency budget), so that every point of every front counts.
    """
    acc, lat = np.asarray(accuracy, np.float64), np.asarray(latency_ms, np.float64)
    if acc.shape != lat.shape:
        raise DataError(f"hypervolume needs as many accuracies as latencies, got {acc.shape} and {lat.shape}")
    ref_acc, ref_lat = ref
    inside = (acc > ref_acc) & (lat < ref_lat)
    acc, lat = acc[inside], lat[inside]
    order = np.lexsort((-acc, lat))  # by latency, the more accurate first on ties
    area, best = 0.0, ref_acc
    xs = np.append(lat[order], ref_lat)
    for i, j in enumerate(order):
        best = max(best, acc[j])
        area += (xs[i + 1] - xs[i]) * (best - ref_acc)
    return float(area)
