"""One incremental re-search after data drift: adapt, re-measure, re-search, export, validate.

The service's adaptation worker runs :func:`run_adaptation` on an :class:`AdaptRequest` (a
JSON file the daemon writes) and hands the :class:`AdaptResult` back; the daemon alone
decides whether to swap. The phases, each reported through ``progress``:

1. **data**: the local labelled samples (by reference, :mod:`lifelong.data.local`) are split
   into a fine-tuning part and a held-out part; the replay buffer is loaded (or built once
   from the original training data) and split the same way;
2. **baseline**: the serving ONNX model is measured on the held-out local and replay samples:
   the figures the candidate must beat;
3. **fine-tune**: the supernet the service uses is fine-tuned (:func:`lifelong.train.adapt.finetune`),
   the serving subnet and the cached front's candidates in focus;
4. **measure**: those candidates are measured for real on held-out local samples;
5. **search**: the accuracy predictor is transferred to these measurements (APQ's few-shot
   transfer), NSGA-II runs warm-started from the cached front, and the policy's choice on
   the new front is measured too;
6. **export**: the policy's choice among the *measured* subnets (their local accuracy, the
   profile's latency) is exported behind the parity gate, from the adapted supernet, which is
   saved as a new version (:mod:`lifelong.persist.supernet_versions`; the original is never touched),
   and the exported model is measured: local and replay accuracy, latency.

Every phase after the fine-tuning respects the deadline by doing less (fewer candidates, no
search), never by skipping the export and its validation.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lifelong.data.calibration import calibration_path, save_calibration
from lifelong.data.datasets import ArrayDataset, load_dataset, load_fashion_mnist
from lifelong.data.local import load_refs
from lifelong.data.replay import build_replay, load_replay, save_replay
from lifelong.deploy.export import export_subnet, onnx_session, run_onnx
from lifelong.errors import DataError, LifelongError, TrainingError
from lifelong.jobs.adapt_request import (
    ADAPT_REQUEST_FORMAT,
    ADAPT_RESULT_FORMAT,
    ADAPT_RESULT_KIND,
    AdaptRequest,
    save_task_data,
)
from lifelong.nn.checkpoint import Checkpoint, file_sha256, load_checkpoint, save_checkpoint
from lifelong.nn.supernet import recalibrate_bn
from lifelong.persist.supernet_versions import adapted_path
from lifelong.persist.versioned import write_json_atomic
from lifelong.search.front import Front, choose
from lifelong.space.config import SearchSpace, SubnetConfig
from lifelong.train.adapt import (
    AdaptSettings,
    SubnetMeasurement,
    best_calibrations,
    calibration_sets,
    finetune,
    measure_subnets,
)
from policies import Policy

__all__ = ["ADAPT_REQUEST_FORMAT", "ADAPT_RESULT_FORMAT", "AdaptRequest", "AdaptResult", "run_adaptation"]

logger = logging.getLogger(__name__)

MIN_SAMPLES = 20
"""Fewer labelled local samples than this cannot be split into fine-tuning and held-out parts."""

Progress = Callable[[float, str, str], None]
# Shares of the deadline: fine-tuning ends by FINETUNE_SHARE of it, measuring by MEASURE_SHARE.
FINETUNE_SHARE, MEASURE_SHARE = 0.55, 0.75
_PHASES = {"data": (0.0, 0.05), "baseline": (0.05, 0.08), "fine-tune": (0.08, 0.7), "measure": (0.7, 0.8),
           "search": (0.8, 0.85), "export": (0.85, 1.0)}  # fmt: skip


@dataclass
class AdaptResult:
    """What an adaptation produced; :attr:`candidate` is None when nothing could be exported."""

    trigger: str
    samples: dict[str, int]
    serving: dict[str, Any] | None
    candidate: dict[str, Any] | None
    measurements: list[dict[str, Any]]
    finetune: dict[str, Any]
    search: dict[str, Any]
    supernet: dict[str, Any]
    phases: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    front: str | None = None
    """The adapted supernet's front: its measured subnets (``front.json`` in the job's folder), or None."""
    original: dict[str, Any] | None = None
    """The model that served when the drift began, measured on the held-out replay samples,
    where a label-free answer replaced it since (the request's ``original``): the reference
    forgetting is measured against."""
    task_data: str | None = None
    """The held-out local samples (:func:`~lifelong.jobs.adapt_request.save_task_data`): the
    daemon's task check measures the candidate on them, a model of the new data."""
    format_version: int = ADAPT_RESULT_FORMAT

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> Path:
        return write_json_atomic(
            path, {"kind": ADAPT_RESULT_KIND, **self.to_dict()}, durable=False, indent=1, default=float
        )


class _Clock:
    """Phase timings and progress in overall fractions."""

    def __init__(self, progress: Progress | None, max_seconds: float) -> None:
        self.t0 = time.monotonic()
        self.deadline = self.t0 + max_seconds
        self.max_seconds = max_seconds
        self.progress = progress
        self.phases: dict[str, float] = {}
        self._phase: tuple[str, float] | None = None

    def at(self, share: float) -> float:
        return self.t0 + share * self.max_seconds

    def phase(self, name: str, message: str = "") -> None:
        now = time.monotonic()
        if self._phase is not None:
            self.phases[self._phase[0]] = round(now - self._phase[1], 3)
        self._phase = (name, now)
        self.report(name, 0.0, message)

    def report(self, name: str, within: float, message: str = "") -> None:
        lo, hi = _PHASES.get(name, (0.0, 1.0))
        if self.progress is not None:
            self.progress(lo + (hi - lo) * min(max(within, 0.0), 1.0), name, message)

    def close(self) -> None:
        self.phase("done")


def _onnx_figures(
    path: str | Path, holdout: ArrayDataset, replay_holdout: ArrayDataset | None, threads: int
) -> dict[str, Any]:
    session = onnx_session(str(path), threads=threads)
    assert holdout.y is not None
    logits, _ = run_onnx(session, holdout.as_float(), batch_size=256)
    out: dict[str, Any] = {"local_accuracy": float((logits.argmax(1) == holdout.y).mean())}
    if replay_holdout is not None and replay_holdout.y is not None and len(replay_holdout):
        rl, _ = run_onnx(session, replay_holdout.as_float(), batch_size=256)
        out["replay_accuracy"] = float((rl.argmax(1) == replay_holdout.y).mean())
    return out


def _original_figures(
    req: AdaptRequest, holdout: ArrayDataset, replay_holdout: ArrayDataset | None, notes: list[str]
) -> dict[str, Any] | None:
    """The request's ``original`` (the model before the drift, replaced since by a label-free
    answer) measured like the serving model, or None when there is none or it cannot be run."""
    original = dict(req.original or {})
    if not original.get("path") or replay_holdout is None:
        return None
    try:
        return {**original, **_onnx_figures(original["path"], holdout, replay_holdout, req.threads)}
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types; the serving model is the reference then
        notes.append(f"the model before the drift could not be measured: {type(exc).__name__}: {exc}")
        return None


def _latency(path: Path, policy: Policy) -> dict[str, float]:
    """Median latency of an ONNX model at the policy's batch, measured here: the serving model
    and the candidate are timed alike, so their ratio holds even on a busy device."""
    from lifelong.device.timing import measure_model

    got = measure_model(path.read_bytes(), batches=(policy.target.batch,), threads=policy.target.fixed_threads)
    return {str(k): float(v) for k, v in got.items()}


def _replay(req: AdaptRequest) -> tuple[ArrayDataset | None, str]:
    path = Path(req.replay)
    if path.is_file():
        return load_replay(path), f"replay buffer {path}"
    if req.replay_size <= 0:
        return None, "no replay buffer (replay_buffer = 0)"
    data = load_dataset(req.train_data, split="train") if req.train_data else load_fashion_mnist("train")
    buffer = build_replay(data, req.replay_size, seed=req.seed)
    save_replay(path, buffer)
    return buffer, f"replay buffer of {len(buffer)} built from {data.source} into {path}"


def _focus(space: SearchSpace, policy: Policy, front: Front | None, serving: str | None, n: int) -> list[SubnetConfig]:
    """The serving subnet, the cached front's choice for the policy, then its most accurate points within budget."""
    names: list[str] = []
    if serving:
        names.append(serving)
    if front is not None:
        chosen = choose(front, policy)
        if chosen is not None:
            names.append(chosen.subnet)
        within = [p for p in front.points if _within(p, policy)]
        names += [p.subnet for p in sorted(within, key=lambda p: -p.best_accuracy())]
    out: list[SubnetConfig] = []
    for name in names:
        try:
            cfg = space.parse(name)
        except LifelongError:
            continue
        if cfg not in out:
            out.append(cfg)
        if len(out) >= n:
            break
    return out


def _within(point: Any, policy: Policy) -> bool:
    b = policy.budgets
    return b.latency_ms_p95 is None or point.latency_at(policy.target.batch) <= b.latency_ms_p95


def adapted_front(
    evaluator: Any,
    space: SearchSpace,
    measured: Sequence[SubnetMeasurement],
    info: dict[str, Any],
    sha: str,
    parent_sha: str,
) -> Front:
    """The service's cached front for the adapted supernet ``sha``: the subnets measured on
    held-out local samples, with that accuracy, and the evaluator's latency and size.

    Only measured subnets: a predictor refreshed on a handful of measurements shifts its
    level but not its ranking, and a point it rated high swapped the demo to a model that
    scored 42% on the shifted images where the adapted one scored 65%. ``info`` (the
    re-search's) is kept, with what the front now describes.
    """
    got = {m.subnet: m.local_accuracy for m in measured}
    base = evaluator.front([space.parse(s) for s in got])
    points = tuple(replace(p, accuracy=got[p.subnet]) for p in base.points)
    info = {
        **info,
        "checkpoint_sha256": sha,
        "adapted_from": parent_sha,
        "accuracy_on": "held-out local samples of the adaptation (measured subnets only)",
        "validation_measured": sorted(got),
    }
    return Front(points, info)


def _searched(
    req: AdaptRequest, policy: Policy, space: SearchSpace, front: Front | None, measured: Sequence[SubnetMeasurement]
) -> tuple[Any, Front | None, dict[str, Any]]:
    """Refresh the predictor on ``measured`` and search warm-started; returns (evaluator, new front, info)."""
    from lifelong.device.latency_table import LatencyTable
    from lifelong.device.profile import DeviceProfile
    from lifelong.predictor.mlp import AccuracyPredictor
    from lifelong.search.evaluator import PredictorEvaluator
    from lifelong.search.front_search import SearchSettings, search_front

    if not (req.predictor and req.profile and Path(req.predictor).is_file() and Path(req.profile).is_file()):
        return None, None, {"skipped": "no predictor or no device profile"}
    predictor = AccuracyPredictor.load(req.predictor)
    profile = DeviceProfile.load(req.profile)
    table = LatencyTable(profile, space)
    evaluator = PredictorEvaluator(predictor, table, batch=policy.target.batch)
    cfgs = [space.parse(m.subnet) for m in measured]
    X = evaluator.features(evaluator.codec.codes(cfgs))
    y = np.array([m.local_accuracy for m in measured])
    before = predictor.predict(X)
    info: dict[str, Any] = {"refreshed_on": len(measured), "bias_before": float(np.mean(y - before))}
    if len(measured) >= 2:
        refreshed, fit = predictor.transfer(X, y, max_epochs=60, patience=60, meta={"adapted_on": len(measured)})
        info["fit_rmse"] = fit.train_rmse
    else:  # one measurement cannot be fitted to: the predictor stays as it was
        refreshed = predictor
    refreshed_eval = PredictorEvaluator(refreshed, table, batch=policy.target.batch)
    budget = max(req.search_evaluations, 200)
    found = search_front(
        refreshed,
        profile,
        policy,
        space=space,
        settings=SearchSettings(evaluations=budget, population=min(100, budget // 2), seed=req.seed),
        cached=front,
        measured={m.subnet: m.local_accuracy for m in measured},
    )
    info.update({"evaluations": found.front.info.get("evaluations"), "seconds": found.front.info.get("seconds"),
                 "front_points": len(found.front)})  # fmt: skip
    return refreshed_eval, found.front, info


def run_adaptation(request: AdaptRequest, policy: Policy, progress: Progress | None = None) -> AdaptResult:
    """Run every phase of the module docstring; see :class:`AdaptRequest` for the inputs.

    ``policy`` is the request's policy, parsed by the caller (``policies.parse_policy``).

    Raises:
        DataError: too few readable local samples, a bad request or missing data.
        TrainingError: fine-tuning failed.
        CheckpointError: the supernet cannot be read.
    """
    req = request
    torch.set_num_threads(max(1, req.threads))
    clock = _Clock(progress, req.max_seconds)
    notes: list[str] = []

    clock.phase("data", f"{len(req.samples)} local samples")
    local, unreadable = load_refs(req.samples)
    if unreadable:
        notes.append(f"{len(unreadable)} local samples could not be read (first: {unreadable[0]})")
    if len(local) < MIN_SAMPLES:
        raise DataError(f"adaptation needs at least {MIN_SAMPLES} labelled local samples, {len(local)} could be read")
    tune, holdout = local.split(req.holdout_share, seed=req.seed)
    replay, replay_note = _replay(req)
    notes.append(replay_note)
    replay_tune, replay_holdout = (None, None) if replay is None else replay.split(0.2, seed=req.seed)
    samples = {"local": len(local), "fine_tune": len(tune), "holdout": len(holdout),
               "replay": 0 if replay is None else len(replay)}  # fmt: skip

    serving_figures = None
    serving = dict(req.serving or {})
    if serving.get("path"):
        clock.phase("baseline", f"measuring {serving.get('model_id')} on {len(holdout)} held-out local samples")
        try:
            serving_figures = {**serving, **_onnx_figures(serving["path"], holdout, replay_holdout, req.threads)}
            serving_figures["latency_ms"] = _latency(Path(serving["path"]), policy)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types; the job goes on without it
            notes.append(f"the serving model could not be measured: {type(exc).__name__}: {exc}")
    original_figures = _original_figures(req, holdout, replay_holdout, notes)

    ckpt_path = Path(req.checkpoint)
    ckpt = load_checkpoint(ckpt_path)
    parent_sha = file_sha256(ckpt_path)
    model = ckpt.build()
    space = model.space
    front = None
    if req.front and Path(req.front).is_file():
        try:
            front = Front.load(req.front)
        except LifelongError as exc:
            notes.append(f"cached front not used: {exc}")
    focus = _focus(space, policy, front, serving.get("subnet"), req.candidates)
    if not focus:
        focus = [space.largest()]
        notes.append("no serving subnet or front point fits this supernet's space: the largest subnet is the candidate")

    clock.phase("fine-tune", f"{req.steps} sandwich steps on {len(tune)} local + replay samples")
    settings = AdaptSettings(steps=req.steps, seed=req.seed)
    ft = finetune(
        model,
        tune,
        replay_tune,
        settings,
        focus,
        deadline=clock.at(FINETUNE_SHARE),
        on_step=lambda i, n, loss: clock.report("fine-tune", i / max(n, 1), f"step {i}/{n}, loss {loss:.3f}"),
    )
    if ft.stopped_by_deadline:
        notes.append(f"fine-tuning stopped by the time box after {ft.steps}/{ft.planned_steps} steps")

    clock.phase("measure", f"{len(focus)} candidate subnets on held-out local samples")
    calibs = calibration_sets(tune, replay_tune, settings.calib_images, seed=req.seed)
    reference = original_figures or serving_figures  # forgetting: against the model before the drift
    serving_replay = None if reference is None else reference.get("replay_accuracy")
    floor = None if serving_replay is None else serving_replay - policy.swap.max_forgetting
    every = measure_subnets(model, focus, calibs, holdout, replay_holdout, deadline=clock.at(MEASURE_SHARE))
    measured = best_calibrations(every, floor)

    clock.phase("search", "predictor refresh and warm-started search")
    search_info: dict[str, Any] = {}
    evaluator, new_front = None, None
    try:
        evaluator, new_front, search_info = _searched(req, policy, space, front, measured)
    except LifelongError as exc:
        search_info = {"skipped": str(exc)}
        notes.append(f"search skipped: {exc}")
    if new_front is not None:
        pick = choose(new_front, policy, measured=False)
        if pick is not None and pick.subnet not in {m.subnet for m in measured} and time.monotonic() < clock.at(0.85):
            extra = measure_subnets(model, [space.parse(pick.subnet)], calibs, holdout, replay_holdout)
            every += extra
            measured += best_calibrations(extra, floor)
            search_info["new_candidate"] = pick.subnet
    search_info["calibrations"] = [m.to_dict() for m in every]

    winner, pick_note = _pick(measured, policy, evaluator, space, serving_replay)
    if pick_note:
        notes.append(pick_note)
    clock.phase("export", f"exporting {winner.subnet}")
    out_dir = Path(req.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp_ckpt = out_dir / "adapted.pt"
    meta = {**ckpt.meta, "adapted_from": parent_sha, "adaptation": {"trigger": req.trigger, "finetune": ft.to_dict(),
            "samples": samples, "at": time.time()}}  # fmt: skip
    save_checkpoint(tmp_ckpt, Checkpoint(ckpt.space, model.state_dict(), ckpt.record, {"complete": True}, meta))
    sha = file_sha256(tmp_ckpt)
    version_path = adapted_path(req.supernet_dir, sha)
    version_path.parent.mkdir(parents=True, exist_ok=True)
    # The images its BN statistics come from go first: a later export from this version needs them.
    calib = calibs[winner.calibration]
    save_calibration(
        calibration_path(version_path), calib, source=f"adaptation {req.trigger} ({winner.calibration} images)"
    )
    os.replace(tmp_ckpt, version_path)

    cfg = space.parse(winner.subnet)
    sub = model.get_subnet(cfg)
    recalibrate_bn(sub, torch.from_numpy(calib).contiguous(memory_format=torch.channels_last))
    sub.eval()
    gate = holdout if replay_holdout is None else holdout.concat(replay_holdout)
    assert gate.y is not None
    report = export_subnet(
        sub, out_dir / "candidate.onnx", gate.as_float(), gate.y, checkpoint_sha256=sha, calibration=calib[:1000]
    )
    figures = _onnx_figures(report.path, holdout, replay_holdout, req.threads)
    latency = _latency(report.path, policy)
    candidate = {
        "path": str(report.path),
        "subnet": winner.subnet,
        "checkpoint": str(version_path),
        "checkpoint_sha256": sha,
        "bytes": report.bytes,
        "latency_ms": latency,
        "parity": report.parity.to_dict(),
        "requantized": report.requantized,
        **figures,
    }
    clock.close()
    front_path = None
    if new_front is not None and evaluator is not None:
        # the version keeps the winner's calibration images, so a later export of any of these
        # subnets is calibrated on them: the front carries each subnet's accuracy so calibrated
        as_exported = [m for m in every if m.calibration == winner.calibration] or measured
        adapted = adapted_front(evaluator, space, as_exported, new_front.info, sha, parent_sha)
        front_path = str(adapted.save(out_dir / "front.json"))
    task_path = None
    if holdout.y is not None and len(holdout):
        task_path = str(save_task_data(out_dir / "task.npz", holdout.x, holdout.y))
    result = AdaptResult(
        front=front_path,
        task_data=task_path,
        trigger=req.trigger,
        samples=samples,
        serving=serving_figures,
        original=original_figures,
        candidate=candidate,
        measurements=[m.to_dict() for m in measured],
        finetune=ft.to_dict(),
        search=search_info,
        supernet={"parent": str(ckpt_path), "parent_sha256": parent_sha, "adapted": str(version_path), "sha256": sha},
        phases=clock.phases,
        seconds=round(time.monotonic() - clock.t0, 2),
        notes=notes,
    )
    result.save(out_dir / "result.json")
    return result


def _pick(
    measured: Sequence[SubnetMeasurement],
    policy: Policy,
    evaluator: Any,
    space: SearchSpace,
    serving_replay: float | None = None,
) -> tuple[SubnetMeasurement, str]:
    """The policy's choice among the measured subnets (their local accuracy, predicted latency
    and bytes), among those that forget at most ``swap.max_forgetting`` of the reference's
    accuracy on the original data (``serving_replay``: the model before the drift, else the
    serving one) when there are any: the daemon would refuse the others."""
    if not measured:
        raise TrainingError("no candidate subnet could be measured within the time box")
    note = ""
    pool = list(measured)
    if serving_replay is not None:
        cap = policy.swap.max_forgetting
        kept = [m for m in pool if m.replay_accuracy is None or serving_replay - m.replay_accuracy <= cap]
        if kept:
            if len(kept) < len(pool):
                note = f"{len(pool) - len(kept)} of {len(pool)} candidates forget more than swap.max_forgetting"
            pool = kept
        else:
            note = f"every candidate forgets more than swap.max_forgetting ({cap * 100:.2f} pt)"
    if evaluator is None:
        return max(pool, key=lambda m: m.local_accuracy), note
    cfgs = [space.parse(m.subnet) for m in pool]
    front = evaluator.front(cfgs)
    for m in pool:
        front = front.with_measurement(m.subnet, accuracy=m.local_accuracy)
    point = choose(front, policy)
    if point is None:  # nothing within budget: the most accurate, the daemon checks budgets again
        return max(pool, key=lambda m: m.local_accuracy), note
    return next(m for m in pool if m.subnet == point.subnet), note
