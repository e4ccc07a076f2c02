"""Fine-tune one chosen subnet alone, from its supernet weights, for a bounded time.

APQ and OFA both train the subnet their search picked for a short while on its own before it
is deployed: inside the supernet its weights are a compromise shared with every other subnet,
and a few minutes alone recover part of the gap to training it from scratch. Here the static
subnet (:meth:`lifelong.nn.supernet.Supernet.get_subnet`) keeps its learned quantizers (the LSQ
step sizes train on, so the W8A8 grid adapts too) and trains on the labelled training split
(never the validation split the predictor measures on) with the supernet's augmentation, a
cosine learning rate over the time budget rather than over a number of steps (the budget is
what an operator sets), then its BN statistics are re-estimated as before any measurement.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lifelong.errors import TrainingError
from lifelong.nn.supernet import StaticSubnet, recalibrate_bn
from lifelong.progress import Progress
from lifelong.train.trainer import TrainConfig, epoch_order, param_groups, training_batch

__all__ = ["FinetuneConfig", "FinetuneResult", "finetune_subnet"]


@dataclass(frozen=True)
class FinetuneConfig:
    """How long and how hard to fine-tune. ``seconds`` is the wall-clock budget of the training."""

    seconds: float = 300.0
    lr: float = 0.04  # side by side, 300 s on the tutorial member: 0.01 gave 89.3%, 0.04 90.9% (finetune-lr.json)
    batch_size: int = 128
    momentum: float = 0.9
    weight_decay: float = 5e-5
    label_smoothing: float = 0.0
    bf16: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        problems = []
        if not 0 < self.seconds <= 24 * 3600:
            problems.append(f"seconds must be in (0, 86400], got {self.seconds!r}")
        if not 0 < self.lr < 10:
            problems.append(f"lr must be in (0, 10), got {self.lr!r}")
        if self.batch_size < 2:
            problems.append(f"batch_size must be >= 2, got {self.batch_size!r}")
        if not 0 <= self.label_smoothing < 1:
            problems.append(f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        if problems:
            raise TrainingError("invalid fine-tuning config: " + "; ".join(problems))


@dataclass(frozen=True)
class FinetuneResult:
    steps: int
    seconds: float
    images: int
    loss_first: float
    loss_last: float

    def to_dict(self) -> dict[str, float]:
        return {
            "steps": self.steps,
            "seconds": self.seconds,
            "images": self.images,
            "loss_first": self.loss_first,
            "loss_last": self.loss_last,
        }


def finetune_subnet(
    sub: StaticSubnet,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    calibration: np.ndarray,
    config: FinetuneConfig | None = None,
    *,
    progress: bool = True,
    clock: Callable[[], float] = time.monotonic,
    max_steps: int | None = None,
) -> FinetuneResult:
    """Train ``sub`` in place for ``config.seconds`` on ``x_train (N, 1, H, W)``, ``y_train (N,)``.

    Ends with BN re-estimated on ``calibration`` and the subnet in eval mode. ``max_steps``
    stops earlier (tests).
    """
    cfg = config or FinetuneConfig()
    n = len(x_train)
    steps_per_epoch = n // cfg.batch_size
    if steps_per_epoch < 1:
        raise TrainingError(f"{n} training samples are fewer than one batch of {cfg.batch_size}")
    batches = TrainConfig(batch_size=cfg.batch_size, seed=cfg.seed, augment=True)  # the supernet's augmentation
    sub.to(memory_format=torch.channels_last)
    sub.train()
    optimizer = torch.optim.SGD(param_groups(sub, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    params = list(sub.parameters())
    bar = Progress(int(cfg.seconds), phase="fine-tune", enabled=progress)
    t0 = clock()
    step, losses, shown = 0, [], 0
    while True:
        elapsed = clock() - t0
        if elapsed >= cfg.seconds or (max_steps is not None and step >= max_steps):
            break
        epoch, in_epoch = divmod(step, steps_per_epoch)
        if in_epoch == 0 or step == 0:
            perm = epoch_order(batches, n, epoch)
        x, y = training_batch(batches, x_train, y_train, perm, in_epoch, step)
        lr = 0.5 * cfg.lr * (1 + math.cos(math.pi * min(1.0, elapsed / cfg.seconds)))
        for g in optimizer.param_groups:
            g["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            logits = sub(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
        if not math.isfinite(loss.item()):
            raise TrainingError(f"fine-tuning loss became {loss.item()} at step {step}; lower the learning rate")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        optimizer.step()
        losses.append(loss.item())
        step += 1
        now = int(min(cfg.seconds, clock() - t0))
        if now > shown:
            bar.update(now - shown, loss=float(np.mean(losses[-50:])), lr=lr)
            shown = now
    bar.close()
    seconds = clock() - t0
    recalibrate_bn(
        sub, torch.from_numpy(np.ascontiguousarray(calibration)).contiguous(memory_format=torch.channels_last)
    )
    sub.eval()
    first = float(np.mean(losses[:20])) if losses else float("nan")
    last = float(np.mean(losses[-20:])) if losses else float("nan")
    return FinetuneResult(step, seconds, step * cfg.batch_size, first, last)
