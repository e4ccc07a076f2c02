"""The front as a product: the searched Pareto points, stored, chosen from and plotted.

A :class:`Front` holds, per subnet, what the search predicted (accuracy, latency at each
profiled batch size, model bytes, peak memory) and, for the points that were exported and
checked, what was measured. It is written as JSON with a format version, atomically, so a
reader never sees half a file.

:func:`choose` picks the point to deploy for a policy. It is a pure function of the front and
the policy, so that a preference change (a new latency budget, a battery mode) is answered
from the cached front at once, and so that it can be tested on hand-made fronts.

:func:`plot_front` draws accuracy against latency with the baselines; it imports matplotlib
only when called, so the service does not pay for it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lifelong.errors import DataError
from lifelong.persist.versioned import read_versioned_json, write_json_atomic

if TYPE_CHECKING:  # types only: lifelong imports no policy code at run time
    from policies import Policy

__all__ = ["FRONT_FORMAT", "Front", "FrontPoint", "choose", "plot_front"]

FRONT_FORMAT = 1
_KIND = "lifelong-front"


LATENCY_SOURCES = (None, "graph", "export")
"""What a point's measured latency timed: nothing, its graph with random weights, its export."""


def _latency_map(value: Mapping[Any, Any] | None, what: str) -> tuple[tuple[int, float], ...] | None:
    if value is None:
        return None
    try:
        pairs = tuple(sorted((int(b), float(ms)) for b, ms in dict(value).items()))
    except (TypeError, ValueError) as exc:
        raise DataError(f"{what} must map batch sizes to milliseconds, got {value!r}") from exc
    if not pairs or any(b < 1 or not ms >= 0 or math.isinf(ms) for b, ms in pairs):
        raise DataError(f"{what} must map batch sizes >= 1 to finite milliseconds >= 0, got {value!r}")
    return pairs


