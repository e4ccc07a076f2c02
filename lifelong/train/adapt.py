"""Adapting the supernet to local data: short sandwich fine-tuning with replay, then real evaluations.

When the data a gateway sees drifts, the whole supernet is adapted, not one subnet, so that
every architecture the search may pick next has seen the new data:

- **Fine-tuning by the sandwich rule** (as in training, :mod:`lifelong.train.trainer`): each step
  trains the largest full-precision subnet on the labels, and distils it into the smallest
  subnet, the *focus* subnets (the one serving and the cached front's candidates: the ones
  likely to be deployed next) and one random subnet. Students learn from the labels too
  (half the loss), since the teacher itself is still moving to the new data.
- **Replay against forgetting**: each batch is ``replay_share`` original training samples
  (:mod:`lifelong.data.replay`) and the rest local samples, so the supernet keeps the classes and
  looks it knew.
- **Time-boxed**: ``deadline`` (``time.monotonic()``) ends the fine-tuning early; what was
  trained by then is kept.

:func:`measure_subnets` gives the real evaluations the search is then refreshed with:
BN re-calibrated on a mix of local and replay images and on local images alone
(:func:`calibration_sets`), top-1 on held-out local samples and on held-out replay samples
(the forgetting check); :func:`best_calibrations` keeps one calibration per subnet.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lifelong.data.datasets import ArrayDataset
from lifelong.errors import TrainingError
from lifelong.nn.supernet import Supernet, recalibrate_bn
from lifelong.space.config import Precision, SubnetConfig
from lifelong.train.evaluate import predict_logits, top1
from lifelong.train.trainer import kd_loss, param_groups

__all__ = [
    "AdaptSettings",
    "FinetuneReport",
    "SubnetMeasurement",
    "best_calibrations",
    "calibration_mix",
    "calibration_sets",
    "finetune",
    "measure_subnets",
]

logger = logging.getLogger(__name__)

StepCallback = Callable[[int, int, float], None]


@dataclass(frozen=True)
class AdaptSettings:
    """How the supernet is adapted.

    Attributes:
        steps: Sandwich steps of fine-tuning (the policy's ``adaptation.finetune_steps``).
        batch_size: Samples per step, local and replay together.
        lr: Peak learning rate (cosine to zero); a tenth of training's, so the weights move
            to the new data without losing what they learnt.
        replay_share: Share of each batch drawn from the replay buffer.
        label_weight: Weight of the label loss of the student subnets (the rest is distillation).
        random_subnets: Random subnets per step besides the smallest and the focus ones.
        max_focus: Focus subnets trained per step (drawn in turn from the focus list).
        calib_images: Images (local and replay, half each) a subnet's BN is re-calibrated on.
        weight_decay: As in training.
        seed: Batches and random subnets.
    """

    steps: int = 200
    batch_size: int = 96
    lr: float = 0.008
    replay_share: float = 0.5
    label_weight: float = 0.5
    random_subnets: int = 1
    max_focus: int = 1
    calib_images: int = 1000
    weight_decay: float = 5e-5
    seed: int = 0

    def __post_init__(self) -> None:
        problems = []
        if self.steps < 0:
            problems.append(f"steps must be >= 0, got {self.steps}")
        if self.batch_size < 2:
            problems.append(f"batch_size must be >= 2, got {self.batch_size}")
        if not 0 < self.lr < 1:
            problems.append(f"lr must be in (0, 1), got {self.lr}")
        if not 0 <= self.replay_share < 1:
            problems.append(f"replay_share must be in [0, 1), got {self.replay_share}")
        if not 0 <= self.label_weight <= 1:
            problems.append(f"label_weight must be in [0, 1], got {self.label_weight}")
        if self.calib_images < 1:
            problems.append(f"calib_images must be >= 1, got {self.calib_images}")
        if problems:
            raise TrainingError("invalid adaptation settings: " + "; ".join(problems))

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class FinetuneReport:
    steps: int
    planned_steps: int
    seconds: float
    loss_first: float | None
    loss_last: float | None
    stopped_by_deadline: bool

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 ``(N, H, W)`` -> float ``(N, 1, H, W)`` in [0, 1], channels-last as training."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0).unsqueeze(1)
    return x.contiguous(memory_format=torch.channels_last)


def calibration_mix(local: ArrayDataset, replay: ArrayDataset | None, n: int, seed: int = 0) -> np.ndarray:
    """``float32 (n', 1, H, W)``: half local, half replay images (all local without replay).

    BN statistics of the deployed model should describe what it will see (the local data)
    without forgetting the original data entirely: the mix is the compromise.
    """
    rng = np.random.default_rng(seed)
    n_replay = 0 if replay is None or len(replay) == 0 else min(n // 2, len(replay))
    n_local = min(n - n_replay, len(local))
    parts = [local.x[rng.permutation(len(local))[:n_local]]]
    if n_replay:
        assert replay is not None
        parts.append(replay.x[rng.permutation(len(replay))[:n_replay]])
    x = np.concatenate(parts)[rng.permutation(n_local + n_replay)]
    return ArrayDataset(x, None).as_float()


def finetune(
    model: Supernet,
    local: ArrayDataset,
    replay: ArrayDataset | None,
    settings: AdaptSettings,
    focus: Sequence[SubnetConfig] = (),
    *,
    deadline: float | None = None,
    on_step: StepCallback | None = None,
) -> FinetuneReport:
    """Fine-tune ``model`` in place on ``local`` mixed with ``replay`` (see the module docstring).

    Args:
        model: The supernet; left in eval mode.
        local: Labelled local samples.
        replay: The replay buffer, or None to train on local samples only.
        settings: Steps, batch, learning rate, mix.
        focus: Subnets trained at every step in turn (the serving one, the likely next ones).
        deadline: ``time.monotonic()`` at which to stop, whatever the steps left.
        on_step: Called with ``(step, steps, loss)`` after every step.

    Raises:
        TrainingError: no labels, or the loss diverged.
    """
    if local.y is None or len(local) == 0:
        raise TrainingError("adaptation needs labelled local samples; none were given")
    s = settings
    space = model.space
    rng = np.random.default_rng(s.seed)
    gen = torch.Generator().manual_seed(s.seed)
    has_replay = replay is not None and replay.y is not None and len(replay) > 0
    n_replay = round(s.batch_size * s.replay_share) if has_replay else 0
    n_local = s.batch_size - n_replay
    local_x, local_y = _tensor(local.x), torch.from_numpy(local.y)
    if has_replay:
        assert replay is not None and replay.y is not None
        replay_x, replay_y = _tensor(replay.x), torch.from_numpy(replay.y)
    optimizer = torch.optim.SGD(param_groups(model, s.weight_decay), lr=s.lr, momentum=0.9, nesterov=True)
    teacher_cfg = space.largest(Precision())
    smallest = space.smallest(min(space.precisions, key=lambda p: (p.w, p.a)))
    model.train()
    t0 = time.monotonic()
    losses: list[float] = []
    stopped = False
    for step in range(s.steps):
        if deadline is not None and time.monotonic() >= deadline:
            stopped = True
            break
        lr = 0.5 * s.lr * (1 + math.cos(math.pi * step / max(s.steps, 1)))
        for g in optimizer.param_groups:
            g["lr"] = lr
        li = torch.randint(len(local_x), (n_local,), generator=gen)
        xs, ys = [local_x[li]], [local_y[li]]
        if n_replay:
            ri = torch.randint(len(replay_x), (n_replay,), generator=gen)
            xs.append(replay_x[ri])
            ys.append(replay_y[ri])
        x = torch.cat(xs).contiguous(memory_format=torch.channels_last)
        y = torch.cat(ys)
        optimizer.zero_grad(set_to_none=True)
        model.set_active_subnet(teacher_cfg)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        soft = F.softmax(logits.detach(), dim=1)
        students = [smallest]
        if focus:
            students += [focus[(step * s.max_focus + i) % len(focus)] for i in range(min(s.max_focus, len(focus)))]
        students += [space.sample(rng) for _ in range(s.random_subnets)]
        for sub in students:
            model.set_active_subnet(sub)
            out = model(x)
            student_loss = s.label_weight * F.cross_entropy(out, y) + (1 - s.label_weight) * kd_loss(out, soft, 1.0)
            student_loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        value = float(loss.item())
        if not math.isfinite(value):
            raise TrainingError(f"the adaptation loss became {value} at step {step}; lower the learning rate")
        losses.append(value)
        if on_step is not None:
            on_step(step + 1, s.steps, value)
    model.eval()
    done = len(losses)
    report = FinetuneReport(
        done,
        s.steps,
        time.monotonic() - t0,
        float(np.mean(losses[:10])) if losses else None,
        float(np.mean(losses[-10:])) if losses else None,
        stopped,
    )
    logger.info("fine-tuned %d/%d steps in %.1f s (loss %s -> %s)", done, s.steps, report.seconds, report.loss_first, report.loss_last)  # fmt: skip
    return report


@dataclass(frozen=True)
class SubnetMeasurement:
    """A subnet of the (adapted) supernet measured for real, BN re-calibrated."""

    subnet: str
    local_accuracy: float
    replay_accuracy: float | None
    seconds: float
    calibration: str = "mix"  # the images its BN statistics were re-estimated on (calibration_sets' key)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def calibration_sets(local: ArrayDataset, replay: ArrayDataset | None, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """The BN calibrations a candidate is measured with: ``mix`` (:func:`calibration_mix`) and,
    with a replay buffer, ``local`` (local images only).

    Which serves better depends on the shift: after a noise shift and 30 fine-tuning steps,
    the serving subnet calibrated on the mix scored 66% on held-out local samples (89% on
    replay) where its BN statistics re-estimated on local images alone had given 83% (72%).
    Each candidate is measured with both and keeps the one :func:`best_calibrations` prefers.
    """
    sets = {"mix": calibration_mix(local, replay, n, seed)}
    if replay is not None and len(replay):
        sets["local"] = calibration_mix(local, None, n, seed)
    return sets


def best_calibrations(measured: Sequence[SubnetMeasurement], replay_floor: float | None) -> list[SubnetMeasurement]:
    """One measurement per subnet (first-seen order): the most accurate on local samples among
    its calibrations whose replay accuracy is at least ``replay_floor`` (all when None); when
    none is, the one that forgets least."""
    by: dict[str, list[SubnetMeasurement]] = {}
    for m in measured:
        by.setdefault(m.subnet, []).append(m)
    out = []
    for ms in by.values():
        ok = [m for m in ms if replay_floor is None or m.replay_accuracy is None or m.replay_accuracy >= replay_floor]
        if ok:
            out.append(max(ok, key=lambda m: (m.local_accuracy, m.replay_accuracy or 0.0)))
        else:
            out.append(max(ms, key=lambda m: (m.replay_accuracy or 0.0, m.local_accuracy)))
    return out


def measure_subnets(
    model: Supernet,
    cfgs: Sequence[SubnetConfig],
    calib: np.ndarray | Mapping[str, np.ndarray],
    holdout: ArrayDataset,
    replay_holdout: ArrayDataset | None = None,
    *,
    deadline: float | None = None,
) -> list[SubnetMeasurement]:
    """Top-1 of each subnet on held-out local samples (and held-out replay samples), in order,
    once per calibration of ``calib`` (an array is the ``mix``; a mapping names several).

    Stops early at ``deadline``, returning the measurements made by then (at least one subnet).
    """
    if holdout.y is None:
        raise TrainingError("held-out local samples need labels")
    calibs = {"mix": calib} if isinstance(calib, np.ndarray) else dict(calib)
    x = holdout.as_float()
    rx = None if replay_holdout is None or replay_holdout.y is None else replay_holdout.as_float()
    out: list[SubnetMeasurement] = []
    for cfg in cfgs:
        if out and deadline is not None and time.monotonic() >= deadline:
            break
        sub = model.get_subnet(cfg)
        for name, images in calibs.items():
            t0 = time.monotonic()
            recalibrate_bn(sub, torch.from_numpy(images).contiguous(memory_format=torch.channels_last))
            acc = top1(predict_logits(sub, x), holdout.y)
            racc = None
            if rx is not None:
                assert replay_holdout is not None and replay_holdout.y is not None
                racc = top1(predict_logits(sub, rx), replay_holdout.y)
            out.append(SubnetMeasurement(str(cfg), acc, racc, time.monotonic() - t0, name))
    return out
