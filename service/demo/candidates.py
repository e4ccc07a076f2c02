"""The demo's initial choice, made on measured accuracy among fine-tuned candidates.

A quick supernet ranks its subnets poorly, and a minute of fine-tuning alone lifts a small
net further than a deep W8A8 one, so the demo fine-tunes a spread of the front's points below
the policy's choice and lets the policy choose among them on their validation accuracy.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from service.demo.prepare import ExportedPick, StepRunner, prepare_exports
from service.errors import DemoError
from service.state.paths import default_front

if TYPE_CHECKING:
    from lifelong.search.front import Front, FrontPoint
    from policies import Policy

__all__ = ["CANDIDATE_SHARES", "measured_choice", "prepare_initial", "spread_candidates"]

CANDIDATE_SHARES = (1.0, 0.5, 0.25)
"""Where the demo's candidates sit, as shares of the latency of the policy's choice: that choice,
then the most accurate front point at or under half and a quarter of its latency. A quick
supernet ranks its subnets poorly (they score 73-78% on validation before fine-tuning) and a
minute of fine-tuning lifts a small net further than a deep W8A8 one (91.3% against 87.4% on
validation in one run from nothing, where the front's ranking said the opposite), so the demo
fine-tunes a spread of candidates and the policy chooses among them on their measured
accuracy."""


def spread_candidates(front: Front, policy: Policy, shares: tuple[float, ...] = CANDIDATE_SHARES) -> list[FrontPoint]:
    """The policy's choice and, per further share in ``shares``, the most accurate other point at
    or under that share of its latency (faster than the choice; :func:`measured_choice` checks
    every budget again); if none of these is all FP32, also the most accurate all-FP32 point at
    or under the choice's latency. The front's fastest point is left out, so that the preference
    change has a faster point to go to (a run from nothing chose the fastest and skipped it).

    Why an FP32 point: in three runs from nothing, a minute alone took the W8A8 candidates to
    86.6-88.2% on validation and the FP32 ones to 90.8-91.6%; the run whose candidates were all
    W8A8 opened at 86.3%, the two with FP32 candidates at 90.5-90.6%."""
    from lifelong.search.front import choose

    first = choose(front, policy)
    if first is None:
        return []
    batch = policy.target.batch
    l0 = first.latency_at(batch)
    out = [first]
    fastest = min(front.points, key=lambda p: (p.latency_at(batch), p.subnet))
    best = lambda pool: max(pool, key=lambda p: (p.best_accuracy(), -p.latency_at(batch), p.subnet))  # noqa: E731
    for share in shares[1:]:
        pool = [p for p in front.points if p.latency_at(batch) <= share * l0 and p not in out and p != fastest]
        if pool:
            out.append(best(pool))
    if not any(_full_precision(p) for p in out):
        pool = [p for p in front.points if _full_precision(p) and p.latency_at(batch) <= l0 and p != fastest]
        if pool:
            out.append(best(pool))
    return out


def _full_precision(point: FrontPoint) -> bool:
    """Every layer of the point runs in FP32: a minute of fine-tuning lifts such a net further
    than a quantized one, whose fake-quantized steps are slower and noisier."""
    from lifelong.space.config import SubnetConfig

    return all(p.is_full for p in SubnetConfig.parse(point.subnet).layer_precisions())


def measured_choice(front: Front, policy: Policy, accuracy: dict[str, float]) -> FrontPoint | None:
    """The policy's choice among the subnets of ``accuracy`` (canonical name -> measured top-1),
    each taken with that accuracy as its measurement."""
    from lifelong.search.front import Front, choose

    sub = Front(tuple(front[s] for s in accuracy), front.info)
    for subnet, acc in accuracy.items():
        sub = sub.with_measurement(subnet, accuracy=acc)
    return choose(sub, policy)


def prepare_initial(
    runner: StepRunner, state: Path, ckpt: Path, front: Front, policy: Policy, *, finetune_seconds: float
) -> tuple[FrontPoint, dict[str, ExportedPick], str | None]:
    """The initial choice: with fine-tuning, the policy's choice among the spread of
    candidates (:func:`spread_candidates`), each fine-tuned and exported, on their validation
    accuracy (:func:`measured_choice`); without, the front's choice, not yet exported.

    Returns:
        The chosen point, its export as the ``initial`` pick (empty when not yet exported) and
        a note on how it was chosen (None without fine-tuning).

    Raises:
        DemoError: No point of the front meets the policy's budgets.
    """
    from lifelong.search.front import choose

    tune = finetune_seconds
    candidates = spread_candidates(front, policy) if tune > 0 else [choose(front, policy)]
    first = candidates[0] if candidates else None
    if first is None:
        raise DemoError(
            f"no point of the front {default_front(state)} meets the demo policy's budgets: remove the file to search again"
        )
    if len(candidates) == 1:
        return first, {}, None
    named = {f"candidate {i + 1}": p for i, p in enumerate(candidates)}
    tuned = prepare_exports(runner, state, ckpt, named, policy.target.batch, finetune_seconds=tune)
    measured = {p.subnet: p.val_accuracy for p in tuned.values() if p.val_accuracy is not None}
    first = measured_choice(front, policy, measured) or first
    note = (
        f"the initial choice is made on measured accuracy: {len(candidates)} candidates fine-tuned {tune:g} s each, "
        "validation top-1 " + ", ".join(f"{100 * a:.2f}% ({s})" for s, a in measured.items()) + f" -> {first.subnet}"
    )
    pick = next(p for p in tuned.values() if p.subnet == first.subnet)
    return first, {"initial": replace(pick, role="initial")}, note