@dataclass(frozen=True)
class FrontPoint:
    """One subnet of the front.

    Attributes:
        subnet: Canonical subnet string (``SubnetConfig.parse`` reads it back).
        accuracy: Predicted accuracy in [0, 1].
        latency_ms: Predicted latency by batch size, as ``((batch, ms), ...)``; a mapping is
            accepted and converted.
        model_bytes: Predicted model (weight) bytes.
        peak_memory_bytes: Predicted peak memory: weights and live activations.
        measured_accuracy: Accuracy of the exported model on held-out data, once checked.
        measured_latency_ms: p95 latency of the exported model by batch size, once measured.
        measured_model_bytes: Size of the exported model file.
        latency_source: What ``measured_latency_ms`` timed: ``"graph"``, the point's graph
            with random weights (:mod:`lifelong.search.measure`), or ``"export"``, the
            exported model itself; None where nothing was timed or a front predates the key.
    """

    subnet: str
    accuracy: float
    latency_ms: tuple[tuple[int, float], ...]
    model_bytes: int
    peak_memory_bytes: int
    measured_accuracy: float | None = None
    measured_latency_ms: tuple[tuple[int, float], ...] | None = None
    measured_model_bytes: int | None = None
    latency_source: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.subnet, str) or not self.subnet:
            raise DataError(f"a front point needs a subnet string, got {self.subnet!r}")
        if self.latency_ms is None:
            raise DataError(f"{self.subnet}: a front point needs its predicted latency_ms by batch size")
        object.__setattr__(self, "latency_ms", _latency_map(self.latency_ms, f"{self.subnet}: latency_ms"))
        object.__setattr__(
            self, "measured_latency_ms", _latency_map(self.measured_latency_ms, f"{self.subnet}: measured_latency_ms")
        )
        for name in ("accuracy", "measured_accuracy"):
            v = getattr(self, name)
            if v is not None and not 0.0 <= float(v) <= 1.0:
                raise DataError(f"{self.subnet}: {name} must be in [0, 1], got {v!r}")
            if v is not None:
                object.__setattr__(self, name, float(v))
        for name in ("model_bytes", "peak_memory_bytes", "measured_model_bytes"):
            v = getattr(self, name)
            if v is not None and (not float(v) >= 0 or math.isinf(float(v))):
                raise DataError(f"{self.subnet}: {name} must be a byte count >= 0, got {v!r}")
            if v is not None:
                object.__setattr__(self, name, int(v))
        if self.latency_source not in LATENCY_SOURCES:
            raise DataError(
                f"{self.subnet}: latency_source must be one of {LATENCY_SOURCES}, got {self.latency_source!r}"
            )

    # -- the figures a choice is made on: measured where there is a measurement ----------------
    def best_accuracy(self, measured: bool = True) -> float:
        return self.measured_accuracy if measured and self.measured_accuracy is not None else self.accuracy

    def best_bytes(self, measured: bool = True) -> int:
        return self.measured_model_bytes if measured and self.measured_model_bytes is not None else self.model_bytes

    def latency_at(self, batch: int, measured: bool = True) -> float:
        """Latency (ms) of one batch of ``batch``: measured if there is a measurement at that
        batch, else predicted; a batch size that was not profiled is interpolated linearly in
        the batch size between the nearest profiled ones (extrapolated beyond them), since
        the latency of a batch is close to affine in its size."""
        if measured and self.measured_latency_ms is not None:
            for b, ms in self.measured_latency_ms:
                if b == batch:
                    return ms
        table = self.latency_ms
        for b, ms in table:
            if b == batch:
                return ms
        if len(table) == 1:
            ((b0, ms0),) = table
            return ms0 * batch / b0
        below = [p for p in table if p[0] < batch]
        above = [p for p in table if p[0] > batch]
        (b0, m0), (b1, m1) = (
            (below[-1], above[0]) if below and above else (table[-2], table[-1]) if below else (table[0], table[1])
        )
        return max(0.0, m0 + (m1 - m0) * (batch - b0) / (b1 - b0))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "subnet": self.subnet,
            "accuracy": self.accuracy,
            "latency_ms": {str(b): ms for b, ms in self.latency_ms},
            "model_bytes": self.model_bytes,
            "peak_memory_bytes": self.peak_memory_bytes,
        }
        if self.measured_accuracy is not None:
            d["measured_accuracy"] = self.measured_accuracy
        if self.measured_latency_ms is not None:
            d["measured_latency_ms"] = {str(b): ms for b, ms in self.measured_latency_ms}
        if self.measured_model_bytes is not None:
            d["measured_model_bytes"] = self.measured_model_bytes
        if self.latency_source is not None:
            d["latency_source"] = self.latency_source
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FrontPoint:
        if not isinstance(d, Mapping):
            raise DataError(f"every point must be a JSON object, got {d!r}")
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise DataError(f"front point has unknown keys {sorted(unknown)} (known: {sorted(known)})")
        try:
            return cls(**d)
        except TypeError as exc:
            raise DataError(f"front point {d.get('subnet')!r} is missing a field: {exc}") from exc


