"""The networks a user would pick instead of a search: two hand-built baselines for 28x28.

    .venv/bin/python benchmarks/baselines.py            # train both (~10-25 min each on 2 cores), export, measure
    .venv/bin/python benchmarks/baselines.py --quick    # 1 epoch on 4k images, 2k test images

Both take ``float32 (N, 1, 28, 28)`` pixels in ``[0, 1]`` and normalise them themselves, like
the supernet, and are trained alone with the supernet's recipe (:func:`recipe_from_checkpoint`:
the same SGD with Nesterov momentum and weight decay, warm-up + cosine learning rate, random
shift + flip augmentation, batch size, epochs and train/validation split, through the
functions of :mod:`lifelong.train`), in full precision all along (there is no quantized phase
without a supernet), then exported to ONNX with BN folded and quantized by onnxruntime's
``quantize_static`` (:func:`lifelong.peer.ort_quantize`: QDQ, per-channel INT8 weights, UINT8
activations, MinMax on 512 training images), which is what a user would do.

``mbv2``: MobileNetV2 (Sandler et al., 2018) scaled to 28x28. ReLU6, BN after every conv, no
dropout; ``t`` expand ratio, ``c`` output channels, ``n`` blocks, ``s`` stride of the first::

    stem   conv3x3  1 -> 16, stride 2                   (28 -> 14)
    t=1 c=16 n=1 s=1   dw3x3 + project (no expansion)   (14)
    t=6 c=24 n=2 s=2   inverted residual, kernel 3      (14 -> 7)
    t=6 c=32 n=3 s=2                                    (7 -> 4)
    t=6 c=64 n=2 s=1                                    (4)
    head   conv1x1 64 -> 256, global average pool, linear 256 -> 10
    residual connection where stride 1 and channels in == out (5 of the 8 blocks)

    3,106,416 MACs, 149,098 parameters (145,834 after BN folding)

``cnn``: the plain small CNN a user writes first. 3x3 convolutions, BN, ReLU::

    conv3x3  1 -> 32  (28), maxpool 2 (-> 14)
    conv3x3 32 -> 64  (14), maxpool 2 (-> 7)
    conv3x3 64 -> 128 (7),  global average pool, linear 128 -> 10

    7,452,416 MACs, 94,186 parameters (93,962 after BN folding)

MACs count the multiply-accumulates of convolutions and linear layers for one image (not BN,
activations or pooling), as :mod:`lifelong.cost` counts them for subnets.

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
import os
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

from lifelong.allocator import tune_allocator
from lifelong.checkpoint import save_atomic
from lifelong.errors import CheckpointError, FormatVersionError, TrainingError
from lifelong.model_format import (
    EMBEDDING_OUTPUT,
    INPUT_NAME,
    INPUT_SHAPE,
    LOGITS_OUTPUT,
    META_CHECKPOINT,
    META_FORMAT,
    META_SUBNET,
    MODEL_FORMAT,
)
from lifelong.progress import Progress
from lifelong.supernet import PIXEL_MEAN, PIXEL_STD
from lifelong.train import (
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
    "SmallCNN",
    "build_baseline",
    "count_macs_params",
    "export_onnx",
    "fold_bn",
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
    "epochs", "batch_size", "lr", "momentum", "weight_decay", "lr_warmup_steps", "augment", "val_fraction",
    "max_train_samples", "seed",
)  # fmt: skip
"""The fields of :class:`TrainConfig` that train a single network; a checkpoint resumes only
under equal ones (the supernet's phases, distillation and checkpoint interval do not apply)."""
DOCUMENTED = {"mbv2": (3_106_416, 149_098), "cnn": (7_452_416, 94_186)}
"""``name -> (MACs, parameters)`` as the module docstring states them (tested)."""


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
    """Shared forward: normalise, features, global average pool -> embedding -> logits."""

    features: nn.Module
    fc: nn.Linear

    def forward_with_embedding(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (x - PIXEL_MEAN) / PIXEL_STD  # (B, 1, 28, 28)
        emb = F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)  # (B, D): GlobalAveragePool in ONNX
        return self.fc(emb), emb  # (B, classes), (B, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_embedding(x)[0]


class MobileNetV2Style(_Classifier):
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


class SmallCNN(_Classifier):
    """Three dense 3x3 conv layers with pooling (see the module docstring)."""

    def __init__(self, num_classes: int = 10, widths: tuple[int, int, int] = (32, 64, 128)) -> None:
        super().__init__()
        a, b, c = widths
        self.features = nn.Sequential(
            ConvBNAct(INPUT_SHAPE[0], a, 3), nn.MaxPool2d(2),
            ConvBNAct(a, b, 3), nn.MaxPool2d(2),
            ConvBNAct(b, c, 3),
        )  # fmt: skip
        self.fc = nn.Linear(c, num_classes)


BASELINES: dict[str, Callable[[], _Classifier]] = {"mbv2": MobileNetV2Style, "cnn": SmallCNN}


def build_baseline(name: str) -> _Classifier:
    """A freshly initialised baseline (``mbv2`` or ``cnn``)."""
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
        _write_atomic(Path(out), data)
    return data


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# -- training -------------------------------------------------------------------------------------
def recipe_from_checkpoint(checkpoint: Any) -> TrainConfig:
    """The :class:`TrainConfig` a supernet checkpoint (a path or a loaded ``Checkpoint``) was
    trained with, its epochs counted across continuations (``lifelong train --init-from``)."""
    from lifelong.checkpoint import load_checkpoint
    from lifelong.train import supernet_recipe

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

    Same split, sample order, augmentation stream, learning-rate curve, optimizer and
    gradient clipping as :func:`lifelong.train.train_supernet` with ``config``; every step
    trains the one network on the labels. ``stop_after_steps`` ends early (as a kill would).
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
            logits = model(x)
            loss = F.cross_entropy(logits, y)
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
    """One baseline ready to be measured: its FP32 and INT8 ONNX models and its figures."""

    name: str
    macs: int
    params: int
    fp32: bytes
    int8: bytes
    top1: dict[str, float]  # "fp32", "int8", "torch" on the test images
    train_seconds: float
    record: list[dict[str, Any]]
    quantize_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "macs": self.macs,
            "params": self.params,
            "top1": self.top1,
            "bytes": {"fp32": len(self.fp32), "int8": len(self.int8)},
            "train_seconds": self.train_seconds,
            "train_record": self.record,
            "quantize_seconds": self.quantize_seconds,
        }


