"""The networks a user would build instead of running a search, trained alone and quantized by onnxruntime.

    .venv/bin/python benchmarks/baselines.py            # all four, the supernet's recipe; ~20-30 min on 2 cores
    .venv/bin/python benchmarks/baselines.py --only tutorial --only wide    # a subset
    .venv/bin/python benchmarks/baselines.py --quick    # 1 epoch on 4k images, 2k test images; ~1 min

Writes ``benchmarks/results/baselines.json`` (``--quick``: ``baselines-quick.json``, not
committed). Training dominates; measured in ``--quick`` on one busy core (bfloat16 autocast),
an epoch of 50k images takes about 20 s (``tutorial``, ``wide``), 25 s (``cnn``) and 75 s
(``mbv2``), so 10 epochs take about 3, 3.5, 4 and 13 min. The PTQ sweep adds under a minute
per baseline (each calibration takes 0.2-2.5 s with 512 images). Checkpoints resume.

Every network takes ``float32 (N, 1, 28, 28)`` pixels in ``[0, 1]`` and normalises them
itself, like the supernet, and is trained alone with the supernet's recipe: the
:class:`~lifelong.train.trainer.TrainConfig` of its checkpoint (:func:`recipe_from_checkpoint`;
``TrainConfig()`` when there is none yet), through the functions of :mod:`lifelong.train.trainer`:
the same split (the validation part never trained on), epochs, batch size, SGD with
Nesterov momentum and weight decay, warm-up + cosine learning rate with its floor, random
shift + flip augmentation, bfloat16 autocast of the forward pass, label smoothing, and the
recipe's dropout before the classifier of the global-pool nets (the FC-head nets have their
own dropout of 0.5). Full precision all along (there is no quantized phase without a
supernet). Each is then exported to ONNX with BN folded and quantized by onnxruntime's
``quantize_static`` under every configuration of :mod:`ptq` (unsigned and signed INT8
activations x MinMax / Percentile / Entropy, 512 training images), keeping the best.

``tutorial``: the small CNN of the tutorials, the one the search must beat::

    conv3x3  1 -> 32 (28) + BN + ReLU, maxpool 2 (-> 14)
    conv3x3 32 -> 64 (14) + BN + ReLU, maxpool 2 (-> 7)
    flatten 64*7*7, linear 3136 -> 128 + ReLU, dropout 0.5, linear 128 -> 10

    4,241,152 MACs, 421,738 parameters (421,642 after BN folding)

``wide``: a wider plain CNN, three stages; max-pools round up (``ceil_mode``)::

    conv3x3   1 -> 32  (28) + BN + ReLU, maxpool 2 (-> 14)
    conv3x3  32 -> 64  (14) + BN + ReLU, maxpool 2 (-> 7)
    conv3x3  64 -> 128 (7)  + BN + ReLU, maxpool 2 (-> 4)
    flatten 128*4*4, linear 2048 -> 128 + ReLU, dropout 0.5, linear 128 -> 10

    7,714,560 MACs, 356,458 parameters (356,234 after BN folding)

``mbv2``: MobileNetV2 (Sandler et al., 2018) scaled to 28x28. ReLU6, BN after every conv;
``t`` expand ratio, ``c`` output channels, ``n`` blocks, ``s`` stride of the first::

    stem   conv3x3  1 -> 16, stride 2                   (28 -> 14)
    t=1 c=16 n=1 s=1   dw3x3 + project (no expansion)   (14)
    t=6 c=24 n=2 s=2   inverted residual, kernel 3      (14 -> 7)
    t=6 c=32 n=3 s=2                                    (7 -> 4)
    t=6 c=64 n=2 s=1                                    (4)
    head   conv1x1 64 -> 256, global average pool, linear 256 -> 10
    residual connection where stride 1 and channels in == out (5 of the 8 blocks)

    3,106,416 MACs, 149,098 parameters (145,834 after BN folding)

``cnn``: a plain CNN with a global-pool head (kept: ``benchmarks/search.py`` compares with it)::

    conv3x3  1 -> 32  (28) + BN + ReLU, maxpool 2 (-> 14)
    conv3x3 32 -> 64  (14) + BN + ReLU, maxpool 2 (-> 7)
    conv3x3 64 -> 128 (7)  + BN + ReLU, global average pool, linear 128 -> 10

    7,452,416 MACs, 94,186 parameters (93,962 after BN folding)

MACs count the multiply-accumulates of convolutions and linear layers for one image (not BN,
activations or pooling), as :mod:`lifelong.space.cost` counts them for subnets. Parameters count
what is trained (convolutions without bias, BN scale and shift); after folding, each
convolution has a bias instead of its BN.

Trained weights are saved per epoch (and every ``checkpoint_every`` steps) under
``benchmarks/work/search/`` as a dict with a format version, loadable with
``torch.load(weights_only=True)``; an interrupted training resumes from it.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import logging
import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ptq import CONFIGS, PtqConfig, PtqSweep, sweep  # noqa: E402

from lifelong.deploy.model_format import (  # noqa: E402
    EMBEDDING_OUTPUT,
    INPUT_NAME,
    INPUT_SHAPE,
    LOGITS_OUTPUT,
    META_CHECKPOINT,
    META_FORMAT,
    META_SUBNET,
    MODEL_FORMAT,
)
from lifelong.errors import CheckpointError, FormatVersionError, TrainingError  # noqa: E402
from lifelong.nn.allocator import tune_allocator  # noqa: E402
from lifelong.nn.checkpoint import save_atomic  # noqa: E402
from lifelong.nn.supernet import PIXEL_MEAN, PIXEL_STD  # noqa: E402
from lifelong.persist.versioned import write_bytes_atomic  # noqa: E402
from lifelong.progress import Progress  # noqa: E402
from lifelong.train.trainer import (  # noqa: E402
    TrainConfig,
    epoch_order,
    lr_at,
    param_groups,
    training_batch,
    training_tensors,
)

__all__ = [
    "BASELINE_FORMAT",
    "BASELINES",
    "DOCUMENTED",
    "BaselineModels",
    "MobileNetV2Style",
    "PlainCNN",
    "SmallCNN",
    "build_baseline",
    "calibration_images",
    "count_macs_params",
    "export_onnx",
    "fold_bn",
    "folded_params",
    "load_baseline",
    "prepare_baseline",
    "recipe_from_checkpoint",
    "train_baseline",
]

logger = logging.getLogger(__name__)

BASELINE_FORMAT = 1
KIND = "lifelong-baseline"
OPSET = 17
WORK = Path(__file__).resolve().parent / "work" / "search"
RECIPE_FIELDS = (
    "epochs", "batch_size", "lr", "lr_floor", "momentum", "weight_decay", "lr_warmup_steps", "label_smoothing",
    "dropout", "bf16", "augment", "val_fraction", "max_train_samples", "seed",
)  # fmt: skip
"""The fields of :class:`TrainConfig` that train a single network; a checkpoint resumes only
under equal ones (the supernet's phases, distillation and checkpoint interval do not apply)."""
DOCUMENTED = {
    "tutorial": (4_241_152, 421_738, 421_642),
    "wide": (7_714_560, 356_458, 356_234),
    "mbv2": (3_106_416, 149_098, 145_834),
    "cnn": (7_452_416, 94_186, 93_962),
}
"""``name -> (MACs, parameters, parameters after BN folding)`` as the module docstring states them (tested)."""


# -- the networks -------------------------------------------------------------------------------
class ConvBNAct(nn.Sequential):
    """Conv (no bias) + BN + optional activation; :func:`fold_bn` merges the BN into the conv."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: type | None = nn.ReLU):
        super().__init__(
            nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            act() if act is not None else nn.Identity(),
        )


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expand (skipped at t=1), depthwise kxk, linear 1x1 project."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int, k: int = 3) -> None:
        super().__init__()
        hid = cin * expand
        layers: list[nn.Module] = [] if expand == 1 else [ConvBNAct(cin, hid, 1, act=nn.ReLU6)]
        layers += [ConvBNAct(hid, hid, k, stride, groups=hid, act=nn.ReLU6), ConvBNAct(hid, cout, 1, act=None)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


class _Classifier(nn.Module):
    """A baseline: ``forward_with_embedding`` gives logits and the embedding the service keeps."""

    def forward_with_embedding(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_embedding(x)[0]


class _GlobalPoolNet(_Classifier):
    """Normalise, features, global average pool -> embedding -> (dropout) -> logits."""

    features: nn.Module
    fc: nn.Linear
    dropout: float = 0.0  # the recipe's (TrainConfig.dropout), set while training; none in eval

    def forward_with_embedding(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (x - PIXEL_MEAN) / PIXEL_STD  # (B, 1, 28, 28)
        emb = F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)  # (B, D): GlobalAveragePool in ONNX
        return self.fc(F.dropout(emb, self.dropout, self.training)), emb  # (B, classes), (B, D)


class MobileNetV2Style(_GlobalPoolNet):
    """MobileNetV2 for 28x28 inputs (see the module docstring for the exact network)."""

    STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 2, 1))  # (t, c, n, s)

    def __init__(self, num_classes: int = 10, stem: int = 16, head: int = 256) -> None:
        super().__init__()
        layers: list[nn.Module] = [ConvBNAct(INPUT_SHAPE[0], stem, 3, 2, act=nn.ReLU6)]
        cin = stem
        for t, c, n, s in self.STAGES:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(ConvBNAct(cin, head, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(head, num_classes)


class SmallCNN(_GlobalPoolNet):
    """Three dense 3x3 conv layers, two max-pools, a global-pool head (the ``cnn`` baseline)."""

    def __init__(self, num_classes: int = 10, widths: tuple[int, int, int] = (32, 64, 128)) -> None:
        super().__init__()
        a, b, c = widths
        self.features = nn.Sequential(
            ConvBNAct(INPUT_SHAPE[0], a, 3), nn.MaxPool2d(2),
            ConvBNAct(a, b, 3), nn.MaxPool2d(2),
            ConvBNAct(b, c, 3),
        )  # fmt: skip
        self.fc = nn.Linear(c, num_classes)


class PlainCNN(_Classifier):
    """Stages of conv3x3 + BN + ReLU + 2x2 max-pool, then flatten, FC + ReLU, dropout, FC.

    ``widths=(32, 64)`` is the tutorial CNN, ``(32, 64, 128)`` the wider one. Max-pools round
    up (``ceil_mode``), so an odd side keeps its last row: 28 -> 14 -> 7 -> 4. The dropout
    is the architecture's own (0.5, training only); the embedding is the hidden FC's output.
    """

    def __init__(
        self, widths: tuple[int, ...] = (32, 64), hidden: int = 128, dropout: float = 0.5, num_classes: int = 10
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin, side = INPUT_SHAPE[0], INPUT_SHAPE[1]
        for w in widths:
            layers += [ConvBNAct(cin, w, 3), nn.MaxPool2d(2, ceil_mode=True)]
            cin, side = w, math.ceil(side / 2)
        self.features = nn.Sequential(*layers)
        self.hidden = nn.Linear(cin * side * side, hidden)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(hidden, num_classes)

    def forward_with_embedding(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (x - PIXEL_MEAN) / PIXEL_STD  # (B, 1, 28, 28)
        flat = self.features(x).flatten(1)  # (B, C * S * S)
        emb = F.relu(self.hidden(flat))  # (B, hidden)
        return self.fc(self.drop(emb)), emb  # (B, classes), (B, hidden)


BASELINES: dict[str, Callable[[], _Classifier]] = {
    "tutorial": lambda: PlainCNN((32, 64)),
    "wide": lambda: PlainCNN((32, 64, 128)),
    "mbv2": MobileNetV2Style,
    "cnn": SmallCNN,
}
"""The baselines, in the order they are trained and reported."""


def build_baseline(name: str) -> _Classifier:
    """A freshly initialised baseline (one of :data:`BASELINES`)."""
    try:
        return BASELINES[name]()
    except KeyError:
        raise ValueError(f"unknown baseline {name!r}; expected one of {sorted(BASELINES)}") from None


def count_macs_params(model: nn.Module) -> tuple[int, int]:
    """Multiply-accumulates of convs and linears for one image, and parameters (BN included)."""
    macs = 0

    def hook(m: nn.Module, _inputs: object, out: torch.Tensor) -> None:
        nonlocal macs
        if isinstance(m, nn.Conv2d):
            macs += out[0].numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        else:
            macs += m.in_features * m.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *INPUT_SHAPE))
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    return macs, sum(p.numel() for p in model.parameters())


def folded_params(model: nn.Module) -> int:
    """Parameters as deployed: BN folded into the convolutions (each conv gains a bias)."""
    return sum(p.numel() for p in fold_bn(model).parameters())


# -- export ---------------------------------------------------------------------------------------
def fold_bn(model: nn.Module) -> nn.Module:
    """An eval-mode copy with every :class:`ConvBNAct`'s BN merged into its conv."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = copy.deepcopy(model).eval()
    for m in folded.modules():
        if isinstance(m, ConvBNAct) and isinstance(m[1], nn.BatchNorm2d):
            m[0] = fuse_conv_bn_eval(m[0], m[1])
            m[1] = nn.Identity()
    return folded


class _Both(nn.Module):
    def __init__(self, model: _Classifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.forward_with_embedding(x)


def export_onnx(model: _Classifier, out: str | Path | None = None, name: str = "baseline") -> bytes:
    """FP32 ONNX of ``model`` (BN folded) with the deploy contract's input, outputs and metadata.

    The legacy TorchScript exporter (``dynamo=False``): the dynamo one needs onnxscript.
    The batch axis is dynamic.
    """
    folded = _Both(fold_bn(model))
    buf = io.BytesIO()
    axes = {INPUT_NAME: {0: "N"}, LOGITS_OUTPUT: {0: "N"}, EMBEDDING_OUTPUT: {0: "N"}}
    with warnings.catch_warnings():  # the legacy exporter is chosen on purpose (dynamo=False)
        warnings.filterwarnings("ignore", "You are using the legacy TorchScript-based ONNX export", DeprecationWarning)
        torch.onnx.export(
            folded, (torch.zeros(1, *INPUT_SHAPE),), buf, dynamo=False, opset_version=OPSET,
            input_names=[INPUT_NAME], output_names=[LOGITS_OUTPUT, EMBEDDING_OUTPUT], dynamic_axes=axes,
        )  # fmt: skip
    proto = onnx.load_from_string(buf.getvalue())
    for key, value in ((META_SUBNET, f"baseline:{name}"), (META_CHECKPOINT, ""), (META_FORMAT, str(MODEL_FORMAT))):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto, full_check=True)
    data = proto.SerializeToString()
    if out is not None:
        write_bytes_atomic(Path(out), data)
    return data


# -- training -------------------------------------------------------------------------------------
def recipe_from_checkpoint(checkpoint: Any) -> TrainConfig:
    """The :class:`TrainConfig` a supernet checkpoint (a path or a loaded ``Checkpoint``) was
    trained with, its epochs counted across continuations (``lifelong train --init-from``)."""
    from lifelong.nn.checkpoint import load_checkpoint
    from lifelong.train.trainer import supernet_recipe

    ck = load_checkpoint(checkpoint) if isinstance(checkpoint, str | Path) else checkpoint
    try:
        return supernet_recipe(ck, checkpoint)
    except TrainingError as exc:
        raise CheckpointError(f"{exc}; pass the baselines' epochs explicitly") from exc


@dataclass
class TrainedBaseline:
    """A trained baseline and its record. ``seconds`` counts every run, across interruptions."""

    name: str
    model: _Classifier
    record: list[dict[str, Any]]
    seconds: float
    complete: bool
    path: Path


def _load_payload(path: Path) -> dict[str, Any]:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or foreign files
        raise CheckpointError(f"{path} is not a readable baseline checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(payload, dict) or payload.get("kind") != KIND:
        raise CheckpointError(f"{path} is not a baseline checkpoint (expected kind {KIND!r})")
    if payload.get("format_version") != BASELINE_FORMAT:
        raise FormatVersionError(
            f"baseline checkpoint {path}", payload.get("format_version"), BASELINE_FORMAT,
            "Remove it and train again (benchmarks/baselines.py).",
        )  # fmt: skip
    return payload


def load_baseline(path: str | Path) -> TrainedBaseline:
    """A baseline checkpoint, read without unpickling code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no baseline checkpoint at {path}: train one with benchmarks/baselines.py")
    p = _load_payload(path)
    model = build_baseline(p["arch"])
    model.load_state_dict(p["state_dict"])
    return TrainedBaseline(p["arch"], model, json.loads(p["record"]), float(p["seconds"]), bool(p["complete"]), path)


def train_baseline(
    name: str,
    train_data: Any,
    out: str | Path,
    config: TrainConfig,
    *,
    resume: bool = True,
    progress: bool = True,
    stop_after_steps: int | None = None,
) -> TrainedBaseline:
    """Train baseline ``name`` alone with the supernet's recipe, checkpointing to ``out``.

    Same split, sample order, augmentation stream, learning-rate curve, optimizer, gradient
    clipping, bfloat16 autocast and label smoothing as :func:`lifelong.train.trainer.train_supernet`
    with ``config``; every step trains the one network on the labels. ``stop_after_steps`` ends early (as a kill would).
    """
    out = Path(out)
    cfg = config
    tune_allocator()
    torch.manual_seed(cfg.seed)
    x_all, y_all = training_tensors(train_data, cfg)  # the supernet's split, (N, 1, H, W) and (N,)
    n = len(x_all)
    steps_per_epoch = n // cfg.batch_size
    if steps_per_epoch < 1:
        raise TrainingError(f"{n} training samples are fewer than one batch of {cfg.batch_size}")
    total = steps_per_epoch * cfg.epochs

    model = build_baseline(name)
    if isinstance(model, _GlobalPoolNet):
        model.dropout = cfg.dropout  # the FC-head nets have their own
    optimizer = torch.optim.SGD(param_groups(model, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    recipe = {k: v for k, v in cfg.to_dict().items() if k in RECIPE_FIELDS}
    config_json = json.dumps({**recipe, "arch": name}, sort_keys=True)
    step, record, seconds_before = 0, [], 0.0
    if resume and out.exists():
        p = _load_payload(out)
        if p["config"] != config_json:
            raise TrainingError(
                f"{out} holds a training of {p['arch']} with other settings; remove it or train elsewhere"
            )
        model.load_state_dict(p["state_dict"])
        if p["complete"]:
            logger.info("baseline %s at %s is already trained", name, out)
            return TrainedBaseline(name, model, json.loads(p["record"]), float(p["seconds"]), True, out)
        optimizer.load_state_dict(p["optimizer"])
        step, record, seconds_before = int(p["step"]), json.loads(p["record"]), float(p["seconds"])
        logger.info("resuming baseline %s at step %d/%d", name, step, total)
    model = model.to(memory_format=torch.channels_last)
    model.train()
    t_start = time.monotonic()

    def save(complete: bool) -> None:
        save_atomic(out, {
            "format_version": BASELINE_FORMAT, "kind": KIND, "arch": name, "config": config_json,
            "step": step, "steps": total, "complete": complete, "record": json.dumps(record),
            "seconds": seconds_before + time.monotonic() - t_start, "train_samples": n, "source": train_data.source,
            "state_dict": {k: v.detach().contiguous() for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict(),
        })  # fmt: skip

    bar = Progress(total, done=step, phase=name, enabled=progress)
    steps_run = 0
    while step < total:
        epoch, first = divmod(step, steps_per_epoch)
        perm = epoch_order(cfg, n, epoch)
        losses, correct, seen, t0 = [], 0, 0, time.monotonic()
        for in_epoch in range(first, steps_per_epoch):
            x, y = training_batch(cfg, x_all, y_all, perm, in_epoch, step)
            lr = lr_at(cfg, step, total)
            for g in optimizer.param_groups:
                g["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
                logits = model(x)  # (B, classes)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            step += 1
            steps_run += 1
            losses.append(loss.item())
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
            bar.update(1, phase=f"{name} e{epoch + 1}/{cfg.epochs}", loss=float(np.mean(losses[-50:])), lr=lr)
            if not math.isfinite(losses[-1]):
                save(False)
                raise TrainingError(f"baseline {name}: loss became {losses[-1]} at step {step}; lower lr ({cfg.lr})")
            if step % cfg.checkpoint_every == 0:
                save(False)
            if stop_after_steps is not None and steps_run >= stop_after_steps:
                save(False)
                bar.close()
                return TrainedBaseline(name, model, record, seconds_before + time.monotonic() - t_start, False, out)
        record.append({
            "epoch": epoch + 1, "loss": float(np.mean(losses)) if losses else None,
            "train_top1": correct / seen if seen else None, "lr_end": lr, "seconds": round(time.monotonic() - t0, 2),
        })  # fmt: skip
        logger.info("baseline %s epoch %d/%d: %s", name, epoch + 1, cfg.epochs, json.dumps(record[-1]))
        save(False)
    bar.close()
    save(True)
    return TrainedBaseline(name, model, record, seconds_before + time.monotonic() - t_start, True, out)


# -- the whole path: train, export, quantize, test --------------------------------------------------
@dataclass
class BaselineModels:
    """One baseline ready to be measured: its FP32 and chosen INT8 ONNX models and its figures."""

    name: str
    macs: int
    params: int
    params_folded: int
    fp32: bytes
    int8: bytes  # the chosen PTQ configuration's model
    top1: dict[str, float]  # "torch", "fp32", "int8" on the test images
    train_seconds: float
    record: list[dict[str, Any]]
    quantize_seconds: float  # all configurations together
    ptq: PtqSweep

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "macs": self.macs,
            "params": self.params,
            "params_folded": self.params_folded,
            "top1": self.top1,
            "bytes": {"fp32": len(self.fp32), "int8": len(self.int8)},
            "train_seconds": round(self.train_seconds, 1),
            "train_record": self.record,
            "quantize_seconds": round(self.quantize_seconds, 1),
            **self.ptq.to_dict(),
        }


def calibration_images(
    train_data: Any, config: TrainConfig, n: int = max(c.calibration_images for c in CONFIGS)
) -> np.ndarray:
    """``n`` images drawn (seeded) from the training part of the recipe's split, never the
    validation part or the test set: float32 ``(n, 1, 28, 28)``."""
    part = train_data.split(config.val_fraction, seed=config.seed)[0] if config.val_fraction > 0 else train_data
    idx = np.sort(np.random.default_rng(config.seed).permutation(len(part))[:n])
    return part.subset(idx).as_float()


def prepare_baseline(
    name: str,
    config: TrainConfig,
    train_data: Any,
    x_test: np.ndarray,
    y_test: np.ndarray,
    work: Path = WORK,
    *,
    progress: bool = True,
    configs: tuple[PtqConfig, ...] = CONFIGS,
    rounds: int = 15,
    runs: int = 50,
) -> BaselineModels:
    """Train (or resume, or load) baseline ``name``, export FP32, sweep the PTQ configurations
    (:func:`ptq.sweep`), keep the best as its INT8 model, and write both under ``work``."""
    from lifelong.train.evaluate import predict_logits, top1

    trained = train_baseline(name, train_data, work / f"{name}.pt", config, progress=progress)
    model = trained.model.eval()
    macs, params = count_macs_params(model)
    fp32 = export_onnx(model, work / f"{name}-fp32.onnx", name)
    t0 = time.monotonic()
    result = sweep(fp32, calibration_images(train_data, config), x_test, y_test, configs, rounds=rounds, runs=runs)
    quantize_seconds = time.monotonic() - t0
    write_bytes_atomic(work / f"{name}-int8.onnx", result.int8)
    accs = {"torch": top1(predict_logits(model, x_test), y_test), "fp32": result.fp32_top1, "int8": result.chosen.top1}
    logger.info("baseline %s: top-1 %s (INT8: %s)", name, accs, result.chosen.config.name)
    return BaselineModels(name, macs, params, folded_params(model), fp32, result.int8, accs, trained.seconds,
                          trained.record, quantize_seconds, result)  # fmt: skip


def markdown_table(rows: dict[str, dict[str, Any]]) -> str:
    """One line per baseline and model: FP32, then every PTQ configuration (* = chosen)."""
    lines = [
        "| baseline | model | calib. images | quantize s | top-1 (%) | vs FP32 (pt) | ms, 1 thread | ms, 2 threads |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        fp = r["fp32"]
        ms = fp["latency_ms"]
        lines.append(f"| {name} | FP32 | | | {100 * fp['top1']:.2f} | | {ms['1']:.3f} | {ms['2']:.3f} |")
        for c in r["configs"]:
            mark = " *" if c["name"] == r["chosen"] else ""
            ms = c["latency_ms"]
            lines.append(
                f"| {name} | {c['name']}{mark} | {c['calibration_images']} | {c['quantize_seconds']:.1f} | "
                f"{100 * c['top1']:.2f} | {100 * (c['top1'] - fp['top1']):+.2f} | {ms['1']:.3f} | {ms['2']:.3f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from common import markdown_targets, target, write_results

    from lifelong.data.datasets import load_fashion_mnist
    from service.state.paths import default_checkpoint, resolve_state_dir

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=None,
                    help="the supernet whose recipe and epochs to copy [STATE/supernet/supernet.pt; "
                         "TrainConfig() when there is none]")  # fmt: skip
    ap.add_argument("--state-dir", type=Path, default=None)
    ap.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    ap.add_argument("--only", choices=list(BASELINES), action="append", help="only these (repeatable)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads while training [2]")
    ap.add_argument("--quick", action="store_true", help="1 epoch on 4k images, 2k test images, shorter timing")
    ap.add_argument("--work", type=Path, default=None, help=f"[{WORK}; quick: {WORK / 'quick'}]")
    ap.add_argument("--out", type=Path, default=None,
                    help="results file [benchmarks/results/baselines.json; quick: baselines-quick.json]")  # fmt: skip
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    ckpt = args.checkpoint or default_checkpoint(resolve_state_dir(args.state_dir))
    if ckpt.exists():
        try:
            cfg, source = recipe_from_checkpoint(ckpt), str(ckpt)
        except CheckpointError as exc:
            raise SystemExit(f"error: {exc}") from None
    else:
        logger.warning("no supernet checkpoint at %s: training with TrainConfig()'s defaults", ckpt)
        cfg, source = TrainConfig(), f"TrainConfig() defaults (no checkpoint at {ckpt})"
    if args.quick:
        cfg = TrainConfig(**{**cfg.to_dict(), "epochs": 1, "max_train_samples": 4000})
    elif args.epochs:
        cfg = TrainConfig(**{**cfg.to_dict(), "epochs": args.epochs})
    work = args.work or (WORK / "quick" if args.quick else WORK)
    timing = {"rounds": 5, "runs": 20} if args.quick else {"rounds": 15, "runs": 50}
    train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
    n_test = 2000 if args.quick else len(test)
    x_test, y_test = test.as_float()[:n_test], test.y[:n_test]
    rows, targets = {}, []
    for name in args.only or list(BASELINES):
        torch.set_num_threads(args.threads)
        b = prepare_baseline(name, cfg, train, x_test, y_test, work, **timing)
        rows[name] = b.to_dict()
        gap = round(100 * (b.top1["int8"] - b.top1["fp32"]), 4)
        targets.append(target(f"{name} INT8 - FP32 top-1 (pt)", gap, ">= -0.5", gap >= -0.5))
    table = markdown_table(rows)
    out = write_results(
        "baselines-quick" if args.quick else "baselines",
        {
            "recipe_source": source,
            "recipe": cfg.to_dict(),
            "test_images": n_test,
            "calibration": {
                "images": sorted({c.calibration_images for c in CONFIGS}),
                "from": "training part of the recipe's split, seeded sample",
            },  # fmt: skip
            "latency": {
                "batch": 1,
                "threads": [1, 2],
                **timing,
                "method": "onnxruntime, median over rounds interleaving the models of one baseline",
            },  # fmt: skip
            "baselines": rows,
            "targets": targets,
        },
        out=args.out,
    )
    print(table)
    print(markdown_targets(targets))
    print(f"-> {out}")


if __name__ == "__main__":
    main()
