"""Supernet training: uniform subnet sampling (or the sandwich rule), warm-up and precision transfer.

Schedule (one cosine learning-rate curve over all epochs):

1. ``fp-warmup``: full-precision subnets only. DAQU's warm-up narrows the accuracy gap
   between architectures before quantization noise is added.
2. ``int8``: quantizers are initialised once from a fixed batch (LSQ init), then subnets are
   sampled at 8 bits and above.
3. ``mixed``: lower precisions start from the ranges learned at 8 bits (DAQU's precision
   transfer), then every precision is sampled.

Each step trains the smallest subnet (at the lowest precision of the phase) and ``n_random``
random subnets, each on the labels: uniform single-path sampling (SPOS). The sandwich rule of
BigNAS/OFA (``sandwich=True``: the largest full-precision subnet learns from the labels and the
others from its soft predictions, in-place distillation) is kept as an option: at the same
compute per step it trains the largest well and starves the rest. Side by side at 3 epochs
(``benchmarks/results/ablation.json``) the sandwich with 2 random subnets gave the tutorial
CNN's member 75.3% and six random subnets 68.7% on average; uniform sampling of 13 subnets a
step, for about the same seconds a step, 85.5% and 81.5% (the largest: 89.1% against 86.4%).
Bit-sharing itself (one weight, one step size per precision) is HQNAS's.

Continuing (``init_from``): training starts from a complete supernet, in the mixed phase,
usually with a lower learning rate.

Data-parallel training: run under ``torchrun``; every rank samples the same subnets (the
sampler is seeded by epoch and step), gradients are averaged with one all-reduce per step,
and rank 0 writes checkpoints and logs.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from lifelong.data.datasets import ArrayDataset
from lifelong.errors import TrainingError
from lifelong.nn.allocator import tune_allocator
from lifelong.nn.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from lifelong.nn.quant import transfer_precision
from lifelong.nn.supernet import Supernet, init_quantizers
from lifelong.persist.digest import file_sha256
from lifelong.progress import Progress
from lifelong.space.config import Precision, SearchSpace, SpaceConfig, SubnetConfig

__all__ = ["TrainConfig", "TrainResult", "phase_of", "supernet_recipe", "train_supernet"]

logger = logging.getLogger(__name__)

PHASES = ("fp-warmup", "int8", "mixed")


@dataclass(frozen=True)
class TrainConfig:
    """How to train. ``fixed_subnet`` trains one architecture alone (the baseline)."""

    epochs: int = 10
    warmup_epochs: int = 2
    int8_epochs: int = 2
    batch_size: int = 128
    lr: float = 0.08
    lr_floor: float = 0.0  # the cosine ends at lr * lr_floor instead of zero (BigNAS)
    momentum: float = 0.9
    weight_decay: float = 5e-5
    lr_warmup_steps: int = 200
    n_random: int = 12  # random subnets a step besides the smallest (and the largest, with the sandwich)
    kd_temperature: float = 1.0
    student_label: float = 0.0  # the students' loss: (1 - this) x distillation + this x the labels' loss
    sandwich: bool = False  # True: the largest learns from the labels each step, the others distil from it
    label_smoothing: float = 0.0  # on the labels' loss only: the largest, or a subnet trained alone
    dropout: float = 0.0  # on the hidden layer's output of the largest (or the subnet trained alone)
    bf16: bool = True  # bfloat16 autocast of the forward passes (CPUs with AVX512-BF16 run it ~2x faster)
    augment: bool = True
    val_fraction: float = 10_000 / 60_000
    max_train_samples: int | None = None
    seed: int = 0
    checkpoint_every: int = 100
    fixed_subnet: str | None = None
    init_from: str | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.epochs < 1:
            problems.append(f"epochs must be >= 1, got {self.epochs}")
        if self.warmup_epochs < 0 or self.int8_epochs < 0:
            problems.append("warmup_epochs and int8_epochs must be >= 0")
        if self.batch_size < 2:
            problems.append(f"batch_size must be >= 2, got {self.batch_size}")
        if not 0 < self.lr < 10:
            problems.append(f"lr must be in (0, 10), got {self.lr}")
        if not 0 <= self.lr_floor < 1:
            problems.append(f"lr_floor must be in [0, 1), got {self.lr_floor}")
        if not 0 <= self.label_smoothing < 1 or not 0 <= self.dropout < 1:
            problems.append(
                f"label_smoothing and dropout must be in [0, 1), got {self.label_smoothing}, {self.dropout}"
            )
        if not 0 <= self.student_label <= 1:
            problems.append(f"student_label must be in [0, 1], got {self.student_label}")
        if self.n_random < 0:
            problems.append(f"n_random must be >= 0, got {self.n_random}")
        if not 0 <= self.val_fraction < 1:
            problems.append(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.checkpoint_every < 1:
            problems.append(f"checkpoint_every must be >= 1, got {self.checkpoint_every}")
        if self.init_from and (self.warmup_epochs or self.int8_epochs):
            problems.append(
                "init_from continues a trained supernet in the mixed phase: warmup_epochs and int8_epochs must be 0"
            )
        if self.init_from and self.fixed_subnet:
            problems.append("init_from continues a supernet; it does not apply to a fixed subnet")
        if problems:
            raise TrainingError("invalid training config: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        """The canonical text a checkpoint records: a resume or a cached result compares it."""
        return json.dumps(self.to_dict(), sort_keys=True)


@dataclass
class TrainResult:
    """``seconds`` is the whole training time, across interruptions."""

    checkpoint: Path
    record: list[dict[str, Any]]
    seconds: float
    model: Supernet | None = None


def phase_of(cfg: TrainConfig, epoch: int) -> str:
    if epoch < cfg.warmup_epochs:
        return "fp-warmup"
    if epoch < cfg.warmup_epochs + cfg.int8_epochs:
        return "int8"
    return "mixed"


def _phase_precisions(space: SearchSpace, phase: str) -> tuple[Precision, ...]:
    if phase == "fp-warmup":
        return (Precision(),)
    if phase == "int8":
        return tuple(p for p in space.precisions if p.w >= 8 and p.a >= 8)
    return space.precisions


class _Dist:
    """The process group, when running under torchrun; a single process otherwise."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.enabled = self.world > 1
        if self.enabled and not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def average_gradients(self, params: list[torch.nn.Parameter]) -> None:
        if not self.enabled:
            return
        grads = []
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset : offset + n].view_as(g))
            offset += n

    def broadcast_model(self, model: torch.nn.Module) -> None:
        if not self.enabled:
            return
        for t in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(t.data, 0)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def _augment(x: torch.Tensor, gen: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random shifts of up to ``pad`` pixels and horizontal flips, per sample."""
    b, _, h, w = x.shape  # (B, 1, H, W)
    xp = F.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    rows = (oy[:, None] + torch.arange(h))[:, :, None]  # (B, H, 1)
    cols = (ox[:, None] + torch.arange(w))[:, None, :]  # (B, 1, W)
    flip = torch.rand(b, generator=gen) < 0.5
    cols = torch.where(flip[:, None, None], 2 * ox[:, None, None] + w - 1 - cols, cols)
    out = xp[torch.arange(b)[:, None, None], 0, rows, cols]  # (B, H, W)
    return out.unsqueeze(1)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.dim() <= 1 or ".steps." in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_at(cfg: TrainConfig, step: int, total: int) -> float:
    warm = min(cfg.lr_warmup_steps, total // 10)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    t = (step - warm) / max(1, total - warm)
    floor = cfg.lr * cfg.lr_floor
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * min(1.0, t)))


def kd_loss(logits: torch.Tensor, soft: torch.Tensor, temperature: float) -> torch.Tensor:
    logp = F.log_softmax(logits / temperature, dim=1)
    return -(soft * logp).sum(1).mean() * temperature**2


def training_tensors(train_data: ArrayDataset, cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(N, 1, H, W)`` float and labels ``(N,)`` int64 that training steps through.

    The training part of the deterministic split (the validation part is never trained on),
    cut to ``cfg.max_train_samples`` when set.
    """
    data = train_data
    if cfg.val_fraction > 0:
        data, _ = train_data.split(cfg.val_fraction, seed=cfg.seed)
    if cfg.max_train_samples:
        data = data.head(cfg.max_train_samples)
    assert data.y is not None, f"training data {data.source} has no labels"
    return torch.from_numpy(data.as_float()), torch.from_numpy(data.y.astype(np.int64))


def epoch_order(cfg: TrainConfig, n: int, epoch: int) -> torch.Tensor:
    """The order of the ``n`` training samples in ``epoch`` (the same after a resume)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))


def training_batch(
    cfg: TrainConfig,
    x_all: torch.Tensor,
    y_all: torch.Tensor,
    perm: torch.Tensor,
    in_epoch: int,
    step: int,
    rank: int = 0,
    world: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """This process's share of batch ``in_epoch`` of the epoch ordered by ``perm``, augmented.

    The augmentation draws from a stream seeded by the global ``step``, so a resumed run and
    a network trained alone with the same recipe see the same images.
    """
    idx = perm[in_epoch * cfg.batch_size : (in_epoch + 1) * cfg.batch_size][rank::world]
    x, y = x_all[idx], y_all[idx]
    if cfg.augment:
        x = _augment(x, torch.Generator().manual_seed(cfg.seed * 7919 + step * 31 + rank))
    return x.contiguous(memory_format=torch.channels_last), y


def train_supernet(
    train_data: ArrayDataset,
    out: str | Path,
    config: TrainConfig | None = None,
    space: SpaceConfig | None = None,
    *,
    resume: bool = True,
    progress: bool = True,
    stop_after_steps: int | None = None,
) -> TrainResult:
    """Train (or resume training) a supernet on ``train_data`` and write it to ``out``.

    The checkpoint at ``out`` is rewritten every ``checkpoint_every`` steps and at each epoch
    end; after a kill, calling this again with the same arguments resumes from it.
    ``stop_after_steps`` ends the run early (as a kill would), for tests.
    """
    cfg = config or TrainConfig()
    out = Path(out)
    tune_allocator()
    ddp = _Dist()
    torch.manual_seed(cfg.seed)
    if train_data.y is None:
        raise TrainingError(f"training data {train_data.source} has no labels; supernet training needs labels")

    x_all, y_all = training_tensors(train_data, cfg)
    n = len(x_all)
    per_rank = cfg.batch_size // ddp.world
    if per_rank < 1:
        raise TrainingError(f"batch_size {cfg.batch_size} is smaller than the {ddp.world} processes")
    steps_per_epoch = n // cfg.batch_size
    if steps_per_epoch < 1:
        raise TrainingError(f"{n} training samples are fewer than one batch of {cfg.batch_size}")
    total_steps = steps_per_epoch * cfg.epochs

    space_cfg = space or SpaceConfig()
    search_space = SearchSpace(space_cfg)
    lineage: list[dict[str, Any]] = []  # the checkpoints this one continues, first trained first
    model = Supernet(search_space)
    fixed = search_space.parse(cfg.fixed_subnet) if cfg.fixed_subnet else None
    optimizer = torch.optim.SGD(param_groups(model, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    record: list[dict[str, Any]] = []
    step, phase = 0, None
    seconds_before = 0.0  # training time spent by earlier, interrupted runs
    config_json = cfg.to_json()

    if resume and out.exists():
        ck = load_checkpoint(out)
        if ck.complete:
            logger.info("checkpoint %s is already complete; nothing to train", out)
            return TrainResult(out, ck.record, float(ck.train.get("seconds", 0.0)), ck.build())
        if ck.train.get("config") != config_json or ck.space != space_cfg:
            raise TrainingError(
                f"{out} holds an unfinished training with other settings; remove it or train to another path"
            )
        model.load_state_dict(ck.state_dict)
        optimizer.load_state_dict(ck.train["optimizer"])
        step, phase, record = int(ck.train["step"]), ck.train["phase"], ck.record
        seconds_before = float(ck.train.get("seconds", 0.0))
        logger.info("resuming %s at step %d/%d (phase %s)", out, step, total_steps, phase)
    elif cfg.init_from:
        lineage = _load_initial(model, Path(cfg.init_from), space_cfg)
        phase = "mixed"  # its quantizers have learned every precision already
    ddp.broadcast_model(model)
    model = model.to(memory_format=torch.channels_last)
    model.train()

    def save(complete: bool) -> None:
        if not ddp.main:
            return
        train_state = {
            "config": config_json,
            "step": step,
            "phase": phase or "",
            "complete": complete,
            "seconds": seconds_before + time.monotonic() - t_start,
            "optimizer": optimizer.state_dict(),
        }
        meta = {"fixed_subnet": cfg.fixed_subnet, "steps": total_steps, "train_samples": n, "source": train_data.source}
        if lineage:
            meta["lineage"] = lineage
            meta["init_from_sha256"] = lineage[-1]["sha256"]
        save_checkpoint(out, Checkpoint(space_cfg, model.state_dict(), record, train_state, meta))

    if ddp.main:
        logger.info(
            "training %s on %d samples: %d epochs x %d steps, %d process(es), space of %s",
            "subnet " + str(fixed) if fixed else "supernet", n, cfg.epochs, steps_per_epoch, ddp.world, search_space.describe(),
        )  # fmt: skip
    bar = Progress(total_steps, done=step, phase=phase or "", enabled=progress and ddp.main)
    calib = x_all[torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed))[:256]]
    params = list(model.parameters())
    t_start = time.monotonic()
    steps_run = 0
    while step < total_steps:
        epoch, first = divmod(step, steps_per_epoch)
        new_phase = phase_of(cfg, epoch)
        if new_phase != phase:
            _enter_phase(model, new_phase, phase, calib)
            ddp.broadcast_model(model)
            phase = new_phase
            if ddp.main:
                logger.info("epoch %d: phase %s", epoch, phase)
        precisions = _phase_precisions(search_space, phase)
        perm = epoch_order(cfg, n, epoch)
        epoch_loss, epoch_t0 = [], time.monotonic()
        for in_epoch in range(first, steps_per_epoch):
            x, y = training_batch(cfg, x_all, y_all, perm, in_epoch, step, ddp.rank, ddp.world)
            lr = lr_at(cfg, step, total_steps)
            for g in optimizer.param_groups:
                g["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            rng = np.random.default_rng([cfg.seed, step])  # identical on every rank
            if fixed is not None:
                model.set_active_subnet(_restrict(fixed, phase))
                loss = _label_loss(model, x, y, cfg)
                loss.backward()
                losses = [loss.item()]
            else:
                step_fn = _sandwich_step if cfg.sandwich else _uniform_step
                losses = step_fn(model, search_space, x, y, rng, precisions, cfg)
            ddp.average_gradients(params)
            torch.nn.utils.clip_grad_norm_(params, 5.0)
            optimizer.step()
            step += 1
            steps_run += 1
            epoch_loss.append(losses[0])
            bar.update(1, phase=f"{phase} e{epoch + 1}/{cfg.epochs}", loss=float(np.mean(epoch_loss[-50:])), lr=lr)
            if not all(math.isfinite(v) for v in losses):
                save(False)
                raise TrainingError(f"loss became {losses} at step {step}; lower --lr (now {cfg.lr})")
            if step % cfg.checkpoint_every == 0:
                save(False)
            if stop_after_steps is not None and steps_run >= stop_after_steps:
                save(False)
                bar.close()
                return TrainResult(out, record, seconds_before + time.monotonic() - t_start, model)
        entry = {
            "epoch": epoch + 1,
            "phase": phase,
            "loss": float(np.mean(epoch_loss)) if epoch_loss else None,
            "lr_end": lr,
            "seconds": round(time.monotonic() - epoch_t0, 2),
        }
        record.append(entry)
        if ddp.main:
            logger.info("epoch %d/%d done: %s", epoch + 1, cfg.epochs, json.dumps(entry))
        save(False)
    bar.close()
    save(True)
    ddp.barrier()
    seconds = seconds_before + time.monotonic() - t_start
    if ddp.main:
        logger.info("training done in %.0f s; checkpoint %s", seconds, out)
    return TrainResult(out, record, seconds, model)


def _load_initial(model: Supernet, path: Path, space_cfg: SpaceConfig) -> list[dict[str, Any]]:
    """Start from the weights and learned step sizes of a complete supernet checkpoint;
    returns the lineage of the checkpoint being trained (that one's, then that one)."""
    if not path.is_file():
        raise TrainingError(f"init_from {path}: no such checkpoint; expected a trained supernet .pt file")
    src = load_checkpoint(path)
    if not src.complete:
        raise TrainingError(
            f"init_from {path} is an unfinished training; finish it first (lifelong train --out {path})"
        )
    if src.meta.get("fixed_subnet"):
        raise TrainingError(f"init_from {path} holds one fixed subnet, not a supernet")
    if src.space != space_cfg:
        raise TrainingError(f"init_from {path} was trained on another search space; expected {space_cfg}")
    model.load_state_dict(src.state_dict)
    return [*_lineage(src, path), {"sha256": file_sha256(path), "config": src.train.get("config", "")}]


def _lineage(ck: Checkpoint, where: object) -> list[dict[str, Any]]:
    """The checkpoints ``ck`` continues, first trained first: from its metadata, or for a
    checkpoint written before lineages were kept, by following its ``init_from`` file."""
    if "lineage" in ck.meta:
        return list(ck.meta["lineage"])
    cfg = json.loads(ck.train.get("config") or "{}")
    if not cfg.get("init_from"):
        return []
    parent = Path(cfg["init_from"])
    want = ck.meta.get("init_from_sha256")
    if not parent.is_file() or (want and file_sha256(parent) != want):
        raise TrainingError(f"{where} continues {parent}, which is gone or changed; its lineage is unknown")
    src = load_checkpoint(parent)
    return [*_lineage(src, parent), {"sha256": file_sha256(parent), "config": src.train.get("config", "")}]


_BEFORE_KEYS = {"sandwich": True}
"""What a config recorded before a key existed meant: every supernet trained before the
``sandwich`` switch was trained with the sandwich rule."""


def supernet_recipe(ck: Checkpoint, where: object = "checkpoint") -> TrainConfig:
    """How the supernet in ``ck`` was trained from scratch: the first training's config, with
    ``epochs`` counted across every continuation (``init_from``). Baselines trained "for as
    many epochs as the supernet" read it."""
    text = ck.train.get("config")
    if not text:
        raise TrainingError(f"{where} records no training config")
    chain = [*(json.loads(e["config"]) for e in _lineage(ck, where)), json.loads(text)]
    try:
        root = TrainConfig(**{**_BEFORE_KEYS, **chain[0]})
    except (TypeError, ValueError) as exc:
        raise TrainingError(f"{where}: its training config {chain[0]!r} is not one this version reads ({exc})") from exc
    return replace(root, epochs=sum(int(c["epochs"]) for c in chain))


def _restrict(cfg: SubnetConfig, phase: str) -> SubnetConfig:
    """A fixed subnet trains at full precision during the warm-up, like the supernet."""
    return cfg.with_precision(Precision()) if phase == "fp-warmup" else cfg


def _enter_phase(model: Supernet, phase: str, previous: str | None, calib: torch.Tensor) -> None:
    if phase == "fp-warmup":
        return
    calib = calib.contiguous(memory_format=torch.channels_last)
    if previous in (None, "fp-warmup"):
        init_quantizers(model, calib)  # LSQ initialisation, every op and precision
    if phase == "mixed":
        # Precision transfer: every lower precision starts from the range of the next higher.
        precisions = model.space.precisions
        for bits_list in ({p.w for p in precisions}, {p.a for p in precisions}):
            quantized = sorted(b for b in bits_list if b < 32)
            for lo, hi in zip(quantized[:-1], quantized[1:], strict=True):
                transfer_precision(model, hi, lo)


def _students(
    space: SearchSpace, rng: np.random.Generator, precisions: tuple[Precision, ...], n_random: int
) -> list[SubnetConfig]:
    """The smallest subnet at the phase's lowest precision, then ``n_random`` random draws."""
    return [space.smallest(min(precisions))] + [space.sample(rng, precisions) for _ in range(n_random)]


def _uniform_step(
    model: Supernet,
    space: SearchSpace,
    x: torch.Tensor,
    y: torch.Tensor,
    rng: np.random.Generator,
    precisions: tuple[Precision, ...],
    cfg: TrainConfig,
) -> list[float]:
    """The smallest and the random subnets, each on the labels (uniform single-path sampling):
    the step spends on the small and middle subnets the three quarters the largest takes in the
    sandwich. Dropout and label smoothing regularise only a largest, so they are off here."""
    plain = replace(cfg, dropout=0.0, label_smoothing=0.0)
    losses = []
    for sub in _students(space, rng, precisions, cfg.n_random):
        model.set_active_subnet(sub)
        loss = _label_loss(model, x, y, plain)
        loss.backward()
        losses.append(loss.item())
    return losses


def _sandwich_step(
    model: Supernet,
    space: SearchSpace,
    x: torch.Tensor,
    y: torch.Tensor,
    rng: np.random.Generator,
    precisions: tuple[Precision, ...],
    cfg: TrainConfig,
) -> list[float]:
    """Largest full-precision on labels; smallest and random subnets distil from it."""
    model.set_active_subnet(space.largest(Precision()))
    logits_out: list[torch.Tensor] = []
    loss = _label_loss(model, x, y, cfg, logits_out)
    loss.backward()
    soft = F.softmax(logits_out[0].detach().float() / cfg.kd_temperature, dim=1)
    losses = [loss.item()]
    for sub in _students(space, rng, precisions, cfg.n_random):
        model.set_active_subnet(sub)
        with _autocast(cfg):
            logits = model(x)
        kd = kd_loss(logits.float(), soft, cfg.kd_temperature)
        if cfg.student_label:
            kd = (1 - cfg.student_label) * kd + cfg.student_label * F.cross_entropy(logits.float(), y)
        kd.backward()
        losses.append(kd.item())
    return losses


def _autocast(cfg: TrainConfig) -> torch.autocast:
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16)


def _label_loss(
    model: Supernet, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, logits_out: list | None = None
) -> torch.Tensor:
    """The labels' loss of the active subnet, regularised (dropout, label smoothing) as only
    the largest is (BigNAS, AttentiveNAS): the smaller subnets underfit rather than overfit."""
    model.dropout = cfg.dropout
    try:
        with _autocast(cfg):
            logits = model(x)
    finally:
        model.dropout = 0.0
    if logits_out is not None:
        logits_out.append(logits)
    return F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)


def with_overrides(cfg: TrainConfig, **overrides: Any) -> TrainConfig:
    """``cfg`` with the given fields replaced, ``None`` values ignored."""
    return replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