def onnx_top1(model: bytes, x: np.ndarray, y: np.ndarray, threads: int = 2) -> float:
    from lifelong.export import onnx_session, run_onnx

    logits, _ = run_onnx(onnx_session(model, threads=threads), x)
    return float((logits.argmax(1) == y).mean())


def prepare_baseline(
    name: str,
    config: TrainConfig,
    train_data: Any,
    x_test: np.ndarray,
    y_test: np.ndarray,
    work: Path = WORK,
    *,
    progress: bool = True,
) -> BaselineModels:
    """Train (or resume, or load) baseline ``name``, export FP32, quantize INT8, test both."""
    from lifelong.evaluate import predict_logits, top1
    from lifelong.peer import CALIBRATION_IMAGES, ort_quantize

    trained = train_baseline(name, train_data, work / f"{name}.pt", config, progress=progress)
    model = trained.model.eval()
    macs, params = count_macs_params(model)
    fp32 = export_onnx(model, work / f"{name}-fp32.onnx", name)
    t0 = time.monotonic()
    # The same calibration images as the peer of our exports (benchmarks/deploy.py).
    int8 = ort_quantize(fp32, train_data.head(CALIBRATION_IMAGES).as_float(), work / f"{name}-int8.onnx")
    quantize_seconds = time.monotonic() - t0
    accs = {
        "torch": top1(predict_logits(model, x_test), y_test),
        "fp32": onnx_top1(fp32, x_test, y_test),
        "int8": onnx_top1(int8, x_test, y_test),
    }
    logger.info("baseline %s: top-1 %s", name, accs)
    return BaselineModels(name, macs, params, fp32, int8, accs, trained.seconds, trained.record, quantize_seconds)


def main(argv: list[str] | None = None) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import write_results

    from lifelong.data import load_fashion_mnist
    from lifelong.profile import DeviceProfile, PairedTimer, measure_model
    from lifelong.space import SearchSpace
    from service.paths import default_checkpoint, default_profile, resolve_state_dir

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=None,
                    help="the supernet whose recipe and epochs to copy [STATE/supernet/supernet.pt]")  # fmt: skip
    ap.add_argument("--profile", type=Path, default=None,
                    help="device profile for the paired timer [STATE/profile/device.json; without one, plain timing]")  # fmt: skip
    ap.add_argument("--state-dir", type=Path, default=None)
    ap.add_argument("--epochs", type=int, default=None, help="override the checkpoint's epochs")
    ap.add_argument("--only", choices=sorted(BASELINES), action="append", help="train only these (repeatable)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads while training [2]")
    ap.add_argument("--quick", action="store_true", help="1 epoch on 4k images, 2k test images")
    ap.add_argument("--work", type=Path, default=None, help=f"[{WORK}; quick: {WORK / 'quick'}]")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    state = resolve_state_dir(args.state_dir)
    ckpt = args.checkpoint or default_checkpoint(state)
    try:
        cfg = recipe_from_checkpoint(ckpt)
    except CheckpointError as exc:
        raise SystemExit(f"error: {exc}") from None
    if args.quick:
        cfg = _quick(cfg)
    elif args.epochs:
        cfg = TrainConfig(**{**cfg.to_dict(), "epochs": args.epochs})
    profile_path = args.profile or default_profile(state)
    timer = PairedTimer(DeviceProfile.load(profile_path), SearchSpace()) if profile_path.exists() else None
    work = args.work or (WORK / "quick" if args.quick else WORK)
    train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
    n_test = 2000 if args.quick else len(test)
    x_test, y_test = test.as_float()[:n_test], test.y[:n_test]
    rows = {}
    for name in args.only or sorted(BASELINES):
        torch.set_num_threads(args.threads)
        b = prepare_baseline(name, cfg, train, x_test, y_test, work)
        row = b.to_dict()
        row["latency_ms"] = {
            label: {str(k): v for k, v in (timer.measure(m) if timer else measure_model(m, (1, 32), 2)).items()}
            for label, m in (("fp32", b.fp32), ("int8", b.int8))
        }
        rows[name] = row
        print(f"{name}: {b.macs:,} MACs, {b.params:,} params, top-1 {b.top1}, ms {row['latency_ms']}", flush=True)
    out = write_results(
        "baselines-quick" if args.quick else "baselines",
        {
            "checkpoint": str(ckpt),
            "recipe": cfg.to_dict(),
            "test_images": n_test,
            "timer": f"PairedTimer ({profile_path})" if timer else "measure_model (no profile)",
            "baselines": rows,
        },
        out=work / "baselines.json",
    )
    print(f"-> {out}")


def _quick(cfg: TrainConfig) -> TrainConfig:
    return TrainConfig(**{**cfg.to_dict(), "epochs": 1, "max_train_samples": 4000})


if __name__ == "__main__":
    main()