@dataclass(frozen=True)
class Front:
    """Points of a searched front and facts about the search that made them.

    Attributes:
        points: The points, in no required order (:meth:`sorted` orders them by latency).
        info: JSON-able facts: seed, evaluations, space, device fingerprint, creation time...
    """

    points: tuple[FrontPoint, ...]
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "points", tuple(self.points))
        names = [p.subnet for p in self.points]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise DataError(f"a front lists each subnet once; repeated: {dup[:3]}")

    def __len__(self) -> int:
        return len(self.points)

    def __getitem__(self, subnet: str) -> FrontPoint:
        for p in self.points:
            if p.subnet == subnet:
                return p
        raise KeyError(subnet)

    @classmethod
    def from_arrays(
        cls,
        subnets: Sequence[str],
        accuracy: Sequence[float],
        latency_ms: Mapping[int, Sequence[float]],
        model_bytes: Sequence[float],
        peak_memory_bytes: Sequence[float],
        info: Mapping[str, Any] | None = None,
    ) -> Front:
        """A front from parallel arrays, as an evaluator produces them."""
        points = [
            FrontPoint(
                str(s),
                float(accuracy[i]),
                {b: float(v[i]) for b, v in latency_ms.items()},
                int(model_bytes[i]),
                int(peak_memory_bytes[i]),
            )
            for i, s in enumerate(subnets)
        ]
        return cls(tuple(points), dict(info or {}))

    def sorted(self, batch: int = 1) -> Front:
        """The same front ordered by latency at ``batch``, then by accuracy (descending)."""
        pts = sorted(self.points, key=lambda p: (p.latency_at(batch), -p.best_accuracy(), p.subnet))
        return Front(tuple(pts), self.info)

    def with_measurement(
        self,
        subnet: str,
        *,
        accuracy: float | None = None,
        latency_ms: Mapping[int, float] | None = None,
        model_bytes: int | None = None,
        latency_source: str | None = None,
    ) -> Front:
        """A copy with measured figures filled in for ``subnet`` (the others unchanged)."""
        point = self[subnet]
        new = replace(
            point,
            measured_accuracy=point.measured_accuracy if accuracy is None else accuracy,
            measured_latency_ms=point.measured_latency_ms if latency_ms is None else latency_ms,
            measured_model_bytes=point.measured_model_bytes if model_bytes is None else model_bytes,
            latency_source=point.latency_source if latency_source is None else latency_source,
        )
        return Front(tuple(new if p.subnet == subnet else p for p in self.points), self.info)

    # -- persistence ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": _KIND,
            "format_version": FRONT_FORMAT,
            "info": self.info,
            "points": [p.to_dict() for p in self.points],
        }

    def save(self, path: str | Path) -> Path:
        """Write the front as JSON, atomically (a temporary file renamed over the old one)."""
        return write_json_atomic(path, self.to_dict(), durable=False, indent=1, sort_keys=True)

    @classmethod
    def load(cls, path: str | Path) -> Front:
        path = Path(path)
        d = read_versioned_json(
            path,
            kind=_KIND,
            version=FRONT_FORMAT,
            what="front",
            missing_hint="run a search first",
            redo_hint="Search again.",
        )
        if not isinstance(d.get("points"), list) or not isinstance(d.get("info", {}), dict):
            raise DataError(f"front {path}: expected a list of points and an info table")
        try:
            return cls(tuple(FrontPoint.from_dict(p) for p in d["points"]), d.get("info", {}))
        except DataError as exc:
            raise DataError(f"front {path}: {exc}") from exc


# -- choosing ---------------------------------------------------------------------------------
def choose(front: Front, policy: Policy, *, measured: bool = True) -> FrontPoint | None:
    """The point of ``front`` to deploy under ``policy``, or None if no point meets its budgets.

    Budgets are hard constraints, each met inclusively: latency of one batch at the policy's
    batch size (``target.batch``) against ``budgets.latency_ms_p95``, model bytes against
    ``budgets.model_bytes``, peak memory against ``budgets.peak_memory_bytes``. Measured figures
    are used where a point has them (``measured=False``: predictions only); a measured latency
    is taken to be the p95 the budget speaks of, a predicted one is the profile's median.

    Among the points within budget, ``objective.kind = "max-accuracy"`` takes the most accurate.
    ``"utility"`` maximises ``w_acc * A - w_lat * L - w_size * S``, where ``A``, ``L`` and ``S``
    are accuracy, latency and bytes rescaled to [0, 1] over the points within budget (min-max),
    so the weights trade whole spans: with ``latency_weight = 0.2`` going from the slowest to
    the fastest point is worth a fifth of the accuracy span. Only the weights' ratios matter,
    as the policy says. Ties go to higher accuracy, then lower latency, bytes and name.

    Class weights are not applied: a point carries one accuracy, not one per class. They are
    applied where per-class accuracy is measured (validation of the chosen model).
    """
    b, batch = policy.budgets, policy.target.batch
    ok = []
    for p in front.points:
        if b.latency_ms_p95 is not None and p.latency_at(batch, measured) > b.latency_ms_p95:
            continue
        if b.model_bytes is not None and p.best_bytes(measured) > b.model_bytes:
            continue
        if b.peak_memory_bytes is not None and p.peak_memory_bytes > b.peak_memory_bytes:
            continue
        ok.append(p)
    if not ok:
        return None
    acc = [p.best_accuracy(measured) for p in ok]
    lat = [p.latency_at(batch, measured) for p in ok]
    size = [float(p.best_bytes(measured)) for p in ok]
    if policy.objective.kind == "utility":
        o = policy.objective
        a_n, l_n, s_n = _unit(acc), _unit(lat), _unit(size)
        score = [
            o.accuracy_weight * a_n[i] - o.latency_weight * l_n[i] - o.size_weight * s_n[i] for i in range(len(ok))
        ]
    else:
        score = acc
    best = min(range(len(ok)), key=lambda i: (-score[i], -acc[i], lat[i], size[i], ok[i].subnet))
    return ok[best]


