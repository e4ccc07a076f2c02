"""Preference drift answered from the cached front: which model a new policy wants, and whether we have it.

When the policy changes, the search need not run again: the front cached by the last search
(``STATE/front/front.json``, :func:`~service.state.paths.default_front`) already holds the
accuracy/latency/size trade-offs, and :func:`lifelong.search.front.choose` picks the point the new
policy prefers. :func:`answer_preference` turns that choice into one of :data:`ACTIONS`:

- ``deploy``: the chosen subnet was exported before and its ONNX model is in the registry
  (the store's ``models.subnet``, read from the model's ``lifelong.subnet`` metadata): the
  daemon deploys it through the one validated swap path;
- ``serving``: the model serving now is the chosen subnet already;
- ``export-needed``: the chosen subnet was never exported: the daemon has a worker export
  it (:mod:`service.workers.front_export`) and deploys it when the export ends; the current model
  serves on meanwhile;
- ``no-point``: no point of the front meets the new policy's budgets: a re-search is needed;
- ``no-front``: there is no readable cached front yet.

Where a subnet was exported more than once (from the original and an adapted supernet), the
model exported from the checkpoint the front was searched on is preferred, then the newest.
Torch-free: this runs in the serving process.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lifelong.errors import LifelongError
from lifelong.search.front import Front, FrontPoint, choose

if TYPE_CHECKING:
    from policies import Policy
    from service.state.registry import Registry
    from service.state.store import ModelRecord, Store

__all__ = [
    "ACTIONS",
    "FrontCache",
    "PreferenceAnswer",
    "answer_preference",
    "find_exported",
    "profiled_latency_ms",
    "slowed_policy",
]

logger = logging.getLogger(__name__)

ACTIONS = ("deploy", "serving", "export-needed", "no-point", "no-front")
"""What a preference change leads to; see the module docstring."""


class FrontCache:
    """The cached front file, parsed once per version of the file (its size and mtime).

    Args:
        path: The front's JSON file (it may not exist yet).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.error: str | None = None
        self._key: tuple[int, int] | None = None
        self._front: Front | None = None

    def get(self) -> Front | None:
        """The front, or None when the file is missing or unreadable (:attr:`error` says why)."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._key, self._front = None, None
            self.error = f"no cached front at {self.path}: run `lifelong search` first"
            return None
        key = (st.st_mtime_ns, st.st_size)
        if key != self._key:
            try:
                self._front, self.error = Front.load(self.path), None
            except LifelongError as exc:
                self._front, self.error = None, str(exc)
                logger.warning("the cached front cannot be read: %s", exc)
            self._key = key
        return self._front


@dataclass(frozen=True)
class PreferenceAnswer:
    """What the cached front says about a new policy.

    Attributes:
        action: One of :data:`ACTIONS`.
        reason: In words, for the status, the drift event and the deployment's reason.
        subnet: The chosen subnet (None for ``no-point`` and ``no-front``).
        model_id: The registered model of that subnet (``deploy`` and ``serving``).
        point: The chosen front point's figures.
    """

    action: str
    reason: str
    subnet: str | None = None
    model_id: str | None = None
    point: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"action must be one of {ACTIONS}, got {self.action!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _front_checkpoint(front: Front) -> str | None:
    meta = front.info.get("predictor_meta")
    sha = front.info.get("checkpoint_sha256") or (meta.get("checkpoint_sha256") if isinstance(meta, dict) else None)
    return sha if isinstance(sha, str) else None


def find_exported(
    store: Store,
    registry: Registry,
    subnet: str,
    checkpoint_sha: str | None = None,
    *,
    strict: bool = False,
    since: float | None = None,
) -> str | None:
    """The id of a registered model of ``subnet``, newest first: from ``checkpoint_sha`` if there
    is one, else (unless ``strict``) from any checkpoint; only models registered after ``since``
    when given."""
    found = [
        m
        for m in store.list_models()
        if m.subnet == subnet and m.id in registry and (since is None or m.created > since)
    ]
    same = [m for m in found if checkpoint_sha is not None and m.checkpoint_sha == checkpoint_sha]
    if strict:
        return same[0].id if same else None
    return (same or found)[0].id if found else None


def _figures(point: FrontPoint, batch: int) -> dict[str, Any]:
    return {
        "accuracy": point.best_accuracy(),
        "latency_ms": point.latency_at(batch),
        "batch": batch,
        "model_bytes": point.best_bytes(),
        "measured": point.measured_accuracy is not None or point.measured_latency_ms is not None,
    }


def answer_preference(
    front: Front | None,
    policy: Policy,
    *,
    store: Store,
    registry: Registry,
    serving: str | None,
    front_error: str | None = None,
    adapted_sha: str | None = None,
    domain_since: float | None = None,
) -> PreferenceAnswer:
    """Choose from ``front`` for ``policy`` and say whether that choice can be deployed now.

    ``adapted_sha``: the adapted supernet in use, if the service adapted: only a model
    exported from it may be deployed; one from the original supernet would throw away what
    the adaptation learnt, so the choice is then "export needed". ``domain_since``: when a
    label-free answer kept the served data's images for exports
    (:data:`~lifelong.data.calibration.DOMAIN_CALIBRATION`): only models registered after it carry
    that data's BN statistics.
    """
    if front is None:
        return PreferenceAnswer("no-front", f"{front_error or 'no cached front'}; a search is needed")
    point = choose(front, policy)
    if point is None:
        return PreferenceAnswer(
            "no-point", f"none of the {len(front)} points of the cached front meets policy {policy.name!r}'s budgets"
        )
    figures = _figures(point, policy.target.batch)
    desc = (
        f"the cached front chooses {point.subnet} for policy {policy.name!r} "
        f"(accuracy {100 * figures['accuracy']:.1f}%, {figures['latency_ms']:.2f} ms at batch {figures['batch']})"
    )
    record = store.get_model(serving) if serving is not None else None
    if record is not None and record.subnet == point.subnet:
        return PreferenceAnswer("serving", f"{desc}: it serves already ({serving})", point.subnet, serving, figures)
    if adapted_sha is not None:
        model_id = find_exported(store, registry, point.subnet, adapted_sha, strict=True, since=domain_since)
        never = "it was never exported from the adapted supernet in use"
    else:
        model_id = find_exported(store, registry, point.subnet, _front_checkpoint(front), since=domain_since)
        never = "it was never exported"
    if domain_since is not None:
        never += " with the BN statistics of the data served now (a label-free answer changed them)"
    if model_id is None:
        return PreferenceAnswer(
            "export-needed", f"{desc}: {never}; export (or re-search) needed", point.subnet, None, figures
        )
    return PreferenceAnswer("deploy", f"{desc}: exported as {model_id}", point.subnet, model_id, figures)


def slowed_policy(policy: Policy, profiled_ms: float | None, live_ms: float | None) -> tuple[Policy, float] | None:
    """``policy`` with its latency budget divided by the slowdown ``live_ms / profiled_ms``, and the slowdown.

    Environment drift is answered from the cached front as a preference change would be, with
    the front's (profiled) latencies judged against this tighter budget. None when there is
    no budget, no profiled latency, or no slowdown.
    """
    budget = policy.budgets.latency_ms_p95
    if not profiled_ms or not live_ms or budget is None or live_ms <= profiled_ms:
        return None
    factor = live_ms / profiled_ms
    return replace(policy, budgets=replace(policy.budgets, latency_ms_p95=budget / factor)), factor


def profiled_latency_ms(front: Front | None, record: ModelRecord | None, batch: int) -> float | None:
    """The p95 a model is expected to run at on this device, for environment drift; None if unknown.

    The front's measured p95 of the model's subnet at ``batch`` first; else the model's own
    p95 measured on this device (batch 1 only). A predicted latency is not used: it is the
    profile's median, and a live p95 sits above a median by nature, not by drift.
    """
    if record is None:
        return None
    if front is not None and record.subnet:
        try:
            point = front[record.subnet]
        except KeyError:
            point = None
        if point is not None and point.measured_latency_ms is not None:
            for b, ms in point.measured_latency_ms:
                if b == batch and ms > 0:
                    return ms
    if batch == 1 and record.latency_p95_ms is not None and record.latency_p95_ms > 0:
        return record.latency_p95_ms
    return None