def _unit(values: Sequence[float]) -> list[float]:
    lo, hi = min(values), max(values)
    return [0.0 if hi == lo else (v - lo) / (hi - lo) for v in values]


# -- plotting ---------------------------------------------------------------------------------
def plot_front(
    front: Front,
    path: str | Path,
    *,
    batch: int = 1,
    baselines: Mapping[str, tuple[float, float]] | None = None,
    title: str | None = None,
    chosen: str | None = None,
) -> Path:
    """Write a PNG of accuracy against latency at ``batch``.

    Args:
        front: The front; predicted points are drawn hollow (at their timed latency where
            measured picks timed them), measured ones filled, and the staircase of the hollow
            points as a line.
        path: Where the PNG goes.
        baselines: ``name -> (latency_ms, accuracy)``, drawn as labelled markers.
        title: Plot title (default: the number of points and the batch size).
        chosen: A subnet to circle (the deployed point).
    """
    import matplotlib

    matplotlib.use("Agg")  # no display on a gateway; select before pyplot is imported
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    try:
        pts = front.sorted(batch).points
        if pts:
            # at the latency the front was chosen on: timed here where it was (measured picks)
            lat = [p.latency_at(batch, measured=p.latency_source is not None) for p in pts]
            acc = [100 * p.accuracy for p in pts]
            timed = any(p.latency_source is not None for p in pts)
            label = "front (predicted accuracy, latency timed here)" if timed else "front (predicted)"
            ax.scatter(lat, acc, s=18, facecolors="none", edgecolors="tab:blue", label=label)
            stair_x, stair_y, best = [], [], -1.0
            for x, y in zip(lat, acc, strict=True):
                if y > best:
                    stair_x.append(x)
                    stair_y.append(y)
                    best = y
            ax.step(stair_x, stair_y, where="post", color="tab:blue", lw=1, alpha=0.6)
            measured = [p for p in pts if p.measured_accuracy is not None]
            if measured:
                ax.scatter(
                    [p.latency_at(batch) for p in measured],
                    [100 * p.best_accuracy() for p in measured],
                    s=28,
                    color="tab:green",
                    label="front (measured)",
                    zorder=3,
                )
            if chosen is not None:
                p = front[chosen]
                ax.scatter([p.latency_at(batch)], [100 * p.best_accuracy()], s=160, facecolors="none",
                           edgecolors="tab:red", linewidths=1.5, label="chosen", zorder=4)  # fmt: skip
        markers = "s^DvP*X"
        for n, (name, (ms, a)) in enumerate((baselines or {}).items()):
            ax.scatter([ms], [100 * a], marker=markers[n % len(markers)], s=60, color="black", zorder=5)
            ax.annotate(name, (ms, 100 * a), textcoords="offset points", xytext=(6, 4), fontsize=8)
        xs = [p.latency_at(batch) for p in pts] + [ms for ms, _ in (baselines or {}).values()]
        if xs and min(xs) > 0 and max(xs) / min(xs) > 10:
            ax.set_xscale("log")
        ax.set_xlabel(f"latency of one batch of {batch} (ms)")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(title or f"accuracy vs latency: {len(pts)} front points, batch {batch}")
        ax.grid(True, alpha=0.3)
        if pts:
            ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return path
